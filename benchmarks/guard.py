"""Issue 11 benchmark: what inspecting an input before reading it costs, on ResNet50.

Builds keras.applications.ResNet50(weights=None) (25.6M parameters, no download)
in a child process, saves it as .h5 and .keras, and then, in one process that
never imports TensorFlow, times side by side (interleaved, best of --repeat, warm
page cache) the work of ``prunectl report`` (open the file, read every weight,
count zeros) three ways:

* unguarded: the inspection skipped (what prunectl did before issue 11);
* guarded in-process: the full inspection (every link, attribute, dataset's
  storage and chunk index, every zip member's CRC-32) run here;
* guarded: the same in a forked child watched by the parent (the default).

and prints each as a ratio of the unguarded time.

Usage:
    python benchmarks/guard.py [--workdir /tmp/prunectl-bench-guard] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

BUILD = """
import sys, keras
model = keras.applications.ResNet50(weights=None)
model.save(sys.argv[1] + "/resnet50.h5")
model.save(sys.argv[1] + "/resnet50.keras")
"""


def build(workdir: Path) -> list[Path]:
    paths = [workdir / "resnet50.h5", workdir / "resnet50.keras"]
    if not all(p.exists() for p in paths):
        workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        subprocess.run([sys.executable, "-c", BUILD, str(workdir)], check=True, env=env)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/prunectl-bench-guard"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    paths = build(args.workdir)

    from prunectl.core.io import modelfile
    from prunectl.core.run.inspect import read_report

    inspect = modelfile._inspect

    def unguarded(path, fmt, isolate, extracted=None):
        return None

    def in_process(path, fmt, isolate, extracted=None):
        return inspect(path, fmt, False, extracted)

    ways = {"unguarded": unguarded, "guarded in-process": in_process, "guarded (child process)": inspect}
    print(f"ResNet50(weights=None), best of {args.repeat}, interleaved; ratios to unguarded")
    for path in paths:
        best = dict.fromkeys(ways, float("inf"))
        for _ in range(args.repeat + 1):  # the first round warms the page cache and is not counted
            for name, way in ways.items():
                modelfile._inspect = way
                start = time.perf_counter()
                read_report(str(path))
                elapsed = time.perf_counter() - start
                if _ > 0:
                    best[name] = min(best[name], elapsed)
        modelfile._inspect = inspect
        size = path.stat().st_size / 1e6
        print(f"\n{path.name} ({size:.0f} MB): open + report")
        for name, seconds in best.items():
            print(f"  {name:<26} {seconds:7.3f} s  {seconds / best['unguarded']:5.2f}x")


if __name__ == "__main__":
    main()
