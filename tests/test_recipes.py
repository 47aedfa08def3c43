"""Recipe files: parsing, per-layer overrides, command-line precedence, errors with lines, round trips."""

from __future__ import annotations

import json

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, invoke, run
from independent import read_weights

from prunectl.cli.main import cli
from prunectl.core.weights import masks

EXAMPLES = REPO / "examples" / "recipes"


def write(folder: Path, text: str, name: str = "r.toml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def kernels(path: Path) -> dict[str, np.ndarray]:
    return {k: v for k, v in read_weights(path).items() if k.endswith(("kernel", "/0")) and "bias" not in k}


def test_weight_step_with_layer_override(models):
    recipe = write(models, '[[step]]\nsparsity = 0.8\n[step.layers."^conv$"]\nsparsity = 0.25\n')
    report = json.loads(run("prune", models / "functional.h5", "--recipe", recipe, "--json", "-q").stdout)
    weights = read_weights(models / "functional.pruned.h5")
    conv = next(v for k, v in weights.items() if k.endswith("conv/kernel"))
    fc = next(v for k, v in weights.items() if k.endswith("fc/kernel"))
    assert int(np.count_nonzero(conv == 0)) == masks.zeros_for(0.25, conv.size)
    assert int(np.count_nonzero(fc == 0)) == masks.zeros_for(0.8, fc.size)
    assert report["engine"] == "file"
    assert report["pipeline"]["steps"] == [
        {
            "threshold": None,
            "sparsity": 0.8,
            "scope": "layer",
            "include": [],
            "exclude": [],
            "weight-criterion": "magnitude",
            "pattern": None,
            "block": None,
            "layers": {"^conv$": {"sparsity": 0.25}},
        }
    ]
    assert report["pipeline"]["recipe"] == str(recipe)


def test_global_scope_override_keeps_layer_out_of_the_cut(models):
    recipe = write(models, '[[step]]\nsparsity = 0.7\nscope = "global"\n[step.layers."^head$"]\nthreshold = 0.0\n')
    run("prune", models / "functional.keras", "--recipe", recipe, "-q")
    before, after = read_weights(models / "functional.keras"), read_weights(models / "functional.pruned.keras")
    np.testing.assert_array_equal(after["head/0"], before["head/0"])
    rest = [after[k] for k in ("conv/0", "fc/0")]
    total = sum(w.size for w in rest)
    assert sum(int(np.count_nonzero(w == 0)) for w in rest) == masks.zeros_for(0.7, total)


def test_command_line_overrides_the_recipe(models):
    recipe = write(models, 'compression = "none"\n[[step]]\nsparsity = 0.8\nexclude = "^head$"\n')
    report = json.loads(
        run(
            "prune",
            models / "functional.h5",
            "--recipe",
            recipe,
            "--sparsity",
            "0.3",
            "--compression",
            "strong",
            "--json",
            "-q",
        ).stdout
    )
    assert report["options"]["sparsity"] == 0.3 and report["options"]["compression"] == "strong"
    assert report["options"]["exclude"] == ["^head$"]  # untouched recipe values stay
    rows = {r["layer"]: r for r in report["layers"]}
    assert rows["conv"]["zeros"] == masks.zeros_for(0.3, rows["conv"]["count"])
    assert rows["head"]["zeros"] == 0


@pytest.mark.slow
def test_structural_weight_and_finetune_steps_as_in_the_issue(models):
    rng = np.random.default_rng(0)
    np.savez(
        models / "train.npz",
        x=rng.standard_normal((32, 6, 6, 2)).astype("float32"),
        y=rng.standard_normal((32, 3)).astype("float32"),
    )
    recipe = write(
        models,
        """
[[step]]                      # structural step
neuron-criterion = "l1"
neuron-ratio = 0.25
exclude = "^head$"

[[step]]                      # weight step, with a per-layer override
sparsity = 0.8
[step.layers."^conv$"]
sparsity = 0.5

[finetune]
epochs = 1
data = "train.npz"            # relative paths resolve against the recipe's folder
schedule = "polynomial"
""",
    )
    report = json.loads(run("prune", models / "functional.keras", "--recipe", recipe, "--json", "-q").stdout)
    assert report["engine"] == "keras"
    assert report["structural"]["totals"]["units"]["after"] < report["structural"]["totals"]["units"]["before"]
    rows = {r["layer"]: r for r in report["layers"]}
    assert rows["conv"]["sparsity"] == pytest.approx(
        masks.zeros_for(0.5, rows["conv"]["count"]) / rows["conv"]["count"]
    )
    assert rows["fc"]["sparsity"] >= 0.8
    assert report["finetune"]["schedule"]["name"] == "polynomial"
    assert report["finetune"]["data"]["train"] == str(models / "train.npz")


def test_round_trip_repeats_the_run_exactly(models):
    recipe = write(models, '[[step]]\nsparsity = 0.6\nscope = "global"\n[step.layers."^out$"]\nsparsity = 0.9\n')
    run(
        "prune",
        models / "zoo.keras",
        "--recipe",
        recipe,
        "-o",
        models / "a.keras",
        "--recipe-out",
        models / "sub.toml",
        "-q",
    )
    written = tomllib.loads((models / "sub.toml").read_text())
    assert written["step"][0]["sparsity"] == 0.6 and written["step"][0]["scope"] == "global"
    run("prune", models / "zoo.keras", "--recipe", models / "sub.toml", "-o", models / "b.keras", "-q")
    a, b = read_weights(models / "a.keras"), read_weights(models / "b.keras")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_recipe_out_records_command_line_options(models, tmp_path):
    run(
        "prune",
        models / "sequential.h5",
        "--threshold",
        "0.2",
        "--exclude",
        "^d2$",
        "--compression",
        "strong",
        "--min-sparsity",
        "0.1",
        "--recipe-out",
        tmp_path / "r.toml",
        "-q",
    )
    written = tomllib.loads((tmp_path / "r.toml").read_text())
    assert written["step"] == [
        {"threshold": 0.2, "scope": "layer", "exclude": ["^d2$"], "weight-criterion": "magnitude"}
    ]
    assert written["compression"] == "strong" and written["min-sparsity"] == 0.1


@pytest.mark.parametrize(
    "text,line",
    [
        (
            "[[step]]\nsparsity = 0.5\nsparsty = 0.2\n",
            "Error: recipe {path} line 3, step 1: unknown key 'sparsty' (known: block, calibration-samples, exclude, "
            "include, iterations, kind, pattern, scope, sparsity, threshold, weight-criterion). "
            "Received: sparsty = 0.2",
        ),
        (
            "[[step]]\nsparsity = 1.5\n",
            "Error: recipe {path} line 2, step 1: sparsity must be a finite number in [0, 1). Received: sparsity=1.5",
        ),
        (
            '[[step]]\nsparsity = 0.5\n[step.layers."^d1$"]\nsparsity = -1\n',
            "Error: recipe {path} line 4, step 1, layers '^d1$': sparsity must be a finite number in [0, 1). "
            "Received: sparsity=-1.0",
        ),
        (
            '[[step]]\nscope = "global"\n',
            "Error: recipe {path} line 1, step 1: a step needs neuron-threshold/neuron-ratio, threshold/sparsity or "
            "pattern. Received: scope",
        ),
        (
            "[[step]]\nsparsity = 0.5\n[tuning]\nepochs = 3\n",
            'Error: recipe {path} line 3: unknown table [tuning] (known: [[step]], [step.layers."<regex>"], '
            "[finetune]). Received: [tuning]",
        ),
        ("[finetune]\nepochs = 1\nlearning_rate = 0.1\n", None),
        ('compresion = "fast"\n[[step]]\nsparsity = 0.5\n', None),
        ('[[step]]\nsparsity = 0.5\n[step.layers."("]\nsparsity = 0.1\n', None),
        ("[[step]\nsparsity = 0.5\n", None),
    ],
)
def test_recipe_errors_name_line_step_and_key(models, text, line):
    path = write(models, text)
    before = sorted(p.name for p in models.iterdir())
    result = invoke("prune", models / "sequential.h5", "--recipe", path)
    assert result.exit_code == 2, result.output
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith(f"Error: recipe {path}"), errors
    if line is not None:
        assert errors[0] == line.format(path=path)
    assert sorted(p.name for p in models.iterdir()) == before  # nothing written


def test_missing_recipe_file(models):
    result = invoke("prune", models / "sequential.h5", "--recipe", models / "nope.toml")
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: recipe file not found. Received: '{models / 'nope.toml'}'"


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(p.name, marks=pytest.mark.slow) if "[finetune]" in p.read_text() else p.name
        for p in sorted(EXAMPLES.glob("*.toml"))
    ],
)  # fine-tuning recipes are slow
def test_shipped_example_recipes_run(samples, tmp_path, name):
    # Copy the recipe so that its relative paths point at the private sample copies.
    folder = tmp_path / "examples" / "recipes"
    folder.mkdir(parents=True)
    recipe = folder / name
    text = (EXAMPLES / name).read_text().replace("../../sample_models/", f"{samples}/")
    recipe.write_text(text)
    model = samples / ("digits_cnn.keras" if "cnn" in name else "digits_mlp.h5")
    args = ["prune", model, "--recipe", recipe, "-o", tmp_path / f"out{model.suffix}", "--json", "-q"]
    if "[finetune]" in text:
        args += ["--finetune-epochs", "1"]  # the command line wins; keeps the test short
    report = json.loads(run(*args).stdout)
    assert report["pipeline"]["steps"] and all(g["passed"] for g in report.get("gates", []))
    tomllib.loads(text)


def test_recipe_step_keys_are_prune_option_names():
    from prunectl.cli.recipe import recipe_options
    from prunectl.core.run.recipe import LAYER_KEYS, STRUCTURAL_KEYS, WEIGHT_KEYS

    options = recipe_options(cli.commands["prune"])
    assert set(STRUCTURAL_KEYS + WEIGHT_KEYS + LAYER_KEYS) <= set(options)
