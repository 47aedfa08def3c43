"""Latency speedup per FLOPs ratio of a structurally pruned keras.applications model, and where it goes.

    python benchmarks/latency.py [--model ResNet50] [--size 224] [--batch 8] [--ratio 0.5] [--round-to 8]
        [--fold-batchnorm] [--repeats 30] [--layers]

Builds the model with ``weights=None``, prunes it (criterion l1, ``--ratio`` per
group, ``--round-to``), and times original and pruned side by side in one run:
each model's inference graph (``core.cost.forward_function``), interleaved with
an empty call (``core.cost.time_calls``), one call each per round, the order
flipped every round. Printed: milliseconds of both models (fastest and median
round), the speedup, the FLOPs ratio and **speedup / FLOPs ratio**.
``--fold-batchnorm`` folds BatchNormalization into the convolution before it in
*both* models (``core.fold``), so the ratio stays the pruning's alone.
``--layers`` also times every layer of both models on its own input (each layer
a traced graph, original and pruned layer interleaved) and prints the time by
layer class and the layers whose time shrank least against their FLOPs.
TensorFlow runs with one inter-op thread unless ``TF_NUM_INTEROP_THREADS`` is set
(the same for both models; see ``core/cost.py``).
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections import defaultdict

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")

from prunectl.core.io.keras_io import import_keras  # noqa: E402
from prunectl.core.structure.cost import as_tensors, empty_function, forward_function, time_calls  # noqa: E402
from prunectl.core.structure.fold import fold_batchnorm  # noqa: E402
from prunectl.core.structure.plan import NeuronPruning, apply_plan, plan_structure  # noqa: E402


def prune(model, ratio: float, round_to: int, fold: bool):
    """``(original, pruned, plan)``: ``model`` pruned by l1 at ``ratio``; both BatchNorm-folded when ``fold``."""
    plan = plan_structure(model, NeuronPruning(ratio=ratio, round_to=round_to))
    pruned = apply_plan(model, plan)
    if fold:
        (model, _), (pruned, _) = fold_batchnorm(model), fold_batchnorm(pruned)
    return model, pruned, plan


def speedup(model, pruned, batch: np.ndarray, flops_ratio: float, repeats: int) -> dict:
    """Milliseconds of both models and the empty call, speedup and speedup / FLOPs ratio, fastest and median round."""
    functions = [forward_function(model, batch), forward_function(pruned, batch), empty_function(batch)]
    samples = time_calls(functions, as_tensors(batch), repeats)
    out = {}
    for stat, f in (("min", min), ("median", statistics.median)):
        before, after, floor = (f(s) * 1e3 for s in samples)
        out[stat] = {
            "before_ms": before,
            "after_ms": after,
            "floor_ms": floor,
            "speedup": before / after,
            "per_flops": before / after / flops_ratio,
        }
    return out


def layer_times(model, pruned, batch: np.ndarray, repeats: int = 10) -> list[dict]:
    """Fastest-round milliseconds of each layer of both models on its own input, the two layers interleaved.

    Layers are matched by name (the pruned model keeps them); each is called once in its model.
    """
    import tensorflow as tf

    keras = import_keras()
    rows = []
    inputs = {}
    for which, m in (("before", model), ("after", pruned)):
        layers = [layer for layer in m.layers if layer.__class__.__name__ != "InputLayer"]
        probe = keras.Model(m.inputs, [layer.input for layer in layers])
        values = probe(batch if isinstance(batch, list) else [batch], training=False)
        inputs[which] = {layer.name: (layer, value) for layer, value in zip(layers, values)}
    for name, (layer, x) in inputs["before"].items():
        new, x_new = inputs["after"][name]
        functions = []
        for lay, value in ((layer, x), (new, x_new)):
            # The polymorphic function (not a concrete one) takes a list input (Add, Concatenate) as one argument.
            functions.append((tf.function(lambda v, lay=lay: lay(v, training=False), autograph=False), value))
        samples = [[] for _ in functions]
        for round_ in range(repeats + 2):
            for i in (0, 1) if round_ % 2 == 0 else (1, 0):
                f, value = functions[i]
                spent = time_calls([f], value, repeats=1, warmup=0)[0][0]
                if round_ >= 2:
                    samples[i].append(spent)
        rows.append(
            {"layer": name, "class": layer.__class__.__name__, "before": min(samples[0]), "after": min(samples[1])}
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ResNet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--fold-batchnorm", action="store_true")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--layers", action="store_true", help="also time every layer of both models")
    args = parser.parse_args()
    keras = import_keras()
    import tensorflow as tf

    model = getattr(keras.applications, args.model)(input_shape=(args.size, args.size, 3), weights=None)
    model, pruned, plan = prune(model, args.ratio, args.round_to, args.fold_batchnorm)
    flops = plan.totals()["flops"]
    batch = np.random.default_rng(0).random((args.batch, args.size, args.size, 3), dtype=np.float32)
    print(
        f"{args.model} {args.size}x{args.size} batch {args.batch}; l1 ratio {args.ratio} round_to {args.round_to}; "
        f"fold_batchnorm={args.fold_batchnorm}; {args.repeats} interleaved rounds; threads intra-op "
        f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}, inter-op "
        f"{os.environ.get('TF_NUM_INTEROP_THREADS', 'default')}"
    )
    print(f"FLOPs {flops['before']:,} -> {flops['after']:,} ({flops['ratio']:.2f}x)")
    result = speedup(model, pruned, batch, flops["ratio"], args.repeats)
    for stat, r in result.items():
        print(
            f"{stat}: before {r['before_ms']:.1f} ms, after {r['after_ms']:.1f} ms, empty call {r['floor_ms']:.2f} ms, "
            f"speedup {r['speedup']:.2f}x, speedup / FLOPs ratio {r['per_flops']:.2f}"
        )
    if not args.layers:
        return
    rows = layer_times(model, pruned, batch)
    by_class: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for row in rows:
        by_class[row["class"]][0] += row["before"] * 1e3
        by_class[row["class"]][1] += row["after"] * 1e3
    total = [sum(v[i] for v in by_class.values()) for i in (0, 1)]
    print(f"sum of layers: before {total[0]:.1f} ms, after {total[1]:.1f} ms ({total[0] / total[1]:.2f}x)")
    print("| class | before (ms) | after (ms) | speedup | share of after |")
    print("| --- | --- | --- | --- | --- |")
    for cls, (b, a) in sorted(by_class.items(), key=lambda kv: -kv[1][1]):
        print(f"| {cls} | {b:.2f} | {a:.2f} | {b / a:.2f}x | {a / total[1]:.0%} |")
    macs = {r.layer: (r.flops_before, r.flops_after) for r in plan.layers}
    print("| layer | before (ms) | after (ms) | speedup | FLOPs ratio |")
    print("| --- | --- | --- | --- | --- |")
    for row in sorted(rows, key=lambda r: -(r["after"] - r["before"] / flops["ratio"]))[:15]:
        b, a = macs.get(row["layer"], (0, 0))
        fr = f"{b / a:.2f}x" if a else "-"
        print(
            f"| {row['layer']} ({row['class']}) | {row['before'] * 1e3:.2f} | {row['after'] * 1e3:.2f} | "
            f"{row['before'] / row['after']:.2f}x | {fr} |"
        )


if __name__ == "__main__":
    main()
