"""The per-tensor deflate choice (core/io/compress.py): what it picks, that what it writes reads back bit for bit,
that it beats the rule before it on sparse tensors, and that stock Keras loads the outputs in a fresh process
where prunectl cannot be imported, with and without the optional encoders."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from dataclasses import replace

import h5py
import numpy as np
import pytest
from conftest import run
from independent import dataset_filters, read_weights

from prunectl.core.io import compress
from prunectl.core.io.compress import ENCODER_ENV, POLICIES, ChunkWriter, legacy_policy

NAMES = ("none", "fast", "balanced", "strong")


def _sparse(shape, zeros: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.normal(0, 0.05, size=shape).astype(np.float32)
    data[rng.random(shape) < zeros] = 0
    return data


def _stored(path, name: str) -> int:
    with h5py.File(path, "r") as f:
        return f[name].id.get_storage_size()


@pytest.mark.parametrize("zeros, shuffled", [(0.0, True), (0.2, True), (0.5, False), (0.9, False)])
def test_shuffle_only_for_dense_tensors(zeros, shuffled):
    assert POLICIES["fast"].codec(_sparse((64, 64), zeros)).shuffle is shuffled


def test_encoders_by_name_and_the_zlib_switch(monkeypatch):
    monkeypatch.delenv(ENCODER_ENV, raising=False)
    installed = compress._installed()
    fast = POLICIES["fast"].encoder()
    assert fast == next(e for e in (("isal", 1), ("libdeflate", 1), ("zlib", 1)) if e[0] in installed)
    monkeypatch.setenv(ENCODER_ENV, "zlib")
    assert POLICIES["fast"].encoder() == ("zlib", 1)
    assert POLICIES["strong"].encoder() == ("zlib", 9)
    assert POLICIES["balanced"].encoder() == ("zlib", 6)


def test_a_missing_encoder_falls_back_to_zlib(monkeypatch):
    monkeypatch.delenv(ENCODER_ENV, raising=False)
    monkeypatch.setattr(compress, "_installed", lambda: {"zlib": __import__("zlib").compress})
    assert POLICIES["strong"].encoder() == ("zlib", 9)


@pytest.mark.parametrize("force_zlib", [False, True])
@pytest.mark.parametrize("name", NAMES)
def test_round_trip_is_bit_exact(tmp_path, monkeypatch, name, force_zlib):
    if force_zlib:
        monkeypatch.setenv(ENCODER_ENV, "zlib")
    # Small chunks so that tensors span several chunks, edge chunks included (padded by the writer).
    monkeypatch.setattr(compress, "CHUNK_BYTES", 4096)
    arrays = {
        "dense": _sparse((37, 41, 3), 0.0),
        "sparse": _sparse((300, 70), 0.9),
        "half": _sparse((129, 65), 0.5, seed=1),
        "ints": np.arange(5000, dtype=np.int64).reshape(50, 100) % 7,
        "doubles": _sparse((2000,), 0.3).astype(np.float64),
        "tiny": np.float32([1.5, -0.0, 2.0]),
        "scalar": np.float32(3.25),
    }
    with h5py.File(tmp_path / "w.h5", "w") as f, ChunkWriter(name, workers=2) as writer:
        for key, data in arrays.items():
            writer.write(f, key, data)
    with h5py.File(tmp_path / "w.h5", "r") as f:
        for key, data in arrays.items():
            back = f[key][()]
            assert back.dtype == data.dtype and back.shape == data.shape
            assert np.asarray(back).tobytes() == np.asarray(data).tobytes(), key
            if name != "none" and data.nbytes >= compress.SMALL_BYTES:
                assert f[key].compression == "gzip"


def test_strong_keeps_the_smaller_of_shuffled_and_unshuffled(tmp_path):
    # Half zeros sits near the crossover: whichever way is smaller must be the one written.
    data = _sparse((256, 256), 0.4)
    sizes = {}
    for shuffle in (False, True):
        forced = compress.Policy("forced", POLICIES["strong"].encoders, shuffle=shuffle)
        with h5py.File(tmp_path / f"{shuffle}.h5", "w") as f, ChunkWriter(forced) as writer:
            writer.write(f, "w", data)
        sizes[shuffle] = _stored(tmp_path / f"{shuffle}.h5", "w")
    with h5py.File(tmp_path / "strong.h5", "w") as f, ChunkWriter("strong") as writer:
        writer.write(f, "w", data)
    with h5py.File(tmp_path / "strong.h5", "r") as f:
        assert f["w"].shuffle == (sizes[True] < sizes[False])
    assert _stored(tmp_path / "strong.h5", "w") == min(sizes.values())


@pytest.mark.parametrize("force_zlib", [False, True])
@pytest.mark.parametrize("name", ["fast", "balanced", "strong"])
def test_a_sparse_tensor_is_smaller_than_under_the_old_rule(tmp_path, monkeypatch, name, force_zlib):
    if force_zlib:
        monkeypatch.setenv(ENCODER_ENV, "zlib")
    data = _sparse((256, 256), 0.9)
    for label, policy in (("old", legacy_policy(1)), ("new", name)):
        with h5py.File(tmp_path / f"{label}.h5", "w") as f, ChunkWriter(policy) as writer:
            writer.write(f, "w", data)
    old, new = _stored(tmp_path / "old.h5", "w"), _stored(tmp_path / "new.h5", "w")
    assert new < 0.75 * old, (old, new)


@pytest.mark.parametrize("fmt", [".h5", ".keras"])
@pytest.mark.parametrize("name", NAMES)
def test_outputs_pass_the_guard_and_hold_the_pruned_weights(samples, fmt, name):
    source = samples / f"digits_mlp{fmt}"
    output = samples / f"out.{name}{fmt}"
    run("prune", source, "--sparsity", "0.9", "--compression", name, "-o", output)
    # report opens the output through the guard, as prune opens an input.
    run("report", output)
    before, after = read_weights(source), read_weights(output)
    assert before.keys() == after.keys()
    for key, data in after.items():
        if key.endswith(("kernel", "/0")):  # a .keras file names a layer's variables by index
            kept = data != 0
            assert np.mean(kept) <= 0.1 + 1e-3
            np.testing.assert_array_equal(data[kept], before[key][kept])
        else:
            np.testing.assert_array_equal(data, before[key])
    if name == "none":
        assert {c for _, c, _ in dataset_filters(output)} == {None}
    if fmt == ".keras":
        # Only strong deflates the weights member as a whole (its metadata and small raw tensors).
        with zipfile.ZipFile(output) as archive:
            method = archive.getinfo("model.weights.h5").compress_type
        assert method == (zipfile.ZIP_DEFLATED if name == "strong" else zipfile.ZIP_STORED)


def test_strong_keras_member_deflated_is_smaller_than_stored(samples, monkeypatch):
    strong = samples / "strong.keras"
    run("prune", samples / "digits_cnn.keras", "--sparsity", "0.9", "--compression", "strong", "-o", strong)
    monkeypatch.setitem(POLICIES, "strong", replace(POLICIES["strong"], whole_member=False))
    stored = samples / "stored.keras"
    run("prune", samples / "digits_cnn.keras", "--sparsity", "0.9", "--compression", "strong", "-o", stored)
    assert strong.stat().st_size < 0.95 * stored.stat().st_size
    assert read_weights(strong).keys() == read_weights(stored).keys()
    for key, data in read_weights(strong).items():
        np.testing.assert_array_equal(data, read_weights(stored)[key])


STOCK_LOAD = textwrap.dedent(
    """
    import sys
    # No prunectl, however it is installed (editable here, a regular install in CI): every import of it fails.
    class NoPrunectl:
        def find_spec(self, name, path=None, target=None):
            if name == "prunectl" or name.startswith("prunectl."):
                raise ImportError("prunectl is not installed here")
    sys.meta_path.insert(0, NoPrunectl())
    try:
        import prunectl
    except ImportError:
        pass
    else:
        raise AssertionError("prunectl importable")
    import numpy as np, keras
    model = keras.saving.load_model(sys.argv[1], compile=False)
    data = np.load(sys.argv[2])
    got = model.predict(data["x"], verbose=0)
    np.testing.assert_allclose(got, data["expected"], atol=1e-5)
    print("loaded", got.shape)
    """
)


def _mlp_forward(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The digits MLP (flatten, fc1 relu, fc2 relu, head softmax) in numpy, from weights read with h5py."""

    def w(layer, name, index):
        # .h5: digits_mlp/fc1/kernel; .keras: fc1/0
        return next(v for k, v in weights.items() if k.endswith((f"/{layer}/{name}", f"{layer}/{index}")))

    h = x.reshape(len(x), -1).astype(np.float64)
    for layer in ("fc1", "fc2"):
        h = np.maximum(h @ w(layer, "kernel", 0) + w(layer, "bias", 1), 0)
    logits = h @ w("head", "kernel", 0) + w("head", "bias", 1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.slow
@pytest.mark.parametrize("force_zlib", [False, True])
@pytest.mark.parametrize("fmt", [".h5", ".keras"])
def test_stock_keras_loads_every_output_in_a_fresh_process(samples, tmp_path, fmt, force_zlib):
    from conftest import REPO

    env = {ENCODER_ENV: "zlib"} if force_zlib else {}
    x = np.load(samples / "digits_test.npz")["x"][:64]
    script = tmp_path / "load.py"
    script.write_text(STOCK_LOAD)
    for name in NAMES:
        output = samples / f"out.{name}{fmt}"
        run("prune", samples / f"digits_mlp{fmt}", "--sparsity", "0.9", "--compression", name, "-o", output, env=env)
        expected = tmp_path / f"{name}.npz"
        np.savez(expected, x=x, expected=_mlp_forward(read_weights(output), x).astype(np.float32))
        clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", ENCODER_ENV)}
        done = subprocess.run(
            [sys.executable, "-I", str(script), str(output), str(expected), str(REPO)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={**clean, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        assert done.returncode == 0 and "loaded" in done.stdout, (name, done.stderr[-3000:])
