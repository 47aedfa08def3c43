"""Peer benchmark: prunectl against TFMOT 0.8.1 from identical dense weights, scored here alone.

Both tools start from the same dense digits models (benchmarks/digits_models.py,
one per model and seed), train on ``digits_train.npz`` with the same budget (8
epochs, batch 32) and are scored by this script, never by themselves: it rebuilds
each result in Keras 3, computes the test accuracy on ``digits_test.npz`` and
counts the zeros of the prunable kernels with numpy.

TFMOT runs in its own virtual environment (created on first use, then reused) with
``tensorflow``, ``tf_keras`` at this environment's TensorFlow version and
``tensorflow-model-optimization==0.8.1``; benchmarks/peer_tfmot_worker.py does its
part there (``prune_low_magnitude`` + ``PolynomialDecay`` 0 -> S over the first
half of the steps, ~20 mask updates, Adam 1e-3, ``strip_pruning``).

prunectl runs as ``prunectl prune DENSE --sparsity S --data digits_train.npz
--val-data digits_test.npz --seed K -o OUT -q VARIANT-ARGS`` through its click
command in this process (CliRunner: the same code path as the executable, without
paying TensorFlow's import for every cell). Variants are option strings:

    python benchmarks/peer_tfmot.py --json /tmp/peer.json [--dense-dir /tmp/dense14] [--seeds 0,1,2,3]
        [--variant 'default=--finetune-epochs 8 --batch-size 32'] [--variant 'oneshot:wanda=--weight-criterion wanda
        --finetune-epochs 0'] [--skip-small] [--skip-oneshot] [--skip-pattern] [--skip-peer] [--overlap]

A variant is ``[STUDY:]NAME=ARGS``; STUDY is one of main (default), small,
oneshot, pattern, and the variants given for a study replace its defaults.
Finished cells are kept in the --json file (keyed by model, seed, tool, variant,
column and the variant's arguments), so a re-run only runs what is missing.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits_models  # noqa: E402

HERE = Path(__file__).resolve().parent
WORKER = HERE / "peer_tfmot_worker.py"
TFMOT_VERSION = "0.8.1"
DEFAULT_VENV = Path.home() / ".cache" / "prunectl-bench" / "tfmot-venv"
DEFAULT_CACHE = Path.home() / ".cache" / "prunectl-bench" / "dense"
EPOCHS, BATCH, LEARNING_RATE = 8, 32, 1e-3
FINETUNE = f"--finetune-epochs {EPOCHS} --batch-size {BATCH}"
PEER = "TFMOT"
# A tool's true zero fraction may miss the target by this much (in points) before the table says so.
SPARSITY_SLACK = 0.5


@dataclass(frozen=True)
class Column:
    """One column of a study: its label, the zero fraction it targets, and the ``--sparsity`` passed (if any)."""

    label: str
    target: float
    sparsity: float | None
    pattern: tuple[int, int] | None = None


def sparsity_column(value: float) -> Column:
    return Column(f"{value:.0%}", value, value)


@dataclass
class Study:
    """Models x columns x variants, plus whether TFMOT runs the same cells."""

    name: str
    models: tuple[str, ...]
    columns: tuple[Column, ...]
    variants: dict[str, str]
    peer: bool = False
    title: str = ""
    notes: list[str] = field(default_factory=list)


def default_studies() -> dict[str, Study]:
    """The issue's comparisons, each with its default prunectl variants."""
    main = tuple(sparsity_column(s) for s in (0.5, 0.8, 0.9, 0.95))
    return {
        "main": Study(
            "main",
            ("mlp", "cnn"),
            main,
            {"default": FINETUNE, "polynomial": f"{FINETUNE} --schedule polynomial"},
            peer=True,
            title="fine-tuned, same budget",
        ),
        "small": Study(
            "small",
            ("small_mlp",),
            (sparsity_column(0.9),),
            {"default": FINETUNE},
            peer=True,
            title="small MLP 64-128-64-10",
        ),
        "oneshot": Study(
            "oneshot",
            ("mlp", "cnn"),
            (sparsity_column(0.5), sparsity_column(0.7)),
            {
                "magnitude": "--finetune-epochs 0",
                "wanda": "--weight-criterion wanda --finetune-epochs 0",
                "sparsegpt": "--weight-criterion sparsegpt --finetune-epochs 0",
            },
            title="one-shot, no fine-tuning",
        ),
        "pattern": Study(
            "pattern",
            ("cnn",),
            (Column("2:4", 0.5, None, (2, 4)),),
            {"2:4": f"--pattern 2:4 {FINETUNE}"},
            title="N:M pattern, fine-tuned",
        ),
    }


