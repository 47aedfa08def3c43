"""Pruning through LayerNormalization (``norms="joint"``) against leaving it whole (``norms="boundary"``).

A small ConvNeXt-style network on the digits data (``sample_models/digits_*.npz``):
stem conv -> blocks of [DepthwiseConv 3x3 -> LayerNormalization -> Dense(4C, gelu)
-> Dense(C) -> residual add] -> global average pooling -> Dense(10). It is trained
briefly (seeded), structurally pruned (l1) both ways, each fine-tuned with the same
budget, and the test accuracies are printed with params and multiply-adds.

Joint mode prunes the residual stream (every LayerNorm's channels) and the MLP
expansions; boundary mode can prune only the expansions. The rows compare them at
the same ratio and, for boundary mode, at the ratio removing about as many params
as joint mode does. Not a test: it takes a few minutes on a laptop CPU.

    python benchmarks/layernorm.py [--seeds 0,1,2] [--epochs 20] [--finetune-epochs 5] [--ratio 0.25]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

from prunectl.core.structure.plan import NeuronPruning, apply_plan, plan_structure

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def convnext(keras, channels: int, blocks: int):
    """The ConvNeXt-style digits classifier, uncompiled."""
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(channels, 3, padding="same", name="stem")(inputs)
    for i in range(blocks):
        h = keras.layers.DepthwiseConv2D(3, padding="same", name=f"dw{i}")(x)
        h = keras.layers.LayerNormalization(epsilon=1e-6, name=f"ln{i}")(h)
        h = keras.layers.Dense(4 * channels, activation="gelu", name=f"expand{i}")(h)
        h = keras.layers.Dense(channels, name=f"project{i}")(h)
        x = keras.layers.Add(name=f"add{i}")([x, h])
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10, activation="softmax", name="head")(x)
    return keras.Model(inputs, outputs)


def fit(keras, model, data, epochs: int, seed: int, learning_rate: float):
    """Train ``model`` in place, seeded; returns its test accuracy."""
    keras.utils.set_random_seed(seed)
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    if epochs:
        model.fit(data["x_train"], data["y_train"], epochs=epochs, batch_size=32, verbose=0)
    return accuracy(keras, model, data)


def accuracy(keras, model, data) -> float:
    predicted = model.predict(data["x_test"], batch_size=256, verbose=0).argmax(-1)
    return float(np.mean(predicted == data["y_test"]))


def matching_ratio(model, target_params: int, norms: str) -> float:
    """The ratio (on a 1/32 grid) whose plan's remaining params come closest to ``target_params``."""
    best, gap = 0.0, None
    for ratio in np.arange(1, 32) / 32:
        after = plan_structure(model, NeuronPruning(ratio=float(ratio), norms=norms)).totals()["params"]["after"]
        if gap is None or abs(after - target_params) < gap:
            best, gap = float(ratio), abs(after - target_params)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--channels", type=int, default=32)
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--ratio", type=float, default=0.25)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--finetune-learning-rate", type=float, default=1e-3)
    args = parser.parse_args()
    from prunectl.core.io.keras_io import import_keras

    keras = import_keras()
    train, test = np.load(SAMPLES / "digits_train.npz"), np.load(SAMPLES / "digits_test.npz")
    data = {"x_train": train["x"], "y_train": train["y"], "x_test": test["x"], "y_test": test["y"]}
    calibration = data["x_train"][:256]
    rows = []
    for seed in (int(s) for s in args.seeds.split(",")):
        keras.utils.set_random_seed(seed)
        model = convnext(keras, args.channels, args.blocks)
        dense = fit(keras, model, data, args.epochs, seed, args.learning_rate)
        joint = plan_structure(model, NeuronPruning(ratio=args.ratio, norms="joint"), calibration)
        matched = matching_ratio(model, joint.totals()["params"]["after"], "boundary")
        variants = [
            ("joint", args.ratio, joint),
            ("boundary", args.ratio, plan_structure(model, NeuronPruning(ratio=args.ratio, norms="boundary"))),
            ("boundary", matched, plan_structure(model, NeuronPruning(ratio=matched, norms="boundary"))),
        ]
        for norms, ratio, plan in variants:
            pruned = apply_plan(model, plan)
            pruned.compile(metrics=["accuracy"])
            before_ft = accuracy(keras, pruned, data)
            after_ft = fit(keras, pruned, data, args.finetune_epochs, seed, args.finetune_learning_rate)
            totals = plan.totals()
            change = max((n["max_abs_change"] or 0.0 for n in plan.notes), default=0.0)
            rows.append((seed, norms, ratio, dense, before_ft, after_ft, totals, change))
            print(
                f"seed {seed} {norms:8s} ratio {ratio:.3f}: dense {dense:.4f} pruned {before_ft:.4f} "
                f"fine-tuned {after_ft:.4f}",
                flush=True,
            )
    header = (
        "| seed | norms | ratio | dense acc | pruned acc | fine-tuned acc | params after/before "
        "| MACs after/before | LN max change |"
    )
    print("\n" + header + "\n" + "|---" * 9 + "|")
    for seed, norms, ratio, dense, before_ft, after_ft, totals, change in rows:
        params, flops = totals["params"], totals["flops"]
        print(
            f"| {seed} | {norms} | {ratio:.3f} | {dense:.4f} | {before_ft:.4f} | {after_ft:.4f} | "
            f"{params['after']:,}/{params['before']:,} | {flops['after']:,}/{flops['before']:,} | {change:.3f} |"
        )
    print("\nmean over seeds:")
    for key in sorted({(r[1], round(r[2], 3)) for r in rows}, key=lambda k: (k[0] != "joint", k[1])):
        picked = [r for r in rows if (r[1], round(r[2], 3)) == key]
        if key[0] == "boundary" and abs(key[1] - args.ratio) > 1e-9:
            label = "boundary (matched params)"
        else:
            label = f"{key[0]} (ratio {args.ratio})"
        print(
            f"  {label:28s} pruned {np.mean([r[4] for r in picked]):.4f}  "
            f"fine-tuned {np.mean([r[5] for r in picked]):.4f}  "
            f"params {np.mean([r[6]['params']['after'] for r in picked]):,.0f}  "
            f"MACs {np.mean([r[6]['flops']['after'] for r in picked]):,.0f}  (n={len(picked)})"
        )


if __name__ == "__main__":
    main()
