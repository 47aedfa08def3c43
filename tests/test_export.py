"""``prunectl export`` and ``prune --export``: the export runs in its runtime with Keras's outputs.

Each converting test checks the written file independently: it loads it in the
runtime itself (the LiteRT interpreter, onnxruntime, ``tf.saved_model.load``) and
compares its outputs with Keras's ``predict`` on the same inputs. Conversions
take about half a second each, so those tests are marked slow.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, invoke, run, seeded_keras

DIGITS_TEST = REPO / "sample_models" / "digits_test.npz"


def runtime_outputs(path, fmt, x):
    """The export's outputs on ``x``, run here without prunectl."""
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        detail = interpreter.get_input_details()[0]
        interpreter.resize_tensor_input(detail["index"], x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))  # held: its functions need its variables alive
    return np.asarray(loaded.serve(x))


def keras_outputs(model_path, x):
    import keras

    return keras.models.load_model(model_path, compile=False).predict(x, verbose=0)


def dense_model(path):
    keras = seeded_keras()
    model = keras.Sequential(
        [keras.Input((6,), name="x"), keras.layers.Dense(5, activation="relu"), keras.layers.Dense(3)]
    )
    model.save(path)
    return path


def conv_model(path):
    keras = seeded_keras()
    inputs = keras.Input((6, 6, 2), name="img")
    h = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    h = keras.layers.Flatten()(h)
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(h))
    model.save(path)
    return path


SUFFIX = {"litert": ".tflite", "onnx": ".onnx", "saved_model": ".saved_model"}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["litert", "onnx", "saved_model"])
@pytest.mark.parametrize("build", [dense_model, conv_model], ids=["dense", "conv"])
def test_export_matches_keras_in_the_runtime(tmp_path, fmt, build):
    model = build(tmp_path / "m.keras")
    result = run("export", model, "--format", fmt, "--json")
    report = json.loads(result.stdout)  # stdout holds the JSON and nothing else
    target = tmp_path / f"m{SUFFIX[fmt]}"
    assert report["export"]["path"] == str(target) and target.exists()
    import keras

    shape = keras.models.load_model(model, compile=False).inputs[0].shape[1:]
    x = np.random.default_rng(7).standard_normal((5, *shape)).astype("float32")
    assert np.max(np.abs(runtime_outputs(target, fmt, x) - keras_outputs(model, x))) < 1e-5
    assert report["export"]["max_abs_diff"] < 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.keras", target.name])  # no temporary left


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["litert", "onnx"])
def test_structurally_pruned_export_runs_and_is_timed_against_the_original(samples, fmt):
    model = samples / "digits_cnn.keras"
    out = samples / "cnn.pruned.keras"
    result = run(
        "prune",
        model,
        "--neuron-ratio",
        "0.5",
        "-o",
        out,
        "--export",
        fmt,
        "--benchmark",
        "--data",
        samples / "digits_test.npz",
        "--json",
    )
    block = json.loads(result.stdout)["export"]
    target = samples / f"cnn.pruned{SUFFIX[fmt]}"
    with np.load(samples / "digits_test.npz") as data:
        x, y = data["x"][:64].astype("float32"), data["y"][:64]
    got = runtime_outputs(target, fmt, x)
    assert np.max(np.abs(got - keras_outputs(out, x))) < 1e-4
    assert block["bytes"] == target.stat().st_size
    bench = block["benchmark"]
    assert bench["original_ms"] > 0 and bench["pruned_ms"] > 0 and bench["batch_size"] == 256
    assert bench["original_bytes"] > block["bytes"]  # half the units: a smaller export
    assert np.mean(np.argmax(got, -1) == y) > 0.9
    assert not [p for p in samples.iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_export_benchmark_times_runtime_and_keras(tmp_path):
    model = conv_model(tmp_path / "m.keras")
    result = run("export", model, "--format", "litert", "--benchmark", "--json")
    bench = json.loads(result.stdout)["export"]["benchmark"]
    assert bench["runtime_ms"] > 0 and bench["keras_ms"] > 0 and bench["runtime"] == "LiteRT (XNNPACK)"


@pytest.mark.slow
def test_quantized_exports_are_smaller_and_report_accuracy(samples):
    model, data = samples / "digits_cnn.keras", samples / "digits_test.npz"
    run("export", model, "--format", "litert", "-o", samples / "float.tflite")
    float_size = (samples / "float.tflite").stat().st_size
    with np.load(data) as arrays:
        x, y = arrays["x"].astype("float32"), arrays["y"]
    for mode in ("dynamic", "float16", "int8"):
        target = samples / f"{mode}.tflite"
        result = run("export", model, "--format", "litert", "--quantize", mode, "--data", data, "-o", target, "--json")
        block = json.loads(result.stdout)["export"]
        assert target.stat().st_size < float_size
        assert block["quantize"] == mode and block["tolerance"] is None
        own = float(np.mean(np.argmax(runtime_outputs(target, "litert", x), -1) == y))
        assert block["accuracy"]["runtime"] == pytest.approx(own)
        assert block["accuracy"]["keras"] > 0.9 and own > 0.9


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fmt", "layer", "op"),
    [("onnx", "bucketize_me", "Bucketize"), ("litert", "enc", "DenseBincount")],
)
def test_a_layer_the_converter_cannot_handle_is_named(tmp_path, fmt, layer, op):
    keras = seeded_keras()
    inputs = keras.Input((4,), name="x")
    h = keras.layers.Dense(4, name="dense")(inputs)
    h = keras.layers.Discretization(bin_boundaries=[0.0, 1.0], name="bucketize_me")(h)
    h = keras.layers.CategoryEncoding(num_tokens=3, output_mode="count", name="enc")(h)
    keras.Model(inputs, keras.layers.Dense(2, name="head")(h)).save(tmp_path / "m.keras")
    result = invoke("export", tmp_path / "m.keras", "--format", fmt)
    assert result.exit_code == 1
    line = result.output.strip()
    assert line.startswith(f"Error: {fmt} cannot convert layer {layer!r}") and f"op {op}" in line, line
    assert "\n" not in line and "Received: node" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def test_an_existing_output_needs_force(tmp_path):
    model = dense_model(tmp_path / "m.keras")
    (tmp_path / "m.tflite").write_bytes(b"old")
    result = invoke("export", model, "--format", "litert")
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: output file exists; pass --force to overwrite it. Received: {str(tmp_path / 'm.tflite')!r}"
    )
    assert (tmp_path / "m.tflite").read_bytes() == b"old"