def parse_variant(text: str) -> tuple[str, str, str]:
    """``'[STUDY:]NAME=ARGS'`` -> ``(study, name, args)``; the study defaults to ``main``."""
    head, sep, args = text.partition("=")
    if not sep or not head.strip():
        raise argparse.ArgumentTypeError(f"a variant is [STUDY:]NAME=ARGS. Received: {text!r}")
    study, colon, name = head.rpartition(":")
    if not colon:
        study = "main"
    if study not in default_studies():
        raise argparse.ArgumentTypeError(
            f"a variant's study is one of {', '.join(default_studies())}. Received: {text!r}"
        )
    return study, name.strip(), args.strip()


# ---------------------------------------------------------------- scoring (pure numpy)


def kernels(weights: list[np.ndarray]) -> list[np.ndarray]:
    """The prunable kernels among a digits model's weights: every Dense/Conv kernel (ndim >= 2), no bias."""
    return [w for w in weights if np.ndim(w) >= 2]


def zero_fraction(weights: list[np.ndarray]) -> float:
    """Exact zeros over all elements of the prunable kernels."""
    found = kernels(weights)
    return float(sum(int(np.count_nonzero(k == 0)) for k in found)) / float(sum(k.size for k in found))


def nm_held(weights: list[np.ndarray], n: int, m: int) -> bool:
    """Whether every group of ``m`` consecutive input rows (per output column) holds at least ``n`` zeros.

    Rows are the kernel's input axes flattened (all but the last), the last input axis fastest, as
    core/weights/patterns.py lays them out. A kernel whose row count is not a multiple of ``m`` cannot hold
    the pattern and is not checked here (prunectl leaves it as it is): the zero fraction shows what it costs.
    """
    for kernel in kernels(weights):
        matrix = np.reshape(kernel, (-1, kernel.shape[-1]))
        if matrix.shape[0] % m:
            continue
        groups = matrix.reshape(matrix.shape[0] // m, m, matrix.shape[1])
        if np.any(np.count_nonzero(groups == 0, axis=1) < n):
            return False
    return True


def spread(values: list[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation."""
    return float(np.mean(values)), float(np.std(values))


# ---------------------------------------------------------------- results (a JSON-able dict)


def cell_key(model: str, seed: int, tool: str, variant: str, column: str) -> str:
    return f"{model}/{seed}/{tool}/{variant}/{column}"


def row_name(tool: str, variant: str) -> str:
    return PEER if tool == "tfmot" else f"prunectl {variant}"


def row_cells(results: dict, model: str, tool: str, variant: str, column: Column, seeds) -> list[dict]:
    """The finished (error-free) cells of one table cell, one per seed."""
    found = (results["cells"].get(cell_key(model, s, tool, variant, column.label)) for s in seeds)
    return [c for c in found if c is not None and "accuracy" in c]


def row_mean(results: dict, model: str, tool: str, variant: str, column: Column, seeds) -> float | None:
    """Mean test accuracy over every seed, or None unless every seed finished."""
    cells = row_cells(results, model, tool, variant, column, seeds)
    if len(cells) != len(list(seeds)):
        return None
    return spread([c["accuracy"] for c in cells])[0]


def dense_mean(results: dict, model: str, seeds) -> float | None:
    found = [results["dense"].get(f"{model}/{s}") for s in seeds]
    return None if None in found else float(np.mean(found))


def format_cell(values: list[float], seeds: int) -> str:
    if not values:
        return "-"
    mean, std = spread(values)
    missing = "" if len(values) == seeds else f" (n={len(values)})"
    return f"{mean:.2f} ±{std:.2f}{missing}"


def format_study(results: dict, study: Study, seeds) -> str:
    """Markdown: one table per model, rows = tool/variant, columns = targets, cells = mean ±std test accuracy."""
    seeds = list(seeds)
    rows = ([("tfmot", "polynomial")] if study.peer else []) + [("prunectl", v) for v in study.variants]
    lines = []
    for model in study.models:
        lines += [
            f"### {model}: {study.title} (test accuracy %, mean ±std over seeds {','.join(map(str, seeds))})",
            "",
            "| tool | " + " | ".join(c.label for c in study.columns) + " | s/cell |",
            "|---" * (len(study.columns) + 2) + "|",
        ]
        dense = [results["dense"][k] for k in (f"{model}/{s}" for s in seeds) if k in results["dense"]]
        lines.append("| dense | " + " | ".join(format_cell(dense, len(seeds)) for _ in study.columns) + " | |")
        warnings = []
        for tool, variant in rows:
            cells = {c.label: row_cells(results, model, tool, variant, c, seeds) for c in study.columns}
            seconds = [x["seconds"] for found in cells.values() for x in found]
            text = [format_cell([x["accuracy"] for x in cells[c.label]], len(seeds)) for c in study.columns]
            timing = f"{np.mean(seconds):.0f}" if seconds else ""
            lines.append(f"| {row_name(tool, variant)} | " + " | ".join(text) + f" | {timing} |")
            for column in study.columns:
                for cell in cells[column.label]:
                    missed = 100 * (column.target - cell["zeros"])
                    if abs(missed) > SPARSITY_SLACK:
                        warnings.append(
                            f"WARNING {row_name(tool, variant)} {column.label} seed {cell['seed']}: true zero "
                            f"fraction {cell['zeros']:.2%}, target {column.target:.0%}"
                        )
                    if column.pattern and not cell.get("pattern_held"):
                        warnings.append(
                            f"WARNING {row_name(tool, variant)} {column.label} seed {cell['seed']}: the "
                            f"{column.label} pattern does not hold in the saved kernels"
                        )
        errors = [
            f"ERROR {row_name(tool, variant)} {c.label} seed {s}: {cell['error']}"
            for tool, variant in rows
            for c in study.columns
            for s in seeds
            if "error" in (cell := results["cells"].get(cell_key(model, s, tool, variant, c.label), {}))
        ]
        lines += ["", *warnings, *errors, ""] if warnings or errors else [""]
    return "\n".join(lines)


def target_checks(results: dict, seeds) -> list[str]:
    """The issue's targets, each a ``PASS``/``FAIL``/``SKIP`` line (SKIP: a cell it needs is missing)."""
    seeds = list(seeds)
    studies = default_studies()
    lines = []

    def check(value: float | None, bound: float, text: str) -> None:
        """PASS when ``value >= bound`` (value: a gap in points), SKIP when it is missing."""
        verdict = "SKIP" if value is None else "PASS" if value >= bound else "FAIL"
        lines.append(f"{verdict}  {text} ({'n/a' if value is None else f'{value:+.2f}'})")

    def mean(model, tool, variant, column):
        return row_mean(results, model, tool, variant, column, seeds)

    def gap(a, b):
        return None if a is None or b is None else a - b

    for model in ("mlp", "cnn"):
        columns = studies["main"].columns
        gaps = [gap(mean(model, "prunectl", "default", c), mean(model, "tfmot", "polynomial", c)) for c in columns]
        for column, value in zip(columns, gaps):
            check(value, 0, f"{model} {column.label}: prunectl default >= TFMOT")
        check(gaps[-1], 2, f"{model} 95%: prunectl default >= TFMOT + 2")
    small = studies["small"].columns[0]
    check(
        gap(mean("small_mlp", "prunectl", "default", small), dense_mean(results, "small_mlp", seeds)),
        -2,
        "small_mlp 90%: prunectl default within 2 points of dense",
    )
    half, seventy = studies["oneshot"].columns
    for model in ("mlp", "cnn"):
        dense = dense_mean(results, model, seeds)
        magnitude = mean(model, "prunectl", "magnitude", seventy)
        for criterion in ("wanda", "sparsegpt"):
            at_half = gap(mean(model, "prunectl", criterion, half), dense)
            check(at_half, -0.5, f"{model} 50% {criterion} one-shot within 0.5 of dense")
            check(
                gap(mean(model, "prunectl", criterion, seventy), magnitude),
                5,
                f"{model} 70% {criterion} one-shot >= magnitude + 5",
            )
    pattern = studies["pattern"].columns[0]
    check(
        gap(mean("cnn", "prunectl", "2:4", pattern), dense_mean(results, "cnn", seeds)),
        -1,
        "cnn 2:4 + fine-tuning within 1 point of dense",
    )
    return lines


# ---------------------------------------------------------------- running


def save_results(results: dict, path: Path | None) -> None:
    if path is not None:
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(results, indent=1, sort_keys=True))
        temporary.replace(path)


def dense_model(name: str, seed: int, dense_dir: Path | None, cache: Path) -> Path:
    """The dense ``<name>.seed<seed>.keras``: from --dense-dir if there, else from (or trained into) the cache."""
    for folder in (dense_dir, cache):
        if folder is not None and (folder / f"{name}.seed{seed}.keras").exists():
            return folder / f"{name}.seed{seed}.keras"
    cache.mkdir(parents=True, exist_ok=True)
    print(f"training dense {name} seed {seed} into {cache}", flush=True)
    return digits_models.train_dense(name, seed, cache)


def peer_python(venv: Path) -> Path:
    """The peer venv's python; the venv is created and TFMOT installed on first use (or after a failed install)."""
    python = venv / "bin" / "python"
    # Written only once pip succeeded, so an interrupted install is finished by the next run instead of reused.
    ready = venv / "prunectl-bench-ready"
    if not ready.exists():
        tf_version = importlib.metadata.version("tensorflow")
        major_minor = ".".join(tf_version.split(".")[:2])
        requirements = [
            f"tensorflow=={tf_version}",
            f"tf_keras~={major_minor}.0",
            f"tensorflow-model-optimization=={TFMOT_VERSION}",
        ]
        print(f"installing {' '.join(requirements)} into {venv}", flush=True)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
        ready.write_text("\n".join(requirements) + "\n")
    return python


def start_peer(python: Path, jobs: list[dict], folder: Path) -> tuple[subprocess.Popen, Path]:
    """Start the worker on ``jobs``; its JSON lines go to a file read once it ends."""
    (folder / "jobs.json").write_text(json.dumps(jobs))
    log = folder / "worker.out"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [str(python), str(WORKER), str(folder / "jobs.json")],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
    return process, log


def score(keras, model: str, seed: int, weights: list[np.ndarray], xt, yt, pattern=None) -> dict:
    """Accuracy of ``weights`` in the Keras 3 architecture, and their true zero fraction."""
    rebuilt = digits_models.build(keras, model, seed)
    rebuilt.set_weights(weights)
    result = {"accuracy": digits_models.accuracy(rebuilt, xt, yt), "zeros": zero_fraction(weights)}
    if pattern is not None:
        result["pattern_held"] = nm_held(weights, *pattern)
    return result


def prunectl_cell(dense: Path, out: Path, column: Column, seed: int, args: str, runner: str) -> str | None:
    """Run one ``prunectl prune``; returns None on success, else its error text."""
    command = ["prune", str(dense), "-o", str(out), "-q", "--seed", str(seed)]
    command += ["--data", str(digits_models.SAMPLES / "digits_train.npz")]
    command += ["--val-data", str(digits_models.SAMPLES / "digits_test.npz")]
    if column.sparsity is not None:
        command += ["--sparsity", str(column.sparsity)]
    command += shlex.split(args)
    if runner == "subprocess":
        done = subprocess.run(["prunectl", *command], capture_output=True, text=True)
        return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1]
    from click.testing import CliRunner

    from prunectl.cli.main import cli

    result = CliRunner().invoke(cli, command)
    if result.exit_code == 0:
        return None
    return (result.output.strip().splitlines() or [repr(result.exception)])[-1]


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="Results file, read first: finished cells are not run again.")
    parser.add_argument("--dense-dir", type=Path, help="Where <model>.seed<k>.keras dense models already are.")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="Dense models trained here when missing.")
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV, help="The peer's virtual environment.")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--models", default="mlp,cnn", help="Models of the main study.")
    parser.add_argument("--variant", action="append", type=parse_variant, default=[], metavar="[STUDY:]NAME=ARGS")
    parser.add_argument("--runner", choices=("inprocess", "subprocess"), default="inprocess")
    parser.add_argument("--overlap", action="store_true", help="Run TFMOT's worker while prunectl runs here.")
    for study in ("small", "oneshot", "pattern", "peer"):
        parser.add_argument(f"--skip-{study}", action="store_true")
    parser.add_argument("--skip-prunectl", action="store_true")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    studies = default_studies()
    studies["main"].models = tuple(args.models.split(","))
    given: dict[str, dict[str, str]] = {}
    for study, name, variant_args in args.variant:
        given.setdefault(study, {})[name] = variant_args
    for study, variants in given.items():
        studies[study].variants = variants
    for name in ("small", "oneshot", "pattern"):
        if getattr(args, f"skip_{name}"):
            del studies[name]
    results = {"dense": {}, "dense_tf_keras": {}, "cells": {}, "versions": {}}
    if args.json and args.json.exists():
        results.update(json.loads(args.json.read_text()))

    import keras

    _, _, xt, yt = digits_models.digits()
    models = sorted({m for s in studies.values() for m in s.models})
    dense = {(m, s): dense_model(m, s, args.dense_dir, args.cache) for m in models for s in seeds}
    with tempfile.TemporaryDirectory(prefix="peer-tfmot-") as temporary:
        folder = Path(temporary)
        jobs = []
        for (model, seed), path in dense.items():
            weights = keras.saving.load_model(path).get_weights()
            results["dense"][f"{model}/{seed}"] = score(keras, model, seed, weights, xt, yt)["accuracy"]
            keras.backend.clear_session()
            wanted = [
                c.sparsity
                for s in studies.values()
                if s.peer and model in s.models
                for c in s.columns
                if cell_key(model, seed, "tfmot", "polynomial", c.label) not in results["cells"]
            ]
            if wanted and not args.skip_peer:
                np.savez(folder / f"{model}.seed{seed}.npz", **{f"w{i}": w for i, w in enumerate(weights)})
                jobs.append(
                    {
                        "model": model,
                        "seed": seed,
                        "weights": str(folder / f"{model}.seed{seed}.npz"),
                        "sparsities": wanted,
                        "out_dir": str(folder),
                        "epochs": EPOCHS,
                        "batch_size": BATCH,
                        "learning_rate": LEARNING_RATE,
                    }
                )
        save_results(results, args.json)
        peer = None
        if jobs:
            started = time.perf_counter()
            peer = start_peer(peer_python(args.venv), jobs, folder)
            if not args.overlap:
                peer[0].wait()
                collect_peer(keras, results, peer[1], studies, xt, yt, args.json, time.perf_counter() - started)
                peer = None
        if not args.skip_prunectl:
            run_prunectl(keras, results, studies, dense, seeds, folder, args, xt, yt)
        if peer is not None:
            peer[0].wait()
            collect_peer(keras, results, peer[1], studies, xt, yt, args.json, time.perf_counter() - started)
    print()
    print("versions: " + json.dumps(results["versions"]))
    for study in studies.values():
        print(format_study(results, study, seeds))
    print("\n".join(target_checks(results, seeds)))


