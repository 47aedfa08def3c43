"""The benchmarks run against the library's current API (they are not run in full here: they take minutes).

bench_io's helpers run on a tiny model; the other benchmark scripts are imported, so a renamed or moved
library function fails here instead of in the next person's benchmark run.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from conftest import REPO
from independent import read_weights


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_io_helpers_prune_the_prunable_weights(models):
    bench = _load("bench_io")
    path = models / "functional.h5"
    threshold, nbytes = bench.threshold_for(path, 0.5)
    kernels = np.concatenate(
        [np.abs(read_weights(path)[k]).ravel() for k in ("conv/kernel", "fc/kernel", "head/kernel")]
    )
    assert threshold == pytest.approx(float(np.quantile(kernels, 0.5)))
    assert nbytes == sum(a.nbytes for a in read_weights(path).values())
    rows = bench.compression_table(path, threshold)
    assert [r["level"] for r in rows] == [0, 1, 2, 3, 4, 6, 9]


@pytest.mark.parametrize(
    "name",
    [
        "structural",
        "finetune_accuracy",
        "global_scores",
        "layernorm",
        "applications_table",
        "agreement_cost",
        "data_checks",
        "guard",
        "report_names",
    ],
)
def test_benchmark_scripts_import(name):
    module = _load(name)
    assert callable(module.main)


def test_latency_helpers_time_both_models_and_every_layer():
    from conftest import build_functional, sample_inputs

    bench = _load("latency")
    model = build_functional()
    original, pruned, plan = bench.prune(model, 0.5, 1, fold=True)
    assert [layer.name for layer in pruned.layers] == [layer.name for layer in original.layers]
    assert pruned.get_layer("conv").get_config()["filters"] == 2
    batch = sample_inputs(model, n=2)
    result = bench.speedup(original, pruned, batch, plan.totals()["flops"]["ratio"], repeats=2)
    for stat in ("min", "median"):
        r = result[stat]
        assert r["speedup"] == pytest.approx(r["before_ms"] / r["after_ms"])
        assert r["per_flops"] == pytest.approx(r["speedup"] / plan.totals()["flops"]["ratio"])
    rows = bench.layer_times(original, pruned, batch, repeats=1)
    assert [r["layer"] for r in rows] == [layer.name for layer in original.layers[1:]]
    assert all(r["before"] > 0 and r["after"] > 0 for r in rows)


def test_prune_time_ratios_divide_fastest_and_median_rounds():
    bench = _load("prune_time")
    spent = {"prunectl prune": [3.0, 9.0, 6.0], "keras load+save": [2.0, 4.0, 5.0]}
    assert bench.ratios(spent, "prunectl prune", "keras load+save") == {"min": 1.5, "median": 1.5}


@pytest.mark.slow
def test_prune_time_commands_write_the_plan_sliced_weights(models, tmp_path):
    """Both timed commands run; the CLI's pruned weights are the original's with the planned units removed."""
    import keras

    from prunectl.core.structure.plan import NeuronPruning, plan_structure

    bench = _load("prune_time")
    source = models / "functional.keras"
    spent = bench.time_processes(bench.commands(source, tmp_path, ("--neuron-ratio", "0.5")), repeats=1)
    assert all(len(seconds) == 1 for seconds in spent.values())
    before, after = read_weights(source), read_weights(tmp_path / "pruned.keras")
    assert {k: v.tobytes() for k, v in read_weights(tmp_path / "bare.keras").items()} == {
        k: v.tobytes() for k, v in before.items()
    }
    plan = plan_structure(keras.models.load_model(source, compile=False), NeuronPruning(ratio=0.5))
    kept = {g.producers[0]: np.setdiff1d(np.arange(g.units_before), g.dropped) for g in plan.groups if not g.frozen}
    assert len(kept["conv"]) == 2 and len(kept["fc"]) == 4
    # Sliced here with numpy, not by apply_plan: bit-identical values, only the planned units gone.
    np.testing.assert_array_equal(after["conv/0"], before["conv/0"][..., kept["conv"]])
    np.testing.assert_array_equal(after["conv/1"], before["conv/1"][kept["conv"]])
    for index in range(4):
        np.testing.assert_array_equal(after[f"bn/{index}"], before[f"bn/{index}"][kept["conv"]])
    rows = np.arange(before["fc/0"].shape[0]).reshape(-1, 4)[:, kept["conv"]].ravel()
    np.testing.assert_array_equal(after["fc/0"], before["fc/0"][rows][:, kept["fc"]])
    np.testing.assert_array_equal(after["fc/1"], before["fc/1"][kept["fc"]])
    np.testing.assert_array_equal(after["head/0"], before["head/0"][kept["fc"]])
    np.testing.assert_array_equal(after["head/1"], before["head/1"])
