"""Distillation from the model before pruning: the loss, the training it changes (and does not), the saved file."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run
from independent import keras_config, read_weights
from test_cli_errors import fails

T = 3.0


def softened(p, t):
    z = np.log(np.clip(p, 1e-30, 1)) / t
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def softmax(z, t=1.0):
    e = np.exp(z / t - (z / t).max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def pair(keras, activation, seed=3):
    """A tiny student and a teacher with other weights: Dense(4) -> Dense(3)."""
    models = []
    for s in (seed, seed + 1):
        keras.utils.set_random_seed(s)
        models.append(
            keras.Sequential(
                [
                    keras.Input((5,)),
                    keras.layers.Dense(4, activation="relu"),
                    keras.layers.Dense(3, activation=activation),
                ]
            )
        )
    return models


@pytest.mark.parametrize("from_logits", [False, True])
def test_loss_is_task_plus_temperature_softened_kl(from_logits):
    import keras

    from prunectl.core.training.distill import distillation

    student, teacher = pair(keras, None if from_logits else "softmax")
    student.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=from_logits))
    distilled = distillation(student, teacher, 0.3, T)
    term = distilled.term
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8, 5)).astype("float32"), rng.integers(0, 3, 8)
    s, t = student.predict(x, verbose=0).astype("float64"), teacher.predict(x, verbose=0).astype("float64")
    if from_logits:
        p_s, soft_s, soft_t = softmax(s), softmax(s, T), softmax(t, T)
    else:
        p_s, soft_s, soft_t = s, softened(s, T), softened(t, T)
    task = -np.mean(np.log(p_s[np.arange(8), y]))
    kl = np.mean(np.sum(soft_t * (np.log(soft_t) - np.log(soft_s)), axis=-1))
    plain = student.compute_loss(x, y, student(x), None, training=True)
    assert float(plain) == pytest.approx(task, rel=1e-5)
    got = float(distilled.loss(keras.ops, plain, x, student(x)))
    assert got == pytest.approx(0.7 * task + 0.3 * T * T * kl, rel=1e-5)
    assert term.kind == "softmax" and term.from_logits is from_logits


def test_regressor_term_is_the_mse_to_the_teacher():
    import keras

    from prunectl.core.training.distill import distillation

    student, teacher = pair(keras, None)
    student.compile(optimizer="adam", loss="mse")
    distilled = distillation(student, teacher, 0.5, T)
    term = distilled.term
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(8, 5)).astype("float32"), rng.normal(size=(8, 3)).astype("float32")
    s, t = student.predict(x, verbose=0), teacher.predict(x, verbose=0)
    expected = 0.5 * np.mean((s - y) ** 2) + 0.5 * np.mean((s - t) ** 2)
    task = student.compute_loss(x, y, student(x), None, training=True)
    assert float(distilled.loss(keras.ops, task, x, student(x))) == pytest.approx(expected, rel=1e-5)
    assert term.kind == "mse"


@pytest.mark.slow
@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_the_loop_steps_on_the_distilled_loss(alpha):
    """One SGD step of the loop equals one hand-written step on (1 - alpha) * task + alpha * T^2 KL."""
    import keras
    import tensorflow as tf

    from prunectl.core.training.data import Dataset
    from prunectl.core.training.distill import distillation
    from prunectl.core.training.distribute import tf_strategy
    from prunectl.core.training.loop import Feeder, Loop

    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(16, 5)).astype("float32"), rng.integers(0, 3, 16)
    student, teacher = pair(keras, "softmax")
    hand = keras.models.clone_model(student)
    hand.set_weights(student.get_weights())
    student.compile(optimizer=keras.optimizers.SGD(0.5), loss="sparse_categorical_crossentropy")
    feed = Feeder(tf_strategy(), Dataset(x, y), 16, (np.float32, np.int64))
    Loop(tf_strategy(), student, distillation=distillation(student, teacher, alpha, T)).fit(feed, 1)

    t = teacher.predict(x, verbose=0).astype("float64")
    with tf.GradientTape() as tape:
        p = hand(x)
        task = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, p))
        log_s = tf.nn.log_softmax(tf.math.log(p) / T)
        soft_t = softened(t, T)
        kl = tf.reduce_mean(tf.reduce_sum(soft_t * (np.log(soft_t) - tf.cast(log_s, "float64")), axis=-1))
        loss = (1 - alpha) * tf.cast(task, "float64") + alpha * T * T * kl
    grads = tape.gradient(loss, hand.trainable_variables)
    for variable, grad in zip(hand.trainable_variables, grads):
        variable.assign(variable - 0.5 * tf.cast(grad, "float32"))
    for got, expected in zip(student.get_weights(), hand.get_weights()):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def prune(folder, *extra):
    return ["prune", folder / "digits_mlp.keras", "--sparsity", "0.5", *extra]


@pytest.mark.slow
def test_masks_held_teacher_frozen_and_saved_model_plain(digits, monkeypatch):
    from prunectl.core.training import finetune

    teachers = []
    made = finetune._teacher
    monkeypatch.setattr(finetune, "_teacher", lambda keras, model: teachers.append(made(keras, model)) or teachers[-1])
    source = digits / "digits_mlp.keras"
    dense = read_weights(source)
    out, report = digits / "out.keras", digits / "report.json"
    run(
        *prune(digits, "--finetune-epochs", "2", "--data", digits / "train.npz", "--val-data", digits / "val.npz"),
        "--distill",
        "0.5",
        "--temperature",
        "2",
        "--seed",
        "1",
        "-o",
        out,
        "--report",
        report,
    )
    saved = read_weights(out)
    # The saved file holds the student alone: the dense model's weights, no teacher or wrapper.
    assert sorted(saved) == sorted(dense)
    assert "distiller" not in json.dumps(keras_config(out))
    kernels = [k for k in saved if saved[k].ndim == 2]
    assert kernels
    for key in kernels:
        # Training moved the weights, and exactly half of each kernel is still zero.
        assert not np.array_equal(saved[key], dense[key])
        assert np.count_nonzero(saved[key] == 0) == saved[key].size // 2
    # The teacher is the dense model, unchanged by training.
    (teacher,) = teachers
    for variable in teacher.weights:
        match = [
            v for k, v in dense.items() if v.shape == tuple(variable.shape) and np.array_equal(v, variable.numpy())
        ]
        assert match, variable.path
    section = json.loads(report.read_text())["finetune"]["distillation"]
    assert section["alpha"] == 0.5 and section["temperature"] == 2.0
    assert section["teacher"] == "the model before pruning"


@pytest.mark.slow
def test_regressor_distils_with_the_mse(samples):
    out, report = samples / "out.keras", samples / "report.json"
    run(
        "prune",
        samples / "regressor.keras",
        "--sparsity",
        "0.5",
        "--finetune-epochs",
        "1",
        "--data",
        samples / "regression_train.npz",
        "--distill",
        "0.5",
        "-o",
        out,
        "--report",
        report,
    )
    section = json.loads(report.read_text())["finetune"]["distillation"]
    assert (
        section["alpha"] == 0.5 and section["term"] == "mse to the teacher's outputs" and section["temperature"] is None
    )
    saved = read_weights(out)
    kernels = [v for v in saved.values() if v.ndim == 2]
    assert kernels and all(np.count_nonzero(v == 0) == v.size // 2 for v in kernels)


@pytest.mark.parametrize(
    "extra, code, line",
    [
        (
            ["--distill", "1.5"],
            2,
            "Error: Invalid value for '--distill': --distill must be a finite number in [0, 1]. "
            "Received: --distill=1.5",
        ),
        (
            ["--temperature", "0"],
            2,
            "Error: Invalid value for '--temperature': --temperature must be a finite number > 0. "
            "Received: --temperature=0.0",
        ),
        (
            ["--distill", "0.5"],
            2,
            "Error: --distill needs --finetune-epochs. Received: --distill without --finetune-epochs",
        ),
        (
            ["--distill", "0.5", "--finetune-epochs", "0", "--data", "train.npz"],
            2,
            "Error: --distill trains against the model before pruning; give --finetune-epochs of at least 1. "
            "Received: --distill 0.5 --finetune-epochs 0",
        ),
    ],
)
def test_bad_distillation_options(digits, extra, code, line):
    extra = [digits / e if e == "train.npz" else e for e in extra]
    fails(digits, *prune(digits, *extra), code=code, line=line)