def test_a_wrong_suffix_is_refused(tmp_path):
    model = dense_model(tmp_path / "m.keras")
    result = invoke("export", model, "--format", "onnx", "-o", tmp_path / "m.tflite")
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: a onnx export must end in .onnx. Received: {str(tmp_path / 'm.tflite')!r}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--format", "tflite"], "Invalid value for '--format'"),
        (["--format", "onnx", "--quantize", "int8"], "--quantize applies to the litert format only"),
        (["--format", "litert", "--quantize", "int8"], "--quantize int8 needs --data"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path, args, message):
    model = dense_model(tmp_path / "m.keras")
    result = invoke("export", model, *args)
    assert result.exit_code == 2 and message in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def test_prune_quantize_needs_export(tmp_path):
    model = dense_model(tmp_path / "m.keras")
    result = invoke("prune", model, "--sparsity", "0.5", "--quantize", "dynamic")
    assert result.exit_code == 2 and "--quantize needs --export" in result.output


@pytest.mark.slow
@pytest.mark.parametrize(("fmt", "missing"), [("onnx", "onnxruntime"), ("litert", "ai_edge_litert.interpreter")])
def test_a_missing_extra_names_the_pip_command(tmp_path, fmt, missing):
    model = dense_model(tmp_path / "m.keras")
    # The module made unimportable in a fresh interpreter: the extra simulated absent, the command run for real.
    code = (
        f"import sys; sys.modules[{missing!r}] = None\n"
        "from prunectl.cli.main import main\n"
        f"sys.argv = ['prunectl', 'export', {str(model)!r}, '--format', {fmt!r}]; main()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    extra = fmt
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"Error: exporting to {fmt} needs prunectl[{extra}]: pip install 'prunectl[{extra}]'. "
        f"Received: no module named {missing!r}"
    )
    assert done.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]


def test_export_help_has_examples():
    result = run("export", "--help")
    assert "Examples:" in result.output and "--quantize int8" in result.output


@pytest.mark.slow
def test_the_export_benchmark_measures_every_model_in_one_runtime(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_export", REPO / "benchmarks" / "export.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    import keras

    dense = keras.models.load_model(conv_model(tmp_path / "m.keras"), compile=False)
    from prunectl.core.structure.plan import NeuronPruning, apply_plan, plan_structure

    pruned = apply_plan(dense, plan_structure(dense, NeuronPruning(ratio=0.5)))
    result = bench.measure({"dense": dense, "pruned": pruned}, "litert", tmp_path, (1, 4), repeats=2)
    assert result["bytes"]["pruned"] < result["bytes"]["dense"]
    assert set(result["ms"]) == {1, 4} and all(ms > 0 for row in result["ms"].values() for ms in row.values())
    assert max(result["max_abs_diff"].values()) < 1e-5
