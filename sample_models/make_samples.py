"""Regenerate the small trained sample models used by prunectl's tests and docs.

Running ``python sample_models/make_samples.py [--out DIR]`` deterministically
rebuilds, from bundled or synthetic data only (nothing is downloaded):

* ``digits_train.npz`` / ``digits_test.npz``: scikit-learn's 8x8 digits,
  float32 images in [0, 1] shaped (N, 8, 8, 1) and int64 labels 0..9.
* ``regression_train.npz`` / ``regression_test.npz``: a standardized
  ``make_regression`` problem, float32 x (N, 8) and y (N, 1).
* ``digits_mlp``, ``digits_cnn``, ``regressor``, ``digits_transformer`` and
  ``digits_lstm``, each saved compiled as both
  native Keras (``.keras``) and legacy HDF5 (``.h5``). ``digits_cnn`` is saved
  without Adam's slot variables so that all files stay under 3 MB.
* ``README.md`` and ``manifest.json`` describing the models and the test
  metrics measured by this run.

The same library versions on the same platform give identical weights from
one run to the next: the ``.h5`` files are byte-identical, while ``.keras``
archives differ only in save timestamps and Python object ids in their config.
"""

import os

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"

import argparse
import json
import platform
import time
from pathlib import Path

import keras
import numpy as np
import sklearn
import tensorflow as tf
from sklearn.datasets import load_digits, make_regression
from sklearn.model_selection import train_test_split

SEED = 0
BATCH_SIZE = 32
REGENERATE_COMMAND = "python sample_models/make_samples.py"


def seed_everything():
    """Make Python, NumPy and TensorFlow randomness and op results repeatable."""
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()


def save_split(out, name, x, y):
    """Write one data split as ``<name>.npz`` with keys ``x`` and ``y``."""
    path = out / f"{name}.npz"
    np.savez_compressed(path, x=x, y=y)
    return path.name


