"""Fine-tuning after pruning: masks held, schedules, data readers, reports, strategies.

Runs train a few steps on a small slice of the committed digits data; every
result is read back from the saved file with h5py (tests/independent.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
from conftest import run
from independent import keras_config, kernel

from prunectl.core.weights import masks
from prunectl.core.weights.schedules import SCHEDULES, OneShot, PolynomialDecay

KERNELS = ("fc1", "fc2", "head")


def finetune(folder, out, *extra, sparsity="0.8"):
    return run(
        "prune",
        folder / "digits_mlp.h5",
        "--sparsity",
        sparsity,
        "-o",
        out,
        "--finetune-epochs",
        "2",
        "--data",
        folder / "train.npz",
        "--val-data",
        folder / "val.npz",
        "--seed",
        "7",
        *extra,
    )


# --- masks held --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [".h5", ".keras"])
def test_pruned_weights_stay_zero_after_finetuning(digits, fmt):
    run("prune", digits / "digits_mlp.h5", "--sparsity", "0.8", "-o", digits / f"pruned{fmt}")
    finetune(digits, digits / f"tuned{fmt}")
    for layer in KERNELS:
        pruned, tuned = kernel(digits / f"pruned{fmt}", layer), kernel(digits / f"tuned{fmt}", layer)
        assert np.all(tuned[pruned == 0] == 0), layer
        assert np.count_nonzero(tuned) == np.count_nonzero(pruned), layer
        assert not np.array_equal(tuned, pruned), f"{layer} was not trained"


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_masks_hold_after_every_step(optimizer):
    """Momentum pushes pruned weights off zero at each update; the constraint must put them back in that step."""
    import keras

    from prunectl.core.training.data import Dataset
    from prunectl.core.training.distribute import tf_strategy
    from prunectl.core.training.finetune import HeldMasks
    from prunectl.core.training.loop import Feeder, Loop

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8), keras.layers.Dense(1)])
    variable = model.layers[0].kernel
    values = variable.numpy()
    masks.prune_to_sparsity([values], 0.5)
    variable.assign(values)
    pruned = values == 0
    held = HeldMasks([variable])
    opt = keras.optimizers.SGD(0.1, momentum=0.9) if optimizer == "sgd_momentum" else keras.optimizers.Adam(0.1)
    model.compile(optimizer=opt, loss="mse")
    seen = []
    rng = np.random.default_rng(0)
    data = Dataset(rng.normal(size=(64, 6)).astype("float32"), rng.normal(size=(64, 1)).astype("float32"))
    strategy = tf_strategy()
    feed = Feeder(strategy, data, 8, (np.float32, np.float32), shuffle=True, seed=0)
    # The L1 penalty pulls every weight towards zero and past it: the mask must still win.
    loop = Loop(strategy, model, ([variable], 0.01))
    loop.fit(feed, 2, after_step=lambda epoch, step, logs: seen.append(np.abs(variable.numpy()[pruned]).max()))
    held.release()
    assert len(seen) == 16 and max(seen) == 0.0
    assert variable.constraint is None and variable.regularizer is None


@pytest.mark.slow
def test_saved_model_is_plain_keras(digits):
    import keras

    finetune(digits, digits / "tuned.keras", "--l1", "0.001")
    for layer in keras_config(digits / "tuned.keras")["config"]["layers"]:
        config = layer["config"]
        assert config.get("kernel_constraint") is None and config.get("kernel_regularizer") is None
    model = keras.models.load_model(digits / "tuned.keras")  # no custom objects
    assert model.loss == "sparse_categorical_crossentropy"


# --- schedules ---------------------------------------------------------------------------------


def updates(schedule, total):
    return [(t, schedule(t)) for t in range(total) if schedule(t) is not None]


@pytest.mark.parametrize("total", [1, 2, 3, 5, 7, 96, 97, 1000])
def test_polynomial_ends_exactly_at_target_for_any_step_count(total):
    schedule = PolynomialDecay.for_run(0.9, total, initial_sparsity=0.1, begin=0.0, end=0.75)
    steps = updates(schedule, total)
    assert steps[-1][1] == 0.9 and steps[-1][0] < total
    values = [s for _, s in steps]
    assert values == sorted(values)


def test_polynomial_follows_the_cubic_formula():
    schedule = PolynomialDecay(0.8, initial_sparsity=0.2, begin_step=10, end_step=50, frequency=10)
    expected = {t: 0.8 + (0.2 - 0.8) * (1 - (t - 10) / 40) ** 3 for t in (10, 20, 30, 40, 50)}
    got = dict(updates(schedule, 60))
    assert got.keys() == expected.keys()
    for t, value in expected.items():
        assert got[t] == pytest.approx(value, abs=1e-12)


def test_frequency_longer_than_the_window_still_reaches_the_target():
    """The known pitfall: 96 steps with a 100-step frequency must not leave the model dense."""
    schedule = PolynomialDecay(0.8, begin_step=0, end_step=95, frequency=100)
    assert updates(schedule, 96) == [(0, 0.0), (95, 0.8)]


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_schedule_contract(name):
    schedule = SCHEDULES.get(name).for_run(0.75, 40)
    config = schedule.get_config()
    assert config.pop("name") == name
    again = SCHEDULES.get(name)(**config)
    assert [again(t) for t in range(40)] == [schedule(t) for t in range(40)]
    assert [s for s in map(schedule, range(40)) if s is not None][-1] == 0.75
    assert json.dumps(config)


@pytest.mark.parametrize("bad", [dict(initial_sparsity=0.9), dict(begin_step=5, end_step=2), dict(frequency=0)])
def test_polynomial_rejects_bad_values(bad):
    from prunectl.core.errors import OptionError

    with pytest.raises(OptionError):
        PolynomialDecay(0.8, **{"end_step": 10, **bad})


def test_oneshot_prunes_before_the_first_step_only():
    assert [OneShot(0.5)(t) for t in range(3)] == [0.5, None, None]


@pytest.mark.slow
def test_gradual_run_reaches_target_exactly_in_three_steps(digits):
    out = digits / "tuned.h5"
    result = run(
        "prune",
        digits / "digits_mlp.h5",
        "--sparsity",
        "0.9",
        "-o",
        out,
        "--schedule",
        "polynomial",
        "--finetune-epochs",
        "1",
        "--batch-size",
        "32",
        "--data",
        digits / "train.npz",
        "--json",
    )
    report = json.loads(result.stdout)
    assert report["finetune"]["steps"] == 3
    assert report["finetune"]["mask_updates"][-1][1] == 0.9
    for layer in KERNELS:
        weights = kernel(out, layer)
        assert masks.count_zeros(weights) == masks.zeros_for(0.9, weights.size), layer


# --- report, progress, plots, reproducibility --------------------------------------------------


@pytest.mark.slow
def test_report_has_evaluations_and_history(digits):
    report = json.loads(finetune(digits, digits / "tuned.h5", "--json").stdout)
    section = report["finetune"]
    assert list(section["evaluation"]) == ["before_pruning", "after_pruning", "after_finetuning"]
    for values in section["evaluation"].values():
        assert set(values) == {"loss", "accuracy"}
    assert {k: len(v) for k, v in section["history"].items()} == {
        "loss": 2,
        "accuracy": 2,
        "val_loss": 2,
        "val_accuracy": 2,
    }
    assert section["compile"]["loss_source"] == "saved"
    assert report["options"]["finetune"]["epochs"] == 2


@pytest.mark.slow
@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_plain_progress_is_one_line_per_epoch(digits, quiet):
    stderr = finetune(digits, digits / "tuned.h5", *quiet).stderr
    epochs = [line for line in stderr.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert "val_accuracy" in epochs[0]
    if quiet:
        assert stderr.splitlines() == epochs


@pytest.mark.slow
def test_same_seed_gives_identical_weights(digits):
    finetune(digits, digits / "a.h5", "--schedule", "polynomial")
    finetune(digits, digits / "b.h5", "--schedule", "polynomial")
    for layer in KERNELS:
        assert np.array_equal(kernel(digits / "a.h5", layer), kernel(digits / "b.h5", layer)), layer


@pytest.mark.slow
def test_l1_shrinks_the_kept_weights(digits):
    finetune(digits, digits / "plain.h5", "--learning-rate", "0.01")
    finetune(digits, digits / "l1.h5", "--learning-rate", "0.01", "--l1", "0.01")
    plain, l1 = kernel(digits / "plain.h5", "fc1"), kernel(digits / "l1.h5", "fc1")
    assert np.abs(l1).sum() < 0.95 * np.abs(plain).sum()


@pytest.mark.slow
def test_plots_are_written(digits):
    report = json.loads(finetune(digits, digits / "tuned.h5", "--plots", digits / "figures", "--json").stdout)
    names = sorted(p.name for p in (digits / "figures").iterdir())
    assert names == ["loss.png", "weights_fc1_kernel.png", "weights_fc2_kernel.png", "weights_head_kernel.png"]
    assert len(report["finetune"]["plots"]) == 4
    assert (digits / "figures" / "loss.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_default_loss_for_integer_labels_and_softmax(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax", name="out")])
    model.save(tmp_path / "uncompiled.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(16, 4)).astype("float32"), y=rng.integers(0, 3, 16))
    report = json.loads(
        run(
            "prune",
            tmp_path / "uncompiled.keras",
            "--sparsity",
            "0.5",
            "--finetune-epochs",
            "1",
            "--data",
            tmp_path / "d.npz",
            "--val-split",
            "0.25",
            "--json",
        ).stdout
    )
    compiled = report["finetune"]["compile"]
    assert (compiled["loss"], compiled["metrics"], compiled["loss_source"]) == (
        "sparse_categorical_crossentropy",
        ["accuracy"],
        "default",
    )
    assert report["finetune"]["data"]["validation_samples"] == 4


@pytest.mark.slow
def test_regressor_from_csv_with_label_column(samples):
    with np.load(samples / "regression_train.npz") as data:
        table = np.column_stack([data["x"][:64], data["y"][:64, 0]])
    header = ",".join([f"f{i}" for i in range(8)] + ["target"])
    np.savetxt(samples / "reg.csv", table, delimiter=",", header=header, comments="")
    report = json.loads(
        run(
            "prune",
            samples / "regressor.h5",
            "--sparsity",
            "0.5",
            "--finetune-epochs",
            "1",
            "--data",
            samples / "reg.csv",
            "--label-col",
            "target",
            "--val-split",
            "0.25",
            "-o",
            samples / "out.h5",
            "--json",
        ).stdout
    )
    assert report["finetune"]["compile"]["loss"] == "mse"
    assert set(report["finetune"]["evaluation"]["after_finetuning"]) == {"loss"}


@pytest.mark.slow
def test_streams_h5_data(digits):
    with np.load(digits / "train.npz") as data, h5py.File(digits / "train.h5", "w") as f:
        f["images"], f["labels"] = data["x"], data["y"]
    report = json.loads(
        run(
            "prune",
            digits / "digits_mlp.h5",
            "--sparsity",
            "0.5",
            "--finetune-epochs",
            "1",
            "--data",
            digits / "train.h5",
            "--x-key",
            "images",
            "--y-key",
            "labels",
            "--val-split",
            "0.5",
            "-o",
            digits / "out.h5",
            "--json",
        ).stdout
    )
    assert report["finetune"]["data"]["train_samples"] == 48


# --- distribution ------------------------------------------------------------------------------

MIRRORED = textwrap.dedent("""
    import sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from prunectl.cli.main import cli
    cli(sys.argv[1:], prog_name="prunectl")
""")


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(digits):
    out = digits / "tuned.h5"
    args = [
        digits / "digits_mlp.h5",
        "--sparsity",
        "0.8",
        "-o",
        out,
        "--finetune-epochs",
        "1",
        "--data",
        digits / "train.npz",
        "--strategy",
        "mirrored",
        "--json",
        "--quiet",
    ]
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED, "prune", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["finetune"]["replicas"] == 2
    run("prune", digits / "digits_mlp.h5", "--sparsity", "0.8", "-o", digits / "pruned.h5")
    for layer in KERNELS:
        pruned, tuned = kernel(digits / "pruned.h5", layer), kernel(out, layer)
        assert np.all(tuned[pruned == 0] == 0) and not np.array_equal(tuned, pruned), layer
