"""Tiny Keras models built once per session and saved as both .h5 and .keras, and the tests' shared helpers.

Tests that only read or write files use these; nothing here trains a model.
:func:`run` and :func:`invoke` run the command line in-process; :func:`seeded_keras`
imports Keras with a fixed random seed for building models.
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from prunectl.cli.main import cli

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Started as a background job of a non-interactive shell (`pytest ... &` in a script), the suite inherits SIGINT
# ignored, and every prunectl it starts would too: prunectl leaves an ignored signal ignored (as under nohup),
# so the tests that press Ctrl-C or send SIGINT would wait for nothing. A handler here is reset to the default
# in each child at exec, where Python's own KeyboardInterrupt handler then takes over.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_models"


def run(*args, input=None, env=None, check=True):
    """Run ``prunectl *args`` in-process and return click's result.

    Args:
        *args: the command line after ``prunectl``; paths and numbers are turned into strings.
        input: text for standard input.
        env: environment variables to set for the run.
        check: the run must succeed: an exception propagates (with its traceback)
            and a non-zero exit code fails the test. With ``check=False`` the
            result is returned whatever the outcome, for tests that check a failure.
    """
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input, env=env, catch_exceptions=not check)
    if check:
        assert result.exit_code == 0, result.output
    return result


def invoke(*args, input=None, env=None):
    """:func:`run` with ``check=False``: any outcome, for tests that check errors and exit codes."""
    return run(*args, input=input, env=env, check=False)


def seeded_keras(seed: int = 1234):
    """The ``keras`` module, with every random seed set (weights of models built next are reproducible)."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras


def build_sequential():
    keras = seeded_keras()
    return keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(5, activation="relu", name="d1"),
            keras.layers.Dense(3, name="d2"),
        ],
        name="seq",
    )


def build_functional():
    keras = seeded_keras()
    inputs = keras.Input((6, 6, 2), name="img")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Flatten(name="flat")(x)
    x = keras.layers.Dense(8, activation="relu", name="fc")(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs, name="func")


def build_zoo():
    """One layer of each registry family: Embedding, LSTM/GRU, separable and depthwise convs."""
    keras = seeded_keras()
    tokens = keras.Input((5,), name="tokens")
    e = keras.layers.Embedding(20, 4, name="emb")(tokens)
    r = keras.layers.LSTM(3, return_sequences=True, name="lstm")(e)
    r = keras.layers.GRU(3, name="gru")(r)
    image = keras.Input((8, 8, 3), name="image")
    c = keras.layers.DepthwiseConv2D(3, name="dw")(image)
    c = keras.layers.SeparableConv2D(4, 3, name="sep")(c)
    c = keras.layers.GlobalAveragePooling2D(name="gap")(c)
    merged = keras.layers.Concatenate(name="cat")([r, c])
    out = keras.layers.Dense(2, name="out")(merged)
    return keras.Model([tokens, image], out, name="zoo")


BUILDERS = {"sequential": build_sequential, "functional": build_functional, "zoo": build_zoo}


def sample_inputs(model, n=4, seed=0):
    """Deterministic inputs matching ``model``'s inputs (integers for token inputs)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for tensor in model.inputs:
        shape = (n,) + tuple(tensor.shape[1:])
        if tensor.name == "tokens":
            arrays.append(rng.integers(0, 20, size=shape).astype("float32"))
        else:
            arrays.append(rng.standard_normal(shape).astype("float32"))
    return arrays if len(arrays) > 1 else arrays[0]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """A folder with every tiny model saved as <name>.h5 and <name>.keras (compiled)."""
    folder = tmp_path_factory.mktemp("models")
    for name, build in BUILDERS.items():
        model = build()
        model.compile(optimizer="adam", loss="mse")
        model.save(folder / f"{name}.keras")
        model.save(folder / f"{name}.h5")
    return folder


@pytest.fixture
def models(model_dir, tmp_path) -> Path:
    """A private copy of the tiny models for one test (so outputs never collide)."""
    for path in model_dir.iterdir():
        shutil.copy(path, tmp_path / path.name)
    return tmp_path


@pytest.fixture
def samples(tmp_path) -> Path:
    """A private copy of the committed sample models and data."""
    for path in SAMPLES.iterdir():
        if path.is_file() and path.suffix in (".h5", ".keras", ".npz"):
            shutil.copy(path, tmp_path / path.name)
    return tmp_path


@pytest.fixture
def digits(samples):
    """The sample MLP with small train (96 samples) and validation (64) files beside it (fine-tuning tests).

    tests/test_accuracy_gate.py has a ``digits`` of its own (an evaluation file), which takes precedence there.
    """
    with np.load(samples / "digits_train.npz") as train:
        np.savez(samples / "train.npz", x=train["x"][:96], y=train["y"][:96])
        np.savez(samples / "val.npz", x=train["x"][96:160], y=train["y"][96:160])
    return samples
