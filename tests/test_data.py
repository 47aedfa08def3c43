"""Data readers (.npz, .h5, .csv), their errors, the shape checks and batch streaming."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from prunectl.core.errors import DataError
from prunectl.core.training.data import READERS, Dataset, batches, check_fits, read_dataset, split

X = np.arange(40, dtype="float32").reshape(10, 2, 2)
Y = np.arange(10) % 3


def write(folder, suffix, x=X, y=Y, **keys):
    path = folder / f"data{suffix}"
    xk, yk = keys.get("x_key", "x"), keys.get("y_key", "y")
    if suffix == ".npz":
        np.savez(path, **{xk: x, yk: y})
    elif suffix == ".h5":
        with h5py.File(path, "w") as f:
            f[xk], f[yk] = x, y
    else:
        table = np.column_stack([x.reshape(len(x), -1), y])
        np.savetxt(path, table, delimiter=",", header="a,b,c,d,label", comments="")
    return path


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
@pytest.mark.parametrize("lazy", [False, True])
def test_keyed_readers(tmp_path, suffix, lazy):
    path = write(tmp_path, suffix, x_key="images", y_key="labels")
    data = read_dataset(path, lazy=lazy, x_key="images", y_key="labels")
    assert np.array_equal(data.x[:], X) and np.array_equal(data.y[:], Y) and len(data) == 10
    assert isinstance(data.x, np.ndarray) == (not lazy or suffix == ".npz")


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_missing_x_key_names_what_is_there(tmp_path, suffix):
    path = write(tmp_path, suffix)
    kind = "array" if suffix == ".npz" else "dataset"
    expected = rf"^data file has no {kind} 'inputs'; name the inputs' {kind} with --x-key NAME \({kind}s: x, y\)\. "
    with pytest.raises(DataError, match=expected + "Received: "):
        read_dataset(path, x_key="inputs")


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_targets_are_optional(tmp_path, suffix):
    path = write(tmp_path, suffix)
    assert read_dataset(path, y_key="nothing").y is None


@pytest.mark.parametrize("label_col", ["label", "4", "-1"])
def test_csv_label_column_by_name_or_index(tmp_path, label_col):
    data = read_dataset(write(tmp_path, ".csv"), label_col=label_col)
    assert data.x.shape == (10, 4) and data.x.dtype == np.float32
    assert data.y.dtype == np.int64 and np.array_equal(data.y, Y)


def test_csv_without_header_or_label(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("1,2.5\n3,4\n")
    data = read_dataset(path)
    assert data.y is None and data.x.tolist() == [[1, 2.5], [3, 4]]
    assert read_dataset(path, label_col="1").y.dtype == np.float32


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "data file is empty"),
        ("a,b\n1,x\n", "data file has a non-numeric or missing value"),
        ("a,b\n1,2\n3\n", "data file has a non-numeric or missing value"),
    ],
)
def test_csv_errors(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"^{message}"):
        read_dataset(path, label_col="a")


def test_csv_unknown_label_column(tmp_path):
    path = write(tmp_path, ".csv")
    with pytest.raises(DataError, match=r"^label column 'target' not in data file \(columns: a, b, c, d, label\)"):
        read_dataset(path, label_col="target")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.npz", None, "data file not found"),
        ("data.txt", b"1", r"unsupported data file type \(known: .csv, .h5, .npz\)"),
        ("broken.npz", b"not a zip", r"data file is not an .npz archive \(not a zip file"),
        ("broken.h5", b"not hdf5", "cannot read data file"),
    ],
)
def test_unreadable_files(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=rf"^{message}.*Received: '{path}'$"):
        read_dataset(path)


@pytest.mark.parametrize("name", READERS.names())
def test_reader_contract(tmp_path, name):
    reader = READERS.get(name)
    config = reader().get_config()
    assert reader(**config).get_config() == config
    options = {"label_col": "label"} if name == ".csv" else {}
    data = reader(**options).read(write(tmp_path, name))
    assert len(data) == 10 and np.array_equal(np.asarray(data.y[:]), Y)


# --- checks against the model ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data, message",
    [
        (Dataset(X), r"training data has no targets"),
        (Dataset(X, Y[:5]), r"training data x and y hold different sample counts. Received: 10 and 5"),
        (Dataset(X.reshape(10, 4), Y), r"training data x shape \(10, 4\) does not fit the model input \(None, 2, 2\)"),
        (Dataset(X, Y + 1), r"training data y holds class labels outside \[0, 3\) .* Received: labels 1..3"),
        (Dataset(X, np.ones((10, 2), "float32")), r"training data y shape \(10, 2\) does not fit the model output"),
        (Dataset(X.astype(str), Y), r"training data x must be numeric"),
    ],
)
def test_check_fits_errors(data, message):
    with pytest.raises(DataError, match=message):
        check_fits(data, (2, 2), (3,), name="training data")


@pytest.mark.parametrize(
    "y, output",
    [
        (Y, (3,)),
        (Y[:, None], (3,)),
        (np.ones((10, 3), "f4"), (3,)),
        (np.ones(10, "f4"), (1,)),
        (np.ones((10, 1), "f4"), (1,)),
    ],
)
def test_check_fits_accepts(y, output):
    check_fits(Dataset(X, y), (None, 2), output)


# --- streaming ---------------------------------------------------------------------------------


def epoch(dataset):
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in dataset])
    return np.concatenate(xs), np.concatenate(ys)


@pytest.mark.parametrize("lazy", [False, True])
def test_batches_cover_every_sample_once_per_epoch(tmp_path, lazy):
    data = read_dataset(write(tmp_path, ".h5"), lazy=lazy)
    stream = batches(data, 3, (np.float32, np.int32), shuffle=True, seed=1)
    assert int(stream.cardinality()) == 4
    first, second = epoch(stream), epoch(stream)
    for x, y in (first, second):
        order = np.argsort(x[:, 0, 0])
        assert np.array_equal(x[order], X) and np.array_equal(y[order], Y)
    assert not np.array_equal(first[0], second[0])  # reshuffled
    again = epoch(batches(data, 3, (np.float32, np.int32), shuffle=True, seed=1))
    assert np.array_equal(again[0], first[0])  # same seed, same order


def test_lazy_h5_is_read_batch_by_batch(tmp_path):
    data = read_dataset(write(tmp_path, ".h5"), lazy=True)
    assert isinstance(data.x, h5py.Dataset)
    train, val = split(data, 0.3)
    assert (len(train), len(val)) == (7, 3)
    assert np.array_equal(epoch(batches(val, 2, (np.float32, np.int64)))[0], X[7:])


def test_split_needs_samples_on_both_sides():
    with pytest.raises(DataError, match=r"validation split leaves no training or no validation samples"):
        split(Dataset(X[:1], Y[:1]), 0.5)
