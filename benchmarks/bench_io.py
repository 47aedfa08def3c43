"""Issue 6 benchmark: weight-level work at the speed of the file, on VGG16.

Builds keras.applications.VGG16(weights=None) (138M parameters, no download),
saves it as .h5 and .keras (about 553 MB each), and measures side by side, in
one run, each as the best of --repeat runs of a fresh process:

* ``prunectl report``             vs a bare h5py script reading every weight;
* ``prunectl prune --threshold``  (90% of weights removed) vs TensorFlow import
  + Keras load + Keras save of the uncompressed model, and output size;
* peak resident memory of that prune above the interpreter's own, as a
  multiple of the weights' size in bytes;
* ``prunectl --help`` wall time;
* gzip levels 1-9 on the pruned weights (size and time), which picked the default.

Usage:
    python benchmarks/bench_io.py [--workdir /tmp/prunectl-bench] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PY = sys.executable
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

BARE_READ = """
import io, sys, zipfile, h5py
path = sys.argv[1]
def read(name, obj):
    if isinstance(obj, h5py.Dataset):
        obj[()]  # returns None: visititems stops at the first non-None return
def read_all(f):
    f.visititems(read)
if path.endswith('.keras'):
    with zipfile.ZipFile(path) as z, z.open('model.weights.h5') as member:
        with h5py.File(io.BytesIO(member.read()), 'r') as f:
            read_all(f)
else:
    with h5py.File(path, 'r') as f:
        read_all(f)
"""

KERAS_ROUND_TRIP = """
import sys, keras
model = keras.models.load_model(sys.argv[1], compile=False)
model.save(sys.argv[2])
"""

IDLE = "import prunectl.cli.main, prunectl.core.weights.prune, prunectl.core.run.report, numpy, h5py"


# Runs a command and prints its wall time and peak RSS. Started fresh and small,
# so the command it forks starts from a small RSS: a child forked from this
# (large) benchmark process would report the benchmark's peak as its own.
LAUNCHER = """
import os, subprocess, sys, time
start = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(time.perf_counter() - start, usage.ru_maxrss * 1024, os.waitstatus_to_exitcode(status))
"""


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of one fresh process."""
    out = subprocess.run([PY, "-c", LAUNCHER, *cmd], env=ENV, capture_output=True, text=True, check=True)
    seconds, rss, code = out.stdout.split()
    if code != "0":
        raise SystemExit(f"command failed ({code}): {' '.join(cmd)}")
    return float(seconds), int(rss)


def best(cmd: list[str], repeat: int) -> tuple[float, int]:
    results = [run(cmd) for _ in range(repeat)]
    return min(r[0] for r in results), max(r[1] for r in results)


def prunectl(*args: str) -> list[str]:
    return [PY, "-m", "prunectl", *args]


def build(workdir: Path) -> dict[str, Path]:
    paths = {fmt: workdir / f"vgg16{fmt}" for fmt in (".h5", ".keras")}
    if not all(p.exists() for p in paths.values()):
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import keras

        keras.utils.set_random_seed(0)
        model = keras.applications.VGG16(weights=None)
        for path in paths.values():
            model.save(path)
    return paths


def threshold_for(path: Path, fraction: float) -> tuple[float, int]:
    """The magnitude below which ``fraction`` of the prunable weights lie, and the weights' bytes."""
    from prunectl.core.io.modelfile import open_model_file
    from prunectl.core.weights.catalog import tag_prunable

    with open_model_file(path) as model:
        kernels = [np.abs(model.read(e)).ravel() for e in tag_prunable(model.entries) if e.prunable]
        nbytes = sum(e.size * np.dtype(e.dtype).itemsize for e in model.entries)
    magnitudes = np.concatenate(kernels)
    return float(np.quantile(magnitudes, fraction)), nbytes


