"""core/cost.py: the traced forward pass, the interleaved timing loop and the benchmark record.

No assertion here is about speed: timings live in benchmarks/.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import build_functional, build_sequential, build_zoo, sample_inputs

from prunectl.core.errors import OptionError
from prunectl.core.structure.cost import (
    as_tensors,
    benchmark,
    forward_function,
    make_batch,
    measure_latency,
    time_calls,
)


@pytest.mark.parametrize("build", [build_sequential, build_functional, pytest.param(build_zoo, marks=pytest.mark.slow)])
def test_forward_function_is_the_inference_pass(build):
    # The functional model's BatchNormalization gives other outputs in training mode
    # (batch statistics), so equality shows the traced pass runs with training=False.
    model = build()
    x = sample_inputs(model, n=8)
    forward = forward_function(model, x)
    out = np.asarray(forward(as_tensors(x)))
    np.testing.assert_allclose(out, model.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    trained = np.asarray(model(as_tensors(x), training=True))
    if build is build_functional:
        assert not np.allclose(out, trained, atol=1e-4)


def test_time_calls_interleaves_and_flips_the_order():
    calls = []
    functions = [lambda x, i=i: calls.append(i) or np.zeros(1) for i in range(3)]
    samples = time_calls(functions, None, repeats=3, warmup=1, number=2)
    assert [len(s) for s in samples] == [3, 3, 3]
    assert all(t >= 0 for s in samples for t in s)
    rounds = [calls[i : i + 6] for i in range(0, len(calls), 6)]
    assert rounds == [[0, 0, 1, 1, 2, 2], [2, 2, 1, 1, 0, 0]] * 2


def test_time_calls_reads_every_output_back():
    read = []

    class Output:
        def __init__(self, name):
            self.name = name

        def __array__(self, dtype=None, copy=None):
            read.append(self.name)
            return np.zeros(1)

    time_calls([lambda x: {"a": Output("a"), "b": Output("b")}], None, repeats=2, warmup=0)
    assert read == ["a", "b", "a", "b"]


@pytest.mark.parametrize(
    "kwargs, received",
    [
        ({"repeats": 0}, "repeats=0, number=1, warmup=5"),
        ({"number": 0}, "repeats=100, number=0, warmup=5"),
        ({"warmup": -1}, "repeats=100, number=1, warmup=-1"),
    ],
)
def test_time_calls_rejects_bad_counts(kwargs, received):
    with pytest.raises(OptionError, match=f"Received: {received}$"):
        time_calls([lambda x: x], None, **kwargs)


def test_measure_latency_statistics():
    models = [build_sequential(), build_functional()]
    for model, x in zip(models, [sample_inputs(m, n=16) for m in models]):
        (fast,) = measure_latency([model], x, repeats=5, warmup=1, statistic="min")
        (typical,) = measure_latency([model], x, repeats=5, warmup=1, statistic="median")
        assert 0 < fast and 0 < typical
    with pytest.raises(OptionError, match=r"Received: statistic='mean'$"):
        measure_latency(models[:1], sample_inputs(models[0]), statistic="mean")


def test_make_batch_repeats_rows_or_draws_random_inputs():
    model = build_zoo()
    tokens, image = make_batch(model, batch_size=7)
    assert tokens.shape == (7, 5) and image.shape == (7, 8, 8, 3) and image.dtype == np.float32
    x = np.arange(3 * 6, dtype="float32").reshape(3, 6)
    batch = make_batch(build_sequential(), x, batch_size=7)
    assert batch.shape == (7, 6)
    np.testing.assert_array_equal(batch[3:6], x)


def test_benchmark_record_on_a_multi_input_model():
    model = build_zoo()
    record = benchmark(model, model, batch_size=4, repeats=3)
    assert set(record) == {"batch_size", "repeats", "statistic", "original_ms", "pruned_ms", "floor_ms", "speedup"}
    assert (record["batch_size"], record["repeats"], record["statistic"]) == (4, 3, "min")
    assert record["original_ms"] > 0 and record["pruned_ms"] > 0 and record["floor_ms"] > 0
    assert record["speedup"] > 0
