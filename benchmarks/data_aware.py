"""One-shot pruning without fine-tuning: magnitude vs wanda vs sparsegpt on the digits models.

Each run is the real CLI (``prunectl prune``) on a dense model from
``benchmarks/digits_models.py``, calibrated on the training split; accuracy is
scored here, on the held-out test split, from the model loaded from the output
file. Prints a table of the mean over the seeds given.

    python benchmarks/data_aware.py DENSE_DIR [--models mlp,cnn] [--seeds 0,1] [--sparsities 0.5,0.7]
        [--samples 256]

``DENSE_DIR`` holds ``<model>.seed<k>.keras`` as ``digits_models.py`` writes them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_models import SAMPLES, accuracy  # noqa: E402

CRITERIA = ("magnitude", "wanda", "sparsegpt")


def prune(source: Path, target: Path, sparsity: float, criterion: str, samples: int) -> None:
    command = [sys.executable, "-m", "prunectl", "prune", str(source), "-o", str(target), "--force", "-q"]
    command += ["--sparsity", str(sparsity), "--weight-criterion", criterion]
    if criterion != "magnitude":
        command += ["--data", str(SAMPLES / "digits_train.npz"), "--calibration-samples", str(samples)]
    subprocess.run(command, check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dense", type=Path)
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--sparsities", default="0.5,0.7")
    parser.add_argument("--samples", type=int, default=256)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    test = np.load(SAMPLES / "digits_test.npz")
    seeds = [int(s) for s in args.seeds.split(",")]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    print(f"calibration: first {args.samples} of digits_train.npz; test accuracy in %, mean of seeds {seeds}")
    print("| model | sparsity | dense | magnitude | wanda | sparsegpt |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.models.split(","):
            sources = [args.dense / f"{name}.seed{seed}.keras" for seed in seeds]
            dense = np.mean(
                [accuracy(keras.models.load_model(s, compile=False), test["x"], test["y"]) for s in sources]
            )
            for sparsity in sparsities:
                scores = {}
                for criterion in CRITERIA:
                    runs = []
                    for source in sources:
                        target = Path(scratch) / f"{source.stem}.{criterion}.keras"
                        prune(source, target, sparsity, criterion, args.samples)
                        runs.append(accuracy(keras.models.load_model(target, compile=False), test["x"], test["y"]))
                    scores[criterion] = np.mean(runs)
                row = " | ".join(f"{scores[c]:.2f}" for c in CRITERIA)
                print(f"| {name} | {sparsity:.0%} | {dense:.2f} | {row} |", flush=True)


if __name__ == "__main__":
    main()