def make_digits_data(out):
    """Build and save the stratified digits split; return arrays and file names."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., np.newaxis]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    files = [
        save_split(out, "digits_train", x_train, y_train),
        save_split(out, "digits_test", x_test, y_test),
    ]
    return (x_train, y_train), (x_test, y_test), files


def make_regression_data(out):
    """Build and save the standardized synthetic regression split."""
    x, y = make_regression(n_samples=1000, n_features=8, n_informative=6, noise=5.0, random_state=SEED)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    y = y / y.std()
    x = x.astype(np.float32)
    y = y.astype(np.float32).reshape(-1, 1)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=SEED)
    files = [
        save_split(out, "regression_train", x_train, y_train),
        save_split(out, "regression_test", x_test, y_test),
    ]
    return (x_train, y_train), (x_test, y_test), files


def compile_classifier(model):
    """Compile a digits classifier with the shared training configuration."""
    model.compile(
        optimizer=keras.optimizers.Adam(),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def build_digits_mlp():
    """Dense classifier on flattened 8x8 digits."""
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(256, activation="relu", name="fc1"),
            keras.layers.Dense(128, activation="relu", name="fc2"),
            keras.layers.Dense(10, activation="softmax", name="head"),
        ],
        name="digits_mlp",
    )
    return compile_classifier(model)


def build_digits_cnn():
    """Small functional CNN with batch norm, pooling and dropout."""
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(32, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(128, activation="relu", name="fc1")(x)
    x = keras.layers.Dropout(0.2, name="drop")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name="digits_cnn")
    return compile_classifier(model)


def build_digits_transformer():
    """A transformer classifier from stock layers only: each image row is a token.

    The keras.io text-classification shape (tokens -> one transformer block ->
    average over tokens -> classifier) written without a custom layer, so every
    MultiHeadAttention, Dense and LayerNormalization is a node of the graph. A
    Conv1D over the rows makes the tokens (its 3-row window gives them position).
    """
    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Reshape((8, 8), name="rows")(inputs)
    x = keras.layers.Conv1D(32, 3, padding="same", name="tokens")(x)
    attention = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8, name="attention")(x, x)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="norm1")(keras.layers.Add(name="residual1")([x, attention]))
    hidden = keras.layers.Dense(64, activation="relu", name="ffn_up")(x)
    hidden = keras.layers.Dense(32, name="ffn_down")(hidden)
    x = keras.layers.LayerNormalization(epsilon=1e-6, name="norm2")(keras.layers.Add(name="residual2")([x, hidden]))
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    x = keras.layers.Dropout(0.1, name="drop")(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(x)
    return compile_classifier(keras.Model(inputs, outputs, name="digits_transformer"))


def build_digits_lstm():
    """An LSTM classifier reading each image as 8 steps of 8 pixels."""
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Reshape((8, 8), name="rows"),
            keras.layers.LSTM(64, name="lstm"),
            keras.layers.Dense(10, activation="softmax", name="head"),
        ],
        name="digits_lstm",
    )
    return compile_classifier(model)


def build_regressor():
    """The classic threshold-pruning example, compiled with a string loss."""
    model = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(10, activation="relu", name="hidden"),
            keras.layers.Dense(1, name="out"),
        ],
        name="regressor",
    )
    model.compile(loss="mse", optimizer="adam")
    return model


def train_and_save(out, name, model, train, test, epochs, metric, recompile=None):
    """Fit ``model``, save it as .keras and .h5, and return its manifest entry.

    When ``recompile`` is given it is applied after evaluation, so the saved
    files keep the compile config but not the optimizer's slot variables
    (this keeps the largest model's files small).
    """
    model.fit(
        train[0],
        train[1],
        epochs=epochs,
        batch_size=BATCH_SIZE,
        shuffle=True,
        verbose=0,
    )
    results = model.evaluate(test[0], test[1], verbose=0, return_dict=True)
    value = results["accuracy"] if metric == "test_accuracy" else results["loss"]
    if recompile is not None:
        recompile(model)
    # .keras first: Keras' legacy .h5 writer pops "optimizer" from the model's
    # live compile config, which would drop it from a later .keras save.
    files = [f"{name}.keras", f"{name}.h5"]
    for file_name in files:
        model.save(out / file_name)
    return {
        "files": files,
        "input_shape": list(model.input_shape[1:]),
        "output_shape": list(model.output_shape[1:]),
        "metric": metric,
        "value": round(float(value), 6),
        "params": int(model.count_params()),
        "optimizer_state": recompile is None,
        "epochs": epochs,
        "batch_size": BATCH_SIZE,
        "layers": [describe_layer(layer) for layer in model.layers],
    }


def describe_layer(layer):
    """One-line ``name (Class, output shape, params)`` description of a layer."""
    shape = tuple(layer.output.shape[1:])
    return f"{layer.name} ({type(layer).__name__}, {shape}, {layer.count_params()} params)"


def train_models(out):
    """Generate the data sets and train every sample model into ``out``."""
    digits_train, digits_test, digits_files = make_digits_data(out)
    reg_train, reg_test, reg_files = make_regression_data(out)
    models = {
        "digits_mlp": train_and_save(
            out,
            "digits_mlp",
            build_digits_mlp(),
            digits_train,
            digits_test,
            epochs=30,
            metric="test_accuracy",
        ),
        "digits_cnn": train_and_save(
            out,
            "digits_cnn",
            build_digits_cnn(),
            digits_train,
            digits_test,
            epochs=25,
            metric="test_accuracy",
            recompile=compile_classifier,
        ),
        "regressor": train_and_save(
            out,
            "regressor",
            build_regressor(),
            reg_train,
            reg_test,
            epochs=50,
            metric="test_mse",
        ),
        "digits_transformer": train_and_save(
            out,
            "digits_transformer",
            build_digits_transformer(),
            digits_train,
            digits_test,
            epochs=40,
            metric="test_accuracy",
        ),
        "digits_lstm": train_and_save(
            out,
            "digits_lstm",
            build_digits_lstm(),
            digits_train,
            digits_test,
            epochs=40,
            metric="test_accuracy",
        ),
    }
    models["digits_mlp"]["data"] = digits_files
    models["digits_transformer"]["data"] = digits_files
    models["digits_lstm"]["data"] = digits_files
    models["digits_cnn"]["data"] = digits_files
    models["regressor"]["data"] = reg_files
    return models


def versions():
    """Library versions that produced the samples."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def write_manifest(out, models):
    """Write the machine-readable ``manifest.json``."""
    manifest = {
        "command": REGENERATE_COMMAND,
        "seed": SEED,
        "versions": versions(),
        "models": models,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def format_metric(entry):
    """Human-readable test metric for the README."""
    if entry["metric"] == "test_accuracy":
        return f"test accuracy {entry['value']:.4f}"
    return f"test MSE {entry['value']:.4f}"


def write_readme(out, models):
    """Write ``README.md`` describing the models, data and provenance."""
    lines = [
        "# Sample models",
        "",
        "Small trained Keras models (and their data) for exercising prunectl.",
        "Generated by `make_samples.py`; do not edit by hand. Regenerate with:",
        "",
        "```",
        REGENERATE_COMMAND,
        "```",
        "",
        "Each model is saved compiled (optimizer and training config included) as",
        "native Keras (`.keras`) and legacy HDF5 (`.h5`). Models marked with",
        "optimizer state also carry Adam's trained slot variables; the others were",
        "recompiled with a fresh Adam before saving to keep the files small (loading",
        "such a `.keras` warns that optimizer variables were skipped).",
        "`manifest.json` holds the same figures in machine-readable form.",
        "",
        "| model | files | data | params | optimizer state | test metric |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in models.items():
        lines.append(
            f"| {name} | {', '.join(entry['files'])} | {', '.join(entry['data'])}"
            f" | {entry['params']:,} | {'yes' if entry['optimizer_state'] else 'no'}"
            f" | {format_metric(entry)} |"
        )
    lines += [
        "",
        "## Data",
        "",
        "- `digits_*.npz`: scikit-learn `load_digits()`, `x` float32 (N, 8, 8, 1)"
        " scaled to [0, 1], `y` int64 labels 0..9; stratified"
        " `train_test_split(test_size=0.25, random_state=0)`.",
        "- `regression_*.npz`: `make_regression(n_samples=1000, n_features=8,"
        " n_informative=6, noise=5.0, random_state=0)`, `x` standardized,"
        " `y` scaled to unit variance, float32 with `y` shaped (N, 1);"
        " `train_test_split(test_size=0.2, random_state=0)`.",
        "",
        "## Models",
    ]
    descriptions = {
        "digits_mlp": "Sequential MLP classifier, Adam + sparse categorical crossentropy.",
        "digits_cnn": "Functional CNN classifier (Conv/BatchNorm/ReLU/Conv/MaxPool/"
        "Dense/Dropout), Adam + sparse categorical crossentropy.",
        "digits_transformer": "Functional transformer classifier from stock layers (rows as tokens: Conv1D,"
        " MultiHeadAttention, Add/LayerNormalization, Dense feed-forward, GlobalAveragePooling1D),"
        " Adam + sparse categorical crossentropy.",
        "digits_lstm": "Sequential LSTM classifier (each image as 8 steps of 8 pixels),"
        " Adam + sparse categorical crossentropy.",
        "regressor": 'Sequential regressor compiled with `loss="mse", optimizer="adam"`.'
        " The string loss is deliberate: Keras 3 cannot reload `regressor.h5`"
        " with `compile=True` (\"Could not deserialize 'keras.metrics.mse'\"),"
        " so tools must fall back to `compile=False`.",
    }
    for name, entry in models.items():
        lines += [
            "",
            f"### {name}",
            "",
            descriptions[name],
            f"Input shape {tuple(entry['input_shape'])}, {entry['params']:,} params,"
            f" trained {entry['epochs']} epochs at batch size {entry['batch_size']};"
            f" {format_metric(entry)}.",
            "",
        ]
        lines += [f"- {layer}" for layer in entry["layers"]]
    lines += ["", "## Produced with", ""]
    lines += [f"- {lib} {version}" for lib, version in versions().items()]
    (out / "README.md").write_text("\n".join(lines) + "\n")


def parse_args():
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="output folder (default: the folder containing this script)",
    )
    return parser.parse_args()


def main():
    """Generate everything into ``--out`` and print the measured metrics."""
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    seed_everything()
    start = time.perf_counter()
    models = train_models(args.out)
    write_manifest(args.out, models)
    write_readme(args.out, models)
    for name, entry in models.items():
        print(f"{name}: {format_metric(entry)} ({entry['params']:,} params)")
    print(f"done in {time.perf_counter() - start:.1f}s -> {args.out}")


if __name__ == "__main__":
    main()
