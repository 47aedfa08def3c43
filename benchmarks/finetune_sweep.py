"""Which fine-tuning recipe recovers the most accuracy: the sweep behind prunectl's fine-tuning defaults.

Each dense digits model (``benchmarks/digits_models.py``; trained copies named
``<model>.seed<k>.keras`` in ``--dense``) is pruned to each sparsity and
fine-tuned with each named recipe in :data:`RECIPES` for the same budget
(8 epochs, batch 32, ``digits_train.npz``; the seed of the dense model seeds the
run); the test accuracy on ``digits_test.npz`` is computed here from the saved
output, not taken from prunectl's report. Prints one row per (model, sparsity,
recipe): the mean over the seeds and each seed's accuracy. Not a test: a few
seconds a run on a 2-core CPU. Results: ``benchmarks/RESULTS-finetune-sweep.md``.

    python benchmarks/finetune_sweep.py --dense /tmp/dense14 --models mlp,cnn --seeds 0,1 \\
        --sparsities 0.5,0.8,0.9,0.95 --recipes today,lr3,poly50-lr5,default
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

# Each recipe: FinetuneOptions fields over BASE (the defaults before this sweep: "today"), plus "scope" (the
# weight step's) and "restarts" (warm-up after every mask update). "lr3" means learning rate 3e-3 (3x the dense
# models' 1e-3), "kd.5T2" distillation with alpha 0.5 at T 2, "g" global scope, "poly50" the polynomial schedule
# reaching the target at half the run.
BASE = {"schedule": "oneshot", "distill": 0.0, "lr_schedule": "constant", "warmup": 0.0, "lr_scale": 1.0}
RECIPES = {
    "today": {},
    "poly30": {"schedule": "polynomial", "prune_end": 0.3},
    "poly50": {"schedule": "polynomial", "prune_end": 0.5},
    "poly70": {"schedule": "polynomial", "prune_end": 0.7},
    "cos": {"lr_schedule": "cosine"},
    "cos-warm": {"lr_schedule": "cosine", "warmup": 0.05},
    "cos-lr3e-3": {"lr_schedule": "cosine", "learning_rate": 3e-3},
    "cos-global": {"lr_schedule": "cosine", "scope": "global"},
    "cos-kd.5T4": {"lr_schedule": "cosine", "distill": 0.5, "temperature": 4.0},
    "cos-kd.9T4": {"lr_schedule": "cosine", "distill": 0.9, "temperature": 4.0},
    "cos-kd.5T2": {"lr_schedule": "cosine", "distill": 0.5, "temperature": 2.0},
    "poly50-cos": {"schedule": "polynomial", "prune_end": 0.5, "lr_schedule": "cosine"},
    "poly50-cos-kd.5T4": {"schedule": "polynomial", "prune_end": 0.5, "lr_schedule": "cosine", "distill": 0.5},
    "poly50-cos-warm-restarts": {
        "schedule": "polynomial",
        "prune_end": 0.5,
        "lr_schedule": "cosine",
        "warmup": 0.02,
        "restarts": True,
    },
    "kd.1T1": {"distill": 0.1, "temperature": 1.0},
    "kd1T1": {"distill": 1.0, "temperature": 1.0},
    "kd.5T1": {"distill": 0.5, "temperature": 1.0},
    "lr3": {"learning_rate": 3e-3},
    "poly50-lr3": {"schedule": "polynomial", "prune_end": 0.5, "learning_rate": 3e-3},
    "lr5": {"learning_rate": 5e-3},
    "cos-lr5": {"lr_schedule": "cosine", "learning_rate": 5e-3},
    "lr3-warm": {"learning_rate": 3e-3, "warmup": 0.05},
    "lr3-kd.5T2": {"learning_rate": 3e-3, "distill": 0.5, "temperature": 2.0},
    "poly30-lr3": {"schedule": "polynomial", "prune_end": 0.3, "learning_rate": 3e-3},
    "lr10": {"learning_rate": 1e-2},
    "poly50-lr5": {"schedule": "polynomial", "prune_end": 0.5, "learning_rate": 5e-3},
    "g": {"scope": "global"},
    "g-lr3": {"scope": "global", "learning_rate": 3e-3},
    "g-cos-lr3": {"scope": "global", "lr_schedule": "cosine", "learning_rate": 3e-3},
    "g-cos-lr3-warm": {"scope": "global", "lr_schedule": "cosine", "learning_rate": 3e-3, "warmup": 0.05},
    "g-cos-lr5-warm": {"scope": "global", "lr_schedule": "cosine", "learning_rate": 5e-3, "warmup": 0.05},
    "g-cos-lr3-kd.5T2": {
        "scope": "global",
        "lr_schedule": "cosine",
        "learning_rate": 3e-3,
        "distill": 0.5,
        "temperature": 2.0,
    },
    "g-poly50-lr3": {"scope": "global", "schedule": "polynomial", "prune_end": 0.5, "learning_rate": 3e-3},
    "g-poly30-cos-lr3": {
        "scope": "global",
        "schedule": "polynomial",
        "prune_end": 0.3,
        "lr_schedule": "cosine",
        "learning_rate": 3e-3,
    },
    "g-poly50-cos-lr3": {
        "scope": "global",
        "schedule": "polynomial",
        "prune_end": 0.5,
        "lr_schedule": "cosine",
        "learning_rate": 3e-3,
    },
    "g-poly50-cos-lr3-restarts": {
        "scope": "global",
        "schedule": "polynomial",
        "prune_end": 0.5,
        "lr_schedule": "cosine",
        "learning_rate": 3e-3,
        "warmup": 0.02,
        "restarts": True,
    },
    # prunectl's defaults when a user fine-tunes (only --finetune-epochs, --data, --sparsity given).
    "default": None,
}
SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def run(dense: Path, sparsity: float, recipe: str, seed: int, epochs: int, folder: Path) -> float:
    """Prune and fine-tune ``dense`` with ``recipe``; the saved output's test accuracy in %."""
    import keras
    from digits_models import accuracy, digits

    from prunectl.core.run.job import PruneRequest, run_prune
    from prunectl.core.training import defaults
    from prunectl.core.training.finetune import FinetuneOptions
    from prunectl.core.weights.prune import WeightPruning

    values = {} if RECIPES[recipe] is None else {**BASE, **RECIPES[recipe]}
    scope = values.pop("scope", "layer")
    saved, defaults.WARMUP_AFTER_UPDATES = defaults.WARMUP_AFTER_UPDATES, values.pop("restarts", False)
    output = folder / f"{dense.stem}.{recipe}.{sparsity}.keras"
    try:
        run_prune(
            PruneRequest(
                model=dense,
                weights=WeightPruning(sparsity=sparsity, scope=scope),
                output=output,
                finetune=FinetuneOptions(
                    data=SAMPLES / "digits_train.npz",
                    val_data=SAMPLES / "digits_test.npz",
                    epochs=epochs,
                    batch_size=32,
                    seed=seed,
                    **values,
                ),
            )
        )
    finally:
        defaults.WARMUP_AFTER_UPDATES = saved
    _, _, x, y = digits()
    return accuracy(keras.saving.load_model(output), x, y)


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", type=Path, default=Path("/tmp/dense14"))
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--sparsities", default="0.5,0.8,0.9,0.95")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    import keras
    from digits_models import accuracy, digits

    _, _, xt, yt = digits()
    print("| recipe | model | sparsity | dense | mean acc | per seed | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            seeds = [int(s) for s in args.seeds.split(",")]
            dense = {s: accuracy(keras.saving.load_model(args.dense / f"{name}.seed{s}.keras"), xt, yt) for s in seeds}
            for sparsity in map(float, args.sparsities.split(",")):
                for recipe in args.recipes.split(","):
                    start = time.perf_counter()
                    scores = [
                        run(args.dense / f"{name}.seed{s}.keras", sparsity, recipe, s, args.epochs, Path(tmp))
                        for s in seeds
                    ]
                    print(
                        f"| {recipe} | {name} | {sparsity:.0%} | {statistics.mean(dense.values()):.2f} "
                        f"| {statistics.mean(scores):.2f} | {' / '.join(f'{a:.2f}' for a in scores)} "
                        f"| {time.perf_counter() - start:.0f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
