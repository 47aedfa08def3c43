"""Data readers for steps that run the model (calibration, fine-tuning, evaluation).

Readers are small classes registered by name in :data:`READERS`; each reads a
file into a :class:`Dataset` of numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prunectl.core.errors import DataError
from prunectl.core.registry import Registry

READERS = Registry("data reader")


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` and, where the file has them, targets ``y``."""

    x: np.ndarray
    y: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)


@READERS.register(".npz")
class NpzReader:
    """Arrays from a numpy ``.npz`` archive, by key (default ``x`` and ``y``)."""

    def __init__(self, x_key: str = "x", y_key: str = "y"):
        self.x_key, self.y_key = x_key, y_key

    def get_config(self) -> dict:
        return {"x_key": self.x_key, "y_key": self.y_key}

    def read(self, path: Path) -> Dataset:
        try:
            with np.load(path, allow_pickle=False) as archive:
                if self.x_key not in archive:
                    raise DataError(
                        f"data file has no array {self.x_key!r} (arrays: {', '.join(archive.files)}). "
                        f"Received: {str(path)!r}"
                    )
                y = archive[self.y_key] if self.y_key in archive else None
                return Dataset(archive[self.x_key], y)
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read data file ({exc}). Received: {str(path)!r}") from None


def read_dataset(path: str | Path, **options) -> Dataset:
    """Read a data file with the reader its suffix names.

    Raises:
        DataError: missing file, unknown suffix, or unreadable content.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found. Received: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix not in READERS.names():
        raise DataError(f"unsupported data file type (known: {', '.join(READERS.names())}). Received: {str(path)!r}")
    return READERS.get(suffix)(**options).read(path)
