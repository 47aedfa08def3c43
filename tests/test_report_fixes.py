"""Reports that say what happened: default names per format, params after structural pruning,
thresholds under schedules, weight names of .keras files, metrics, and stdin.

Every expectation is computed from the files themselves (h5py, zipfile) or by hand.
"""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from conftest import run
from independent import read_weights

from prunectl.core.io.keras_io import compile_spec_from
from prunectl.core.io.modelfile import open_model_file


def _kernel(weights: dict, layer: str) -> np.ndarray:
    """A layer's kernel from :func:`read_weights` (.h5 names it ``<layer>/kernel``, .keras ``<layer>/0``)."""
    return next(v for k, v in weights.items() if k.split("/")[-2:] in ([layer, "kernel"], [layer, "0"]))


def test_pruning_h5_and_keras_in_one_folder_keeps_both_reports(models):
    for fmt in (".h5", ".keras"):
        run("prune", models / f"functional{fmt}", "--sparsity", "0.5", "-q")
    reports = {fmt: models / f"functional.pruned{fmt}.report.json" for fmt in (".h5", ".keras")}
    for fmt, path in reports.items():
        saved = json.loads(path.read_text())
        assert saved["input"]["path"] == str(models / f"functional{fmt}")
        assert saved["output"]["path"] == str(models / f"functional.pruned{fmt}")
        assert saved["report_path"] == str(path)
    assert not (models / "functional.pruned.report.json").exists()


def test_explicit_output_names_its_report_after_the_whole_file_name(models):
    run("prune", models / "sequential.keras", "--sparsity", "0.5", "-o", models / "small.h5", "-q")
    assert json.loads((models / "small.h5.report.json").read_text())["output"]["format"] == "h5"


@pytest.mark.parametrize("fmt", [".h5", ".keras"])
def test_baseline_shows_params_and_shapes_after_units_were_removed(samples, fmt):
    source, pruned = samples / f"digits_cnn{fmt}", samples / f"small{fmt}"
    run("prune", source, "--neuron-ratio", "0.25", "-o", pruned, "-q")
    before, after = read_weights(source), read_weights(pruned)
    report = json.loads(run("report", pruned, "--baseline", source, "--json").stdout)
    block = report["baseline"]
    assert block["params"] == {
        "before": sum(v.size for v in before.values()),
        "after": sum(v.size for v in after.values()),
    }
    assert block["params"]["after"] < block["params"]["before"]
    assert "flops" not in block  # a model file alone does not give them
    rows = {(r["layer"], r["weight"]): r for r in block["layers"]}
    for layer in ("conv1", "conv2", "fc1"):
        old, new = _kernel(before, layer).shape, _kernel(after, layer).shape
        assert old != new, layer  # every one lost units
        row = rows[(layer, "kernel")]
        assert (row["shape_before"], row["shape_after"]) == (list(old), list(new))
        assert row["change"] == f"{'x'.join(map(str, old))} -> {'x'.join(map(str, new))}"
        assert (row["count_before"], row["count"]) == (int(np.prod(old)), int(np.prod(new)))
    text = run("report", pruned, "--baseline", source).stderr
    assert f"params {block['params']['before']:,} -> {block['params']['after']:,}" in text
    assert rows[("conv1", "kernel")]["change"] in text


def test_baseline_of_a_saved_structural_report_shows_its_flops(samples):
    source = samples / "digits_cnn.keras"
    run("prune", source, "--neuron-ratio", "0.25", "-o", samples / "small.keras", "-q")
    saved = samples / "small.keras.report.json"
    plan = json.loads(saved.read_text())["structural"]["totals"]["flops"]
    block = json.loads(run("report", saved, "--baseline", source, "--json").stdout)["baseline"]
    assert block["flops"] == {"before": plan["before"], "after": plan["after"]}
    assert plan["after"] < plan["before"]
    text = run("report", saved, "--baseline", source).stderr
    assert f"FLOPs {plan['before']:,} -> {plan['after']:,}" in text
    summary = run("report", saved, "--baseline", source, "--markdown", "-").stdout
    assert f"FLOPs against `{source}`: {plan['before']:,} → {plan['after']:,}." in summary


def test_weight_only_baseline_rows_keep_their_shape(models):
    run("prune", models / "functional.h5", "--sparsity", "0.5", "-q")
    block = json.loads(
        run("report", models / "functional.pruned.h5", "--baseline", models / "functional.h5", "--json").stdout
    )["baseline"]
    assert block["params"]["before"] == block["params"]["after"]
    assert all(r["change"] is None for r in block["layers"])
    assert "params" not in run("report", models / "functional.pruned.h5", "--baseline", models / "functional.h5").stderr


