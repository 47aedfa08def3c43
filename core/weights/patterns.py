"""Sparsity patterns: which weights may be zeroed together, on numpy arrays.

Unstructured pruning zeroes any weights. A pattern constrains where the zeros go
so that hardware can skip them:

* **N:M** (``2:4``): in every group of M consecutive weights along a weight's
  innermost *input axis* (the axis its layer sums over, see
  :meth:`prunectl.core.layers.WeightSpec.input_axes`), at least N are zero, the N
  lowest-scoring in the group; what sparse tensor cores execute. A tensor whose
  innermost input axis is not a multiple of M cannot hold the pattern and is left
  alone (:func:`nm_fits` says why).
* **blocks** (``1x4``): the weight, seen as a matrix of input rows by output
  columns (:func:`as_matrix`), is tiled by blocks of ``rows x cols`` (smaller at the
  edges); whole blocks are zeroed, lowest mean score first.

Every function takes *scores*, higher meaning keep: ``|w|`` for magnitude
pruning, ``|w| * ||x||`` for a data-aware criterion. Ties are broken by position
(earlier first), so a run is deterministic.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from prunectl.core.errors import OptionError
from prunectl.core.weights.masks import zeros_for

_NM = re.compile(r"\s*(\d+)\s*:\s*(\d+)\s*")
_BLOCK = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*")


@dataclass(frozen=True)
class Pattern:
    """A sparsity pattern: N:M groups (``kind="nm"``) or blocks (``kind="block"``).

    Attributes:
        kind: ``"nm"`` or ``"block"``.
        a, b: N and M of an N:M pattern; rows and columns of a block.

    Raises:
        OptionError: a kind other than ``nm``/``block``, sizes below 1, or N >= M.

    Example:
        >>> Pattern.parse_nm("2:4").label
        '2:4'
        >>> Pattern.parse_block("1x4").size
        4
    """

    kind: str
    a: int
    b: int

    def __post_init__(self):
        if self.kind not in ("nm", "block"):
            raise OptionError(f"a pattern is 'nm' or 'block'. Received: kind={self.kind!r}")
        # Messages name the option that gave the pattern ({pattern} or {block}: a flag on the command line).
        option = "pattern" if self.kind == "nm" else "block"
        given = f"{{{option}}} {self.label}"
        if self.a < 1 or self.b < 1:
            raise OptionError(f"pattern sizes must be at least 1. Received: {given}", option)
        if self.kind == "nm" and self.a >= self.b:
            raise OptionError(
                f"an N:M pattern zeroes N of every M weights, so N must be below M. Received: {given}", option
            )
        if self.kind == "block" and self.size == 1:
            raise OptionError(f"a 1x1 block is unstructured pruning; give a larger block. Received: {given}", option)

    @classmethod
    def parse_nm(cls, text: str) -> Pattern:
        """``"2:4"`` -> the 2:4 pattern.

        Raises:
            OptionError: text that is not ``N:M`` with N < M.
        """
        match = _NM.fullmatch(str(text))
        if not match:
            raise OptionError(f"a pattern is written N:M, e.g. 2:4. Received: {{pattern}} {text}", "pattern")
        return cls("nm", int(match.group(1)), int(match.group(2)))

    @classmethod
    def parse_block(cls, text: str) -> Pattern:
        """``"1x4"`` -> blocks of 1 input row by 4 output columns.

        Raises:
            OptionError: text that is not ``RxC``.
        """
        match = _BLOCK.fullmatch(str(text))
        if not match:
            raise OptionError(f"a block is written ROWSxCOLS, e.g. 1x4. Received: {{block}} {text}", "block")
        return cls("block", int(match.group(1)), int(match.group(2)))

    @property
    def label(self) -> str:
        """How the user writes it: ``2:4`` or ``1x4``."""
        return f"{self.a}:{self.b}" if self.kind == "nm" else f"{self.a}x{self.b}"

    @property
    def size(self) -> int:
        """Weights in one group (M) or one block (rows * cols)."""
        return self.b if self.kind == "nm" else self.a * self.b

    @property
    def sparsity(self) -> float | None:
        """The sparsity an N:M pattern sets (N/M); None for blocks (they prune to a given sparsity)."""
        return self.a / self.b if self.kind == "nm" else None

    def get_config(self) -> dict:
        return {"kind": self.kind, "pattern": self.label}

    @classmethod
    def from_config(cls, config: dict) -> Pattern:
        """The pattern :meth:`get_config` describes."""
        parse = cls.parse_nm if config.get("kind") == "nm" else cls.parse_block
        return parse(str(config.get("pattern")))


def as_matrix(tensor: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """``tensor`` as a matrix: rows run over the input ``axes`` (the last of them fastest), columns over the rest.

    A copy where the input axes are not already leading (see :func:`from_matrix`).

    Example:
        >>> as_matrix(np.zeros((3, 3, 16, 32)), (0, 1, 2)).shape
        (144, 32)
    """
    rest = tuple(i for i in range(tensor.ndim) if i not in axes)
    moved = np.transpose(tensor, (*axes, *rest))
    rows = math.prod(tensor.shape[i] for i in axes)
    return moved.reshape(rows, -1)


def from_matrix(matrix: np.ndarray, shape: tuple[int, ...], axes: tuple[int, ...]) -> np.ndarray:
    """The tensor of ``shape`` whose :func:`as_matrix` view is ``matrix``."""
    rest = tuple(i for i in range(len(shape)) if i not in axes)
    order = (*axes, *rest)
    moved = matrix.reshape(tuple(shape[i] for i in order))
    return np.transpose(moved, np.argsort(order))


def nm_fits(pattern: Pattern, shape: tuple[int, ...], axes: tuple[int, ...] | None) -> str | None:
    """Why a weight of ``shape`` with input ``axes`` cannot hold the N:M ``pattern``, or None when it can."""
    if axes is None:
        return "it has no input axis (it is not a matrix product's weight)"
    inner = shape[axes[-1]]
    if inner % pattern.b:
        return f"its input axis has {inner} entries, not a multiple of {pattern.b}"
    return None


def pattern_fits(pattern: Pattern, shape: tuple[int, ...], axes: tuple[int, ...] | None) -> str | None:
    """Why a weight of ``shape`` with input ``axes`` cannot hold ``pattern`` (N:M or blocks), or None when it can.

    Blocks tile any weight with input axes (edge blocks are smaller); N:M also needs
    the innermost input axis to be a multiple of M (:func:`nm_fits`).
    """
    if pattern.kind == "nm":
        return nm_fits(pattern, shape, axes)
    if axes is None:
        return "it has no input axis (it is not a matrix product's weight)"
    return None


def pattern_mask(
    scores: np.ndarray,
    pattern: Pattern,
    axes: tuple[int, ...],
    sparsity: float | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """Which weights of one tensor ``pattern`` zeroes, given their ``scores``: the per-tensor entry point.

    Args:
        scores: one score per weight, the tensor's shape; higher means keep
            (``|w|`` for magnitude pruning, a data-aware score otherwise).
        pattern: N:M groups or blocks.
        axes: the weight's input axes (``WeightSpec.input_axes``); check them with
            :func:`pattern_fits` first.
        sparsity: for blocks, the fraction of the tensor the zeroed blocks cover at least.
        threshold: for blocks instead of ``sparsity``: zero every block whose mean score is below it.
            An N:M pattern takes neither (it sets the sparsity, N/M).

    Returns:
        A boolean array of the tensor's shape, True where the weight is zeroed.

    Raises:
        OptionError: the tensor cannot hold the pattern, or the wrong sparsity/threshold for its kind.

    Example:
        >>> pattern_mask(np.array([[4.0], [1.0], [3.0], [2.0]]), Pattern.parse_nm("2:4"), (0,)).ravel()
        array([False,  True, False,  True])
    """
    scores = np.asarray(scores)
    reason = pattern_fits(pattern, scores.shape, axes)
    if reason is not None:
        raise OptionError(f"this weight cannot hold the {pattern.label} pattern: {reason}. Received: {scores.shape}")
    matrix = as_matrix(scores, axes)
    if pattern.kind == "nm":
        if sparsity is not None or threshold is not None:
            raise OptionError(
                f"an N:M pattern sets the sparsity itself. Received: sparsity={sparsity}, threshold={threshold}"
            )
        mask = nm_prune_mask(matrix, pattern.a, pattern.b)
    elif (sparsity is None) == (threshold is None):
        raise OptionError(
            f"blocks prune to a sparsity or below a threshold: give one. Received: sparsity={sparsity}, "
            f"threshold={threshold}"
        )
    elif threshold is not None:
        mask = block_threshold_mask(matrix, pattern.a, pattern.b, threshold)
    else:
        assert sparsity is not None  # one of the two, checked above
        mask = block_prune_mask(matrix, pattern.a, pattern.b, zeros_for(sparsity, matrix.size))
    return from_matrix(mask, scores.shape, axes)


def apply_pattern(
    tensor: np.ndarray,
    scores: np.ndarray,
    pattern: Pattern,
    axes: tuple[int, ...],
    sparsity: float | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """Zero, in place, the weights of ``tensor`` that :func:`pattern_mask` picks from ``scores``; return it.

    Example:
        >>> w = np.array([[0.4], [-0.1], [0.3], [0.2]])
        >>> apply_pattern(w, np.abs(w), Pattern.parse_nm("2:4"), (0,)).ravel().tolist()
        [0.4, 0.0, 0.3, 0.0]
    """
    tensor[pattern_mask(scores, pattern, axes, sparsity, threshold)] = 0
    return tensor


def nm_prune_mask(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """Which entries of a score matrix to zero so every group of ``m`` consecutive rows in a column loses ``n``.

    Args:
        scores: ``(rows, cols)`` scores, ``rows`` a multiple of ``m``; higher means keep.
        n, m: the pattern.

    Returns:
        A boolean matrix, True where the weight is zeroed: exactly ``n`` per group.

    Example:
        >>> nm_prune_mask(np.array([[4.0], [1.0], [3.0], [2.0]]), 2, 4).ravel()
        array([False,  True, False,  True])
    """
    rows, cols = scores.shape
    groups = scores.reshape(rows // m, m, cols)
    order = np.argsort(groups, axis=1, kind="stable")[:, :n, :]
    mask = np.zeros(groups.shape, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask.reshape(rows, cols)


def block_scores(scores: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean score and size of every ``rows x cols`` block tiling a score matrix (edge blocks are smaller)."""
    r, c = scores.shape
    br, bc = math.ceil(r / rows), math.ceil(c / cols)
    padded = np.zeros((br * rows, bc * cols), dtype=np.float64)
    padded[:r, :c] = scores
    present = np.zeros_like(padded)
    present[:r, :c] = 1.0
    sums = padded.reshape(br, rows, bc, cols).sum(axis=(1, 3))
    sizes = present.reshape(br, rows, bc, cols).sum(axis=(1, 3))
    return sums / sizes, sizes.astype(np.int64)


