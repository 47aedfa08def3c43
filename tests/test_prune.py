"""`prunectl prune` on tiny models: exact zeros, untouched weights, stock-Keras outputs.

Every result is checked independently of prunectl: weights are read back with
h5py (tests/independent.py), and outputs are compared with the original model
after applying the expected mask by hand.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import run, sample_inputs
from independent import dataset_filters, read_weights

from prunectl.cli.main import cli
from prunectl.core.weights import masks

FORMATS = [".h5", ".keras"]
MODELS = ["sequential", "functional", "zoo"]
# Prunable weights of the fixture models, as tests/independent.py names them.
PRUNABLE = {
    "sequential": {"d1": ["kernel"], "d2": ["kernel"]},
    "functional": {"conv": ["kernel"], "fc": ["kernel"], "head": ["kernel"]},
    "zoo": {
        "emb": ["embeddings"],
        "lstm": ["kernel", "recurrent_kernel"],
        "gru": ["kernel", "recurrent_kernel"],
        "dw": ["kernel"],
        "sep": ["depthwise_kernel", "pointwise_kernel"],
        "out": ["kernel"],
    },
}
# Position of each weight in its (sub-)layer's variable list (how .keras files store them).
INDEX = {"kernel": 0, "embeddings": 0, "depthwise_kernel": 0, "recurrent_kernel": 1, "pointwise_kernel": 1}
CELL = {"lstm": "lstm_cell", "gru": "gru_cell"}


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def weight_key(path, layer, name, weights):
    """The independent reader's key for a prunable weight in either format."""
    if path.suffix == ".keras":
        return f"{layer}/{CELL[layer]}/{INDEX[name]}" if layer in CELL else f"{layer}/{INDEX[name]}"
    return next(k for k in weights if k.endswith(f"{layer}/{name}") or k.endswith(f"{CELL.get(layer)}/{name}"))


def prunable_weights(path, model):
    weights = read_weights(path)
    return {
        f"{layer}/{name}": weights[weight_key(path, layer, name, weights)]
        for layer, names in PRUNABLE[model].items()
        for name in names
    }


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", MODELS)
def test_threshold_zeroes_exactly_the_small_weights(models, model, fmt):
    source = models / f"{model}{fmt}"
    before_hash = sha(source)
    run("prune", source, "--threshold", "0.2")
    output = models / f"{model}.pruned{fmt}"
    assert sha(source) == before_hash, "input model was modified"
    original, pruned = read_weights(source), read_weights(output)
    assert original.keys() == pruned.keys()
    prunable_keys = {
        weight_key(source, layer, name, original) for layer, names in PRUNABLE[model].items() for name in names
    }
    for key, value in original.items():
        if key in prunable_keys:
            expected = np.where(np.abs(value) < 0.2, 0, value)
            np.testing.assert_array_equal(pruned[key], expected, err_msg=key)
        else:
            np.testing.assert_array_equal(pruned[key], value, err_msg=f"{key} is not prunable but changed")


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", MODELS)
def test_layer_sparsity_is_exact_per_tensor(models, model, fmt):
    source = models / f"{model}{fmt}"
    run("prune", source, "--sparsity", "0.6")
    before = prunable_weights(source, model)
    after = prunable_weights(models / f"{model}.pruned{fmt}", model)
    for key, w in before.items():
        got = after[key]
        zeros = int(np.count_nonzero(got == 0))
        assert zeros == masks.zeros_for(0.6, w.size), key
        kept = np.abs(w[got != 0])
        dropped = np.abs(w[got == 0])
        assert kept.size == 0 or dropped.max() <= kept.min(), f"{key}: a larger weight was zeroed"
        np.testing.assert_array_equal(got[got != 0], w[got != 0])