def compression_table(path: Path, threshold: float) -> list[dict]:
    """Write the pruned weights at each gzip level; time and size per level."""
    import h5py

    from prunectl.core.io.compress import ChunkWriter, legacy_policy
    from prunectl.core.io.modelfile import open_model_file
    from prunectl.core.weights.catalog import tag_prunable
    from prunectl.core.weights.masks import apply_threshold

    with open_model_file(path) as model:
        arrays = []
        for entry in tag_prunable(model.entries):
            data = model.read(entry)
            if entry.prunable:
                apply_threshold(data, threshold)
            arrays.append(data)
    rows = []
    target = path.with_name("levels.h5")
    for level in (0, 1, 2, 3, 4, 6, 9):
        start = time.perf_counter()
        with h5py.File(target, "w") as out, ChunkWriter(legacy_policy(level)) as writer:
            for i, data in enumerate(arrays):
                writer.write(out, f"w{i}", data)
        rows.append({"level": level, "seconds": time.perf_counter() - start, "bytes": target.stat().st_size})
    target.unlink()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/prunectl-bench"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = build(args.workdir)
    threshold, weight_bytes = threshold_for(paths[".h5"], 0.9)
    idle_s, idle_rss = best([PY, "-c", IDLE], args.repeat)
    help_s, _ = best(prunectl("--help"), args.repeat)
    figures = {
        "weights_bytes": weight_bytes,
        "threshold_90pct": threshold,
        "help_seconds": help_s,
        "idle_interpreter_rss": idle_rss,
        "formats": {},
    }
    print(f"VGG16: {weight_bytes / 1e6:.0f} MB of weights; |w| < {threshold:.3g} removes 90% of prunable weights")
    print(f"prunectl --help: {help_s:.3f} s (target <= 0.3 s)")
    for fmt, path in paths.items():
        out = args.workdir / f"out{fmt}"
        report_s, _ = best(prunectl("report", str(path), "--json"), args.repeat)
        bare_s, _ = best([PY, "-c", BARE_READ, str(path)], args.repeat)
        prune_s, prune_rss = best(
            prunectl("prune", str(path), "--threshold", repr(threshold), "-o", str(out), "--force", "-q"), args.repeat
        )
        keras_s, _ = best([PY, "-c", KERAS_ROUND_TRIP, str(path), str(args.workdir / f"keras{fmt}")], args.repeat)
        size_in, size_out = path.stat().st_size, out.stat().st_size
        mem_ratio = (prune_rss - idle_rss) / weight_bytes
        figures["formats"][fmt] = {
            "report_s": report_s,
            "bare_h5py_read_s": bare_s,
            "report_ratio": report_s / bare_s,
            "prune_s": prune_s,
            "keras_import_load_save_s": keras_s,
            "prune_ratio": prune_s / keras_s,
            "input_bytes": size_in,
            "output_bytes": size_out,
            "size_ratio": size_out / size_in,
            "prune_peak_rss": prune_rss,
            "memory_ratio": mem_ratio,
        }
        print(f"\n{fmt}  ({size_in / 1e6:.0f} MB)")
        print(
            f"  report        {report_s:6.2f} s  vs bare h5py read {bare_s:6.2f} s  -> {report_s / bare_s:.2f}x"
            " (target <= 1.3x)"
        )
        print(
            f"  prune 90%     {prune_s:6.2f} s  vs TF import+Keras load+save {keras_s:6.2f} s  -> "
            f"{prune_s / keras_s:.2f}x (target <= 1.0x)"
        )
        print(f"  output size   {size_out / 1e6:6.1f} MB  -> {size_out / size_in:.3f}x of input (target <= 0.25x)")
        print(
            f"  peak memory   {(prune_rss - idle_rss) / 1e6:6.0f} MB above the interpreter's own -> "
            f"{mem_ratio:.2f}x the weights (target <= 2.5x)"
        )
    rows = compression_table(paths[".h5"], threshold)
    figures["gzip_levels"] = rows
    print("\ngzip level on the 90%-pruned VGG16 weights (shuffle on, all cores):")
    print("  level  seconds   MB      MB/s in")
    for row in rows:
        print(
            f"  {row['level']:>5}  {row['seconds']:7.2f}  {row['bytes'] / 1e6:6.1f}  "
            f"{weight_bytes / 1e6 / row['seconds']:8.0f}"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