def _h5_names(path) -> set[tuple[str, str, tuple[int, ...]]]:
    """(layer, weight, shape) of every weight, as the .h5 file names them itself (its weight_names attributes)."""
    found = set()
    with h5py.File(path, "r") as f:
        group = f["model_weights"]
        for layer in group.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else layer
            for weight in group[layer].attrs["weight_names"]:
                weight = weight.decode() if isinstance(weight, bytes) else weight
                found.add((layer, weight.split("/")[-1], tuple(group[layer][weight].shape)))
    return found


@pytest.mark.parametrize("name", ["functional", "zoo"])
def test_all_weights_of_a_keras_file_are_named_as_its_h5_twin_names_them(models, name):
    report = json.loads(run("report", models / f"{name}.keras", "--all-weights", "--json").stdout)
    rows = [(r["layer"], r["weight"], tuple(r["shape"])) for r in report["layers"]]
    assert len(rows) == len(set(rows))
    assert set(rows) == _h5_names(models / f"{name}.h5")


def test_all_weights_names_batch_norm_statistics(models):
    report = json.loads(run("report", models / "functional.keras", "--all-weights", "--json").stdout)
    assert [r["weight"] for r in report["layers"] if r["layer"] == "bn"] == [
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
    ]


def test_a_model_compiled_without_metrics_has_none(samples):
    with h5py.File(samples / "regressor.h5", "r") as f:
        assert json.loads(f.attrs["training_config"])["metrics"] is None  # the premise
    with open_model_file(samples / "regressor.h5") as model:
        assert compile_spec_from(model).metrics == ()


def test_a_report_read_from_stdin_is_titled_stdin(models, monkeypatch):
    monkeypatch.chdir(models)  # short paths: a title never wraps
    prune = run("prune", "sequential.h5", "--sparsity", "0.5", "--json")
    text = run("report", "-", input=prune.stdout).stderr
    assert text.splitlines()[0].strip() == "stdin"
    compared = run("report", "-", "--baseline", "sequential.h5", input=prune.stdout).stderr
    assert compared.splitlines()[0].strip() == "sequential.h5 -> stdin"


def _pruned_and_kept(source, output, layer):
    """The input's magnitudes where the output holds a zero it did not have, and the output's kept magnitudes."""
    before, after = _kernel(read_weights(source), layer), _kernel(read_weights(output), layer)
    pruned = (after == 0) & (before != 0)
    return np.abs(before[pruned]), np.abs(after[after != 0]), before, after


@pytest.mark.slow
@pytest.mark.parametrize("how", ["options", "recipe"])
def test_threshold_under_a_polynomial_schedule_is_the_largest_magnitude_pruned(samples, tmp_path, how):
    source, output = samples / "digits_mlp.h5", tmp_path / "p.h5"
    # A learning rate far below float32's resolution of the weights: training moves nothing, so the
    # magnitudes the masks were cut on are the input's, and the thresholds can be checked against them.
    common = ["--data", samples / "digits_train.npz", "--learning-rate", "1e-30", "--seed", "0", "-o", output, "-q"]
    if how == "options":
        args = ["--sparsity", "0.8", "--finetune-epochs", "1", "--schedule", "polynomial"]
        final = {"fc1": 0.8, "fc2": 0.8, "head": 0.8}
    else:
        recipe = tmp_path / "r.toml"
        recipe.write_text(
            '[[step]]\nsparsity = 0.8\n[step.layers."^head$"]\nsparsity = 0.5\n'
            '[finetune]\nepochs = 1\nschedule = "polynomial"\n'
        )
        args = ["--recipe", recipe]
        final = {"fc1": 0.8, "fc2": 0.8, "head": 0.5}
    run("prune", source, *args, *common)
    report = json.loads(output.with_name("p.h5.report.json").read_text())
    assert len(report["finetune"]["mask_updates"]) > 2  # a gradual schedule, not one shot
    for row in report["layers"]:
        pruned, kept, before, after = _pruned_and_kept(source, output, row["layer"])
        assert np.array_equal(after[after != 0], before[after != 0])  # the premise: nothing moved
        assert row["zeros"] == int(np.ceil(final[row["layer"]] * before.size - 1e-9))
        assert row["threshold"] > 0.0
        assert row["threshold"] == float(pruned.max())  # the largest magnitude zeroed
        assert kept.min() >= row["threshold"]


@pytest.mark.slow
def test_finetuning_a_model_without_metrics_records_none(samples, tmp_path):
    output = tmp_path / "r.h5"
    run(
        "prune",
        samples / "regressor.h5",
        "--sparsity",
        "0.5",
        "--finetune-epochs",
        "1",
        "--data",
        samples / "regression_train.npz",
        "-o",
        output,
        "-q",
    )
    report = json.loads(output.with_name("r.h5.report.json").read_text())
    assert report["finetune"]["compile"]["metrics"] == []
