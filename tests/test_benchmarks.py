"""The benchmarks run against the library's current API (they are not run in full here: they take minutes).

bench_io's helpers run on a tiny model; the other benchmark scripts are imported, so a renamed or moved
library function fails here instead of in the next person's benchmark run.
"""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest
from conftest import REPO
from independent import read_weights


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_bench_io_helpers_prune_the_prunable_weights(models):
    bench = _load("bench_io")
    path = models / "functional.h5"
    threshold, nbytes = bench.threshold_for(path, 0.5)
    kernels = np.concatenate(
        [np.abs(read_weights(path)[k]).ravel() for k in ("conv/kernel", "fc/kernel", "head/kernel")]
    )
    assert threshold == pytest.approx(float(np.quantile(kernels, 0.5)))
    assert nbytes == sum(a.nbytes for a in read_weights(path).values())
    rows = bench.compression_table(path, threshold)
    assert [r["level"] for r in rows] == [0, 1, 2, 3, 4, 6, 9]


@pytest.mark.parametrize("name", ["structural", "finetune_accuracy", "applications_table"])
def test_benchmark_scripts_import(name):
    module = _load(name)
    assert callable(module.main)
