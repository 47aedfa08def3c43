"""Structural fields of the layer table for keras_hub's layer classes: their ``rule`` and ``inner`` units.

Part of the table kept apart from the weight-level entries (``prunable``,
``sublayers``) until the two are folded into one module; :func:`merged` adds these
fields to whatever entry a class already has. Nothing here imports keras_hub: the
table is keyed by class name, and every weight is named by its attribute path
(see :class:`~prunectl.core.layers.spec.Inner`), as read from keras_hub 0.32's
sources and checked against real layers by ``tests/test_hub_structure.py``.

What the blocks allow:

- ``TransformerEncoder`` (BERT), ``TransformerDecoder`` (GPT-2) and ``ViTEncoder``
  (a list of ``ViTEncoderBlock`` sharing one ``mlp_dim``) compute their attention's
  ``key_dim`` as ``hidden_dim // num_heads`` in ``build()``/``__init__``: a config
  with fewer heads would give every remaining head a larger size, so their heads are
  refused (:func:`derived_key_dim`), and so are their residual (hidden) channels.
  Their feed-forward units are removable.
- ``GemmaDecoderBlock`` states ``head_dim`` in its config: its query heads are
  removable where one key/value head serves them all (multi-query attention, as in
  Gemma 2B) and the queries are scaled by ``head_dim``; its feed-forward units are
  gated pairs (``intermediate_dim`` counts both halves).
- The embeddings pass the hidden channels on (with ``--prune-residual``,
  ``ReversibleEmbedding`` and Keras' ``Embedding`` produce them; ``PositionEmbedding``
  adds to them), so the blocks, not the embeddings, are where the residual stream stops.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import replace

from prunectl.core.layers.spec import Inner, LayerSpec, Rule


def derived_key_dim(count: str) -> Callable:
    """A check refusing a layer that derives its heads' size from ``hidden_dim // <count>``.

    Returns a function usable both as an ``Inner.check(config)`` and a ``Rule.check(config, rank)``.
    """

    def check(config: dict, rank: int | None = None) -> str | None:
        return (
            f"key_dim = hidden_dim // {count} is derived in build(), so fewer heads or channels "
            f"would resize every head ({count}={config.get(count)})"
        )

    return check


def gemma_heads_check(config: dict) -> str | None:
    """Why a GemmaDecoderBlock's query heads cannot be removed through its config, or None."""
    kv = config.get("num_key_value_heads")
    if kv != 1:
        # With several key/value heads each serves a consecutive run of query heads; removing
        # query heads would have to keep the runs equal, and the runs are not a group of their own here.
        return f"{kv} key/value heads share the query heads in groups (only num_key_value_heads=1 is pruned)"
    if not config.get("query_head_dim_normalize", True):
        return "queries are scaled by hidden_dim // num_query_heads (query_head_dim_normalize=False)"
    return None


def _attention_heads(prefix: str, count: str, check: Callable) -> Inner:
    # keras.layers.MultiHeadAttention (and keras_hub's CachedMultiHeadAttention): kernels
    # (in, heads, dim), biases (heads, dim), output kernel (heads, dim, out).
    dense = ("query_dense", "key_dense", "value_dense")
    return Inner(
        "heads",
        count,
        tuple((f"{prefix}{d}/{w}", 1 if w == "kernel" else 0) for d in dense for w in ("kernel", "bias"))
        + ((f"{prefix}output_dense/kernel", 0),),
        observe=(f"{prefix}output_dense", -2),
        check=check,
    )


def _feedforward(prefix: str, count: str, inner: str, outer: str) -> Inner:
    return Inner(
        "ffn",
        count,
        ((f"{prefix}{inner}/kernel", -1), (f"{prefix}{inner}/bias", 0), (f"{prefix}{outer}/kernel", 0)),
        observe=(f"{prefix}{outer}", -1),
    )


_ENCODER_FFN = _feedforward("", "intermediate_dim", "_feedforward_intermediate_dense", "_feedforward_output_dense")

