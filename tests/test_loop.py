"""prunectl's training loop: how it cuts global batches among replicas, and that it trains as one device would."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import run


def _plan(*args, **kwargs):
    from prunectl.core.training.loop import plan_pass

    return plan_pass(*args, **kwargs)


def test_a_pass_covers_every_sample_once_in_the_given_order():
    order = np.random.default_rng(0).permutation(101)
    plan = _plan(101, 16, 2, order=order)
    assert plan.sizes == [16] * 6 + [5] and plan.skipped == 0
    np.testing.assert_array_equal(np.concatenate(plan.batches), order)


def test_a_final_batch_too_small_for_the_replicas_is_skipped_in_training_only():
    assert _plan(97, 16, 2).sizes == [16] * 6 and _plan(97, 16, 2).skipped == 1
    assert _plan(97, 16, 2, training=False).sizes == [16] * 6 + [1]
    assert _plan(97, 16, 1).sizes == [16] * 6 + [1]  # one replica: nothing skipped, as fit


def test_on_disk_batches_stay_contiguous_in_a_shuffled_order():
    plan = _plan(50, 16, 2, starts=[32, 0, 48, 16])
    assert plan.batches == (slice(32, 48), slice(0, 16), slice(48, 50), slice(16, 32))


@pytest.mark.parametrize("size, parts", [(16, 2), (5, 2), (1, 2), (7, 4), (3, 3)])
def test_slices_for_the_replicas_differ_by_at_most_one_and_cover_the_batch(size, parts):
    from prunectl.core.training.loop import _chunks

    positions = np.arange(10, 10 + size)
    for index in (slice(10, 10 + size), positions):
        pieces = _chunks(index, parts)
        sizes = [len(range(10 + size)[p]) if isinstance(p, slice) else len(p) for p in pieces]
        assert len(pieces) == parts and max(sizes) - min(sizes) <= 1 and sum(sizes) == size
        got = np.concatenate([np.arange(p.start, p.stop) if isinstance(p, slice) else p for p in pieces])
        np.testing.assert_array_equal(got, positions)


def test_a_batch_smaller_than_the_replicas_is_refused():
    from prunectl.core.errors import OptionError
    from prunectl.core.training.loop import check_batch

    check_batch(2, 2)
    refused = r"each of the 4 replicas .* raise batch_size to 4 or more. Received: batch_size 3$"
    with pytest.raises(OptionError, match=refused):
        check_batch(3, 4)


# A real MirroredStrategy over two logical CPU devices, in a process of its own (devices are fixed at TF's start):
# the loop on two replicas, with uneven slices (batch 15) and an odd final batch, equals the loop on one.
MIRRORED = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from prunectl.core.training.data import Dataset
    from prunectl.core.training.loop import Feeder, Loop

    rng = np.random.default_rng(0)
    data = Dataset(rng.normal(size=(100, 6)).astype("float32"), rng.integers(0, 3, 100))
    val = Dataset(rng.normal(size=(31, 6)).astype("float32"), rng.integers(0, 3, 31))

    def train(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            layers = [keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3, activation="softmax")]
            model = keras.Sequential([keras.Input((6,)), *layers])
            loss = "sparse_categorical_crossentropy"
            model.compile(optimizer=keras.optimizers.SGD(0.1), loss=loss, metrics=["accuracy"])
            dtypes = (np.float32, np.int64)
            feed = Feeder(strategy, data, 15, dtypes, shuffle=True, seed=3)
            history = Loop(strategy, model).fit(feed, 3, Feeder(strategy, val, 15, dtypes, training=False))
        return [w.tolist() for w in model.get_weights()], history

    one = train(tf.distribute.get_strategy())
    two = train(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
    json.dump({"one": one, "two": two}, sys.stdout)
    """
)


@pytest.mark.slow
def test_two_local_replicas_train_as_one_device(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", MIRRORED], capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout)
    (one_weights, one_history), (two_weights, two_history) = got["one"], got["two"]
    for a, b in zip(one_weights, two_weights):
        np.testing.assert_allclose(np.array(b), np.array(a), rtol=1e-5, atol=1e-6)
    assert sorted(one_history) == ["accuracy", "loss", "val_accuracy", "val_loss"]
    for key, values in one_history.items():
        assert two_history[key] == pytest.approx(values, rel=1e-5, abs=1e-6), key


@pytest.mark.slow
def test_mirrored_on_one_device_says_so(digits):
    out, report = digits / "out.keras", digits / "report.json"
    result = run(
        "prune",
        digits / "digits_mlp.keras",
        "--sparsity",
        "0.5",
        "--finetune-epochs",
        "1",
        "--data",
        digits / "train.npz",
        "--strategy",
        "mirrored",
        "-o",
        out,
        "--report",
        report,
    )
    note = "--strategy mirrored ran with one replica: this machine has one device"
    assert f"Note: {note}" in result.stderr
    section = json.loads(report.read_text())
    assert note in section["notes"] and section["finetune"]["strategy"] == {"name": "mirrored", "replicas": 1}