def collect_peer(keras, results, log: Path, studies, xt, yt, path, seconds: float) -> None:
    """Score every cell the worker finished (its own numbers are only the dense check and its timings).

    ``seconds`` is this process's wait, replaced by the worker's own wall time when it reports one.
    """
    text = log.read_text()
    labels = {c.sparsity: c.label for s in studies.values() if s.peer for c in s.columns}
    done = 0
    for line in text.splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        if "finished_seconds" in record:
            seconds = record["finished_seconds"]
        elif "versions" in record:
            results["versions"]["peer"] = record["versions"]
        elif "dense_accuracy" in record:
            key = f"{record['model']}/{record['seed']}"
            results["dense_tf_keras"][key] = record["dense_accuracy"]
            print(f"dense {key}: Keras 3 {results['dense'][key]:.2f}%, tf_keras {record['dense_accuracy']:.2f}%")
            if abs(record["dense_accuracy"] - results["dense"][key]) > 1e-9:
                raise SystemExit(f"the tf_keras build of {key} is not the Keras 3 model. Received: {record}")
        else:
            loaded = np.load(record["weights"])
            weights = [loaded[f"w{i}"] for i in range(len(loaded.files))]
            cell = score(keras, record["model"], record["seed"], weights, xt, yt)
            cell.update(seed=record["seed"], seconds=record["seconds"], frequency=record["frequency"])
            cell["end_step"] = record["end_step"]
            label = labels[record["sparsity"]]
            results["cells"][cell_key(record["model"], record["seed"], "tfmot", "polynomial", label)] = cell
            keras.backend.clear_session()
            done += 1
    print(f"TFMOT: {done} cells in {seconds:.0f} s (the worker's wall time after importing TensorFlow)", flush=True)
    if "versions" not in text:
        raise SystemExit(f"the TFMOT worker failed. Received: {text[-2000:]}")
    save_results(results, path)


