"""What the config/weights agreement check costs the file engine, beside what opening the file costs.

    python benchmarks/agreement_cost.py [--model ResNet50] [--repeats 5]

Builds a keras.applications model with ``weights=None`` (224x224), saves it as
``.h5`` and ``.keras`` in a temporary folder beside copies of the sample digits_cnn, and times,
side by side in one run:
opening the file (``open_model_file``), the check (``check_agreement``) with a cold
and a warm cache of the Keras source reading, and a whole file-engine prune
(``prunectl prune --engine file --sparsity 0.5``, in process). Prints the medians and
the check's share of the prune.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from prunectl.core.io import keras_api  # noqa: E402
from prunectl.core.io.agreement import check_agreement  # noqa: E402
from prunectl.core.io.modelfile import open_model_file  # noqa: E402


def _clear_cache() -> None:
    for function in (keras_api.package_dir, keras_api._module_ast, keras_api._bindings, keras_api._class_def):
        function.cache_clear()
    keras_api.accepted_keys.cache_clear()


def _median(times: list[float]) -> float:
    return statistics.median(times) * 1000


def measure(path: Path, repeats: int) -> dict[str, float]:
    """Median milliseconds of open, cold check, warm check and a file-engine prune of ``path``."""
    from click.testing import CliRunner

    from prunectl.cli.main import cli

    opens, colds, warms, prunes = [], [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        with open_model_file(path) as model:
            opens.append(time.perf_counter() - start)
            _clear_cache()
            start = time.perf_counter()
            check_agreement(model)
            colds.append(time.perf_counter() - start)
            start = time.perf_counter()
            check_agreement(model)
            warms.append(time.perf_counter() - start)
        out = path.with_name(f"out{path.suffix}")
        start = time.perf_counter()
        result = CliRunner().invoke(
            cli, ["prune", str(path), "--engine", "file", "--sparsity", "0.5", "-o", str(out), "--force"]
        )
        prunes.append(time.perf_counter() - start)
        if result.exit_code != 0:
            sys.exit(result.output)
    return {"open": _median(opens), "cold": _median(colds), "warm": _median(warms), "prune": _median(prunes)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ResNet50")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    from prunectl.core.io.keras_io import import_keras

    keras = import_keras()
    model = getattr(keras.applications, args.model)(weights=None)
    print(f"{args.model}: {model.count_params():,} params, {len(model.layers)} layers; medians of {args.repeats}")
    print("| file | open (ms) | check, cold (ms) | check, warm (ms) | file-engine prune (ms) | cold check / prune |")
    print("|---|---|---|---|---|---|")
    samples = Path(__file__).resolve().parent.parent / "sample_models"
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for fmt in (".h5", ".keras"):
            paths.append(Path(folder) / f"{args.model}{fmt}")
            model.save(paths[-1])
        for fmt in (".h5", ".keras"):  # a small model too, where the file engine's own work is small
            paths.append(Path(folder) / f"digits_cnn{fmt}")
            shutil.copy(samples / paths[-1].name, paths[-1])
        for path in paths:
            r = measure(path, args.repeats)
            print(
                f"| {path.name} | {r['open']:.1f} | {r['cold']:.1f} | {r['warm']:.1f} | {r['prune']:.0f} | "
                f"{r['cold'] / r['prune']:.3f} |"
            )


if __name__ == "__main__":
    main()