@pytest.mark.parametrize("fmt", FORMATS)
def test_global_sparsity_is_one_cut(models, fmt):
    source = models / f"functional{fmt}"
    run("prune", source, "--sparsity", "0.7", "--scope", "global")
    before = prunable_weights(source, "functional")
    after = prunable_weights(models / f"functional.pruned{fmt}", "functional")
    total = sum(w.size for w in before.values())
    zeros = sum(int(np.count_nonzero(w == 0)) for w in after.values())
    assert zeros == masks.zeros_for(0.7, total)
    kept = np.concatenate([np.abs(before[k][after[k] != 0]) for k in before])
    dropped = np.concatenate([np.abs(before[k][after[k] == 0]) for k in before])
    assert dropped.max() <= kept.min()
    per_layer = {k: np.mean(after[k] == 0) for k in after}
    assert len({round(v, 3) for v in per_layer.values()}) > 1, "global scope should differ across layers"


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("model", ["sequential", "functional"])
def test_output_loads_in_stock_keras_and_matches_hand_masked_model(models, model, fmt):
    import keras

    source = models / f"{model}{fmt}"
    run("prune", source, "--threshold", "0.15")
    pruned = keras.models.load_model(models / f"{model}.pruned{fmt}", compile=False)
    original = keras.models.load_model(source, compile=False)
    for layer in original.layers:
        if layer.name in PRUNABLE[model]:
            kernel = layer.kernel.numpy()
            layer.kernel.assign(np.where(np.abs(kernel) < 0.15, 0, kernel))
    x = sample_inputs(original)
    np.testing.assert_allclose(pruned.predict(x, verbose=0), original.predict(x, verbose=0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("scope", ["layer", "global"])
def test_file_and_keras_engines_write_the_same_weights(models, fmt, scope):
    source = models / f"zoo{fmt}"
    run("prune", source, "--sparsity", "0.5", "--scope", scope, "--engine", "file", "-o", models / f"a{fmt}")
    run("prune", source, "--sparsity", "0.5", "--scope", scope, "--engine", "keras", "-o", models / f"b{fmt}")
    a, b = prunable_weights(models / f"a{fmt}", "zoo"), prunable_weights(models / f"b{fmt}", "zoo")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("source_fmt,target_fmt", [(".h5", ".keras"), (".keras", ".h5")])
def test_output_suffix_converts_format(models, source_fmt, target_fmt):
    import keras

    target = models / f"converted{target_fmt}"
    result = run("prune", models / f"sequential{source_fmt}", "--threshold", "0.1", "-o", target, "--json")
    assert json.loads(result.stdout)["engine"] == "keras"
    model = keras.models.load_model(target, compile=False)
    expected = read_weights(models / f"sequential{source_fmt}")
    kernel = next(v for k, v in expected.items() if k in ("d1/0", "d1/kernel", "seq/d1/kernel"))
    np.testing.assert_array_equal(model.get_layer("d1").kernel.numpy(), np.where(np.abs(kernel) < 0.1, 0, kernel))


@pytest.mark.parametrize("fmt", FORMATS)
def test_include_and_exclude_choose_layers(models, fmt):
    source = models / f"functional{fmt}"
    run("prune", source, "--sparsity", "0.5", "--include", "^(conv|fc)$", "--exclude", "^fc$")
    before = prunable_weights(source, "functional")
    after = prunable_weights(models / f"functional.pruned{fmt}", "functional")
    assert np.mean(after["conv/kernel"] == 0) >= 0.5
    np.testing.assert_array_equal(after["fc/kernel"], before["fc/kernel"])
    np.testing.assert_array_equal(after["head/kernel"], before["head/kernel"])


@pytest.mark.parametrize("fmt", FORMATS)
def test_sparse_weights_are_written_gzip_without_shuffle(samples, fmt):
    source = samples / f"digits_mlp{fmt}"
    run("prune", source, "--sparsity", "0.9")
    output = samples / f"digits_mlp.pruned{fmt}"
    filters = {name: (comp, shuffle) for name, comp, shuffle in dataset_filters(output)}
    kernels = [
        name
        for name in filters
        if name.endswith(("fc1/kernel", "fc2/kernel"))
        or (fmt == ".keras" and name.endswith("vars/0") and "optimizer" not in name)
    ]
    # 90% zeros: shuffle would split each run of zero floats over four byte planes (core/io/compress.py).
    assert kernels and all(filters[n] == ("gzip", False) for n in kernels), filters
    assert output.stat().st_size < 0.35 * source.stat().st_size


def test_compression_none_writes_plain_datasets(models):
    run("prune", models / "functional.h5", "--threshold", "0.1", "--compression", "none")
    assert {c for _, c, _ in dataset_filters(models / "functional.pruned.h5")} == {None}


@pytest.mark.parametrize("fmt", FORMATS)
def test_report_file_and_json_stdout(models, fmt):
    source = models / f"sequential{fmt}"
    result = run("prune", source, "--sparsity", "0.4", "--json")
    report = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    on_disk = json.loads((models / f"sequential.pruned{fmt}.report.json").read_text())
    assert on_disk["totals"] == report["totals"]
    assert report["schema_version"] == 1
    assert report["input"]["path"] == str(source)
    assert report["output"]["size_bytes"] == (models / f"sequential.pruned{fmt}").stat().st_size
    assert report["options"]["sparsity"] == 0.4
    assert set(report["tool"]) >= {"prunectl", "keras", "tensorflow"}
    after = prunable_weights(models / f"sequential.pruned{fmt}", "sequential")
    rows = {f"{r['layer']}/{r['weight']}": r for r in report["layers"]}
    assert rows.keys() == after.keys()
    for key, w in after.items():
        assert rows[key]["count"] == w.size
        assert rows[key]["zeros"] == int(np.count_nonzero(w == 0))
        assert rows[key]["sparsity"] == pytest.approx(rows[key]["zeros"] / w.size)
        assert rows[key]["shape"] == list(w.shape)
    all_weights = read_weights(models / f"sequential.pruned{fmt}")
    model_weights = {k: v for k, v in all_weights.items() if "optimizer" not in k and not k.startswith("adam")}
    assert report["totals"]["all"]["count"] == sum(v.size for v in model_weights.values())
    assert "Layer" in result.stderr and "Wrote" in result.stderr


def test_custom_output_and_report_paths(models, tmp_path):
    out, rep = tmp_path / "sub.h5", tmp_path / "r.json"
    run("prune", models / "sequential.h5", "--threshold", "0.1", "-o", out, "--report", rep)
    assert out.exists() and json.loads(rep.read_text())["output"]["path"] == str(out)


def test_force_overwrites_existing_output(models):
    run("prune", models / "sequential.h5", "--threshold", "0.1")
    run("prune", models / "sequential.h5", "--threshold", "0.3", "--force")
    w = prunable_weights(models / "sequential.pruned.h5", "sequential")["d1/kernel"]
    original = prunable_weights(models / "sequential.h5", "sequential")["d1/kernel"]
    np.testing.assert_array_equal(w, np.where(np.abs(original) < 0.3, 0, original))


def test_quiet_prints_nothing(models):
    result = run("prune", models / "sequential.keras", "--threshold", "0.1", "-q")
    assert result.stderr == "" and result.stdout == ""


def test_legacy_h5_with_string_loss_goes_through_keras_engine(samples):
    """Keras 3 cannot load regressor.h5 (loss="mse") with compile=True; prunectl must."""
    import h5py

    result = run("prune", samples / "regressor.h5", "--sparsity", "0.5", "--engine", "keras", "--json")
    assert json.loads(result.stdout)["engine"] == "keras"
    with h5py.File(samples / "regressor.pruned.h5") as f:
        training = json.loads(f.attrs["training_config"])
    assert training["loss"] in ("mse", "mean_squared_error") or "mean_squared_error" in json.dumps(training["loss"])


def test_keras_engine_recovers_compile_settings(samples):
    from prunectl.core.io import keras_io
    from prunectl.core.io.modelfile import open_model_file

    with open_model_file(samples / "regressor.h5") as model_file:
        loaded = keras_io.load_model(model_file)
    assert loaded.compile_spec.loss == "mse"
    assert loaded.model.optimizer.__class__.__name__ == "Adam"
    assert loaded.model.loss is not None


def build_lambda_model(folder, fmt):
    import keras

    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Lambda(lambda t: t * 2.0, name="double"), keras.layers.Dense(2, name="d")]
    )
    path = folder / f"lam{fmt}"
    model.save(path)
    return path


