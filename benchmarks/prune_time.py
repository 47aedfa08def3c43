"""Structural prune time through the real CLI against a bare Keras load + save of the same model.

    python benchmarks/prune_time.py [--model DenseNet121] [--size 224] [--repeats 5] [--workdir DIR]
        [-- EXTRA PRUNE ARGS]

Builds ``keras.applications.<model>`` (``weights=None``) once and saves it as
``.keras``. Then, in fresh processes, interleaved (A, B, A, B, ... the order
flipped every round, so a busy spell of the machine costs both alike):

A. a bare Keras load + save: ``keras.models.load_model(path, compile=False)``
   then ``model.save(out)``, the least any tool that rewrites the model does;
B. ``prunectl prune model.keras --neuron-ratio 0.5 --round-to 8 -o out.keras --force``.

Each process's wall time includes starting Python and importing TensorFlow,
which both pay alike. Printed: every round's seconds, and the ratio B / A of the
fastest and of the median rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BARE = (
    "import os, sys; os.environ.setdefault('KERAS_BACKEND', 'tensorflow'); import keras; "
    "keras.models.load_model(sys.argv[1], compile=False).save(sys.argv[2])"
)
PRUNE_ARGS = ("--neuron-ratio", "0.5", "--round-to", "8")


def build_model(name: str, size: int, path: Path) -> Path:
    """Save ``keras.applications.<name>`` (``weights=None``, ``size`` x ``size`` x 3 input) to ``path``."""
    code = (
        "import os, sys; os.environ.setdefault('KERAS_BACKEND', 'tensorflow'); import keras; "
        f"keras.applications.{name}(input_shape=({size}, {size}, 3), weights=None).save(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, stderr=subprocess.DEVNULL)
    return path


def commands(model: Path, workdir: Path, prune_args: tuple[str, ...] = PRUNE_ARGS) -> dict[str, list[str]]:
    """The two commands timed: the bare Keras load + save, and ``prunectl prune``."""
    return {
        "keras load+save": [sys.executable, "-c", BARE, str(model), str(workdir / "bare.keras")],
        "prunectl prune": [
            sys.executable,
            "-m",
            "prunectl",
            "prune",
            str(model),
            *prune_args,
            "-o",
            str(workdir / "pruned.keras"),
            "--force",
            "--quiet",
        ],
    }


def time_processes(named: dict[str, list[str]], repeats: int) -> dict[str, list[float]]:
    """Wall seconds of each command run ``repeats`` times, interleaved, the order flipped every round."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    names = list(named)
    spent: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names if round_ % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            done = subprocess.run(named[name], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            if done.returncode:
                raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
            spent[name].append(time.perf_counter() - start)
    return spent


def ratios(spent: dict[str, list[float]], slow: str, base: str) -> dict[str, float]:
    """``slow`` over ``base`` for the fastest and the median round."""
    return {
        "min": min(spent[slow]) / min(spent[base]),
        "median": statistics.median(spent[slow]) / statistics.median(spent[base]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="DenseNet121")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", type=Path, help="keep the model here (built once) instead of a temporary folder")
    parser.add_argument("prune_args", nargs="*", help="prune options instead of the defaults (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        model = workdir / f"{args.model.lower()}_{args.size}.keras"
        if not model.exists():
            build_model(args.model, args.size, model)
        named = commands(model, workdir, tuple(args.prune_args) or PRUNE_ARGS)
        spent = time_processes(named, args.repeats)
        print(f"{args.model} {args.size}x{args.size}, {model.stat().st_size / 1e6:.1f} MB; {args.repeats} rounds")
        for name, seconds in spent.items():
            print(f"{name}: " + " ".join(f"{s:.2f}" for s in seconds) + " s")
        r = ratios(spent, "prunectl prune", "keras load+save")
        print(f"prune / bare load+save: fastest {r['min']:.2f}x, median {r['median']:.2f}x")


if __name__ == "__main__":
    main()
