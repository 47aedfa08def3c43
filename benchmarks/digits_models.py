"""The dense digits models the accuracy benchmarks start from, defined once.

Three architectures on scikit-learn's 8x8 digits (the shipped split,
``sample_models/digits_{train,test}.npz``): the MLP 64-256-256-10, the small MLP
64-128-64-10 and the CNN (conv 32, conv 64, dense 128). Each is built from a
seed and trained dense with a fixed recipe, so every tool under comparison
starts from the same weights. :func:`layer_specs` describes an architecture as
plain data, so another Keras (tf_keras, in the peer benchmark's own virtual
environment) can build the same model and take the same weights in order.

    python benchmarks/digits_models.py OUT_DIR [--seeds 0,1,2,3]   # writes <model>.seed<k>.keras
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
MODELS = ("mlp", "small_mlp", "cnn")
DENSE_EPOCHS = 40
DENSE_BATCH = 32
DENSE_LEARNING_RATE = 1e-3


def layer_specs(name: str) -> list[tuple]:
    """The architecture as ``(kind, args)`` tuples, readable by any Keras."""
    if name == "mlp":
        return [("flatten",), ("dense", 256, "relu"), ("dense", 256, "relu"), ("dense", 10, "softmax")]
    if name == "small_mlp":
        return [("flatten",), ("dense", 128, "relu"), ("dense", 64, "relu"), ("dense", 10, "softmax")]
    if name == "cnn":
        return [
            ("conv", 32, "relu"),
            ("pool",),
            ("conv", 64, "relu"),
            ("pool",),
            ("flatten",),
            ("dense", 128, "relu"),
            ("dense", 10, "softmax"),
        ]
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def build(keras, name: str, seed: int):
    """The untrained model ``name`` in the given Keras module (keras or tf_keras), its weights drawn from ``seed``."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((8, 8, 1))]
    for spec in layer_specs(name):
        kind = spec[0]
        if kind == "flatten":
            layers.append(keras.layers.Flatten())
        elif kind == "pool":
            layers.append(keras.layers.MaxPooling2D(2))
        elif kind == "dense":
            layers.append(keras.layers.Dense(spec[1], activation=spec[2]))
        elif kind == "conv":
            layers.append(keras.layers.Conv2D(spec[1], 3, padding="same", activation=spec[2]))
    return keras.Sequential(layers, name=name)


def digits():
    """``(x_train, y_train, x_test, y_test)`` from the shipped split."""
    train, test = np.load(SAMPLES / "digits_train.npz"), np.load(SAMPLES / "digits_test.npz")
    return train["x"], train["y"], test["x"], test["y"]


def compile_for_digits(keras, model, learning_rate: float = DENSE_LEARNING_RATE) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def train_dense(name: str, seed: int, out: Path) -> Path:
    """Train ``name`` dense from ``seed`` and save it compiled as ``out/<name>.seed<seed>.keras``."""
    import keras

    x, y, _, _ = digits()
    model = build(keras, name, seed)
    compile_for_digits(keras, model)
    model.fit(x, y, epochs=DENSE_EPOCHS, batch_size=DENSE_BATCH, verbose=0, shuffle=True)
    path = Path(out) / f"{name}.seed{seed}.keras"
    model.save(path)
    return path


def accuracy(keras_model, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in %, computed here (not by the tool that produced the model)."""
    predicted = np.argmax(keras_model.predict(x, batch_size=256, verbose=0), axis=-1)
    return 100.0 * float(np.mean(predicted == y))


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--seeds", default="0,1,2,3")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import keras

    _, _, xt, yt = digits()
    for name in args.models.split(","):
        for seed in map(int, args.seeds.split(",")):
            path = train_dense(name, seed, args.out)
            print(f"{path}: dense accuracy {accuracy(keras.saving.load_model(path), xt, yt):.2f}%")


if __name__ == "__main__":
    main()