def block_prune_mask(scores: np.ndarray, rows: int, cols: int, zeros: int) -> np.ndarray:
    """Zero whole blocks, lowest mean score first, until at least ``zeros`` entries are covered.

    Args:
        scores: ``(r, c)`` scores, higher means keep.
        rows, cols: the block shape.
        zeros: how many entries the zeroed blocks must cover at least (the fewest blocks that do).

    Returns:
        A boolean matrix, True where the weight is zeroed.
    """
    means, sizes = block_scores(scores, rows, cols)
    order = np.argsort(means, axis=None, kind="stable")
    covered = np.cumsum(sizes.ravel()[order])
    count = int(np.searchsorted(covered, zeros, side="left")) + 1 if zeros > 0 else 0
    chosen = np.zeros(means.size, dtype=bool)
    chosen[order[: min(count, means.size)]] = True
    return _expand(chosen.reshape(means.shape), rows, cols, scores.shape)


def block_threshold_mask(scores: np.ndarray, rows: int, cols: int, threshold: float) -> np.ndarray:
    """Zero every block whose mean score is below ``threshold``."""
    means, _ = block_scores(scores, rows, cols)
    return _expand(means < threshold, rows, cols, scores.shape)


def _expand(blocks: np.ndarray, rows: int, cols: int, shape: tuple[int, ...]) -> np.ndarray:
    full = np.repeat(np.repeat(blocks, rows, axis=0), cols, axis=1)
    return full[: shape[0], : shape[1]]
