"""The pruning math on plain arrays, checked against a sort-based reference."""

import numpy as np
import pytest

from prunectl.core.weights import masks


def reference_prune(arrays, sparsity):
    """Zero the k smallest |w| over all arrays, ties by (array order, index): a full sort."""
    flat = np.concatenate([a.ravel() for a in arrays])
    k = masks.zeros_for(sparsity, flat.size)
    order = np.lexsort((np.arange(flat.size), np.abs(flat)))
    flat[order[:k]] = 0
    out, start = [], 0
    for a in arrays:
        out.append(flat[start : start + a.size].reshape(a.shape))
        start += a.size
    return out


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("seed", range(12))
def test_sparsity_cut_matches_sorting_reference(seed, dtype):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(rng.integers(1, 300)).astype(dtype) for _ in range(rng.integers(1, 4))]
    if seed % 3 == 0:  # many exact ties
        arrays = [np.round(a, 1).astype(dtype) for a in arrays]
    if seed % 4 == 0:  # already-zero weights count among the smallest
        arrays[0][: arrays[0].size // 2] = 0
    sparsity = float(rng.random() * 0.99)
    expected = reference_prune([a.copy() for a in arrays], sparsity)
    masks.prune_to_sparsity(arrays, sparsity)
    for got, want in zip(arrays, expected):
        np.testing.assert_array_equal(got, want)


def test_cut_spans_blocks(monkeypatch):
    monkeypatch.setattr(masks, "BLOCK", 7)  # force many blocks per tensor
    rng = np.random.default_rng(5)
    arrays = [np.round(rng.standard_normal((13, 11)), 1).astype(np.float32), rng.standard_normal(29).astype(np.float32)]
    expected = reference_prune([a.copy() for a in arrays], 0.63)
    masks.prune_to_sparsity(arrays, 0.63)
    for got, want in zip(arrays, expected):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "sparsity,count,expected",
    [
        (0.0, 10, 0),
        (0.8, 10, 8),
        (0.5, 5, 3),
        (0.5, 4, 2),
        (0.3, 10, 3),
        (0.99, 10, 10),
        (0.25, 3, 1),
    ],
)
def test_zeros_for_never_undershoots(sparsity, count, expected):
    k = masks.zeros_for(sparsity, count)
    assert k == expected
    assert k / count >= sparsity


def test_threshold_zeroes_strictly_below():
    w = np.array([[-0.2, 0.05], [0.1, -0.1]], dtype=np.float32)
    masks.apply_threshold(w, 0.1)
    np.testing.assert_array_equal(w, np.array([[-0.2, 0.0], [0.1, -0.1]], dtype=np.float32))


def test_zero_sparsity_changes_nothing():
    w = np.arange(1, 7, dtype=np.float32)
    assert masks.prune_to_sparsity([w], 0.0) is None
    np.testing.assert_array_equal(w, np.arange(1, 7, dtype=np.float32))


def test_cut_magnitude_is_largest_zeroed():
    w = np.array([0.4, -0.1, 0.3, 0.2], dtype=np.float32)
    cut = masks.prune_to_sparsity([w], 0.5)
    assert cut.magnitude == pytest.approx(0.2)
    assert masks.count_zeros(w) == 2


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_negative_zero_counts_as_zero(dtype, monkeypatch):
    monkeypatch.setattr(masks, "BLOCK", 5)  # several blocks, one reused scratch buffer
    w = np.array([-0.0, 0.0, 1.0, -2.0, -0.0, 3.0, 0.0, -0.0, 5.0, 6.0, -0.0], dtype=dtype)
    assert masks.count_zeros(w) == 6
    assert masks.count_nonzero(w) == 5
    assert masks.count_zeros(w.reshape(1, 11)[:, ::2]) == int(np.sum(w[::2] == 0))  # non-contiguous view


def test_report_counts_negative_zeros_in_files(tmp_path):
    import h5py

    from prunectl.core.io.modelfile import ModelFile, WeightEntry
    from prunectl.core.weights.catalog import file_counts

    w = np.where(np.arange(3000) % 3 == 0, -0.0, 1.5).astype(np.float32)
    with h5py.File(tmp_path / "w.h5", "w") as f:
        f["w"] = w
    with h5py.File(tmp_path / "w.h5", "r") as f:
        import os

        fd = os.open(tmp_path / "w.h5", os.O_RDONLY)
        entry = WeightEntry("l", "Dense", "kernel", "/w", (3000,), "<f4")
        model = ModelFile(tmp_path / "w.h5", "h5", {}, f, [entry], raw=(fd, 0))
        try:
            assert file_counts(model, slab_bytes=1024).zeros[entry.key] == 1000  # raw slabs
            model.raw = None
            assert file_counts(model, slab_bytes=1024).zeros[entry.key] == 1000  # h5py slabs
        finally:
            model.close()
            os.close(fd)
