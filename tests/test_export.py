import io
import subprocess
import sys
import textwrap

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from ssl_tf.data import views
from ssl_tf.export import export_encoder
from ssl_tf.models import build_backbone


def test_export_reloads_in_fresh_process_with_same_features(tmp_path):
    keras.utils.set_random_seed(0)
    encoder = build_backbone("resnet10", width=0.125, image_size=16)
    images = np.random.default_rng(0).random((3, 16, 16, 3)).astype(np.float32)
    expected = encoder(images, training=False).numpy()
    path = export_encoder(encoder, str(tmp_path / "export"), image_size=16)
    np.save(tmp_path / "images.npy", images)
    np.save(tmp_path / "expected.npy", expected)
    script = textwrap.dedent(f"""
        import numpy as np, tensorflow as tf, keras
        images = np.load({str(tmp_path / 'images.npy')!r}); expected = np.load({str(tmp_path / 'expected.npy')!r})
        loaded = tf.saved_model.load({path!r})
        assert set(loaded.signatures) == {{"serving_default", "serve_bytes"}}, list(loaded.signatures)
        out = loaded.signatures["serving_default"](images=tf.constant(images))["features"].numpy()
        print("saved_model", float(np.abs(out - expected).max()))
        layer = keras.layers.TFSMLayer({path!r}, call_endpoint="serving_default")
        out2 = layer(images)["features"].numpy()
        print("tfsmlayer", float(np.abs(out2 - expected).max()))
        big = np.random.default_rng(1).random((2, 24, 20, 3)).astype(np.float32)   # other sizes work too
        print("dynamic", loaded.serve(big)["features"].shape if hasattr(loaded, "serve") else
              loaded.signatures["serving_default"](images=tf.constant(big))["features"].shape)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert float(lines["saved_model"]) <= 1e-5
    assert float(lines["tfsmlayer"]) <= 1e-5
    assert lines["dynamic"].startswith("(2,")


def test_bytes_signature_matches_eval_preprocessing(tmp_path):
    keras.utils.set_random_seed(1)
    encoder = build_backbone("resnet10", width=0.125, image_size=16)
    path = export_encoder(encoder, str(tmp_path / "export"), image_size=16)
    arr = np.random.default_rng(2).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    loaded = tf.saved_model.load(path)
    got = loaded.signatures["serve_bytes"](encoded=tf.constant([buf.getvalue()]))["features"].numpy()
    want = encoder(views.eval_view(tf.constant(arr), 16)[None], training=False).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_tfsmlayer_fine_tunes(tmp_path):
    keras.utils.set_random_seed(2)
    encoder = build_backbone("resnet10", width=0.125, image_size=16)
    path = export_encoder(encoder, str(tmp_path / "export"), image_size=16)
    layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default", trainable=True)
    inputs = keras.Input((16, 16, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(layer(inputs)["features"]))
    assert len(layer.trainable_weights) > 0
    before = [w.numpy().copy() for w in layer.trainable_weights]
    model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(3).random((8, 16, 16, 3)).astype(np.float32)
    model.fit(x, np.arange(8) % 2, epochs=1, verbose=0)
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, layer.trainable_weights))


def test_export_replaces_previous_atomically(tmp_path):
    encoder = build_backbone("resnet10", width=0.125, image_size=16)
    target = tmp_path / "export"
    export_encoder(encoder, str(target), 16)
    first = (target / "saved_model.pb").stat().st_mtime_ns
    export_encoder(encoder, str(target), 16)
    assert (target / "saved_model.pb").stat().st_mtime_ns >= first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]   # no temp or old dirs left behind


def test_feature_extractor_checks_inputs_with_one_line_errors(tmp_path):
    import pytest

    from ssl_tf.errors import SSLTFError
    from ssl_tf.export import load_feature_extractor
    keras.utils.set_random_seed(3)
    encoder = build_backbone("resnet10", width=0.125, image_size=16)
    path = export_encoder(encoder, str(tmp_path / "export"), image_size=16)
    fx = load_feature_extractor(path)
    u8 = np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8)
    want = encoder(u8.astype(np.float32) / 255.0, training=False).numpy()
    np.testing.assert_allclose(fx(u8), want, atol=1e-5)                 # uint8 is scaled to [0, 1]
    np.testing.assert_allclose(fx(u8[0]), want[:1], atol=1e-5)           # one image
    bad = {"shape": np.zeros((2, 16, 16, 4), np.float32), "height": np.zeros((1, 4, 16, 3), np.float32),
           "dtype int64": np.zeros((1, 16, 16, 3), np.int64), "span": np.full((1, 16, 16, 3), 200.0),
           "shape ": np.zeros((16, 16), np.float32), "NaN": np.full((1, 16, 16, 3), np.nan, np.float32)}
    for what, x in bad.items():
        with pytest.raises(SSLTFError) as e:
            fx(x)
        assert "\n" not in str(e.value) and str(tmp_path) in str(e.value), what
    with pytest.raises(SSLTFError, match="encoded image 1 cannot be decoded"):
        buf = io.BytesIO()
        Image.fromarray(u8[0]).save(buf, format="PNG")
        fx.from_bytes([buf.getvalue(), b"not an image"])
    with pytest.raises(SSLTFError, match="not a SavedModel"):
        load_feature_extractor(str(tmp_path / "nothing"))


def test_an_export_killed_between_renames_is_recovered(tmp_path):
    import os

    from ssl_tf.export import load_feature_extractor
    encoder = build_backbone("resnet10", width=0.125, image_size=16)
    path = export_encoder(encoder, str(tmp_path / "export"), image_size=16)
    os.replace(path, path + ".old-12345")          # the state a kill -9 between the two renames leaves
    os.makedirs(path + ".tmp-12345")               # and a half-written new export
    fx = load_feature_extractor(path)
    assert fx(np.zeros((1, 16, 16, 3), np.uint8)).shape == (1, encoder.output_shape[-1])
    assert sorted(os.listdir(tmp_path)) == ["export"]
