"""Magnitude pruning math on numpy arrays: thresholds, exact sparsity cuts, counts.

A sparsity cut zeroes exactly ``k`` weights, the ``k`` of smallest magnitude,
with ties broken by position (tensor order, then C-order index), so a run is
deterministic. The ``k``-th smallest magnitude is found by radix selection on
the bit patterns of ``|w|`` (for IEEE floats of one sign the bit pattern orders
like the value): a 65,536-bin histogram of the top 16 bits, then of the next 16
bits among the candidates, and so on. That is linear time, never sorts, works
on one tensor (layer scope) or many (global scope) without concatenating them,
and processes each tensor in blocks so its temporaries stay small.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from prunectl.core.errors import OptionError

BLOCK = 1 << 22  # elements per block: bounds temporaries to a few tens of MB
_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def zeros_for(sparsity: float, count: int) -> int:
    """Number of weights to zero so that ``count`` weights reach ``sparsity``.

    The smallest ``k`` with ``k / count >= sparsity``: a run never ends less sparse
    than asked. Rounding to 9 decimals first keeps float noise (0.8 * 10 =
    8.000000000000002) from adding a weight.
    """
    return min(count, math.ceil(round(sparsity * count, 9)))


def _magnitude_bits(block: np.ndarray) -> np.ndarray:
    """Bit patterns of ``|block|`` as unsigned ints, ordered like the magnitudes."""
    itemsize = block.dtype.itemsize
    bits = np.ascontiguousarray(block).view(_UINT[itemsize])
    return bits & _UINT[itemsize]((1 << (8 * itemsize - 1)) - 1)


def _blocks(array: np.ndarray) -> Iterable[np.ndarray]:
    flat = array.reshape(-1)
    for start in range(0, flat.size, BLOCK):
        yield flat[start : start + BLOCK]


@dataclass(frozen=True)
class Cut:
    """Where a sparsity cut falls.

    Attributes:
        bits: bit pattern of the cut magnitude; every weight below it is zeroed.
        ties: how many weights whose magnitude equals the cut are zeroed too,
            taken in tensor order then index order.
    """

    bits: int
    ties: int
    dtype: str

    @property
    def magnitude(self) -> float:
        """The cut as a magnitude (the largest magnitude that was zeroed)."""
        itemsize = np.dtype(self.dtype).itemsize
        return float(np.array([self.bits], dtype=_UINT[itemsize]).view(self.dtype)[0])


def find_cut(read_tensors: Callable[[], Iterable[np.ndarray]], k: int, dtype) -> Cut:
    """Find the magnitude below which the ``k`` smallest weights lie.

    Args:
        read_tensors: called once per radix pass (twice for float32); yields the
            tensors in a fixed order, as arrays in memory or read one at a time
            from a file. All must have dtype ``dtype``.
        k: number of weights to zero, at least 1.
        dtype: the tensors' floating dtype.

    Returns:
        The :class:`Cut`.
    """
    dtype = np.dtype(dtype)
    nbits = 8 * dtype.itemsize
    prefix, remaining = 0, k
    for high in range(nbits, 0, -16):  # bits above `high` are already decided
        counts = np.zeros(1 << 16, dtype=np.int64)
        for tensor in read_tensors():
            for block in _blocks(tensor):
                bits = _magnitude_bits(block)
                if high < nbits:
                    bits = bits[(bits >> high) == prefix]
                counts += np.bincount(((bits >> (high - 16)) & 0xFFFF).astype(np.intp), minlength=1 << 16)
        cumulative = np.cumsum(counts)
        digit = int(np.searchsorted(cumulative, remaining))
        remaining -= int(cumulative[digit - 1]) if digit else 0
        prefix = (prefix << 16) | digit
    return Cut(prefix, remaining, dtype.str)


def apply_cut(tensor: np.ndarray, cut: Cut, ties_left: int) -> int:
    """Zero, in place, every weight below ``cut`` and up to ``ties_left`` at it.

    Returns:
        How many tied weights this tensor zeroed (subtract from ``ties_left``).
    """
    flat = tensor.reshape(-1)
    used = 0
    for start in range(0, flat.size, BLOCK):
        block = flat[start : start + BLOCK]
        bits = _magnitude_bits(block)
        block[bits < cut.bits] = 0
        if ties_left - used > 0:
            tied = np.flatnonzero(bits == cut.bits)[: ties_left - used]
            block[tied] = 0
            used += tied.size
    return used


def apply_threshold(tensor: np.ndarray, threshold: float) -> None:
    """Zero, in place, every weight with ``|w| < threshold``."""
    for block in _blocks(tensor):
        block[np.abs(block) < threshold] = 0


def prune_to_sparsity(tensors: Sequence[np.ndarray], sparsity: float) -> Cut | None:
    """Zero, in place, the ``zeros_for(sparsity, n)`` smallest weights across ``tensors``.

    One cut is shared by all tensors (global scope when several are given).

    Returns:
        The cut used, or ``None`` when nothing had to be zeroed.

    Example:
        >>> w = np.array([0.3, -0.1, 0.2, 0.05], dtype=np.float32)
        >>> _ = prune_to_sparsity([w], 0.5)
        >>> w.tolist()
        [0.30000001192092896, 0.0, 0.20000000298023224, 0.0]
    """
    total = sum(t.size for t in tensors)
    k = zeros_for(sparsity, total)
    if k == 0:
        return None
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) > 1:
        raise OptionError(f"one sparsity cut needs weights of one dtype. Received: {sorted(map(str, dtypes))}")
    cut = find_cut(lambda: tensors, k, dtypes.pop())
    ties = cut.ties
    for tensor in tensors:
        ties -= apply_cut(tensor, cut, ties)
    return cut


def bits_dtype(dtype) -> np.dtype | None:
    """The unsigned integer dtype :func:`count_nonzero` tests a float ``dtype``'s values as, or None."""
    dtype = np.dtype(dtype)
    return np.dtype(_UINT[dtype.itemsize]) if dtype.kind == "f" and dtype.itemsize in _UINT else None


