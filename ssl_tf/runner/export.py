"""--mode=export: the pretrained encoder as a reusable SavedModel in <model_dir>/export."""
from __future__ import annotations

from ssl_tf.export import export_encoder
from ssl_tf.runner import results


def run(runner) -> dict:
    encoder = runner.encoder()
    path = runner.write_export(export_encoder, encoder, "export")
    out = {"path": path, "feature_dim": int(encoder.output_shape[-1]), "signatures": ["serving_default", "serve_bytes"]}
    runner.results["export"] = out
    results.save(runner)
    return out
