"""CMC's split encoder: one backbone per view of the image, the representation their concatenation.

Each backbone takes the RGB image and converts it to its own view inside the network (Lab
channels: ``input_mode``), so the encoder — and so the probes, fine-tuning and the exported
SavedModel — take RGB images like every other encoder.
"""
from __future__ import annotations

import keras


def view_encoder(backbones: list[keras.Model], names: list[str], name: str = "view_encoder") -> keras.Model:
    """RGB images -> the concatenated pooled features of ``backbones`` (one per view, named ``names``)."""
    images = keras.Input((None, None, 3), name="images")
    renamed = [keras.Model(b.input, b.output, name=f"view_{n}") for b, n in zip(backbones, names)]
    features = [b(images) for b in renamed]
    return keras.Model(images, keras.layers.Concatenate(name="views")(features), name=name)


def view_backbones(encoder: keras.Model) -> list[keras.Model]:
    """The per-view backbones inside a ``view_encoder``, in view order."""
    nested = [layer for layer in encoder.layers if isinstance(layer, keras.Model) and layer.name.startswith("view_")]
    if len(nested) < 2:
        raise ValueError(f"{encoder.name} is not a split-view encoder (view_encoder)")
    return nested
