"""The layer table's entries for keras_hub's layers, by class name (keras_hub is never imported here).

A keras_hub layer keeps its weights in sub-layers, so each entry's ``sublayers``
says which class every weight-holding attribute holds: that is how a saved
file's nested weights are classified without loading keras_hub, and why weight
pruning reaches the attention and feed-forward kernels inside each block. Every
map is checked against real keras_hub layers by ``tests/test_hub_layers.py``.

``PositionEmbedding`` is prunable like ``Embedding``: it is the same kind of lookup
table (ViT's position table is a Keras ``Embedding``, already prunable), so BERT and
ViT are treated alike; ``--exclude position_embedding`` keeps it whole.
"""

from __future__ import annotations

from prunectl.core.layers.builtin import no_inputs
from prunectl.core.layers.spec import LayerSpec, WeightSpec

_ATTENTION = dict.fromkeys(("query_dense", "key_dense", "value_dense", "output_dense"), "EinsumDense")
_FEEDFORWARD = {"_feedforward_intermediate_dense": "Dense", "_feedforward_output_dense": "Dense"}
_NORMS = ("_self_attention_layer_norm", "_feedforward_layer_norm")

HUB: dict[str, LayerSpec] = {
    # With tie_weights=False the LM head is its own (hidden, vocab) matrix, created second.
    "ReversibleEmbedding": LayerSpec(
        (WeightSpec("embeddings", 0, inputs=no_inputs), WeightSpec("reverse_embeddings", 1))
    ),
    "PositionEmbedding": LayerSpec((WeightSpec("embeddings", 0, inputs=no_inputs),)),
    "CachedMultiHeadAttention": LayerSpec(sublayers=_ATTENTION),
    "CachedGemmaAttention": LayerSpec(sublayers=_ATTENTION),
    "TransformerEncoder": LayerSpec(
        sublayers={
            "_self_attention_layer": "MultiHeadAttention",
            **dict.fromkeys(_NORMS, "LayerNormalization"),
            **_FEEDFORWARD,
        }
    ),
    "TransformerDecoder": LayerSpec(
        sublayers={
            "_self_attention_layer": "CachedMultiHeadAttention",
            "_cross_attention_layer": "CachedMultiHeadAttention",
            **dict.fromkeys((*_NORMS, "_cross_attention_layer_norm"), "LayerNormalization"),
            **_FEEDFORWARD,
        }
    ),
    "GemmaDecoderBlock": LayerSpec(
        sublayers={
            "attention": "CachedGemmaAttention",
            **dict.fromkeys(("gating_ffw", "gating_ffw_2", "ffw_linear"), "EinsumDense"),
            **dict.fromkeys(
                ("pre_attention_norm", "pre_ffw_norm", "post_attention_norm", "post_ffw_norm"), "RMSNormalization"
            ),
        }
    ),
    "ViTPatchingAndEmbedding": LayerSpec(sublayers={"patch_embedding": "Conv2D", "position_embedding": "Embedding"}),
    "ViTEncoder": LayerSpec(sublayers={"encoder_layers/*": "ViTEncoderBlock", "layer_norm": "LayerNormalization"}),
    "ViTEncoderBlock": LayerSpec(
        sublayers={
            "mha": "MultiHeadAttention",
            "mlp": "MLP",
            **dict.fromkeys(("layer_norm_1", "layer_norm_2"), "LayerNormalization"),
        }
    ),
    # keras_hub's ViT feed-forward block.
    "MLP": LayerSpec(sublayers={"dense_1": "Dense", "dense_2": "Dense"}),
}
