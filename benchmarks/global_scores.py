"""Global structural scope: which cross-layer score keeps the digits models most accurate.

    python benchmarks/global_scores.py [--ratio 0.5] [--epochs 3] [--min-keep 0]

Prunes the shipped digits CNN and MLP with ``--scope global`` (l1 criterion), ranking
units by four scores in turn: the raw group score, LAMP (what prunectl ships), the score
divided by its group's mean, and divided by its group's L2 norm. Prints units after,
params, FLOPs ratio and test accuracy before, right after pruning and after a short
fine-tune (plain Keras ``fit``, Adam 1e-3, batch 32, seed 0). The README's global-scope
table comes from ``--ratio 0.5`` and ``--ratio 0.7``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from unittest import mock

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import prunectl.core.structure.plan as plan_module  # noqa: E402
from prunectl.core.io.keras_io import import_keras  # noqa: E402
from prunectl.core.structure.criteria import lamp  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SCORES = {
    "raw": lambda s: np.asarray(s, dtype=np.float64),
    "lamp": lamp,
    "group-mean": lambda s: s / (np.mean(s) or 1),
    "group-l2": lambda s: s / (np.linalg.norm(s) or 1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--min-keep", type=float, default=0.0)
    args = parser.parse_args()
    keras = import_keras()
    train, test = np.load(SAMPLES / "digits_train.npz"), np.load(SAMPLES / "digits_test.npz")

    def accuracy(model) -> float:
        return float((model.predict(test["x"], batch_size=256, verbose=0).argmax(1) == test["y"]).mean())

    print(f"global ratio {args.ratio}, min_keep {args.min_keep}, {args.epochs} epochs; test {len(test['x'])} images")
    print("| model | score | units after | units removed | params | FLOPs ratio | acc before | pruned | fine-tuned |")
    print("|" + " --- |" * 9)
    for name in ("digits_cnn", "digits_mlp"):
        for score, function in SCORES.items():
            keras.utils.set_random_seed(0)
            model = keras.models.load_model(SAMPLES / f"{name}.keras", compile=False)
            step = plan_module.NeuronPruning(ratio=args.ratio, scope="global", min_keep=args.min_keep)
            # choose_units looks lamp up in the plan module at call time: swap in each score there.
            with mock.patch.object(plan_module, "lamp", function):
                plan = plan_module.plan_structure(model, step)
            pruned = plan_module.apply_plan(model, plan)
            before, after = accuracy(model), accuracy(pruned)
            pruned.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
            pruned.fit(train["x"], train["y"], epochs=args.epochs, batch_size=32, verbose=0)
            totals = plan.totals()
            units = "/".join(str(r.units_after) for r in plan.layers if r.units_after is not None)
            print(
                f"| {name} | {score} | {units} | {totals['units']['removed']:.3f} | "
                f"{totals['params']['before']:,} -> {totals['params']['after']:,} | {totals['flops']['ratio']:.2f}x | "
                f"{before:.4f} | {after:.4f} | {accuracy(pruned):.4f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
