"""Errors name what the user typed and say what to do (issue #12, part E).

A bad value names the flag as typed (``--min-keep``, never ``min_keep``), the
``PRUNECTL_*`` variable it came from, or the recipe key and file; an override that
matches nothing lists the layers; data without targets names the flag that
names them. Every case is one ``Error:`` line that leaves the folder untouched
(``fails`` from test_cli_errors checks that).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_cli_errors import fails

from prunectl.core.errors import OptionError
from prunectl.core.options import check_number
from prunectl.core.weights.selection import shown_layers

THRESHOLD = ("--threshold", "0.1")


# --- one rule, one message shape ------------------------------------------------------------


@pytest.mark.parametrize(
    "args, line",
    [
        (
            ["--neuron-ratio", "0.5", "--min-keep=1.5"],
            "Error: Invalid value for '--min-keep': --min-keep must be a finite number in [0, 1). "
            "Received: --min-keep=1.5",
        ),
        (
            ["--neuron-ratio", "inf"],
            "Error: Invalid value for '--neuron-ratio': --neuron-ratio must be a finite number in (0, 1). "
            "Received: --neuron-ratio=inf",
        ),
        (
            ["--neuron-ratio", "0.5", "--round-to", "0"],
            "Error: Invalid value for '--round-to': --round-to must be an integer >= 1. Received: --round-to=0",
        ),
        (
            [*THRESHOLD, "--finetune-epochs", "-1"],
            "Error: Invalid value for '--finetune-epochs': --finetune-epochs must be an integer >= 0. "
            "Received: --finetune-epochs=-1",
        ),
        (
            [*THRESHOLD, "--batch-size", "0"],
            "Error: Invalid value for '--batch-size': --batch-size must be an integer >= 1. Received: --batch-size=0",
        ),
        (
            [*THRESHOLD, "--min-sparsity", "nan"],
            "Error: --min-sparsity must be a finite number in [0, 1]. Received: --min-sparsity=nan",
        ),
    ],
    ids=["min-keep", "neuron-ratio-inf", "round-to", "finetune-epochs", "batch-size", "gate-nan"],
)
def test_number_errors_name_the_flag_as_typed(models, args, line):
    fails(models, "prune", models / "sequential.h5", *args, code=2, line=line)


@pytest.mark.parametrize(
    "value, bounds, message",
    [
        (float("nan"), {"low": 0}, "x must be a finite number >= 0. Received: x=nan"),
        (1, {"low": 0, "high": 1, "high_open": True}, "x must be a finite number in [0, 1). Received: x=1"),
        (2**32, {"low": 0, "high": 2**32 - 1, "integer": True}, "x must be an integer in [0, 4294967295]."),
        (1.5, {"low": 1, "integer": True}, "x must be an integer >= 1. Received: x=1.5"),
        (True, {"low": 0}, "x must be a finite number >= 0. Received: x=True"),
        ("abc", {}, "x must be a finite number. Received: x=abc"),
    ],
)
def test_check_number_refuses(value, bounds, message):
    with pytest.raises(OptionError) as caught:
        check_number(value, "x", **bounds)
    assert str(caught.value).startswith(message)
    assert caught.value.fields == ("x",)


def test_check_number_returns_integers_for_integer_options():
    assert check_number(8, "round_to", 1, integer=True) == 8
    assert isinstance(check_number(8.0, "round_to", 1, integer=True), int)


def test_no_hand_written_range_checks_are_left():
    """Every number option goes through check_number: the older helpers are gone."""
    import prunectl.core.options as options
    import prunectl.core.weights.schedules as schedules

    assert not hasattr(options, "_fraction") and not hasattr(options, "_finite_non_negative")
    assert not hasattr(schedules, "_check_fraction")


# --- environment variables ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "variable, value, line",
    [
        (
            "PRUNECTL_PRUNE_SPARSITY",
            "1.5",
            "Error: Invalid value for PRUNECTL_PRUNE_SPARSITY (--sparsity): --sparsity must be a finite number "
            "in [0, 1). Received: '1.5'",
        ),
        (
            "PRUNECTL_PRUNE_SPARSITY",
            "abc",
            "Error: Invalid value for PRUNECTL_PRUNE_SPARSITY (--sparsity): 'abc' is not a valid float. "
            "Received: 'abc'",
        ),
        (
            "PRUNECTL_PRUNE_SCOPE",
            "row",
            "Error: Invalid value for PRUNECTL_PRUNE_SCOPE (--scope): 'row' is not one of 'layer', 'global'. "
            "Received: 'row'",
        ),
        (
            "PRUNECTL_PRUNE_REPORT_PATH",
            "",
            None,  # an empty variable is unset: no error from it
        ),
    ],
    ids=["option-error", "click-type-error", "click-choice-error", "empty-is-unset"],
)
def test_a_bad_environment_value_names_the_variable(models, monkeypatch, variable, value, line):
    monkeypatch.setenv(variable, value)
    if line is None:
        fails(models, "prune", models / "sequential.h5", "--sparsity", "2", code=2, contains=["'--sparsity'"])
    else:
        fails(models, "prune", models / "sequential.h5", code=2, line=line)


def test_a_later_check_names_the_variable_too(models, monkeypatch):
    monkeypatch.setenv("PRUNECTL_PRUNE_SPARSITY", "0.5")
    fails(
        models,
        "prune",
        models / "sequential.h5",
        *THRESHOLD,
        code=2,
        line="Error: give only one of --threshold and PRUNECTL_PRUNE_SPARSITY. "
        "Received: --threshold 0.1 PRUNECTL_PRUNE_SPARSITY 0.5",
    )


def test_report_command_variables_are_named(models, monkeypatch):
    monkeypatch.setenv("PRUNECTL_REPORT_MIN_SPARSITY", "2")
    shown = fails(models, "report", models / "sequential.h5", code=2)
    assert "PRUNECTL_REPORT_MIN_SPARSITY" in shown, shown


# --- recipes -------------------------------------------------------------------------------------


def write(folder, text: str):
    path = folder / "r.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[step]]\nneuron-ratio = 1.5\n", "line 2, step 1: neuron-ratio must be a finite number in (0, 1). "),
        ("[[step]]\nneuron-ratio = 0.5\nround-to = 0\n", "line 3, step 1: round-to must be an integer >= 1. "),
        (
            '[[step]]\nsparsity = 0.5\nscope = "row"\n',
            "line 3, step 1: scope must be one of layer, global. Received: scope = 'row'",
        ),
        (
            '[[step]]\nneuron-ratio = 0.5\nneuron-criterion = "l3"\n',
            "line 3, step 1: neuron-criterion must be one of activation, apoz, l1, l2. "
            "Received: neuron-criterion = 'l3'",
        ),
        (
            'compression = "max"\n[[step]]\nsparsity = 0.5\n',
            "line 1, top level: compression must be one of none, fast, balanced, strong. Received: compression = 'max'",
        ),
        (
            '[finetune]\nepochs = 1\ndata = "d.npz"\nschedule = "cubic"\n[[step]]\nsparsity = 0.5\n',
            "line 4, [finetune]: schedule must be one of oneshot, polynomial. Received: schedule = 'cubic'",
        ),
    ],
    ids=["number", "integer", "scope", "criterion", "compression", "schedule"],
)
def test_recipe_errors_name_the_key_not_the_flag(models, text, message):
    path = write(models, text)
    shown = fails(models, "prune", models / "sequential.h5", "--recipe", path, code=2)
    assert shown.startswith(f"Error: recipe {path} {message}"), shown
    assert "--" not in shown.split(": ", 2)[2], f"a recipe error names the key, not a flag: {shown}"


@pytest.mark.parametrize("name", ["sequential.h5", "functional.keras"])
def test_an_override_that_matches_nothing_lists_the_layers(models, name):
    path = write(models, '[[step]]\nsparsity = 0.5\n[step.layers."^nomatch$"]\nsparsity = 0.1\n')
    layers = {"sequential": "d1, d2", "functional": "conv, fc, head; other layers: bn"}[name.split(".")[0]]
    fails(
        models,
        "prune",
        models / name,
        "--recipe",
        path,
        code=1,
        line=f"Error: layer override pattern matches no selected prunable layer (selected prunable layers: "
        f"{layers}). Received: '^nomatch$'",
    )


def test_an_override_outside_the_selection_lists_the_other_layers(models):
    path = write(models, '[[step]]\nsparsity = 0.5\nexclude = "^d2$"\n[step.layers."^d2$"]\nsparsity = 0.1\n')
    fails(
        models,
        "prune",
        models / "sequential.h5",
        "--recipe",
        path,
        code=1,
        line="Error: layer override pattern matches no selected prunable layer (selected prunable layers: d1; "
        "other layers: d2). Received: '^d2$'",
    )


def test_long_layer_lists_are_cut_with_a_count():
    names = [f"block{i}" for i in range(53)]
    assert shown_layers(names) == ", ".join(names[:20]) + " and 33 more"
    assert shown_layers(names[:20]) == ", ".join(names[:20])
    assert shown_layers([]) == "none"


# --- data without targets ----------------------------------------------------------------------


def _csv(path, header: bool):
    rows = np.arange(3 * 65).reshape(3, 65) % 10
    lines = ([",".join([*(f"px{i}" for i in range(64)), "digit"])] if header else []) + [
        ",".join(map(str, row)) for row in rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    "name, advice",
    [
        (
            "header.csv",
            "name the target column with --label-col NAME (65 columns: px0, px1, px2, px3, px4, ..., px62, px63, "
            "digit)",
        ),
        ("plain.csv", "give the target column's 0-based index, e.g. --label-col 64 for the last (no header)"),
        ("labels.npz", "it holds no array 'y'; name the targets' array with --y-key NAME (arrays: digit)"),
        ("inputs.npz", "it holds no array 'y' and no other array than the inputs"),
        ("labels.h5", "it holds no dataset 'y'; name the targets' dataset with --y-key NAME (datasets: digit)"),
    ],
)
def test_data_without_targets_says_how_to_name_them(samples, name, advice):
    import h5py

    path = samples / name
    x = np.zeros((3, 64), "float32")
    if name == "header.csv":
        _csv(path, header=True)
    elif name == "plain.csv":
        _csv(path, header=False)
    elif name == "labels.npz":
        np.savez(path, x=x, digit=np.zeros(3, "int64"))
    elif name == "inputs.npz":
        np.savez(path, x=x)
    else:
        with h5py.File(path, "w") as f:
            f["x"], f["digit"] = x, np.zeros(3, "int64")
    shape = "(3, 65)" if name.endswith(".csv") else "(3, 64)"
    fails(
        samples,
        "prune",
        samples / "digits_mlp.h5",
        "--sparsity",
        "0.5",
        "--finetune-epochs",
        "1",
        "--data",
        path,
        code=1,
        line=f"Error: training data has no targets (y) to train or evaluate on; {advice}. Received: x shape {shape}",
    )


def test_a_later_check_names_the_recipe_key_and_line(models):
    path = write(models, '[[step]]\nsparsity = 0.5\n\n[finetune]\nepochs = 1\nschedule = "polynomial"\n')
    fails(
        models,
        "prune",
        models / "sequential.h5",
        "--recipe",
        path,
        code=2,
        line=f"Error: finetune-epochs ({path}:5) needs --data. Received: finetune-epochs ({path}:5) 1 without --data",
    )


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_data_without_inputs_says_how_to_name_them(samples, suffix):
    import h5py

    path = samples / f"features{suffix}"
    kind = "array" if suffix == ".npz" else "dataset"
    if suffix == ".npz":
        np.savez(path, features=np.zeros((3, 64)), y=np.zeros(3))
    else:
        with h5py.File(path, "w") as f:
            f["features"], f["y"] = np.zeros((3, 64)), np.zeros(3)
    fails(
        samples,
        "prune",
        samples / "digits_mlp.h5",
        "--sparsity",
        "0.5",
        "--finetune-epochs",
        "1",
        "--data",
        path,
        code=1,
        line=f"Error: data file has no {kind} 'x'; name the inputs' {kind} with --x-key NAME "
        f"({kind}s: features, y). Received: {str(path)!r}",
    )
