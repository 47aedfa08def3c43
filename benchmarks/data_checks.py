"""Issue 11 benchmark: what refusing NaN/inf data and a non-finite loss costs.

Measured side by side in one run, each the best of --repeat:

* reading a float32 ``.npz`` data file (``--rows`` rows of 784 values) into memory vs
  :func:`check_values` on the arrays read (the NaN/inf count, chunked);
* one epoch of batches read from the same data as a lazy ``.h5`` vs the check on it
  (which reads the file once more, in chunks);
* ``model.fit`` of a small MLP with no callbacks (Keras dispatches them asynchronously)
  vs with fine-tuning's callbacks, which read each step's loss and check the weights once an epoch.

Usage:
    python benchmarks/data_checks.py [--workdir /tmp/prunectl-bench-data] [--rows 50000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def reading(workdir: Path, rows: int, repeat: int) -> None:
    import h5py

    from prunectl.core.training import data as datamod

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 784)).astype(np.float32)
    y = rng.integers(0, 10, rows)
    np.savez(workdir / "data.npz", x=x, y=y)
    with h5py.File(workdir / "data.h5", "w") as f:
        f["x"], f["y"] = x, y
    del x
    npz = datamod.READERS.get(".npz")()
    read = best(lambda: npz.read(workdir / "data.npz"), repeat)
    data = npz.read(workdir / "data.npz")
    check = best(lambda: datamod.check_values(data, "data.npz"), repeat)
    size = data.x.nbytes / 2**20
    print(f".npz, {size:.0f} MiB of float32: read {read:.3f} s, check {check:.3f} s ({check / read:.2f}x the read)")

    lazy = datamod.READERS.get(".h5")(lazy=True).read(workdir / "data.h5")

    def epoch():
        for start in range(0, rows, 32):
            np.asarray(lazy.x[start : start + 32])

    read = best(epoch, repeat)
    check = best(lambda: datamod.check_values(lazy, "data.h5"), repeat)
    print(f"lazy .h5: one epoch of batches of 32 {read:.3f} s, check {check:.3f} s ({check / read:.2f}x the epoch)")


def fitting(repeat: int) -> None:
    import keras

    from prunectl.core.training.finetune import _callbacks

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(8192, 64)).astype(np.float32), rng.integers(0, 10, 8192)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    steps = 8192 // 32

    class NoMasks:
        def refresh(self):
            pass

    plain = lambda: model.fit(x, y, batch_size=32, epochs=1, verbose=0)  # noqa: E731
    watched = lambda: model.fit(  # noqa: E731
        x, y, batch_size=32, epochs=1, verbose=0, callbacks=_callbacks(keras, NoMasks(), lambda s: None, 1, steps, None)
    )
    plain()  # trace once
    without, with_check = best(plain, repeat), best(watched, repeat)
    print(
        f"fit, {steps} steps: no callbacks {without:.3f} s, with the loss check {with_check:.3f} s "
        f"({with_check / without:.2f}x)"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/prunectl-bench-data"))
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    reading(args.workdir, args.rows, args.repeat)
    fitting(args.repeat)


if __name__ == "__main__":
    main()
