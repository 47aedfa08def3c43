"""Every step and options class round-trips through its config; a request's rules name their fields."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from prunectl.cli.main import cli
from prunectl.core.errors import OptionError
from prunectl.core.run.sensitivity import SensitivityOptions
from prunectl.core.structure.plan import NeuronPruning
from prunectl.core.training.evaluate import EvalOptions
from prunectl.core.training.finetune import FinetuneOptions
from prunectl.core.weights.prune import WeightPruning

STEPS = [
    WeightPruning(sparsity=0.5, scope="global", include=("d",), exclude=("^out$",), layers=(("^d1$", None, 0.9),)),
    WeightPruning(threshold=0.01, layers=(("^d2$", 0.2, None),)),
    NeuronPruning("l2", ratio=0.25, scope="global", round_to=8, exclude=("head",)),
    NeuronPruning(threshold=0.1),
    FinetuneOptions(
        Path("train.npz"),
        epochs=3,
        val_split=0.1,
        reader=(("x_key", "images"),),
        metrics=("accuracy",),
        schedule="polynomial",
        learning_rate=1e-3,
        seed=4,
    ),
    EvalOptions(Path("val.csv"), reader=(("label_col", "y"),), batch_size=8, loss="mse", need_accuracy=True),
    SensitivityOptions(EvalOptions(Path("val.npz")), sparsities=(0.5, 0.9), include=("d",), budget=0.01),
]


@pytest.mark.parametrize("step", STEPS, ids=lambda s: type(s).__name__)
def test_config_round_trip(step):
    assert type(step).from_config(step.get_config()) == step


def test_option_error_names_fields_for_the_library_and_the_cli():
    with pytest.raises(OptionError) as caught:
        FinetuneOptions(Path("t.npz"), val_data=Path("v.npz"), val_split=0.2)
    assert caught.value.fields == ("val_data", "val_split")
    assert str(caught.value) == "give only one of val_data and val_split. Received: val_data v.npz val_split 0.2"
    assert caught.value.render(lambda f: "--" + f.replace("_", "-")).startswith("give only one of --val-data and")


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_recipe_value_of_the_wrong_type_names_file_line_and_key(tmp_path, models):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[step]]\nsparsity = "0.5"\n')
    result = _invoke("prune", models / "sequential.h5", "--recipe", recipe, "-o", tmp_path / "o.h5")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"Error: recipe {recipe} line 2, step 1: sparsity must be a number. Received: sparsity = '0.5'"
    )
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.report.json").exists()


def test_recipe_builds_typed_steps(tmp_path):
    from prunectl.core.run.recipe import load_recipe

    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[[step]]\nneuron-ratio = 0.5\nround-to = 4\n[[step]]\nsparsity = 0.5\n[step.layers."^d1$"]\nthreshold = 1\n'
    )
    loaded = load_recipe(recipe, set(), set())
    assert loaded.structural_step() == NeuronPruning(ratio=0.5, round_to=4)
    assert loaded.weight_step() == WeightPruning(sparsity=0.5, layers=(("^d1$", 1.0, None),))


def test_recipe_out_in_a_missing_folder_fails_before_any_work(tmp_path, models):
    out, bad = tmp_path / "o.h5", tmp_path / "nodir" / "r.toml"
    result = _invoke("prune", models / "sequential.h5", "--sparsity", "0.5", "-o", out, "--recipe-out", bad)
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: output directory does not exist. Received: {str(bad)!r}"
    assert not out.exists() and not out.with_name("o.h5.report.json").exists()


@pytest.mark.parametrize("same", ["output", "report"])
def test_recipe_out_equal_to_another_output_fails_and_writes_nothing(tmp_path, models, same):
    out, report = tmp_path / "o.h5", tmp_path / "r.json"
    target = out if same == "output" else report
    for force in ((), ("--force",)):
        result = _invoke(
            "prune",
            models / "sequential.h5",
            "--sparsity",
            "0.5",
            "-o",
            out,
            "--report",
            report,
            "--recipe-out",
            target,
            *force,
        )
        assert result.exit_code == 1, result.output
        assert result.stderr.strip() == f"Error: recipe-out path is another output's path. Received: {str(target)!r}"
        assert not out.exists() and not report.exists()
