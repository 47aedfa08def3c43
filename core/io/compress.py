"""Write HDF5 datasets deflate-compressed, choosing the stream per tensor, compressing chunks on all cores.

Stock Keras writes weights unfiltered, so a 90%-sparse model is as large as a
dense one. Here every weight dataset of 4 KiB or more gets HDF5's gzip filter,
which any HDF5 reader (stock Keras included) decodes; what differs per tensor is
how the zlib stream is made (:class:`Policy`):

* shuffle (HDF5's byte-shuffle filter) only for dense tensors: it groups the
  exponent bytes of dense floats, but splits each run of zero floats over four
  planes, so on a pruned tensor it costs more than it saves (a 90%-zero kernel:
  +60% bytes at zlib level 1). ``strong`` decides by encoding the first chunk both ways.
* the encoder: ISA-L (``isal``, several times zlib's speed at its level-1 ratio)
  for ``fast``, libdeflate (``deflate``, levels up to 12, smaller streams) for
  ``balanced`` and ``strong``; each falls back to the standard library's zlib when
  its package is missing. All three write standard zlib streams and release the
  GIL, so the chunks are deflated in a thread pool and handed to HDF5 already
  compressed with ``write_direct_chunk``.

Setting the environment variable ``PRUNECTL_DEFLATE=zlib`` forces the zlib
fallback (tests use it so the path without the optional encoders runs for real).

Chunks are laid out so that each one is a contiguous run of the array in C
order (leading axes 1, one axis split, trailing axes whole), which makes every
chunk a slice of the array with no gather.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache

import h5py
import numpy as np

CHUNK_BYTES = 1 << 20
SMALL_BYTES = 4096  # below this, filters cost more than they save
#: Environment variable naming the one encoder to use; ``zlib`` forces the standard library's.
ENCODER_ENV = "PRUNECTL_DEFLATE"
#: Below this zero fraction a tensor is shuffled before deflate. Measured on 1 MiB of float32 weights at
#: zlib 1 / ISA-L 1 / libdeflate 1-9: shuffle wins on dense tensors (0.85x vs 0.92x of the raw bytes),
#: the two are even near 30% zeros, and from 50% zeros on unshuffled is 10-40% smaller.
SHUFFLE_BELOW = 0.3

Encoder = Callable[[bytes, int], bytes | bytearray]  # libdeflate returns a bytearray


def _encoders() -> dict[str, Encoder]:
    """The encoders to use by name: the installed ones, or zlib alone when :data:`ENCODER_ENV` says so."""
    if os.environ.get(ENCODER_ENV, "").strip().lower() == "zlib":
        return {"zlib": zlib.compress}
    return _installed()


@cache
def _installed() -> dict[str, Encoder]:
    """The installed encoders by name (imported on first use; a missing package is left out)."""
    found: dict[str, Encoder] = {"zlib": zlib.compress}
    try:
        from isal import isal_zlib

        found["isal"] = isal_zlib.compress
    except ImportError:
        pass
    try:
        import deflate

        found["libdeflate"] = deflate.zlib_compress
    except ImportError:
        pass
    return found


@dataclass(frozen=True)
class Codec:
    """How one dataset is written: the encoder (by name), its level, and whether the shuffle filter runs first."""

    encoder: str
    level: int
    shuffle: bool

    def encode(self, data: bytes) -> bytes | bytearray:
        return _encoders()[self.encoder](data, self.level)


@dataclass(frozen=True)
class Policy:
    """Picks the :class:`Codec` for each tensor.

    Args:
        name: the ``--compression`` name.
        encoders: ``(encoder, level)`` pairs in order of preference; the first installed one is used.
            Empty for uncompressed datasets.
        trial: choose shuffle per tensor by encoding its first chunk both ways (otherwise by
            :data:`SHUFFLE_BELOW`).
        shuffle: None to decide per tensor; True/False to force it (the legacy rule shuffles always).
        whole_member: in a ``.keras`` archive, deflate the weights member as a whole too. Its tensors are
            already deflated, but the HDF5 metadata, the small tensors stored raw and the config attributes
            are not: on the 90%-sparse digits models they are 20-30% of the file. Keras and prunectl read
            such a member by extracting it, so only ``strong`` does this.
    """

    name: str
    encoders: tuple[tuple[str, int], ...]
    trial: bool = False
    shuffle: bool | None = None
    whole_member: bool = False

    def __bool__(self) -> bool:
        return bool(self.encoders)

    def encoder(self) -> tuple[str, int]:
        """The ``(encoder, level)`` this policy uses on this machine."""
        installed = _encoders()
        return next((e for e in self.encoders if e[0] in installed), ("zlib", self.encoders[-1][1]))

    def codec(self, array: np.ndarray) -> Codec:
        """The codec for ``array`` when no trial decides (the shuffle rule by zero fraction)."""
        encoder, level = self.encoder()
        shuffle = self.shuffle
        if shuffle is None:
            zeros = array.size - np.count_nonzero(array)
            shuffle = bool(zeros < SHUFFLE_BELOW * array.size)
        return Codec(encoder, level, shuffle)


def legacy_policy(level: int) -> Policy:
    """The rule before per-tensor choice: zlib at ``level`` with shuffle on every tensor (benchmarks compare)."""
    return Policy(f"legacy-{level}", (("zlib", level),) if level else (), shuffle=True)


#: The ``--compression`` names. Chosen on VGG16 at 90% and the digits models (benchmarks/file_size.py).
POLICIES = {
    "none": Policy("none", ()),
    "fast": Policy("fast", (("isal", 1), ("libdeflate", 1), ("zlib", 1))),
    "balanced": Policy("balanced", (("libdeflate", 6), ("zlib", 6))),
    "strong": Policy("strong", (("libdeflate", 12), ("zlib", 9)), trial=True, whole_member=True),
}


def policy_for(compression: str | Policy) -> Policy:
    """The :class:`Policy` a ``--compression`` name stands for (a policy is returned as is)."""
    return compression if isinstance(compression, Policy) else POLICIES[compression]


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


def _encode(block: np.ndarray, chunk: tuple[int, ...], codec: Codec) -> bytes | bytearray:
    if block.shape != chunk:  # HDF5 stores edge chunks full-size
        padded = np.zeros(chunk, dtype=block.dtype)
        padded[tuple(slice(0, n) for n in block.shape)] = block
        block = padded
    raw = np.ascontiguousarray(block).view(np.uint8).reshape(-1, block.dtype.itemsize)
    return codec.encode(raw.T.tobytes() if codec.shuffle else raw.tobytes())


class ChunkWriter:
    """Writes arrays as compressed datasets, sharing one thread pool.

    Args:
        policy: a ``--compression`` name or a :class:`Policy`.
        workers: threads compressing chunks (default: CPU count).
    """

    def __init__(self, policy: str | Policy, workers: int | None = None):
        self.policy = policy_for(policy)
        self.workers = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=self.workers) if self.policy else None

    def write(self, group: h5py.Group, name: str, array: np.ndarray) -> h5py.Dataset:
        """Create dataset ``name`` in ``group`` holding ``array``."""
        array = np.asarray(array)
        if not self.policy or array.ndim == 0 or array.nbytes < SMALL_BYTES or array.dtype.kind not in "fiub":
            return group.create_dataset(name, data=array)
        assert self._pool is not None  # created whenever the policy compresses
        chunk = chunk_shape(array.shape, array.dtype.itemsize)
        blocks = _chunks(array, chunk)
        first_offset, first = next(blocks)
        codec = self.policy.codec(array)
        first_data: bytes | bytearray | None = None
        if self.policy.trial:
            # Both streams of the first chunk are made anyway; the smaller one is kept.
            other = Codec(codec.encoder, codec.level, not codec.shuffle)
            tries = [self._pool.submit(_encode, first, chunk, c) for c in (codec, other)]
            sizes = [len(t.result()) for t in tries]
            pick = int(sizes[1] < sizes[0])
            codec, first_data = (codec, other)[pick], tries[pick].result()
        dataset = group.create_dataset(
            name,
            shape=array.shape,
            dtype=array.dtype,
            chunks=chunk,
            compression="gzip",
            compression_opts=min(codec.level, 9),  # the filter's recorded level; readers ignore it
            shuffle=codec.shuffle,
        )
        window = 4 * self.workers
        pending = []
        if first_data is None:
            pending.append((first_offset, self._pool.submit(_encode, first, chunk, codec)))
        else:
            dataset.id.write_direct_chunk(first_offset, first_data)
        for offset, block in blocks:
            pending.append((offset, self._pool.submit(_encode, block, chunk, codec)))
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
