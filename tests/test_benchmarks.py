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
        "peer_tfmot",
        "iterative",
        "file_size",
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


def test_iterative_recipes_spend_equal_epochs():
    from prunectl.core.run.recipe import tomllib

    bench = _load("iterative")
    one = tomllib.loads(bench.recipe("one-shot", 0.6, 6, 3, 1, {"lr-scale": None}, {"neuron-criterion": "l2"}))
    it = tomllib.loads(bench.recipe("iterative", 0.6, 6, 3, 1, {"lr-scale": None}, {"neuron-criterion": "l2"}))
    assert one["finetune"]["finetune-epochs"] == 6 and "lr-scale" not in one["finetune"]
    assert one["step"] == [{"neuron-ratio": 0.6, "neuron-criterion": "l2"}]
    # Three stages with 2 epochs after each: 2 between the stages, 1 at the end.
    assert it["finetune"]["finetune-epochs"] == 2
    assert it["step"] == [{"neuron-ratio": 0.6, "neuron-criterion": "l2", "iterations": 3}, {"kind": "finetune"}]


@pytest.mark.slow
def test_iterative_runs_both_arms_through_the_cli(monkeypatch, capsys):
    bench = _load("iterative")
    monkeypatch.setattr(
        sys, "argv", ["iterative.py", "--ratios", "0.5", "--epochs", "2", "--stages", "2", "--seeds", "0"]
    )
    bench.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[-3].startswith("| 0.5 | one-shot |") and lines[-2].startswith("| 0.5 | iterative |")
    # digits_cnn's 32/64/128 units less half of each: both arms end the same size here.
    assert lines[-1].startswith("| 0.5 | iterative - one-shot | +0 | +0 |")
    assert lines[-3].split(" | ")[2] == lines[-2].split(" | ")[2] != "varies"


def _peer_results(accuracies: dict, zeros: float = 0.5, dense: float = 98.0) -> dict:
    """Results as peer_tfmot writes them; ``accuracies``: (model, tool, variant, column) -> one accuracy per seed."""
    bench = _load("peer_tfmot")
    results = {"dense": {f"{m}/{s}": dense for m in ("mlp", "cnn", "small_mlp") for s in (0, 1)}, "cells": {}}
    for (model, tool, variant, column), values in accuracies.items():
        for seed, value in enumerate(values):
            key = bench.cell_key(model, seed, tool, variant, column)
            results["cells"][key] = {"accuracy": value, "zeros": zeros, "seed": seed, "seconds": 1.0}
    return results


def test_peer_tfmot_counts_zeros_of_the_kernels_only():
    bench = _load("peer_tfmot")
    kernel = np.array([[0.0, 1.0], [0.0, 0.0]])
    bias = np.zeros(2)
    conv = np.ones((3, 3, 1, 2))
    conv[0, 0, 0, :] = 0
    # 3 + 2 zeros over 4 + 18 kernel elements; the all-zero bias does not count.
    assert bench.zero_fraction([kernel, bias, conv, bias]) == pytest.approx(5 / 22)


def test_peer_tfmot_checks_the_nm_pattern_along_the_input_rows():
    bench = _load("peer_tfmot")
    kernel = np.ones((8, 3))
    kernel[[0, 1, 6, 7], :] = 0  # two zeros in each group of 4 rows, every column
    assert bench.nm_held([kernel, np.ones(3)], 2, 4)
    kernel[1, 2] = 5.0  # one column's first group keeps 3 of 4
    assert not bench.nm_held([kernel], 2, 4)
    # 9 rows (a 3x3 window over one channel) cannot hold 2:4: that kernel is left to the zero count.
    kernel[1, 2] = 0.0
    assert bench.nm_held([np.ones((3, 3, 1, 2)), kernel], 2, 4)


def test_peer_tfmot_variants_name_their_study():
    bench = _load("peer_tfmot")
    assert bench.parse_variant("poly=--finetune-epochs 8 --schedule polynomial") == (
        "main",
        "poly",
        "--finetune-epochs 8 --schedule polynomial",
    )
    assert bench.parse_variant("oneshot:wanda=--weight-criterion wanda") == (
        "oneshot",
        "wanda",
        "--weight-criterion wanda",
    )
    for bad in ("no-equals", "=--x", "nowhere:x=--y"):
        with pytest.raises(Exception, match="Received"):
            bench.parse_variant(bad)


def test_peer_tfmot_table_shows_mean_spread_and_a_missed_sparsity():
    bench = _load("peer_tfmot")
    study = bench.default_studies()["main"]
    study.models = ("mlp",)
    results = _peer_results({("mlp", "tfmot", "polynomial", "50%"): [97.0, 99.0]}, zeros=0.49)
    results["cells"][bench.cell_key("mlp", 0, "prunectl", "default", "80%")] = {"error": "Error: boom", "seed": 0}
    text = bench.format_study(results, study, [0, 1])
    lines = text.splitlines()
    assert "| tool | 50% | 80% | 90% | 95% | s/cell |" in lines
    assert "| TFMOT | 98.00 ±1.00 | - | - | - | 1 |" in lines
    assert "| dense | 98.00 ±0.00 | 98.00 ±0.00 | 98.00 ±0.00 | 98.00 ±0.00 | |" in lines
    assert "WARNING TFMOT 50% seed 0: true zero fraction 49.00%, target 50%" in lines
    assert "ERROR prunectl default 80% seed 0: Error: boom" in lines


def test_peer_tfmot_target_checks_pass_fail_and_skip():
    bench = _load("peer_tfmot")
    cells = {}
    for column, tfmot, ours in (("50%", 98, 98), ("80%", 97, 97.5), ("90%", 95, 96), ("95%", 90, 93)):
        cells["mlp", "tfmot", "polynomial", column] = [tfmot, tfmot]
        cells["mlp", "prunectl", "default", column] = [ours, ours]
    cells["mlp", "prunectl", "default", "95%"] = [91.0, 92.0]  # +1.5 over TFMOT: not the +2 asked for
    cells["small_mlp", "prunectl", "default", "90%"] = [96.5, 96.0]
    lines = bench.target_checks(_peer_results(cells), [0, 1])
    assert "PASS  mlp 50%: prunectl default >= TFMOT (+0.00)" in lines
    assert "PASS  mlp 95%: prunectl default >= TFMOT (+1.50)" in lines
    assert "FAIL  mlp 95%: prunectl default >= TFMOT + 2 (+1.50)" in lines
    assert "PASS  small_mlp 90%: prunectl default within 2 points of dense (-1.75)" in lines
    assert "SKIP  cnn 50%: prunectl default >= TFMOT (n/a)" in lines
    assert "SKIP  cnn 2:4 + fine-tuning within 1 point of dense (n/a)" in lines
    # A mean over fewer seeds than asked is no mean: the check waits for every seed.
    del cells["mlp", "tfmot", "polynomial", "80%"][1]
    assert "SKIP  mlp 80%: prunectl default >= TFMOT (n/a)" in bench.target_checks(_peer_results(cells), [0, 1])


def test_peer_tfmot_worker_window_ends_on_a_mask_update():
    worker = _load("peer_tfmot_worker")
    for steps in (1, 7, 344, 1000):
        end, frequency = worker.polynomial_window(steps)
        # TFMOT updates masks only where step % frequency == 0: the end step must be one of them.
        assert end % frequency == 0
        assert 0 < end <= max(1, steps // 2)
    # 8 epochs of 43 batches: the window is steps 0-168, a mask update every 8 steps (about 20 of them).
    assert worker.polynomial_window(344) == (168, 8)
