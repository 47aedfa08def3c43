"""A read-only file object over an uncompressed member of a zip archive (a ``.keras`` file's weights)."""

from __future__ import annotations

import io
import os
import struct
import zipfile
from pathlib import Path

from prunectl.core.errors import InvalidModelError


def member_data_offset(path: Path, info: zipfile.ZipInfo, file_size: int, fd: int | None = None) -> int:
    """Offset of a member's first data byte, from its local header.

    Args:
        path: the archive.
        info: the member, as the central directory lists it.
        file_size: the archive's size in bytes.
        fd: an open descriptor of the archive to read with (else ``path`` is opened).

    Raises:
        InvalidModelError: the local header is missing or the data runs past the end of the file.
    """
    own = fd is None
    descriptor = os.open(path, os.O_RDONLY) if fd is None else fd
    try:
        header = os.pread(descriptor, 30, info.header_offset)
    finally:
        if own:
            os.close(descriptor)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise InvalidModelError(path, f"zip member {info.filename} has no local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + 30 + name_len + extra_len
    if start + info.compress_size > file_size:
        raise InvalidModelError(
            path,
            f"zip member {info.filename} declares {info.compress_size:,} stored bytes at offset {start:,}, "
            f"past the end of the {file_size:,}-byte file",
        )
    return start


class StoredZipMember(io.RawIOBase):
    """Read-only, seekable view of an uncompressed (stored) zip member.

    Keras writes ``model.weights.h5`` stored, so h5py can read it in place
    through this view instead of copying hundreds of megabytes out of the zip.
    """

    def __init__(self, path: Path, info: zipfile.ZipInfo):
        super().__init__()
        self._fd = os.open(path, os.O_RDONLY)
        try:
            self._start = member_data_offset(path, info, os.fstat(self._fd).st_size, self._fd)
        except BaseException:
            os.close(self._fd)
            raise
        self._size = info.file_size
        self._pos = 0

    @property
    def raw(self) -> tuple[int, int]:
        """(file descriptor, offset of the member's first byte) for direct reads."""
        return self._fd, self._start

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        want = min(len(buffer), self._size - self._pos)
        if want <= 0:
            return 0
        view = memoryview(buffer)[:want]
        got = os.preadv(self._fd, [view], self._start + self._pos)
        self._pos += got
        return got

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()
