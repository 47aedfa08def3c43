"""Accuracy recovered by fine-tuning: the shipped digits models pruned to 50-95% sparsity.

Each model is pruned (layer scope, every prunable kernel) and fine-tuned with the
same budget, then its accuracy on ``digits_test.npz`` is printed next to the dense
model's. Not a test: it takes a few minutes on a laptop CPU.

    python benchmarks/finetune_accuracy.py [--epochs 8] [--schedules polynomial,oneshot] [--learning-rate 3e-3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from prunectl.core.run.job import PruneRequest, run_prune
from prunectl.core.training.finetune import FinetuneOptions
from prunectl.core.weights.prune import WeightPruning

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
SPARSITIES = (0.5, 0.8, 0.9, 0.95)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--models", default="digits_mlp,digits_cnn")
    parser.add_argument("--schedules", default="polynomial,oneshot")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scope", default="layer")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--prune-end", type=float, default=0.5)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models.split(","):
            for schedule in args.schedules.split(","):
                for sparsity in SPARSITIES:
                    start = time.perf_counter()
                    report = run_prune(
                        PruneRequest(
                            model=SAMPLES / f"{name}.keras",
                            weights=WeightPruning(sparsity=sparsity, scope=args.scope),
                            output=Path(folder) / f"{name}.{schedule}.{sparsity}.keras",
                            finetune=FinetuneOptions(
                                data=SAMPLES / "digits_train.npz",
                                val_data=SAMPLES / "digits_test.npz",
                                epochs=args.epochs,
                                schedule=schedule,
                                seed=args.seed,
                                batch_size=args.batch_size,
                                learning_rate=args.learning_rate,
                                prune_end=args.prune_end,
                            ),
                        )
                    ).to_dict()
                    evaluation = report["finetune"]["evaluation"]
                    dense = evaluation["before_pruning"]["accuracy"]
                    pruned = evaluation["after_pruning"]["accuracy"]
                    tuned = evaluation["after_finetuning"]["accuracy"]
                    rows.append(
                        (
                            name,
                            schedule,
                            sparsity,
                            report["totals"]["prunable"]["sparsity"],
                            dense,
                            pruned,
                            tuned,
                            time.perf_counter() - start,
                        )
                    )
                    print(_row(rows[-1]), flush=True)
    print()
    print("| model | schedule | target | sparsity | dense acc | after pruning | after fine-tuning | gap (pts) | s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(_row(row))


def _row(row) -> str:
    name, schedule, target, sparsity, dense, pruned, tuned, seconds = row
    return (
        f"| {name} | {schedule} | {target:.0%} | {sparsity:.2%} | {dense:.2%} | {pruned:.2%} | {tuned:.2%} | "
        f"{100 * (tuned - dense):+.2f} | {seconds:.0f} |"
    )


if __name__ == "__main__":
    main()
