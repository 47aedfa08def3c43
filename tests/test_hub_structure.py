"""keras_hub's structural specs against real layers, and backbones rebuilt as plain Functional models.

Every tiny backbone is built from its config (random weights, nothing downloaded).
The spec checks read the layers' variables through their attribute paths, as the
``Inner`` paths name them, without going through prunectl's graph code; the rebuilt
models are reloaded in a fresh Python process with keras_hub imported.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from prunectl.core.layers import get_spec
from prunectl.core.layers.hub_structure import STRUCTURE

keras_hub = pytest.importorskip("keras_hub")

from hub_models import BACKBONES, build, inputs  # noqa: E402

pytestmark = pytest.mark.slow


def _backbones():
    from tests.conftest import seeded_keras

    seeded_keras()
    return {name: build(name) for name in BACKBONES}


@pytest.fixture(scope="module")
def backbones():
    return _backbones()


def _variables(layer, path: str) -> list:
    """The variables a ``sub/layer/weight`` path names, ``*`` standing for every item of a list."""
    *attrs, weight = path.split("/")
    holders = [layer]
    for attr in attrs:
        holders = [item for h in holders for item in h] if attr == "*" else [getattr(h, attr) for h in holders]
    return [getattr(h, weight) for h in holders]


def _layers_by_class(backbones) -> dict:
    found = {}
    for model in backbones.values():
        for layer in model.layers:
            found.setdefault(layer.__class__.__name__, layer)
    return found


def test_every_structural_entry_is_met_in_a_tiny_backbone(backbones):
    assert set(STRUCTURE) <= set(_layers_by_class(backbones))


@pytest.mark.parametrize("class_name", sorted(c for c, f in STRUCTURE.items() if f.get("inner")))
def test_inner_paths_name_real_variables_of_the_counted_size(backbones, class_name):
    layer = _layers_by_class(backbones)[class_name]
    config = layer.get_config()
    for inner in get_spec(class_name).inner:
        units = config[inner.count] // inner.per_unit
        for path, axis in inner.slices:
            variables = _variables(layer, path)
            assert variables, path
            for variable in variables:
                assert variable.shape[axis] == units, (class_name, path, tuple(variable.shape))
        if inner.observe:
            # The observed sub-layer reads the units: its kernel's first axis is theirs.
            for kernel in _variables(layer, f"{inner.observe[0]}/kernel"):
                assert kernel.shape[0] == units, inner


def test_vit_encoder_blocks_are_reached_through_the_star_path(backbones):
    encoder = backbones["vit"].get_layer("vit_encoder")
    (ffn,) = [i for i in get_spec("ViTEncoder").inner if i.name == "ffn"]
    assert len(_variables(encoder, ffn.slices[0][0])) == len(encoder.encoder_layers) == 2


@pytest.mark.parametrize("class_name", ["TransformerEncoder", "TransformerDecoder", "ViTEncoder"])
def test_heads_of_blocks_deriving_key_dim_are_refused_with_that_reason(backbones, class_name):
    layer = _layers_by_class(backbones)[class_name]
    (heads,) = [i for i in get_spec(class_name).inner if i.name == "heads"]
    assert "key_dim = hidden_dim // num_heads" in heads.check(layer.get_config())
    # The reason holds: the block's attention really has hidden_dim // num_heads per head.
    config = layer.get_config()
    attention = _variables(layer, heads.slices[0][0])[0]
    assert attention.shape[-1] == 16 // config["num_heads"]
    # Every block is also where the residual stream stops.
    assert get_spec(class_name).rule.check(config, 3)


def test_gemma_query_heads_are_removable_with_one_key_value_head(backbones):
    block = _layers_by_class(backbones)["GemmaDecoderBlock"]
    (heads,) = [i for i in get_spec("GemmaDecoderBlock").inner if i.name == "heads"]
    config = block.get_config()
    assert config["num_key_value_heads"] == 1 and heads.check(config) is None
    assert "groups" in heads.check({**config, "num_key_value_heads": 2})
    assert "query_head_dim_normalize" in heads.check({**config, "query_head_dim_normalize": False})


def test_gemma_ffn_counts_the_gated_pair(backbones):
    block = _layers_by_class(backbones)["GemmaDecoderBlock"]
    assert block.gating_ffw.kernel.shape[-1] * 2 == block.get_config()["intermediate_dim"]


LOAD = """
import sys, json, keras, keras_hub, numpy as np
out = {}
for path in sys.argv[1:]:
    model = keras.saving.load_model(path)
    out[path] = [type(model).__name__, sorted({l.__class__.__name__ for l in model.layers})]
print(json.dumps(out))
"""


def test_backbones_come_out_as_plain_functional_models_that_reload(backbones, tmp_path):
    import keras

    from prunectl.core.structure.plan import StructuralPlan, apply_plan

    paths = {}
    for name, model in backbones.items():
        plain = apply_plan(model, StructuralPlan({}, (), (), ()))
        x = inputs(name)
        before, after = model(x, training=False), plain(x, training=False)
        for a, b in zip(keras.tree.flatten(before), keras.tree.flatten(after), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
        paths[name] = tmp_path / f"{name}.keras"
        plain.save(paths[name])
        config = json.loads(zipfile.ZipFile(paths[name]).read("config.json"))
        assert config["class_name"] == "Functional", name
    fresh = subprocess.run(
        [sys.executable, "-c", LOAD, *map(str, paths.values())], capture_output=True, text=True, check=False
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    loaded = json.loads(fresh.stdout.strip().splitlines()[-1])
    for name, model in backbones.items():
        kind, classes = loaded[str(paths[name])]
        assert kind == "Functional"
        assert classes == sorted({layer.__class__.__name__ for layer in model.layers})


def test_the_note_says_the_model_is_plain(backbones):
    from prunectl.core.structure.backbone import plain_model_note

    note = plain_model_note(backbones["bert"])
    assert "plain Functional keras.Model" in note and "not a BertBackbone" in note and "keras_hub" in note


def test_a_blocks_multiply_adds_count_its_projections_per_position(backbones):
    from prunectl.core.structure.cost import layer_macs

    def block_macs(class_name, shapes, out_shape):
        return layer_macs(class_name, dict(shapes), out_shape, out_shape, shapes)

    def shapes(layer):
        return [(v.name, tuple(v.shape)) for v in layer.weights]

    encoder = backbones["bert"].get_layer("transformer_layer_0")
    # q, k, v and output projections 16x16 each, feed-forward 16x32 and 32x16: per token.
    assert block_macs("TransformerEncoder", shapes(encoder), (None, None, 16)) == 4 * 16 * 16 + 2 * 16 * 32
    vit = backbones["vit"].get_layer("vit_encoder")
    # Two blocks over 16 patches and the class token.
    assert block_macs("ViTEncoder", shapes(vit), (None, 17, 16)) == 2 * (4 * 16 * 16 + 2 * 16 * 32) * 17
