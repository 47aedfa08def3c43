"""The TFMOT side of benchmarks/peer_tfmot.py; runs inside the peer's own virtual environment.

It never scores anything for the comparison: it builds the dense architecture in
tf_keras from ``digits_models.layer_specs``, takes the dense weights the
benchmark exported, prunes and fine-tunes with TFMOT, and writes the stripped
weights (``get_weights()`` order) to an .npz that the benchmark scores itself.
The one accuracy it computes, the dense model's, is only a check that both Keras
builds hold the same model.

    python peer_tfmot_worker.py JOBS.json    # prints one JSON line per finished cell
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits_models  # noqa: E402

UPDATES = 20


def polynomial_window(steps: int, updates: int = UPDATES) -> tuple[int, int]:
    """``(end_step, frequency)``: the window ends at half the steps, reached in ~``updates`` mask updates.

    TFMOT only updates a mask on steps where ``(step - begin_step) % frequency == 0``, so the end step is
    rounded down to a multiple of the frequency: otherwise the final sparsity would never be applied.
    """
    half = max(1, steps // 2)
    frequency = max(1, half // updates)
    return frequency * max(1, half // frequency), frequency


def main() -> None:
    # tf_keras (Keras 2) is what TFMOT 0.8 wraps; this must be set before TensorFlow is imported.
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot
    import tf_keras

    began = time.perf_counter()
    jobs = json.loads(Path(sys.argv[1]).read_text())
    versions = {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "tfmot": tfmot.__version__}
    print(json.dumps({"versions": versions}), flush=True)
    x, y, xt, yt = digits_models.digits()
    sparsity_api = tfmot.sparsity.keras
    for job in jobs:
        dense = np.load(job["weights"])
        weights = [dense[f"w{i}"] for i in range(len(dense.files))]
        model = digits_models.build(tf_keras, job["model"], job["seed"])
        model.set_weights(weights)
        dense_accuracy = digits_models.accuracy(model, xt, yt)
        print(json.dumps({"model": job["model"], "seed": job["seed"], "dense_accuracy": dense_accuracy}), flush=True)
        steps = job["epochs"] * -(-len(x) // job["batch_size"])
        end_step, frequency = polynomial_window(steps)
        for sparsity in job["sparsities"]:
            start = time.perf_counter()
            tf_keras.utils.set_random_seed(job["seed"])
            model = digits_models.build(tf_keras, job["model"], job["seed"])
            model.set_weights(weights)
            schedule = sparsity_api.PolynomialDecay(
                initial_sparsity=0.0, final_sparsity=sparsity, begin_step=0, end_step=end_step, frequency=frequency
            )
            pruned = sparsity_api.prune_low_magnitude(model, pruning_schedule=schedule)
            digits_models.compile_for_digits(tf_keras, pruned, job["learning_rate"])
            pruned.fit(
                x,
                y,
                epochs=job["epochs"],
                batch_size=job["batch_size"],
                shuffle=True,
                verbose=0,
                callbacks=[sparsity_api.UpdatePruningStep()],
            )
            stripped = sparsity_api.strip_pruning(pruned)
            out = Path(job["out_dir"]) / f"{job['model']}.seed{job['seed']}.{sparsity}.npz"
            np.savez(out, **{f"w{i}": w for i, w in enumerate(stripped.get_weights())})
            cell = {
                "model": job["model"],
                "seed": job["seed"],
                "sparsity": sparsity,
                "weights": str(out),
                "seconds": time.perf_counter() - start,
                "end_step": end_step,
                "frequency": frequency,
            }
            print(json.dumps(cell), flush=True)
    # Wall time from after TensorFlow's import: dense checks, pruning, fine-tuning and writing every cell.
    print(json.dumps({"finished_seconds": time.perf_counter() - began}), flush=True)


if __name__ == "__main__":
    main()