def count_nonzero(block: np.ndarray, scratch: np.ndarray | None = None) -> int:
    """Number of nonzero values in ``block`` (``-0.0`` counts as zero).

    A float block is tested as integers with the sign bit cleared, about three
    times faster than numpy's float path. ``scratch`` (unsigned ints of the same
    width, at least ``block.size`` long) saves an allocation per call.
    """
    itemsize = block.dtype.itemsize
    if block.dtype.kind != "f" or itemsize not in _UINT or not block.flags.c_contiguous:
        return int(np.count_nonzero(block))
    bits = block.reshape(-1).view(_UINT[itemsize])
    if scratch is None or scratch.dtype != bits.dtype or scratch.size < bits.size:
        scratch = np.empty_like(bits)
    out = scratch[: bits.size]
    np.bitwise_and(bits, _UINT[itemsize]((1 << (8 * itemsize - 1)) - 1), out=out)
    return int(np.count_nonzero(out))


def count_zeros(tensor: np.ndarray) -> int:
    """Number of exact zeros in ``tensor`` (``-0.0`` counts as zero), block by block."""
    tensor = np.ascontiguousarray(tensor)
    if tensor.ndim == 0:
        return int(tensor == 0)
    scratch = None
    nonzero = 0
    for block in _blocks(tensor):
        if scratch is None and block.dtype.kind == "f" and block.dtype.itemsize in _UINT:
            scratch = np.empty(min(BLOCK, tensor.size), dtype=_UINT[block.dtype.itemsize])
        nonzero += count_nonzero(block, scratch)
    return tensor.size - nonzero


def allocate_ties(read_tensors: Callable[[], Iterable[np.ndarray]], cut: Cut) -> list[int]:
    """Split ``cut.ties`` over the tensors in order: earlier tensors' ties go first.

    Returns:
        For each tensor, how many weights equal to the cut it zeroes.
    """
    left, shares = cut.ties, []
    for tensor in read_tensors():
        tied = 0
        if left:
            for block in _blocks(tensor):
                tied += int(np.count_nonzero(_magnitude_bits(block) == cut.bits))
        shares.append(min(tied, left))
        left -= shares[-1]
    return shares
