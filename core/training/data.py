"""Data readers for steps that run the model (calibration, fine-tuning, evaluation).

Readers are small classes registered by name (the file suffix) in
:data:`READERS`; each reads a file into a :class:`Dataset`. An ``.npz`` or
``.csv`` file is read into numpy arrays; an ``.h5`` file can be read lazily
(``lazy=True``), keeping its datasets on disk so that :func:`batches` streams
them batch by batch instead of copying them into memory.

:func:`check_fits` compares a dataset with a model's input and output before
anything runs, so a mismatch is one clear error instead of a TensorFlow trace.
"""

from __future__ import annotations

import csv
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from prunectl.core.errors import DataError, first_line, shown_names
from prunectl.core.registry import Registry

READERS: Registry[Any] = Registry("data reader")


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` and, where the file has them, targets ``y``.

    ``x`` and ``y`` are numpy arrays, or h5py datasets when read lazily; both
    support ``shape``, ``dtype``, ``len()`` and slicing.
    """

    x: np.ndarray
    y: np.ndarray | None = None
    #: Where ``y`` is None: why the file gave no targets and how to name them (an error shows it).
    no_targets: str = ""

    def __len__(self) -> int:
        return len(self.x)


# Column and array names an error lists before it says how many more there are.
_SHOWN_NAMES = 8


def _names(names) -> str:
    return shown_names(names, _SHOWN_NAMES)


def _ends(names, head: int = 5, tail: int = 3) -> str:
    """The first and last of many column names: a table's targets are most often its first or last column."""
    names = [str(n) for n in names]
    return ", ".join(names if len(names) <= head + tail else [*names[:head], "...", *names[-tail:]])


def _no_targets(data: Dataset, name: str) -> DataError:
    """The error for data without targets, with the reader's advice on how to name them."""
    advice = f"; {data.no_targets}" if data.no_targets else ""
    return DataError(
        f"{name} has no targets (y) to train or evaluate on{advice}. Received: x shape {tuple(data.x.shape)}"
    )


def _fail(reason: str, path: Path) -> DataError:
    return DataError(f"{reason}. Received: {str(path)!r}")


@READERS.register(".npz")
class NpzReader:
    """Arrays from a numpy ``.npz`` archive, by key (default ``x`` and ``y``)."""

    def __init__(self, x_key: str = "x", y_key: str = "y", lazy: bool = False):
        self.x_key, self.y_key = x_key, y_key

    def get_config(self) -> dict:
        return {"x_key": self.x_key, "y_key": self.y_key}

    def read(self, path: Path) -> Dataset:
        try:
            # np.load reads any non-zip file as .npy or as a pickle (refused): neither is an .npz.
            is_zip = zipfile.is_zipfile(path)
        except OSError as exc:
            raise _fail(f"cannot read data file ({first_line(exc)})", path) from None
        if not is_zip:
            raise _fail("data file is not an .npz archive (not a zip file, or a truncated one)", path)
        try:
            with np.load(path, allow_pickle=False) as archive:
                if not archive.files:
                    raise _fail("data file holds no arrays (an empty .npz archive)", path)
                if self.x_key not in archive:
                    raise _fail(
                        f"data file has no array {self.x_key!r}; name the inputs' array with --x-key NAME "
                        f"(arrays: {_names(archive.files)})",
                        path,
                    )
                if self.y_key not in archive:
                    others = [k for k in archive.files if k != self.x_key]
                    return Dataset(archive[self.x_key], None, _name_targets("array", self.y_key, others, "--y-key"))
                return Dataset(archive[self.x_key], archive[self.y_key])
        # A damaged archive fails as a bad zip, a bad CRC, a truncated stream or a bad .npy header.
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise _fail(f"cannot read data file ({first_line(exc)})", path) from None


@READERS.register(".h5")
class H5Reader:
    """Datasets of an HDF5 file, by key (default ``x`` and ``y``); lazily with ``lazy=True``.

    A lazy read keeps the file open for as long as the returned arrays live.
    """

    def __init__(self, x_key: str = "x", y_key: str = "y", lazy: bool = False):
        self.x_key, self.y_key, self.lazy = x_key, y_key, lazy

    def get_config(self) -> dict:
        return {"x_key": self.x_key, "y_key": self.y_key, "lazy": self.lazy}

    def read(self, path: Path) -> Dataset:
        import h5py

        try:
            handle = h5py.File(path, "r")
        except OSError as exc:
            raise _fail(f"cannot read data file ({exc})", path) from None
        arrays: list[Any] = []
        missing = ""
        for key, required in ((self.x_key, True), (self.y_key, False)):
            item = handle.get(key)
            if item is None and not required:
                arrays.append(None)
                others = [k for k in handle if isinstance(handle[k], h5py.Dataset) and k != self.x_key]
                missing = _name_targets("dataset", key, others, "--y-key")
                continue
            if not isinstance(item, h5py.Dataset):
                names = _names([k for k in handle if isinstance(handle[k], h5py.Dataset)])
                handle.close()
                raise _fail(
                    f"data file has no dataset {key!r}; name the inputs' dataset with --x-key NAME (datasets: {names})",
                    path,
                )
            _check_stored(item, key, path, handle)
            try:
                arrays.append(item if self.lazy else item[()])
            except (OSError, ValueError, TypeError, MemoryError) as exc:
                handle.close()
                raise _fail(f"cannot read dataset {key!r} of data file ({first_line(exc)})", path) from None
        if not self.lazy:
            handle.close()
        return Dataset(arrays[0], arrays[1], missing)


# Deflate, HDF5's usual filter, compresses at most about 1032:1; more than this (and more than a few MB)
# means a declared shape the file does not hold: reading it would return fill values for as long as it takes.
_MAX_EXPANSION = 1100
_SLACK_BYTES = 1 << 20


def _check_stored(item, key: str, path: Path, handle) -> None:
    """Refuse an HDF5 dataset that declares far more bytes than the file stores for it."""
    declared = int(item.size) * item.dtype.itemsize
    stored = item.id.get_storage_size()
    if declared > _MAX_EXPANSION * stored + _SLACK_BYTES:
        handle.close()
        raise _fail(
            f"dataset {key!r} of data file declares shape {tuple(item.shape)} ({declared:,} bytes) but the file "
            f"stores {stored:,} bytes of it",
            path,
        )


def _numeric(row: list[str]) -> bool:
    """Whether every cell of ``row`` reads as a number (by the conversion that reads the table)."""
    try:
        np.array(row, dtype=np.float64)
    except ValueError:
        return False
    return True


@READERS.register(".csv")
class CsvReader:
    """Numeric columns of a CSV file; ``label_col`` (a header name or 0-based index) becomes ``y``.

    A first row that is not numeric is taken as the header.
    """

    def __init__(self, label_col: str | int | None = None, lazy: bool = False):
        self.label_col = label_col

    def get_config(self) -> dict:
        return {"label_col": self.label_col}

    def read(self, path: Path) -> Dataset:
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                rows = [row for row in csv.reader(handle) if row]
        except (OSError, UnicodeDecodeError) as exc:
            raise _fail(f"cannot read data file ({exc})", path) from None
        if not rows:
            raise _fail("data file is empty", path)
        header = None
        if not _numeric(rows[0]):
            header, rows = [cell.strip() for cell in rows[0]], rows[1:]
        try:
            table = np.array(rows, dtype=np.float64)  # one conversion of every cell
        except ValueError as exc:
            raise _fail(f"data file has a non-numeric or missing value ({exc})", path) from None
        if table.ndim != 2:
            raise _fail("data file has no data rows", path)
        if self.label_col is None:
            if header:
                advice = f"name the target column with --label-col NAME ({len(header)} columns: {_ends(header)})"
            else:
                last = table.shape[1] - 1
                advice = f"give the target column's 0-based index, e.g. --label-col {last} for the last (no header)"
            return Dataset(table.astype(np.float32), None, advice)
        column = self._column(header, table.shape[1], path)
        y = table[:, column]
        y = y.astype(np.int64) if np.all(y == np.round(y)) else y.astype(np.float32)
        return Dataset(np.delete(table, column, axis=1).astype(np.float32), y)

    def _column(self, header, width: int, path: Path) -> int:
        label = str(self.label_col)
        if header and label in header:
            return header.index(label)
        if label.lstrip("-").isdigit() and -width <= int(label) < width:
            return int(label) % width
        known = f"columns: {', '.join(header)}" if header else f"{width} columns, no header"
        raise _fail(f"label column {label!r} not in data file ({known})", path)


def _name_targets(kind: str, key: str, others, flag: str) -> str:
    """Advice for an archive without its targets' array: the flag that names them, and the arrays there are."""
    if not others:
        return f"it holds no {kind} {key!r} and no other {kind} than the inputs"
    return f"it holds no {kind} {key!r}; name the targets' {kind} with {flag} NAME ({kind}s: {_names(others)})"


def read_dataset(path: str | Path, lazy: bool = False, **options) -> Dataset:
    """Read a data file with the reader its suffix names.

    Args:
        path: an ``.npz``, ``.h5`` or ``.csv`` file.
        lazy: keep ``.h5`` datasets on disk (other formats are always read into memory).
        **options: the reader's options: ``x_key``/``y_key`` (``.npz``, ``.h5``),
            ``label_col`` (``.csv``).

    Returns:
        The :class:`Dataset`.

    Raises:
        DataError: missing file, unknown suffix, unreadable content, or content no
            step can use: an empty or non-numeric array, x and y of different
            lengths, or NaN or infinity in x or y (see :func:`check_values`).
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"data file is a directory. Received: {str(path)!r}")
    if path.exists() and not path.is_file():
        raise DataError(f"data file is not a regular file (a device or a pipe). Received: {str(path)!r}")
    if not path.is_file():
        raise DataError(f"data file not found. Received: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix not in READERS.names():
        raise DataError(f"unsupported data file type (known: {', '.join(READERS.names())}). Received: {str(path)!r}")
    data = READERS.get(suffix)(lazy=lazy, **options).read(path)
    check_values(data, path)
    return data


# Elements per np.isfinite call: bounds the temporary boolean array (and a lazy read) to a few MB.
_CHUNK = 1 << 22


def non_finite_count(array) -> int:
    """How many NaN or infinite values ``array`` (a numpy array or an h5py dataset) holds.

    Integer and boolean arrays cannot hold either, so only float arrays are read,
    in chunks of whole rows: a lazy (on-disk) array is read once, never whole.
    """
    if np.dtype(array.dtype).kind not in "fc" or array.size == 0:
        return 0
    if array.ndim == 0:
        return int(not np.isfinite(array[()]))
    rows = max(1, _CHUNK // max(1, array.size // len(array)))
    return sum(int(np.count_nonzero(~np.isfinite(array[start : start + rows]))) for start in range(0, len(array), rows))


def check_values(data: Dataset, path: str | Path) -> None:
    """Check that ``data`` holds samples every step can use.

    Args:
        data: the arrays read from ``path``.
        path: the data file, named in the error.

    Raises:
        DataError: an array that is a scalar, empty or non-numeric, x and y of
            different lengths, or NaN or infinity in x or y; the message names
            the file, the array and what was found.
    """
    name = str(path)
    arrays = [(label, array) for label, array in (("x", data.x), ("y", data.y)) if array is not None]
    for label, array in arrays:
        dtype = np.dtype(array.dtype)
        if dtype.kind not in "biuf":
            raise DataError(f"{name}: {label} must hold numbers. Received: {label} of dtype {dtype}")
        if array.ndim == 0:
            raise DataError(
                f"{name}: {label} is a single value, not an array of samples. Received: {label} of shape ()"
            )
        if array.size == 0:
            raise DataError(
                f"{name}: {label} is empty; the file holds no samples. Received: {label} of shape {tuple(array.shape)}"
            )
    if data.y is not None and len(data.y) != len(data.x):
        raise DataError(
            f"{name}: x and y hold different numbers of samples. "
            f"Received: x of shape {tuple(data.x.shape)}, y of shape {tuple(data.y.shape)}"
        )
    for label, array in arrays:
        bad = non_finite_count(array)
        if bad:
            raise DataError(
                f"{name}: {label} holds {bad:,} non-finite value{'s' if bad > 1 else ''} (NaN or inf); "
                "fix or drop those rows. "
                f"Received: {bad:,} of {array.size:,} values of {label}"
            )


def calibration_inputs(path: Path, model) -> np.ndarray:
    """Read a data file's inputs and check they fit ``model`` (activation criteria, latency batches).

    Raises:
        DataError: unreadable file, or inputs of the wrong shape.
    """
    x = read_dataset(path).x
    if len(model.inputs) != 1:
        raise DataError(f"data files hold one input array; the model has {len(model.inputs)}. Received: {str(path)!r}")
    expected = tuple(model.inputs[0].shape[1:])
    if x.ndim != len(expected) + 1 or any(e is not None and e != d for e, d in zip(expected, x.shape[1:])):
        raise DataError(
            f"data inputs do not fit the model's input {(None, *expected)}. "
            f"Received: x of shape {x.shape} in {str(path)!r}"
        )
    return x.astype(model.inputs[0].dtype, copy=False)


def _fits(shape: tuple, expected: tuple) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def check_fits(data: Dataset, input_shape: tuple, output_shape: tuple, name: str = "data") -> None:
    """Check that ``data`` can feed a model with these input and output shapes.

    Shapes are per sample (without the batch axis), ``None`` where any size goes.
    Integer targets of shape ``(N,)`` or ``(N, 1)`` fit a multi-class output as
    class labels, which must lie in ``[0, classes)``.

    Raises:
        DataError: no targets, a non-numeric array, a sample count that differs
            between x and y, or a shape that does not fit; the message names both shapes.
    """
    input_shape, output_shape = tuple(input_shape), tuple(output_shape)
    if data.y is None:
        raise _no_targets(data, name)
    for label, array in (("x", data.x), ("y", data.y)):
        if np.dtype(array.dtype).kind not in "biuf":
            raise DataError(f"{name} {label} must be numeric. Received: dtype {np.dtype(array.dtype)}")
    if len(data.y) != len(data.x):
        raise DataError(f"{name} x and y hold different sample counts. Received: {len(data.x)} and {len(data.y)}")
    if not _fits(tuple(data.x.shape[1:]), input_shape):
        raise DataError(
            f"{name} x shape {tuple(data.x.shape)} does not fit the model input {(None, *input_shape)}. "
            f"Received: x shape {tuple(data.x.shape)}"
        )
    y_sample = tuple(data.y.shape[1:])
    labels = np.dtype(data.y.dtype).kind in "biu" and y_sample in ((), (1,)) and (output_shape[-1:] or (1,))[0] != 1
    if labels:
        classes = output_shape[-1]
        low, high = int(np.min(data.y[()])), int(np.max(data.y[()]))
        if classes is not None and (low < 0 or high >= classes):
            raise DataError(
                f"{name} y holds class labels outside [0, {classes}) for the model output "
                f"{(None, *output_shape)}. Received: labels {low}..{high}"
            )
    elif not (_fits(y_sample, output_shape) or (y_sample == () and output_shape == (1,))):
        raise DataError(
            f"{name} y shape {tuple(data.y.shape)} does not fit the model output "
            f"{(None, *output_shape)}. Received: y shape {tuple(data.y.shape)}"
        )


def split(data: Dataset, fraction: float) -> tuple[Dataset, Dataset]:
    """Split off the last ``fraction`` of the samples as validation data (like Keras' ``validation_split``).

    Both parts are views: nothing is copied or read.

    Raises:
        DataError: either part would be empty.
    """
    n = len(data)
    cut = n - math.floor(fraction * n)
    if cut in (0, n):
        raise DataError(
            f"validation split leaves no training or no validation samples. "
            f"Received: val_split={fraction} of {n} samples"
        )
    head = Dataset(_rows(data.x, 0, cut), _rows(data.y, 0, cut))
    tail = Dataset(_rows(data.x, cut, n), _rows(data.y, cut, n))
    return head, tail


def _rows(array, start: int, stop: int):
    if array is None or isinstance(array, np.ndarray):
        return None if array is None else array[start:stop]  # a numpy slice is a view
    return Rows(array, start, stop)


class Rows:
    """Rows ``[start, stop)`` of an array or h5py dataset, read only when sliced."""

    def __init__(self, array, start: int, stop: int):
        self.array, self.start, self.stop = array, start, stop
        self.shape = (stop - start, *array.shape[1:])
        self.dtype = array.dtype

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, index):
        if isinstance(index, slice):
            first, last, _ = index.indices(len(self))
            return self.array[self.start + first : self.start + last]
        return self.array[self.start : self.stop][index]


def batches(data: Dataset, batch_size: int, dtypes: tuple, shuffle: bool = False, seed: int | None = None):
    """A ``tf.data.Dataset`` of ``(x, y)`` batches read from ``data`` one batch at a time.

    In-memory arrays are shuffled sample by sample each epoch; lazy (on-disk)
    arrays are read in contiguous batches whose order is shuffled, so each read
    is one slice. The epoch's order depends only on ``seed`` and the epoch number.

    Args:
        data: a :class:`Dataset` with targets.
        batch_size: samples per batch (the last batch may be smaller).
        dtypes: the numpy dtypes to feed as x and y.
        shuffle: shuffle each epoch.
        seed: seed of the shuffle.

    Returns:
        A dataset of known cardinality ``ceil(len(data) / batch_size)``.
    """
    import tensorflow as tf

    n, epoch = len(data), [0]
    in_memory = isinstance(data.x, np.ndarray)

    def generate():
        rng = np.random.default_rng(None if seed is None else [seed, epoch[0]])
        epoch[0] += 1
        starts = np.arange(0, n, batch_size)
        order = rng.permutation(n) if shuffle and in_memory else None
        if shuffle and not in_memory:
            starts = rng.permutation(starts)
        for start in starts:
            index = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            yield np.asarray(data.x[index], dtypes[0]), np.asarray(data.y[index], dtypes[1])

    if data.y is None:
        raise _no_targets(data, "data")
    signature = tuple(tf.TensorSpec((None, *array.shape[1:]), dtype) for array, dtype in zip((data.x, data.y), dtypes))
    steps = math.ceil(n / batch_size)
    dataset = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(steps)).prefetch(2)
