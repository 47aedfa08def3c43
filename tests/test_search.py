"""``prune --target``: the search meets its target within the budget, or exits 3 naming the best it reached."""

from __future__ import annotations

import json

import pytest
from conftest import invoke, run
from independent import keras_config

from prunectl.core.errors import OptionError
from prunectl.core.run.search import parse_target


def test_targets_parse_with_units():
    assert parse_target("flops=0.5").value == 0.5
    assert parse_target("size=2MB").value == 2e6
    assert parse_target("latency=5ms").value == pytest.approx(0.005)
    for bad in ("flops=1.5", "speed=2", "size=2parsecs", "params"):
        with pytest.raises(OptionError, match="Received"):
            parse_target(bad)


@pytest.mark.slow
def test_flops_target_is_met_within_the_budget_and_the_recipe_repeats_it(samples, tmp_path):
    out, recipe = tmp_path / "t.keras", tmp_path / "t.toml"
    result = invoke(
        "prune",
        samples / "digits_cnn.keras",
        "--target",
        "flops=0.5",
        "--max-accuracy-drop",
        "0.02",
        "--data",
        samples / "digits_test.npz",
        "-o",
        out,
        "--recipe-out",
        recipe,
    )
    report = json.loads((tmp_path / "t.keras.report.json").read_text())
    search = report["search"]
    assert result.exit_code == (0 if search["met"] else 3)
    if search["met"]:
        assert search["reached"]["ratio"] <= 0.5
        assert search["reached"]["drop"] <= 0.02
    # The steps are written back as an ordered recipe whose structural step names per-layer ratios.
    text = recipe.read_text()
    assert 'kind = "neurons"' in text and "[step.layers." in text
    again = tmp_path / "again.keras"
    replay = run("prune", samples / "digits_cnn.keras", "--recipe", recipe, "-o", again)
    assert replay.exit_code == 0

    # The replayed model has the searched model's layer widths (read from the files, not the reports).
    def widths(path):
        return {
            layer["config"]["name"]: layer["config"].get("filters") or layer["config"].get("units")
            for layer in keras_config(path)["config"]["layers"]
            if layer["class_name"] in ("Conv2D", "Dense")
        }

    assert widths(again) == widths(out)


@pytest.mark.slow
def test_an_unreachable_budget_exits_3_with_the_best_model_written(samples, tmp_path):
    out = tmp_path / "t.keras"
    result = invoke(
        "prune",
        samples / "digits_cnn.keras",
        "--target",
        "flops=0.1",
        "--max-accuracy-drop",
        "0",
        "--data",
        samples / "digits_test.npz",
        "-o",
        out,
    )
    assert result.exit_code == 3
    assert "Error: target flops=0.1 not met" in result.stderr
    report = json.loads((tmp_path / "t.keras.report.json").read_text())
    assert report["search"]["met"] is False
    assert report["search"]["reached"]["drop"] <= 0
    assert out.exists()


def test_target_without_a_budget_is_one_error_line(samples, tmp_path):
    result = invoke(
        "prune",
        samples / "digits_cnn.keras",
        "--target",
        "flops=0.5",
        "--data",
        samples / "digits_test.npz",
        "-o",
        tmp_path / "t.keras",
    )
    assert result.exit_code == 2
    assert result.stderr.strip().startswith("Error: ") and "--max-accuracy-drop" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "t.keras").exists()
