"""Structural pruning benchmarks: FLOPs, accuracy after a short fine-tune, and CPU latency side by side.

    python benchmarks/structural.py digits [--criterion l1] [--ratio 0.5] [--round-to 8] [--epochs 10]
        [--cnn-ratio R] [--cnn-exclude conv1] [--mlp-ratio R] [--mlp-exclude fc1] [--fold-batchnorm]
    python benchmarks/structural.py applications [--size 32] [--ratio 0.5]

``digits`` prunes the shipped digits CNN and MLP, fine-tunes the pruned model
with a plain Keras ``fit`` (removed units need no masks), and times original and
pruned model on the same batch of 256: each model's traced inference graph
(``core.cost.forward_function``), the two interleaved with an empty call
(``core.cost.time_calls``), the fastest and the median round reported.
``--fold-batchnorm`` folds BatchNormalization into the layer before it
(``core.fold``) in both the original and the fine-tuned pruned model before
they are timed, so the speedup is still the pruning's alone.
TensorFlow runs with one inter-op thread unless ``TF_NUM_INTEROP_THREADS`` is
set (see ``core/cost.py``). ``applications`` builds ResNet50, MobileNetV2, VGG16 and
DenseNet121 with ``weights=None``, prunes them, and checks the pruned models run
with the expected output shape and parameter count. Figures are printed; see
RESULTS-structural.md for a recorded run.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Set before TensorFlow starts: a chain of layers then runs on the calling thread (less fixed cost per call).
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

from prunectl.core.io.keras_io import import_keras  # noqa: E402
from prunectl.core.structure.cost import (
    as_tensors,
    empty_function,
    forward_function,
    make_batch,  # noqa: E402
    measure_latency,
    time_calls,
)
from prunectl.core.structure.fold import fold_batchnorm  # noqa: E402
from prunectl.core.structure.plan import NeuronPruning, apply_plan, plan_structure  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "sample_models"


def _accuracy(model, x, y) -> float:
    return float((model.predict(x, batch_size=256, verbose=0).argmax(1) == y).mean())


def _latency(model, pruned, batch, repeats: int) -> dict:
    """Milliseconds per call of model, pruned model and empty call: fastest and median of interleaved rounds."""
    functions = [forward_function(model, batch), forward_function(pruned, batch), empty_function(batch)]
    samples = time_calls(functions, as_tensors(batch), repeats)
    return {stat: [f(s) * 1e3 for s in samples] for stat, f in (("min", min), ("median", np.median))}


def digits(args) -> None:
    keras = import_keras()
    import tensorflow as tf

    train, test = np.load(SAMPLES / "digits_train.npz"), np.load(SAMPLES / "digits_test.npz")
    batch = make_batch(None, test["x"], 256)
    print(
        f"criterion={args.criterion} round_to={args.round_to} epochs={args.epochs} "
        f"fold_batchnorm={args.fold_batchnorm}; batch 256, "
        f"{args.repeats} interleaved rounds; TensorFlow threads: "
        f"intra-op {tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, "
        f"inter-op {os.environ.get('TF_NUM_INTEROP_THREADS', 'default')}"
    )
    print(
        "| model | ratio | exclude | units after | FLOPs before | FLOPs after | FLOPs ratio | params before -> after | "
        "acc before | acc pruned | acc fine-tuned | latency before (ms) | latency after (ms) | empty call (ms) | "
        "speedup | "
        "speedup / FLOPs ratio | median: before / after (ms), speedup |"
    )
    print("|" + " --- |" * 17)
    notes = []
    for name in args.models:
        keras.utils.set_random_seed(0)
        model = keras.models.load_model(SAMPLES / f"{name}.keras", compile=False)
        kind = name.removeprefix("digits_")
        ratio, exclude = getattr(args, f"{kind}_ratio") or args.ratio, tuple(getattr(args, f"{kind}_exclude"))
        step = NeuronPruning(args.criterion, ratio=ratio, round_to=args.round_to, exclude=exclude)
        plan = plan_structure(model, step, train["x"])
        pruned = apply_plan(model, plan)
        before, pruned_acc = _accuracy(model, test["x"], test["y"]), _accuracy(pruned, test["x"], test["y"])
        pruned.compile(optimizer=keras.optimizers.Adam(args.lr), loss="sparse_categorical_crossentropy")
        pruned.fit(train["x"], train["y"], epochs=args.epochs, batch_size=32, verbose=0)
        tuned = _accuracy(pruned, test["x"], test["y"])
        if args.fold_batchnorm:
            (model, folded), (pruned, _) = fold_batchnorm(model), fold_batchnorm(pruned)
            if _accuracy(pruned, test["x"], test["y"]) != tuned or _accuracy(model, test["x"], test["y"]) != before:
                raise SystemExit(f"{name}: folding BatchNormalization changed the test accuracy")
            notes.append(f"{name}: BatchNormalization folded {folded or 'nowhere'}")
        timing = _latency(model, pruned, batch, args.repeats)
        (slow, fast, floor), (slow_med, fast_med, _) = timing["min"], timing["median"]
        totals = plan.totals()
        flops_ratio = totals["flops"]["ratio"]
        units = "/".join(str(r.units_after) for r in plan.layers if r.units_after is not None)
        print(
            f"| {name} | {ratio} | {', '.join(exclude) or '-'} | {units} | {totals['flops']['before']:,} | "
            f"{totals['flops']['after']:,} | {flops_ratio:.2f}x | "
            f"{totals['params']['before']:,} -> {totals['params']['after']:,} | {before:.4f} | {pruned_acc:.4f} | "
            f"{tuned:.4f} | {slow:.3f} | {fast:.3f} | {floor:.3f} | {slow / fast:.2f}x | "
            f"{slow / fast / flops_ratio:.2f} | {slow_med:.3f} / {fast_med:.3f}, {slow_med / fast_med:.2f}x |"
        )
    for note in notes:
        print(note)


def applications(args) -> None:
    keras = import_keras()
    builders = {
        "ResNet50": keras.applications.ResNet50,
        "MobileNetV2": keras.applications.MobileNetV2,
        "VGG16": keras.applications.VGG16,
        "DenseNet121": keras.applications.DenseNet121,
    }
    size = args.size
    x = np.random.default_rng(0).random((args.batch, size, size, 3), dtype=np.float32)
    print(f"input {size}x{size}x3, classes=10, criterion=l1 ratio={args.ratio} round_to=8, batch {args.batch}")
    print(
        "| model | groups pruned (coupled) | boundaries | params before -> after | FLOPs before -> after | "
        "FLOPs ratio | output shape | latency before (ms) | latency after (ms) | speedup | plan+apply (s) |"
    )
    print("|" + " --- |" * 11)
    for name, build in builders.items():
        model = build(input_shape=(size, size, 3), weights=None, classes=10)
        start = time.perf_counter()
        plan = plan_structure(model, NeuronPruning(ratio=args.ratio, round_to=8))
        pruned = apply_plan(model, plan)
        spent = time.perf_counter() - start
        shape = tuple(pruned.predict_on_batch(x).shape)
        totals = plan.totals()
        if shape != (args.batch, 10) or pruned.count_params() != totals["params"]["after"]:
            raise SystemExit(f"{name}: unexpected output {shape} or params {pruned.count_params():,}")
        pruned_groups = [g for g in plan.groups if not g.frozen]
        coupled = sum(1 for g in pruned_groups if len(g.producers) > 1)
        slow, fast = measure_latency([model, pruned], x, repeats=args.repeats)
        print(
            f"| {name} | {len(pruned_groups)} ({coupled}) | {len(plan.boundaries)} | "
            f"{totals['params']['before']:,} -> {totals['params']['after']:,} | "
            f"{totals['flops']['before']:,} -> {totals['flops']['after']:,} | {totals['flops']['ratio']:.2f}x | "
            f"{shape} | {slow * 1e3:.1f} | {fast * 1e3:.1f} | {slow / fast:.2f}x | {spent:.1f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("digits")
    d.add_argument("--criterion", default="l1")
    d.add_argument("--ratio", type=float, default=0.5)
    d.add_argument("--round-to", type=int, default=8)
    d.add_argument("--epochs", type=int, default=10)
    d.add_argument("--lr", type=float, default=1e-3)
    d.add_argument("--fold-batchnorm", action="store_true", help="fold BatchNormalization in both models first")
    d.add_argument("--models", nargs="+", default=["digits_cnn", "digits_mlp"], choices=["digits_cnn", "digits_mlp"])
    for kind in ("cnn", "mlp"):
        d.add_argument(f"--{kind}-ratio", type=float, help=f"the {kind.upper()}'s ratio (default: --ratio)")
        d.add_argument(
            f"--{kind}-exclude",
            action="append",
            default=[],
            help=f"a layer of the {kind.upper()} left whole (repeatable)",
        )
    d.add_argument("--repeats", type=int, default=300)
    a = sub.add_parser("applications")
    a.add_argument("--size", type=int, default=32)
    a.add_argument("--ratio", type=float, default=0.5)
    a.add_argument("--batch", type=int, default=8)
    a.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    {"digits": digits, "applications": applications}[args.command](args)


if __name__ == "__main__":
    main()
