"""Issue 17 benchmark: prunectl's loadable output against TFMOT's stripped model gzipped at level 9.

For the dense digits MLP and CNN (benchmarks/digits_models.py, seed 0; trained once
and cached like benchmarks/peer_tfmot.py) at each sparsity, TFMOT 0.8.1 prunes in its
own virtual environment (the one peer_tfmot.py makes): ``prune_low_magnitude`` with
``ConstantSparsity(S, begin_step=0, frequency=1)``, one training step at learning
rate 0 so the masks are set and no weight moves, ``strip_pruning``, a tf_keras
``.h5`` save without the optimizer, then the file gzipped at level 9 (Python's
gzip module, as ``gzip -9``). Its stripped weights come back, and prunectl writes
THOSE SAME TENSORS (into the Keras 3 model, saved without an optimizer) through
``write_model``, so the two files differ only in their container:

* ``fast``, ``strong``: the per-tensor policies (core/io/compress.py);
* ``legacy``: today's rule before issue 17, zlib 1 with shuffle on every tensor and
  HDF5's 1.8 file format, kept here so both run side by side in one process.

Columns: size in bytes, size / TFMOT gzip-9, size / the dense model's file in
the same format (uncompressed, as Keras saves it), and write seconds (best of 3)
relative to legacy. VGG16 (keras.applications, weights=None, 90% of the kernels' weights by
magnitude under one threshold, as benchmarks/bench_io.py) gives size / dense and write
time of fast and strong vs legacy.

    python benchmarks/file_size.py [--skip-vgg] [--skip-peer] [--sparsities 0.5,0.8,0.9,0.95]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits_models  # noqa: E402

HERE = Path(__file__).resolve().parent
VENV = Path.home() / ".cache" / "prunectl-bench" / "tfmot-venv"
CACHE = Path.home() / ".cache" / "prunectl-bench" / "dense"
MODELS = ("mlp", "cnn")
POLICIES = ("legacy", "fast", "strong")


def tfmot_worker(jobs_path: str) -> None:
    """Runs in TFMOT's venv: prune each job's dense weights at its sparsity, strip, save .h5, gzip -9."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow_model_optimization as tfmot
    import tf_keras

    api = tfmot.sparsity.keras
    x, y, _, _ = digits_models.digits()
    for job in json.loads(Path(jobs_path).read_text()):
        dense = np.load(job["weights"])
        model = digits_models.build(tf_keras, job["model"], 0)
        model.set_weights([dense[f"w{i}"] for i in range(len(dense.files))])
        schedule = api.ConstantSparsity(job["sparsity"], begin_step=0, frequency=1)
        pruned = api.prune_low_magnitude(model, pruning_schedule=schedule)
        pruned.compile(optimizer=tf_keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy")
        pruned.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0, callbacks=[api.UpdatePruningStep()])
        stripped = api.strip_pruning(pruned)
        h5 = Path(job["out"]).with_suffix(".h5")
        tf_keras.models.save_model(stripped, h5, include_optimizer=False)
        zipped = gzip.compress(h5.read_bytes(), compresslevel=9)
        np.savez(job["out"], **{f"w{i}": w for i, w in enumerate(stripped.get_weights())})
        print(json.dumps({**job, "h5": h5.stat().st_size, "gzip9": len(zipped)}), flush=True)


