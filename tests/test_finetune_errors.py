"""Bad fine-tuning input fails with one ``Error:`` line, before any training, and writes nothing."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
from conftest import invoke
from test_cli_errors import fails


@pytest.fixture
def folder(samples):
    with np.load(samples / "digits_train.npz") as train:
        np.savez(samples / "train.npz", x=train["x"][:32], y=train["y"][:32])
    return samples


def prune(folder, *extra):
    return ["prune", folder / "digits_mlp.h5", "--sparsity", "0.5", *extra]


def tune(folder, *extra):
    return prune(folder, "--finetune-epochs", "1", "--data", folder / "train.npz", *extra)


@pytest.mark.parametrize(
    "extra, line",
    [
        (
            ["--finetune-epochs", "1"],
            "Error: --finetune-epochs needs --data. Received: --finetune-epochs 1 without --data",
        ),
        (["--l1", "0.1"], "Error: --l1 needs --finetune-epochs. Received: --l1 without --finetune-epochs"),
        (
            ["--schedule", "polynomial"],
            "Error: --schedule needs --finetune-epochs. Received: --schedule without --finetune-epochs",
        ),
    ],
)
def test_options_that_need_fine_tuning(folder, extra, line):
    fails(folder, *prune(folder, *extra), code=2, line=line)


def test_gradual_schedule_needs_sparsity(folder):
    args = [
        "prune",
        folder / "digits_mlp.h5",
        "--threshold",
        "0.1",
        "--finetune-epochs",
        "1",
        "--data",
        folder / "train.npz",
        "--schedule",
        "polynomial",
    ]
    fails(
        folder,
        *args,
        code=2,
        line="Error: --schedule polynomial prunes to a sparsity; give --sparsity. "
        "Received: --schedule polynomial with --threshold",
    )


def test_val_data_and_val_split_conflict(folder):
    fails(
        folder,
        *tune(folder, "--val-data", folder / "train.npz", "--val-split", "0.2"),
        code=2,
        contains=["give only one of --val-data and --val-split"],
    )


def test_csv_takes_no_array_keys(folder):
    (folder / "d.csv").write_text("1,2\n")
    args = prune(folder, "--finetune-epochs", "1", "--data", folder / "d.csv", "--x-key", "a")
    fails(folder, *args, code=2, contains=["a .csv takes --label-col"])


def test_shape_mismatch_names_both_shapes(folder):
    fails(
        folder,
        *prune(folder, "--finetune-epochs", "1", "--data", folder / "regression_train.npz"),
        code=1,
        line="Error: training data x shape (800, 8) does not fit the model input (None, 8, 8, 1). "
        "Received: x shape (800, 8)",
    )


def test_validation_data_is_checked_too(folder):
    fails(
        folder,
        *tune(folder, "--val-data", folder / "regression_test.npz"),
        code=1,
        contains=["validation data x shape (200, 8) does not fit the model input (None, 8, 8, 1)"],
    )


def test_missing_data_file(folder):
    path = folder / "nope.npz"
    fails(
        folder,
        *prune(folder, "--finetune-epochs", "1", "--data", path),
        code=1,
        line=f"Error: data file not found. Received: {str(path)!r}",
    )


def test_undeterminable_loss_names_the_option(tmp_path):
    import keras

    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="out")]).save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=np.ones((8, 4), "float32"), y=np.ones((8, 2), "float32"))
    fails(
        tmp_path,
        "prune",
        tmp_path / "m.keras",
        "--sparsity",
        "0.5",
        "--finetune-epochs",
        "1",
        "--data",
        tmp_path / "d.npz",
        code=2,  # a missing option: a usage error
        contains=["cannot tell which loss to fine-tune with", "pass --loss (and --metrics)"],
    )


@pytest.mark.parametrize(
    "option, value", [("--loss", "no_such_loss"), ("--metrics", "nope"), ("--optimizer", "nadamw")]
)
def test_unknown_keras_names(folder, option, value):
    fails(
        folder,
        *tune(folder, option, value),
        code=2,
        line=f"Error: unknown Keras {option[2:]} name. Received: {option} {value}",
    )


def test_plots_without_matplotlib_names_the_extra(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    fails(
        folder,
        *tune(folder, "--plots", folder / "figures"),
        code=1,
        line="Error: --plots needs matplotlib: pip install 'prunectl[plots]'. Received: matplotlib not installed",
    )


def _without_tensorflow(monkeypatch) -> None:
    """Make importing TensorFlow or Keras fail, so that a refusal must come before either is imported."""
    for name in ("tensorflow", "keras"):
        monkeypatch.setitem(sys.modules, name, None)


TWO_WORKERS = '{"cluster": {"worker": ["localhost:1", "localhost:2"]}, "task": {"type": "worker", "index": 0}}'


def test_multiworker_needs_tf_config(folder, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    _without_tensorflow(monkeypatch)
    fails(
        folder,
        *tune(folder, "--strategy", "multiworker"),
        code=2,
        line="Error: --strategy multiworker needs TF_CONFIG naming a cluster of workers and this task; "
        "see the README. Received: TF_CONFIG=''",
    )


@pytest.mark.parametrize("strategy", ["default", "mirrored"])
def test_a_cluster_under_another_strategy_is_refused_before_tensorflow_is_imported(folder, monkeypatch, strategy):
    """Two processes that each train a model of their own is never what a TF_CONFIG of two workers meant."""
    monkeypatch.setenv("TF_CONFIG", TWO_WORKERS)
    _without_tensorflow(monkeypatch)
    fails(
        folder,
        *tune(folder, "--strategy", strategy),
        code=2,
        line=f"Error: TF_CONFIG lists 2 workers, but --strategy is {strategy}: each process would train a model "
        "of its own. Give --strategy multiworker to train together, or unset TF_CONFIG. "
        f"Received: TF_CONFIG with 2 workers and --strategy {strategy}",
    )


@pytest.mark.parametrize(
    "task, shown",
    [
        (None, "no task"),
        ('{"type": "worker", "index": 2}', '{"type": "worker", "index": 2}'),
        ('{"type": "chief", "index": 0}', '{"type": "chief", "index": 0}'),
        ('{"type": "worker", "index": "0"}', '{"type": "worker", "index": "0"}'),
    ],
)
def test_multiworker_task_must_name_this_process(folder, monkeypatch, task, shown):
    config = '{"cluster": {"worker": ["localhost:1", "localhost:2"]}' + (f', "task": {task}' if task else "") + "}"
    monkeypatch.setenv("TF_CONFIG", config)
    _without_tensorflow(monkeypatch)
    fails(
        folder,
        *tune(folder, "--strategy", "multiworker"),
        code=2,
        line='Error: TF_CONFIG\'s "task" must name this process in the cluster, e.g. {"type": "worker", "index": 0}. '
        f"Received: {shown} for a cluster with 2 'worker' tasks",
    )


def test_chief_and_task_names():
    from prunectl.core.training.distribute import is_chief, task_name

    def env(task, chief=False):
        cluster = {"worker": ["a:1", "b:2"], **({"chief": ["c:3"]} if chief else {})}
        return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}

    assert is_chief({}) and task_name({}) == "the only worker"
    assert is_chief(env({"type": "worker", "index": 0})) and not is_chief(env({"type": "worker", "index": 1}))
    assert task_name(env({"type": "worker", "index": 1})) == "worker 1 of 2"
    assert not is_chief(env({"type": "worker", "index": 0}, chief=True))
    assert is_chief(env({"type": "chief", "index": 0}, chief=True))
    assert task_name(env({"type": "chief", "index": 0}, chief=True)) == "the chief of 3"


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"cluster": ', "Error: TF_CONFIG is not valid JSON (Expecting value: line 1 column 13 (char 12)). "),
        (
            '["worker"]',
            'Error: TF_CONFIG must be an object {"cluster": {"worker": ["host:port", ...]}, "task": {...}}. ',
        ),
    ],
)
def test_malformed_tf_config_is_one_line(folder, monkeypatch, text, message):
    monkeypatch.setenv("TF_CONFIG", text)
    _without_tensorflow(monkeypatch)
    fails(folder, *tune(folder), code=2, line=f"{message}Received: TF_CONFIG={text!r}")


def test_tf_config_is_read_only_when_fine_tuning(folder, monkeypatch):
    """A cluster of one worker is what multiworker runs; a prune without fine-tuning never reads TF_CONFIG."""
    from prunectl.core.training.distribute import check_cluster

    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}')
    check_cluster("multiworker")  # no error
    monkeypatch.setenv("TF_CONFIG", TWO_WORKERS)
    result = invoke(*prune(folder, "-o", folder / "out.h5", "-q"))
    assert result.exit_code == 0, result.output
    assert (folder / "out.h5").is_file()
