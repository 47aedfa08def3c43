"""Tiny keras_hub backbones built from config (random weights, nothing downloaded), and inputs for them.

One definition for every test that needs them: BERT, GPT-2, ViT and a Gemma with one
key/value head (multi-query attention), each 2 blocks of width 16 with 32 feed-forward units.
"""

from __future__ import annotations

import numpy as np

BACKBONES = {
    "bert": ("BertBackbone", dict(vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                                  max_sequence_length=16)),
    "gpt2": ("GPT2Backbone", dict(vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
                                  max_sequence_length=16)),
    "vit": ("ViTBackbone", dict(image_shape=(16, 16, 3), patch_size=4, num_layers=2, num_heads=2, hidden_dim=16,
                                mlp_dim=32)),
    "gemma": ("GemmaBackbone", dict(vocabulary_size=100, num_layers=2, num_query_heads=2, num_key_value_heads=1,
                                    hidden_dim=16, intermediate_dim=32, head_dim=8)),
}  # fmt: skip


def build(name: str):
    """The tiny backbone ``name`` (a key of :data:`BACKBONES`); call ``seeded_keras()`` first for fixed weights."""
    import keras_hub

    cls, kwargs = BACKBONES[name]
    return getattr(keras_hub.models, cls)(**kwargs)


def inputs(name: str) -> dict | np.ndarray:
    """A batch of 2 inputs for backbone ``name``: 16x16 images for ViT, 8 token ids (and masks) for the others."""
    rng = np.random.default_rng(0)
    if name == "vit":
        return rng.normal(size=(2, 16, 16, 3)).astype("float32")
    tokens = rng.integers(1, 100, size=(2, 8)).astype("int32")
    batch = {"token_ids": tokens, "padding_mask": np.ones_like(tokens)}
    if name == "bert":
        batch["segment_ids"] = np.zeros_like(tokens)
    return batch