def run_tfmot(jobs: list[dict], folder: Path) -> dict | None:
    python = VENV / "bin" / "python"
    if not (VENV / "prunectl-bench-ready").exists():
        print(f"TFMOT's venv is missing ({VENV}); run benchmarks/peer_tfmot.py once to make it. No TFMOT column.")
        return None
    (folder / "jobs.json").write_text(json.dumps(jobs))
    done = subprocess.run(
        [str(python), __file__, "--tfmot-worker", str(folder / "jobs.json")],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    cells = {}
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            cell = json.loads(line)
            cells[(cell["model"], cell["sparsity"])] = cell
    if done.returncode:
        print(f"TFMOT worker failed ({done.returncode}): {done.stderr[-2000:]}")
    return cells


def magnitude_prune(weights: list[np.ndarray], sparsity: float) -> list[np.ndarray]:
    """Each kernel (ndim > 1) with its smallest ``sparsity`` of magnitudes set to zero (biases kept)."""
    out = []
    for w in weights:
        w = w.copy()
        if w.ndim > 1:
            k = int(round(sparsity * w.size))
            if k:
                order = np.argsort(np.abs(w), axis=None, kind="stable")
                w.reshape(-1)[order[:k]] = 0
        out.append(w)
    return out


def kernel_zeros(weights: list[np.ndarray]) -> float:
    kernels = [w for w in weights if w.ndim > 1]
    return float(sum(np.sum(w == 0) for w in kernels) / sum(w.size for w in kernels))


def timed_write(raw: Path, target: Path, policy_name: str, repeat: int = 3) -> tuple[float, int]:
    """Best-of-``repeat`` seconds of ``write_model`` with the policy, and the output's bytes."""
    from unittest import mock

    from prunectl.core.io import writer
    from prunectl.core.io.compress import legacy_policy
    from prunectl.core.io.modelfile import open_model_file

    policy = legacy_policy(1) if policy_name == "legacy" else policy_name
    # Today's rule also wrote HDF5's default (1.8) file format.
    libver = ("earliest", "latest") if policy_name == "legacy" else writer.LIBVER
    best = float("inf")
    with mock.patch.object(writer, "LIBVER", libver):
        for _ in range(repeat):
            if target.exists():
                target.unlink()
            with open_model_file(raw) as model:
                start = time.perf_counter()
                writer.write_model(model, target, policy)
                best = min(best, time.perf_counter() - start)
    return best, target.stat().st_size


def digits_table(sparsities: list[float], skip_peer: bool, folder: Path) -> list[dict]:
    import keras

    dense_weights = {}
    jobs = []
    for name in MODELS:
        path = CACHE / f"{name}.seed0.keras"
        if not path.exists():
            CACHE.mkdir(parents=True, exist_ok=True)
            digits_models.train_dense(name, 0, CACHE)
        dense_weights[name] = keras.saving.load_model(path).get_weights()
        np.savez(folder / f"{name}.dense.npz", **{f"w{i}": w for i, w in enumerate(dense_weights[name])})
        for s in sparsities:
            jobs.append({"model": name, "sparsity": s, "weights": str(folder / f"{name}.dense.npz"),
                         "out": str(folder / f"tfmot.{name}.{s}.npz")})  # fmt: skip
    peer = None if skip_peer else run_tfmot(jobs, folder)
    rows = []
    for name in MODELS:
        model = digits_models.build(keras, name, 0)
        dense_size = {}
        for fmt in (".h5", ".keras"):
            model.set_weights(dense_weights[name])
            model.save(folder / f"{name}.dense{fmt}")
            dense_size[fmt] = (folder / f"{name}.dense{fmt}").stat().st_size
        for s in sparsities:
            cell = peer.get((name, s)) if peer else None
            if cell is not None:
                stripped = np.load(cell["out"])
                weights = [stripped[f"w{i}"] for i in range(len(stripped.files))]
            else:
                weights = magnitude_prune(dense_weights[name], s)
            model.set_weights(weights)
            row = {"model": name, "sparsity": s, "zeros": kernel_zeros(weights), "tfmot": cell and cell["gzip9"]}
            for fmt in (".h5", ".keras"):
                raw = folder / f"{name}.{s}.raw{fmt}"
                model.save(raw)
                for policy in POLICIES:
                    seconds, size = timed_write(raw, folder / f"{name}.{s}.{policy}{fmt}", policy)
                    row[f"{policy}{fmt}"] = {"bytes": size, "seconds": seconds, "dense": size / dense_size[fmt]}
            rows.append(row)
    return rows


def vgg_table(folder: Path) -> dict:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None)
    dense = folder / "vgg16.h5"
    model.save(dense)
    weights = model.get_weights()
    # As benchmarks/bench_io.py (the README's 0.138x): one threshold removes 90% of all kernels' weights.
    threshold = np.quantile(np.concatenate([np.abs(w).ravel() for w in weights if w.ndim > 1]), 0.9)
    model.set_weights([np.where(np.abs(w) < threshold, 0, w) if w.ndim > 1 else w for w in weights])
    raw = folder / "vgg16.90.h5"
    model.save(raw)
    del model
    result = {"dense": dense.stat().st_size}
    for policy in POLICIES:
        seconds, size = timed_write(raw, folder / f"vgg16.{policy}.h5", policy, repeat=1 if policy == "strong" else 2)
        result[policy] = {"bytes": size, "seconds": seconds}
        (folder / f"vgg16.{policy}.h5").unlink()
    return result


