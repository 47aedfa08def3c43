"""prunectl's training loop against Keras's ``Model.fit`` on one machine: the cost of one code path.

Since issue 16 every fine-tuning run, on every strategy, goes through
``core/training/loop.py`` (``strategy.run`` + ``GradientTape``) instead of
``Model.fit`` (which fails under MultiWorkerMirroredStrategy). This measures,
side by side in one process, the time of the same fine-tuning both ways: each
shipped sample model pruned to 80% with its masks held, the same batches
(``digits_train.npz``, batch 32), the loss read after every step (progress and
the NaN check need it, as fit's callbacks did). Runs alternate loop / fit,
``--repeats`` times; the figure is the median time per epoch after the first
(the first pays for tracing), and the ratio loop / fit. Not a test.

    python benchmarks/loop_vs_fit.py --models mlp,cnn,lstm,transformer --epochs 4 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _prepared(keras, name: str):
    from prunectl.core.io.keras_io import compile_model, load_model
    from prunectl.core.io.modelfile import open_model_file
    from prunectl.core.training.finetune import HeldMasks
    from prunectl.core.weights.catalog import keras_weight_entries
    from prunectl.core.weights.prune import WeightPruning, prune_keras_model

    keras.utils.set_random_seed(0)
    with open_model_file(SAMPLES / f"digits_{name}.keras") as file:
        loaded = load_model(file)
    model = loaded.model
    compile_model(model, loaded.compile_spec)
    prune_keras_model(model, WeightPruning(sparsity=0.8))
    held = HeldMasks([v for e, v in keras_weight_entries(model)])
    return model, held


def run_fit(keras, name: str, data, epochs: int) -> list[float]:
    import numpy as np

    from prunectl.core.training import data as datamod

    model, held = _prepared(keras, name)
    dtypes = (np.dtype(model.inputs[0].dtype), np.dtype(data.y.dtype))
    times, seen = [], []

    class Clock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            seen.append(float(logs["loss"]))

        def on_epoch_end(self, epoch, logs=None):
            times.append(time.perf_counter() - self.start)

    model.fit(
        datamod.batches(data, 32, dtypes, shuffle=True, seed=0),
        epochs=epochs,
        callbacks=[Clock()],
        shuffle=False,
        verbose=0,
    )
    held.release()
    return times


def run_loop(keras, name: str, data, epochs: int) -> list[float]:
    import numpy as np

    from prunectl.core.training.distribute import tf_strategy
    from prunectl.core.training.loop import Feeder, Loop

    model, held = _prepared(keras, name)
    dtypes = (np.dtype(model.inputs[0].dtype), np.dtype(data.y.dtype))
    strategy = tf_strategy()
    feed = Feeder(strategy, data, 32, dtypes, shuffle=True, seed=0)
    times, start, seen = [], [time.perf_counter()], []

    def after_step(epoch, step, logs):
        seen.append(logs["loss"])

    def after_epoch(epoch, logs):
        times.append(time.perf_counter() - start[0])
        start[0] = time.perf_counter()

    Loop(strategy, model).fit(feed, epochs, after_step=after_step, after_epoch=after_epoch)
    held.release()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn,lstm,transformer")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from prunectl.core.io.keras_io import import_keras
    from prunectl.core.training.data import read_dataset

    keras = import_keras()
    data = read_dataset(SAMPLES / "digits_train.npz")
    print(
        f"{'model':12} {'fit s/epoch':>12} {'loop s/epoch':>13} {'loop/fit':>9}  (median of {args.repeats}, epochs 2..)"
    )
    for name in args.models.split(","):
        fit, loop = [], []
        for _ in range(args.repeats):
            loop += run_loop(keras, name, data, args.epochs)[1:]
            fit += run_fit(keras, name, data, args.epochs)[1:]
        f, lo = statistics.median(fit), statistics.median(loop)
        print(f"{name:12} {f:12.4f} {lo:13.4f} {lo / f:9.3f}")


if __name__ == "__main__":
    main()