GEMMA_HEADS = Inner(
    "heads",
    "num_query_heads",
    # query kernel (heads, in, head_dim), output kernel (heads, head_dim, out); Gemma's have no biases.
    (("attention/query_dense/kernel", 0), ("attention/output_dense/kernel", 0)),
    observe=("attention/output_dense", -2),
    check=gemma_heads_check,
)
# gelu(x @ gating_ffw) * (x @ gating_ffw_2) @ ffw_linear: a unit is one column of each gate and
# one row of ffw_linear, and intermediate_dim counts both gates' columns.
GEMMA_FFN = Inner(
    "ffn",
    "intermediate_dim",
    (("gating_ffw/kernel", -1), ("gating_ffw_2/kernel", -1), ("ffw_linear/kernel", 0)),
    per_unit=2,
    observe=("ffw_linear", -1),
)


def block_macs(shapes: list[tuple[str, tuple[int, ...]]], in_shape: tuple, out_shape: tuple) -> int:
    """Multiply-adds of one call of a block whose kernels sit in sub-layers.

    Each ``kernel`` (the attention and feed-forward projections) is used once per output
    position; the attention's score and context products, which grow with the sequence
    squared, are left out, and a sequence of unknown length counts one position (per token).
    """
    length = math.prod(int(d or 1) for d in tuple(out_shape)[1:-1])
    return length * sum(math.prod(shape) for name, shape in shapes if name == "kernel")


def _block(check: Callable) -> Rule:
    return Rule("passthrough", check=check)


STRUCTURE: dict[str, dict] = {
    "TransformerEncoder": {
        "macs": block_macs,
        "rule": _block(derived_key_dim("num_heads")),
        "inner": (_attention_heads("_self_attention_layer/", "num_heads", derived_key_dim("num_heads")), _ENCODER_FFN),
    },
    "TransformerDecoder": {
        "macs": block_macs,
        "rule": _block(derived_key_dim("num_heads")),
        "inner": (_attention_heads("_self_attention_layer/", "num_heads", derived_key_dim("num_heads")), _ENCODER_FFN),
    },
    "ViTEncoder": {
        "macs": block_macs,
        "rule": _block(derived_key_dim("num_heads")),
        "inner": (
            _attention_heads("encoder_layers/*/mha/", "num_heads", derived_key_dim("num_heads")),
            _feedforward("encoder_layers/*/mlp/", "mlp_dim", "dense_1", "dense_2"),
        ),
    },
    "GemmaDecoderBlock": {
        "macs": block_macs,
        # Its explicit head_dim would let the hidden channels through, but every one of its weights
        # with a hidden axis sits in a sub-layer, which a rule's in_axes cannot name yet.
        "rule": _block(lambda config, rank: "its hidden-axis weights are in sub-layers (not sliced by a rule yet)"),
        "inner": (GEMMA_HEADS, GEMMA_FFN),
    },
    # Like Keras' Embedding (builtin.py): a producer of the residual stream, pruned only with --prune-residual.
    "ReversibleEmbedding": {
        "rule": Rule("producer", "output_dim", out_axes=(("embeddings", 1), ("reverse_embeddings", 0)), residual=True),
    },
    "PositionEmbedding": {"rule": Rule("passthrough", in_axes=(("embeddings", 1, None),))},
    "ViTPatchingAndEmbedding": {
        "rule": Rule(
            "producer",
            "hidden_dim",
            check=lambda config, rank: "its weights are in sub-layers (patch_embedding, position_embedding)",
        ),
    },
}
"""Structural fields (``rule``, ``inner``) by class name."""

UNREAD_CONFIG: dict[str, tuple[str, ...]] = {
    # keras_hub 0.32 writes these derived values into the config but its __init__ rejects them,
    # so a model holding the layer (not inside a ViTBackbone, which rebuilds it) could not be reloaded.
    "ViTPatchingAndEmbedding": ("num_patches", "num_positions"),
}
"""Config keys a class's ``get_config`` writes and its constructor does not take, by class name."""


def merged(table: Mapping[str, LayerSpec]) -> dict[str, LayerSpec]:
    """``table``'s entries with the structural fields of :data:`STRUCTURE` added (new entries where missing)."""
    out = dict(table)
    for name, fields in STRUCTURE.items():
        out[name] = replace(out.get(name) or LayerSpec(), **fields)
    return out
