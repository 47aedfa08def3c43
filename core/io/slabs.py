"""Read a plain (contiguous, unfiltered) dataset's bytes straight from the file, a slab at a time.

``os.preadv`` releases the GIL, so on a reader thread the read of slab i+1
overlaps whatever the caller does with slab i (counting its zeros, say), and
both work on cache-sized buffers that are reused for every tensor: a pass over
a model then costs about what reading it costs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class RawSlabReader:
    """Reads byte ranges of one open file into two alternating, reused buffers.

    Args:
        fd: an open file descriptor.
        base: offset of the HDF5 file inside it (non-zero for a ``.keras`` member).
        slab_bytes: the size of each buffer.
    """

    def __init__(self, fd: int, base: int, slab_bytes: int = 4 << 20):
        self.fd, self.base, self.slab_bytes = fd, base, slab_bytes
        self._buffers = [np.empty(slab_bytes, dtype=np.uint8) for _ in range(2)]
        self._pool = ThreadPoolExecutor(max_workers=1)

    def _read(self, slab: int, position: int, size: int) -> None:
        if os.preadv(self.fd, [memoryview(self._buffers[slab].data)[:size]], self.base + position) != size:
            raise OSError("file is truncated")

    def slabs(self, offset: int, nbytes: int, dtype: np.dtype) -> Iterator[np.ndarray]:
        """Yield the ``nbytes`` at ``offset`` (of the HDF5 file) as flat arrays of ``dtype``, in order.

        Each array is valid only until the next one is asked for (its buffer is then refilled).

        Raises:
            OSError: the file ends before the data does.
        """
        step = self.slab_bytes - self.slab_bytes % dtype.itemsize
        position, slab = 0, 0
        pending = self._pool.submit(self._read, 0, offset, min(step, nbytes))
        try:
            while position < nbytes:
                size = min(step, nbytes - position)
                pending.result()
                following = position + size
                if following < nbytes:
                    pending = self._pool.submit(self._read, 1 - slab, offset + following, min(step, nbytes - following))
                yield self._buffers[slab][:size].view(dtype)
                slab, position = 1 - slab, following
        finally:
            pending.cancel() or pending.exception()  # never leave a read running into a reused buffer

    def close(self) -> None:
        self._pool.shutdown()
