"""Iterative against one-shot structural pruning at equal fine-tuning: the shipped digits CNN.

Both arms go through the real ``prunectl prune --recipe`` (a subprocess each) and end at
the same neuron ratio after the same number of fine-tuning epochs ``E``:

- one-shot: ``neuron-ratio = r``, then ``E`` epochs of fine-tuning;
- iterative: ``neuron-ratio = r`` with ``iterations = S``, ``E / S`` epochs after each stage.

Each stage's ratio is of the units left (prunectl's :func:`~prunectl.core.run.pipeline.split`), so
the units each arm removes may differ by rounding: the table shows both arms' final params and
FLOPs and their difference. Accuracy is the last step's, on ``digits_test.npz`` (the runs'
``val-data``: evaluated after each epoch, never used to choose weights). Not a test: the
default run takes a few minutes on a laptop CPU.

    python benchmarks/iterative.py [--ratios 0.6,0.75,0.9] [--epochs 6] [--stages 3] [--seeds 0,1,2,3,4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"
ARMS = ("one-shot", "iterative")


def recipe(arm: str, ratio: float, epochs: int, stages: int, seed: int, tuning: dict, step: dict) -> str:
    """The TOML recipe of one arm: ``epochs`` in all, split evenly between the stages of the iterative arm.

    Args:
        tuning: other ``[finetune]`` options (None values left out), the same for both arms.
        step: other options of the structural step (``neuron-criterion``), the same for both arms.
    """
    values = {"finetune-epochs": epochs if arm == "one-shot" else epochs // stages, "seed": seed, **tuning}
    lines = [
        "[finetune]",
        f"data = {json.dumps(str(SAMPLES / 'digits_train.npz'))}",
        f"val-data = {json.dumps(str(SAMPLES / 'digits_test.npz'))}",
        *(f"{key} = {json.dumps(value)}" for key, value in values.items() if value is not None),
        "",
        "[[step]]",
        f"neuron-ratio = {ratio}",
        *(f"{key} = {json.dumps(value)}" for key, value in step.items() if value is not None),
    ]
    if arm == "iterative":
        # The last stage's fine-tuning: the run's [finetune] options, as between the stages.
        lines += [f"iterations = {stages}", "", "[[step]]", 'kind = "finetune"']
    return "\n".join(lines) + "\n"


def run_arm(model: Path, text: str, folder: Path, name: str) -> dict:
    """Run ``prunectl prune --recipe`` on ``text``; the final step's figures and the steps' accuracies."""
    path = folder / f"{name}.toml"
    path.write_text(text)
    report = folder / f"{name}.json"
    command = [sys.executable, "-m", "prunectl", "prune", str(model), "--recipe", str(path)]
    command += ["-o", str(folder / f"{name}.keras"), "--report", str(report), "--force", "-q"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name}: prunectl exited {done.returncode}: {done.stderr.strip()[-500:]}")
    steps = json.loads(report.read_text())["steps"]
    last = steps[-1]
    return {
        "params": last["params"],
        "flops": last["flops"],
        "accuracy": last["metrics"]["accuracy"],
        "trace": [s["metrics"]["accuracy"] for s in steps if s["kind"] == "finetune"],
        "seconds": time.perf_counter() - start,
    }


def summary(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.2f} ({100 * min(values):.2f}-{100 * max(values):.2f})"


def table(results: dict, seeds: list[int]) -> list[str]:
    """The side-by-side table: one row per ratio and arm, then the iterative arm's difference."""
    lines = [
        "| ratio | arm | params | FLOPs | accuracy % mean (min-max) | per seed | s/run |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for ratio, arms in results.items():
        for arm in ARMS:
            runs = arms[arm]
            sizes = {(r["params"], r["flops"]) for r in runs}
            params, flops = (f"{p:,}" for p in next(iter(sizes))) if len(sizes) == 1 else ("varies", "varies")
            per_seed = " ".join(f"{100 * r['accuracy']:.2f}" for r in runs)
            seconds = statistics.mean(r["seconds"] for r in runs)
            lines.append(
                f"| {ratio} | {arm} | {params} | {flops} | {summary([r['accuracy'] for r in runs])} | "
                f"{per_seed} | {seconds:.0f} |"
            )
        one, it = arms["one-shot"], arms["iterative"]
        gaps = [b["accuracy"] - a["accuracy"] for a, b in zip(one, it, strict=True)]
        wins = sum(gap > 0 for gap in gaps)
        ties = sum(gap == 0 for gap in gaps)
        lines.append(
            f"| {ratio} | iterative - one-shot | {it[0]['params'] - one[0]['params']:+,} | "
            f"{it[0]['flops'] - one[0]['flops']:+,} | {100 * statistics.mean(gaps):+.2f} pts "
            f"(ratio {statistics.mean(b['accuracy'] for b in it) / statistics.mean(a['accuracy'] for a in one):.4f}) "
            f"| iterative ahead on {wins}, tied on {ties} of {len(seeds)} seeds | |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SAMPLES / "digits_cnn.keras"))
    parser.add_argument("--ratios", default="0.6,0.75,0.9", help="comma-separated final neuron ratios")
    parser.add_argument("--epochs", type=int, default=6, help="total fine-tuning epochs of each arm")
    parser.add_argument("--stages", type=int, default=3, help="iterations of the iterative arm")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--criterion", default=None, help="neuron-criterion (default: prunectl's)")
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--lr-scale", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    args = parser.parse_args()
    if args.epochs % args.stages:
        parser.error(f"--epochs must be a multiple of --stages. Received: {args.epochs} and {args.stages}")
    seeds = [int(s) for s in args.seeds.split(",")]
    tuning = {"learning-rate": args.learning_rate, "lr-scale": args.lr_scale, "batch-size": args.batch_size}
    step = {"neuron-criterion": args.criterion}
    print(
        f"model {Path(args.model).name}, {args.epochs} fine-tuning epochs per arm "
        f"(iterative: {args.stages} stages of {args.epochs // args.stages}), seeds {seeds}",
        flush=True,
    )
    results: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        for ratio in (float(r) for r in args.ratios.split(",")):
            results[ratio] = {arm: [] for arm in ARMS}
            for seed in seeds:
                for arm in ARMS:
                    text = recipe(arm, ratio, args.epochs, args.stages, seed, tuning, step)
                    run = run_arm(Path(args.model), text, Path(folder), f"{arm}-{ratio}-{seed}")
                    results[ratio][arm].append(run)
                    trace = " -> ".join(f"{100 * a:.2f}" for a in run["trace"])
                    print(f"ratio {ratio} seed {seed} {arm}: {trace} ({run['seconds']:.0f} s)", flush=True)
    print()
    print("\n".join(table(results, seeds)))


if __name__ == "__main__":
    main()
