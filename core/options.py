"""Option vocabularies and value checks shared by the library and the CLI.

This module imports nothing heavy (no numpy, h5py or TensorFlow), so the CLI can
build its choices and checks from it while ``prunectl --help`` stays instant.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

from prunectl.core.errors import OptionError

SCOPES = ("layer", "global")
ENGINES = ("auto", "file", "keras")
# gzip levels; "fast" is the default: see the README's compression benchmark.
COMPRESSION_LEVELS = {"none": 0, "fast": 1, "default": 4, "strong": 9}
DEFAULT_COMPRESSION = "fast"


def validate_threshold(threshold: float) -> float:
    """Return ``threshold`` as float if it is a finite, non-negative number.

    Raises:
        OptionError: for NaN, infinity or a negative value.
    """
    value = float(threshold)
    if not math.isfinite(value) or value < 0:
        raise OptionError(f"threshold must be a finite number >= 0. Received: threshold={threshold}")
    return value


def validate_sparsity(sparsity: float) -> float:
    """Return ``sparsity`` as float if it lies in [0, 1).

    Raises:
        OptionError: for NaN or a value outside [0, 1).
    """
    value = float(sparsity)
    if not (0.0 <= value < 1.0):  # also rejects NaN
        raise OptionError(f"sparsity must be in [0, 1). Received: sparsity={sparsity}")
    return value


def compile_patterns(patterns: Sequence[str], option: str) -> list[re.Pattern]:
    """Compile layer-name patterns.

    Raises:
        OptionError: a pattern is not a valid regular expression.
    """
    compiled = []
    for pattern in patterns:
        try:
            compiled.append(re.compile(pattern))
        except re.error as exc:
            raise OptionError(f"{option} is not a valid regular expression ({exc}). Received: {pattern!r}") from None
    return compiled
