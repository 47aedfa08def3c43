"""Issue 17 benchmark: exported size and latency in the deployment runtime, dense vs pruned, side by side.

    python benchmarks/export.py [--repeats 50] [--vgg-size 96] [--vgg-batch 8] [--skip-vgg]

For the digits models (sample_models/digits_{mlp,cnn}.keras) it writes, with the
real command line, a structurally pruned model (``prunectl prune --neuron-ratio
0.5``) and a weight-pruned one (``prunectl prune --sparsity 0.9``), exports all
three to LiteRT and ONNX (``core.deploy.export.export_model``, i.e. Keras's
``model.export``), and times them in the LiteRT interpreter (XNNPACK) and in
onnxruntime (CPU): the three models of one runtime interleaved, the order flipped
every round, outputs read back, the fastest round (``core.structure.cost.time_calls``),
at batch 1 and batch 256. Zeros alone change neither size nor speed there: neither
format compresses, and neither runtime skips zero weights.

VGG16 (keras.applications, weights=None, no download) is exported at
``--vgg-size`` (default 96x96, convolutional part with average pooling: the
224x224 model with its 120M-parameter classifier makes a 550 MB .tflite, too slow
to convert here), dense vs structurally pruned at ratio 0.5 (``plan_structure``
+ ``apply_plan``, criterion l1), LiteRT only, at batch 1 and ``--vgg-batch``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from prunectl.core.deploy.export import export_model  # noqa: E402
from prunectl.core.deploy.formats import FORMATS  # noqa: E402
from prunectl.core.deploy.runtime import as_batch, compare, open_runtime, time_runtimes  # noqa: E402
from prunectl.core.io.keras_io import import_keras  # noqa: E402
from prunectl.core.structure.cost import make_batch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("dense", "neurons 0.5", "weights 0.9")


def prunectl(*args) -> None:
    """Run the real command line (its own process, as a user would)."""
    cli = Path(sys.executable).with_name("prunectl")
    subprocess.run([str(cli), *map(str, args), "-q"], check=True)


def measure(models: dict, fmt_name: str, folder: Path, batches: tuple[int, ...], repeats: int) -> dict:
    """Export each model, check it against Keras, and time them side by side at each batch size."""
    fmt = FORMATS[fmt_name]
    runtimes, sizes, diffs = {}, {}, {}
    for name, model in models.items():
        path = folder / f"{name.replace(' ', '_')}{fmt.suffix}"
        sizes[name] = export_model(model, path, fmt)
        runtimes[name] = open_runtime(fmt, path, model)
        first = next(iter(models.values()))
        diffs[name] = compare(model, runtimes[name], as_batch(make_batch(first, None, 32))).max_abs_diff
    times = {}
    for batch_size in batches:
        batch = as_batch(make_batch(next(iter(models.values())), None, batch_size))
        times[batch_size] = dict(zip(models, time_runtimes(list(runtimes.values()), batch, repeats)))
    return {"bytes": sizes, "ms": times, "max_abs_diff": diffs}


def table(title: str, result: dict, batches: tuple[int, ...]) -> None:
    names = list(result["bytes"])
    base = names[0]
    print(f"\n{title}")
    head = f"{'model':<12} {'bytes':>11} {'size':>6}"
    for b in batches:
        head += f" {'ms @' + str(b):>10} {'speedup':>8}"
    print(head + f" {'max|diff|':>10}")
    for name in names:
        row = f"{name:<12} {result['bytes'][name]:>11,} {result['bytes'][name] / result['bytes'][base]:>5.2f}x"
        for b in batches:
            ms = result["ms"][b]
            row += f" {ms[name]:>10.3f} {ms[base] / ms[name]:>7.2f}x"
        print(row + f" {result['max_abs_diff'][name]:>10.2g}")


def digits(repeats: int, work: Path) -> None:
    keras = import_keras()
    for stem in ("digits_mlp", "digits_cnn"):
        source = REPO / "sample_models" / f"{stem}.keras"
        files = {"dense": source, "neurons 0.5": work / f"{stem}.n50.keras", "weights 0.9": work / f"{stem}.w90.keras"}
        prunectl("prune", source, "--neuron-ratio", "0.5", "-o", files["neurons 0.5"], "--force")
        prunectl("prune", source, "--sparsity", "0.9", "-o", files["weights 0.9"], "--force")
        models = {name: keras.models.load_model(path, compile=False) for name, path in files.items()}
        for fmt in ("litert", "onnx"):
            folder = Path(tempfile.mkdtemp(dir=work))
            table(f"{stem}, {FORMATS[fmt].runtime}", measure(models, fmt, folder, (1, 256), repeats), (1, 256))


def vgg(size: int, batch: int, repeats: int, work: Path) -> None:
    from prunectl.core.structure.plan import NeuronPruning, apply_plan, plan_structure

    keras = import_keras()
    keras.utils.set_random_seed(0)
    model = keras.applications.VGG16(weights=None, include_top=False, pooling="avg", input_shape=(size, size, 3))
    pruned = apply_plan(model, plan_structure(model, NeuronPruning(ratio=0.5)))
    folder = Path(tempfile.mkdtemp(dir=work))
    result = measure({"dense": model, "neurons 0.5": pruned}, "litert", folder, (1, batch), repeats)
    table(f"VGG16 {size}x{size} (no top), LiteRT (XNNPACK)", result, (1, batch))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--vgg-size", type=int, default=96)
    parser.add_argument("--vgg-batch", type=int, default=8)
    parser.add_argument("--vgg-repeats", type=int, default=10)
    parser.add_argument("--skip-vgg", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prunectl-export-bench-") as folder:
        work = Path(folder)
        digits(args.repeats, work)
        if not args.skip_vgg:
            vgg(args.vgg_size, args.vgg_batch, args.vgg_repeats, work)
    print(
        "\nsize = bytes / dense bytes; speedup = dense ms / model ms, same runtime, same batch, interleaved rounds, "
        "fastest round; max|diff| = largest |runtime - Keras| on 32 random rows"
    )


if __name__ == "__main__":
    main()
