"""What naming a ``.keras`` file's weights (``vars/1`` -> ``bias``) costs ``prunectl report --all-weights``.

    python benchmarks/report_names.py [--model ResNet50] [--repeats 7] [--path model.keras]

Builds a keras.applications model with ``weights=None`` and saves it as ``.keras`` in a
temporary folder (or reads ``--path``), then times, interleaved in one run: the whole
``report --all-weights --json`` in process as shipped, the same with the naming switched
off (every weight left ``vars/<i>``), and the naming alone (``keras_weight_names`` on an
open file). Prints the medians and the ratio with/without.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from prunectl.core.io.agreement import keras_weight_names  # noqa: E402
from prunectl.core.io.modelfile import open_model_file  # noqa: E402
from prunectl.core.run import report as report_module  # noqa: E402


def _report(path: Path) -> float:
    from click.testing import CliRunner

    from prunectl.cli.main import cli

    start = time.perf_counter()
    result = CliRunner().invoke(cli, ["report", str(path), "--all-weights", "--json"])
    spent = time.perf_counter() - start
    if result.exit_code != 0:
        raise SystemExit(result.output)
    return spent


def measure(path: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds of each of ``repeats`` rounds: report with names, report without, naming alone."""
    named = report_module.keras_weight_names
    spent: dict[str, list[float]] = {"report (named)": [], "report (vars/<i>)": [], "naming alone": []}
    _report(path)  # warm the file cache and the imports
    for _ in range(repeats):
        spent["report (named)"].append(_report(path))
        report_module.keras_weight_names = lambda model: {}  # type: ignore[assignment]
        try:
            spent["report (vars/<i>)"].append(_report(path))
        finally:
            report_module.keras_weight_names = named
        with open_model_file(path) as model:
            start = time.perf_counter()
            keras_weight_names(model)
            spent["naming alone"].append(time.perf_counter() - start)
    return spent


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ResNet50", help="a keras.applications model name")
    parser.add_argument("--path", type=Path, help="an existing .keras file instead of building one")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        path = args.path
        if path is None:
            import keras

            path = Path(folder) / f"{args.model}.keras"
            getattr(keras.applications, args.model)(weights=None).save(path)
        with open_model_file(path) as model:
            names = keras_weight_names(model)
            unnamed = [e for e in model.entries if e.weight.startswith("vars/")]
            left = [e for e in unnamed if e.dataset not in names]
        print(
            f"{path.name}: {len(model.entries)} weights, {len(unnamed)} stored as vars/<i>, {len(left)} left so "
            f"after naming; {path.stat().st_size:,} bytes"
        )
        spent = measure(path, args.repeats)
    for label, times in spent.items():
        print(f"{label:>18}: median {1000 * statistics.median(times):8.1f} ms, min {1000 * min(times):8.1f} ms")
    with_names, without = spent["report (named)"], spent["report (vars/<i>)"]
    print(
        f"named / unnamed: median {statistics.median(with_names) / statistics.median(without):.3f}x, "
        f"min {min(with_names) / min(without):.3f}x"
    )


if __name__ == "__main__":
    main()