def run_prunectl(keras, results, studies, dense, seeds, folder: Path, args, xt, yt) -> None:
    import prunectl

    results["versions"]["prunectl"] = {
        "prunectl": prunectl.__version__,
        "tensorflow": importlib.metadata.version("tensorflow"),
        "keras": keras.__version__,
    }
    for study in studies.values():
        for model in study.models:
            for seed in seeds:
                for variant, variant_args in study.variants.items():
                    for column in study.columns:
                        key = cell_key(model, seed, "prunectl", variant, column.label)
                        cached = results["cells"].get(key, {})
                        if "accuracy" in cached and cached.get("args") == variant_args:
                            continue
                        # A folder per cell: prunectl writes its report beside the model and never overwrites.
                        out = Path(tempfile.mkdtemp(dir=folder)) / "out.keras"
                        start = time.perf_counter()
                        error = prunectl_cell(dense[model, seed], out, column, seed, variant_args, args.runner)
                        seconds = time.perf_counter() - start
                        if error is None:
                            weights = keras.saving.load_model(out, compile=False).get_weights()
                            cell = score(keras, model, seed, weights, xt, yt, column.pattern)
                        else:
                            cell = {"error": error}
                        cell.update(seed=seed, seconds=seconds, args=variant_args)
                        results["cells"][key] = cell
                        keras.backend.clear_session()
                        print(f"{key}: {json.dumps(cell)}", flush=True)
                        save_results(results, args.json)


if __name__ == "__main__":
    main()