@pytest.mark.parametrize("fmt", FORMATS)
def test_lambda_model_needs_unsafe_in_keras_engine(tmp_path, fmt):
    path = build_lambda_model(tmp_path, fmt)
    result = CliRunner().invoke(cli, ["prune", str(path), "--threshold", "0.1", "--engine", "keras"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: model holds Python code (a Lambda layer)")
    assert "--unsafe" in result.stderr and str(path) in result.stderr
    assert not (tmp_path / f"lam.pruned{fmt}").exists()
    run("prune", path, "--threshold", "0.1", "--engine", "keras", "--unsafe")
    assert (tmp_path / f"lam.pruned{fmt}").exists()


def test_file_engine_never_runs_lambda_code(tmp_path):
    """The file engine copies the model config as data; nothing in it is executed."""
    path = build_lambda_model(tmp_path, ".keras")
    run("prune", path, "--threshold", "0.1")
    assert read_weights(tmp_path / "lam.pruned.keras").keys() == read_weights(path).keys()


@pytest.mark.parametrize("fmt,group", [(".h5", "optimizer_weights"), (".keras", "optimizer")])
def test_optimizer_state_dropped_unless_kept(samples, fmt, group):
    import io
    import zipfile

    import h5py

    def groups(path):
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as f:
                return set(f)
        with h5py.File(path) as f:
            return set(f)

    source = samples / f"digits_mlp{fmt}"
    assert group in groups(source)
    run("prune", source, "--threshold", "0.05", "-o", samples / f"drop{fmt}")
    run("prune", source, "--threshold", "0.05", "-o", samples / f"keep{fmt}", "--keep-optimizer")
    assert group in groups(samples / f"keep{fmt}")
    if fmt == ".h5":
        assert group not in groups(samples / f"drop{fmt}")
        return
    # A .keras keeps the layout at a new optimizer's state (tests/test_optimizer_state.py): trained slots are gone.
    with zipfile.ZipFile(samples / f"drop{fmt}") as archive:
        weights = io.BytesIO(archive.read("model.weights.h5"))
    with h5py.File(weights) as f:
        slots = [f[group]["vars"][name][()] for name in f[group]["vars"]]
    assert slots and not any(slot.any() for slot in slots if slot.ndim)


def test_pruned_keras_file_loads_compiled_in_stock_keras(samples):
    import keras

    run("prune", samples / "digits_mlp.keras", "--sparsity", "0.5")
    model = keras.models.load_model(samples / "digits_mlp.pruned.keras")  # compile=True, the default
    data = np.load(samples / "digits_test.npz")
    loss, accuracy = model.evaluate(data["x"], data["y"], verbose=0)
    assert accuracy > 0.9, accuracy


@pytest.mark.slow
@pytest.mark.parametrize("fmt", FORMATS)
def test_output_loads_in_a_fresh_keras_process_without_prunectl(models, fmt):
    import subprocess
    import sys

    run("prune", models / f"functional{fmt}", "--sparsity", "0.5")
    script = (
        "import sys, keras, numpy as np\n"
        "m = keras.models.load_model(sys.argv[1], compile=False)\n"
        "m.predict(np.zeros((1, 6, 6, 2), 'float32'), verbose=0)\n"
        "assert not any(n.startswith('prunectl') for n in sys.modules), 'prunectl was imported'\n"
        "print('loaded', m.count_params())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(models / f"functional.pruned{fmt}")],
        capture_output=True,
        text=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": ""},
    )
    assert out.returncode == 0 and out.stdout.startswith("loaded"), out.stderr[-2000:]
