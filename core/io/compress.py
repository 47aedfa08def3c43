"""Write HDF5 datasets gzip+shuffle compressed, compressing chunks on all cores.

Stock Keras writes weights unfiltered, so a 90%-sparse model is as large as a
dense one. Filtered datasets are read by any HDF5 reader, stock Keras included.
h5py would compress chunk by chunk on one core; here the chunks are shuffled and
deflated in a thread pool (zlib releases the GIL) and handed to HDF5 already
compressed with ``write_direct_chunk``, so the result is byte-for-byte what the
gzip and shuffle filters would have produced.

Chunks are laid out so that each one is a contiguous run of the array in C
order (leading axes 1, one axis split, trailing axes whole), which makes every
chunk a slice of the array with no gather.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

CHUNK_BYTES = 1 << 20
SMALL_BYTES = 4096  # below this, filters cost more than they save


def chunk_shape(shape: tuple[int, ...], itemsize: int, target_bytes: int = CHUNK_BYTES) -> tuple[int, ...]:
    """A chunk shape of about ``target_bytes`` that is contiguous in C order."""
    target = max(1, target_bytes // itemsize)
    chunk = [1] * len(shape)
    inner = 1
    for axis in reversed(range(len(shape))):
        if inner * shape[axis] <= target:
            chunk[axis] = shape[axis]
            inner *= shape[axis]
        else:
            chunk[axis] = max(1, target // inner)
            break
    return tuple(chunk)


def _chunks(array: np.ndarray, chunk: tuple[int, ...]) -> Iterator[tuple[tuple[int, ...], np.ndarray]]:
    split = max((a for a, (c, s) in enumerate(zip(chunk, array.shape)) if c != s), default=0)
    step = chunk[split]
    ones = (1,) * split
    for lead in np.ndindex(*array.shape[:split]):
        for start in range(0, array.shape[split], step):
            offset = lead + (start,) + (0,) * (array.ndim - split - 1)
            block = array[lead + (slice(start, start + step),)]
            yield offset, block.reshape(ones + block.shape)


def _encode(block: np.ndarray, chunk: tuple[int, ...], level: int) -> bytes:
    if block.shape != chunk:  # HDF5 stores edge chunks full-size
        padded = np.zeros(chunk, dtype=block.dtype)
        padded[tuple(slice(0, n) for n in block.shape)] = block
        block = padded
    raw = np.ascontiguousarray(block).view(np.uint8).reshape(-1, block.dtype.itemsize)
    return zlib.compress(raw.T.tobytes(), level)


class ChunkWriter:
    """Writes arrays as compressed datasets, sharing one thread pool.

    Args:
        level: gzip level 1-9, or 0 for uncompressed datasets.
        workers: threads compressing chunks (default: CPU count).
    """

    def __init__(self, level: int, workers: int | None = None):
        self.level = level
        self.workers = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=self.workers) if level else None

    def write(self, group: h5py.Group, name: str, array: np.ndarray) -> h5py.Dataset:
        """Create dataset ``name`` in ``group`` holding ``array``."""
        array = np.asarray(array)
        if not self.level or array.ndim == 0 or array.nbytes < SMALL_BYTES or array.dtype.kind not in "fiub":
            return group.create_dataset(name, data=array)
        chunk = chunk_shape(array.shape, array.dtype.itemsize)
        dataset = group.create_dataset(
            name,
            shape=array.shape,
            dtype=array.dtype,
            chunks=chunk,
            compression="gzip",
            compression_opts=self.level,
            shuffle=True,
        )
        assert self._pool is not None  # created whenever level > 0
        window = 4 * self.workers
        pending = []
        for offset, block in _chunks(array, chunk):
            pending.append((offset, self._pool.submit(_encode, block, chunk, self.level)))
            if len(pending) >= window:
                self._flush(dataset, pending[: window // 2])
                del pending[: window // 2]
        self._flush(dataset, pending)
        return dataset

    @staticmethod
    def _flush(dataset: h5py.Dataset, pending) -> None:
        for offset, future in pending:
            dataset.id.write_direct_chunk(offset, future.result())

    def close(self) -> None:
        if self._pool:
            self._pool.shutdown()

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
