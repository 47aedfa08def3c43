"""The README's keras.applications table: what ``--neuron-ratio 0.5 --round-to 8`` does to each family.

    python benchmarks/applications_table.py [--ratio 0.5] [--round-to 8] [NAME ...]

Builds the smallest variant of each keras.applications family with
``weights=None`` at a small input (the sizes of ``tests/test_applications.py``),
plans the structural step the CLI would run, and prints a Markdown table:
params before -> after, the params and multiply-adds ratios from the plan's
totals, the boundaries (layers the channel graph leaves whole) by class and
reason, and the groups of units left whole for another reason than reaching the
model output. A family whose plan fails is printed with the error.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import Counter

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from prunectl.core.io.keras_io import import_keras  # noqa: E402
from prunectl.core.structure.plan import NeuronPruning, plan_structure  # noqa: E402

SIZES = {
    "ConvNeXtTiny": 32,
    "DenseNet121": 32,
    "EfficientNetB0": 32,
    "EfficientNetV2B0": 32,
    "InceptionResNetV2": 75,
    "InceptionV3": 75,
    "MobileNet": 32,
    "MobileNetV2": 32,
    "MobileNetV3Small": 32,
    "NASNetMobile": 32,
    "ResNet50": 32,
    "ResNet50V2": 32,
    "VGG16": 32,
    "VGG19": 32,
    "Xception": 71,
}


def row(name: str, side: int, step: NeuronPruning) -> str:
    """One Markdown table row for ``name`` built at ``side`` x ``side``."""
    keras = import_keras()
    model = getattr(keras.applications, name)(weights=None, input_shape=(side, side, 3), classes=10)
    try:
        plan = plan_structure(model, step)
    except Exception as error:  # a table row, not a crash: the failure is the figure
        return f"| {name} | {side}x{side} | failed: {type(error).__name__}: {str(error)[:80]} | | | | |"
    totals = plan.totals()
    params, flops = totals["params"], totals["flops"]
    kinds = Counter(f"{cls} ({reason})" for _, cls, reason in plan.boundaries)
    # Layer names dropped from the reasons, so that the same cause is counted once: "feeds Add", not "feeds add_3".
    frozen = Counter(
        re.sub(r"[\w/.-]+ \((\w+)\)", r"\1", g.frozen.split(": ", 1)[-1])
        for g in plan.groups
        if g.frozen and g.frozen != "model output"
    )
    return (
        f"| {name} | {side}x{side} | {params['before']:,} -> {params['after']:,} | x{params['ratio']:.2f} "
        f"| x{flops['ratio']:.2f} | {_counted(kinds)} | {_counted(frozen)} |"
    )


def _counted(counts: Counter) -> str:
    listed = "; ".join(f"{n}x {kind}" if n > 1 else kind for kind, n in sorted(counts.items()))
    return f"{sum(counts.values())}: {listed}" if counts else "0"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="families to run (default: all)")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--round-to", type=int, default=8)
    args = parser.parse_args(argv)
    step = NeuronPruning(ratio=args.ratio, round_to=args.round_to)
    print(f"keras {import_keras().__version__}, --neuron-ratio {args.ratio} --round-to {args.round_to}\n")
    print(
        "| Architecture | Input | Params before -> after | Params ratio | FLOPs ratio | Boundaries "
        "| Groups left whole (the head is one) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, side in SIZES.items():
        if args.names and name not in args.names:
            continue
        start = time.perf_counter()
        print(row(name, side, step), flush=True)
        sys.stderr.write(f"{name}: {time.perf_counter() - start:.1f}s\n")


if __name__ == "__main__":
    main()