def print_digits(rows: list[dict]) -> None:
    print("\nDigits models: output bytes, / TFMOT stripped .h5 gzip-9, / dense file, write time vs legacy fast")
    header = f"{'model':<5} {'sparsity':>8} {'zeros':>6} {'TFMOT gz9':>10}  {'file':<13}"
    print(header + f" {'bytes':>8} {'/TFMOT':>7} {'/dense':>7} {'ms':>7} {'x legacy':>8}")
    for row in rows:
        for fmt in (".h5", ".keras"):
            legacy = row[f"legacy{fmt}"]["seconds"]
            for policy in POLICIES:
                cell = row[f"{policy}{fmt}"]
                versus = f"{cell['bytes'] / row['tfmot']:.3f}" if row["tfmot"] else "n/a"
                print(
                    f"{row['model']:<5} {row['sparsity']:>8.0%} {row['zeros']:>6.1%} {row['tfmot'] or 'n/a':>10}  "
                    f"{policy + fmt:<13} {cell['bytes']:>8} {versus:>7} {cell['dense']:>7.3f} "
                    f"{cell['seconds'] * 1e3:>7.1f} {cell['seconds'] / legacy:>8.2f}"
                )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--tfmot-worker":
        tfmot_worker(sys.argv[2])
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", default="0.5,0.8,0.9,0.95")
    parser.add_argument("--skip-vgg", action="store_true", help="Only the digits models (a quick run).")
    parser.add_argument("--skip-digits", action="store_true", help="Only VGG16.")
    parser.add_argument("--skip-peer", action="store_true", help="No TFMOT column (prunectl prunes by magnitude).")
    parser.add_argument("--json", type=Path, help="Also write the figures here.")
    args = parser.parse_args()
    from prunectl.core.io.compress import POLICIES as NAMED

    print("encoders:", {name: NAMED[name].encoder() for name in ("fast", "strong")}, f"cores: {os.cpu_count()}")
    figures: dict = {}
    with tempfile.TemporaryDirectory(prefix="file-size-") as tmp:
        folder = Path(tmp)
        if not args.skip_digits:
            sparsities = [float(s) for s in args.sparsities.split(",")]
            figures["digits"] = digits_table(sparsities, args.skip_peer, folder)
            print_digits(figures["digits"])
        if not args.skip_vgg:
            vgg = figures["vgg16"] = vgg_table(folder)
            print(f"\nVGG16 at 90% (.h5), dense file {vgg['dense'] / 1e6:.1f} MB:")
            print(f"  {'policy':<8} {'MB':>7} {'/dense':>7} {'seconds':>8} {'x legacy':>8}")
            for policy in POLICIES:
                cell = vgg[policy]
                print(
                    f"  {policy:<8} {cell['bytes'] / 1e6:>7.1f} {cell['bytes'] / vgg['dense']:>7.4f} "
                    f"{cell['seconds']:>8.2f} {cell['seconds'] / vgg['legacy']['seconds']:>8.2f}"
                )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
