"""Channel layouts and the union-find over channel groups that the graph trace builds on.

The last axis of every tensor (its channels) is described by a :data:`Layout`:
blocks, each ``tiles`` repetitions of a run of segments, a segment being the
channels of one group. See :mod:`prunectl.core.structure.graph` for how layers
move them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Block:
    """``tiles`` repetitions of a run of segments ``(group, channels)``."""

    tiles: int
    segments: tuple[tuple[int, int], ...]

    @property
    def width(self) -> int:
        return sum(n for _, n in self.segments)


Layout = tuple[Block, ...]


def layout_width(layout: Layout) -> int:
    """Number of features a layout describes."""
    return sum(b.tiles * b.width for b in layout)


class Groups:
    """Union-find over group ids, with frozen reasons and producers per root.

    A group can be split into consecutive parts (:meth:`split`) when a merge
    lines its channels up with several smaller groups of another input; every
    layout naming it is then read through :meth:`expand`.
    """

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: dict[int, str] = {}
        self.producers: dict[int, list[str]] = {}
        self.parts: dict[int, list[int]] = {}

    def new(self, size: int, frozen: str | None = None, producer: str | None = None) -> int:
        gid = len(self.parent)
        self.parent.append(gid)
        self.size.append(size)
        self.producers[gid] = [producer] if producer else []
        if frozen:
            self.frozen[gid] = frozen
        return gid

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def leaves(self, gid: int) -> list[tuple[int, int]]:
        """``(root, channels)`` of the unsplit groups ``gid`` is made of, in channel order."""
        root = self.find(gid)
        if root not in self.parts:
            return [(root, self.size[root])]
        return [leaf for part in self.parts[root] for leaf in self.leaves(part)]

    def split(self, gid: int, sizes: Sequence[int]) -> None:
        """Split unsplit group ``gid`` into consecutive parts of ``sizes`` channels (same producers, same freeze)."""
        root = self.find(gid)
        parts = []
        for size in sizes:
            part = self.new(size, self.frozen.get(root))
            self.producers[part] = list(self.producers[root])
            parts.append(part)
        self.parts[root] = parts

    def union(self, a: int, b: int) -> None:
        """Join two unsplit groups of the same size (see :meth:`align` for groups that must be split first)."""
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self.parent[b] = a
        self.producers[a] += self.producers.pop(b)
        if b in self.frozen:
            self.frozen.setdefault(a, self.frozen.pop(b))

    def expand(self, layout: Layout) -> Layout:
        """``layout`` with every split group replaced by its parts."""
        return tuple(Block(b.tiles, tuple(leaf for g, _ in b.segments for leaf in self.leaves(g))) for b in layout)

    def align(self, layouts: Sequence[Layout]) -> list[Layout] | None:
        """Split groups until ``layouts`` line up segment by segment, so that they can be joined pairwise.

        A residual add of a concatenation (groups of 32, 32 and 64 channels) and one
        producer's 128 channels splits the producer's group into parts of 32, 32 and 64.

        Returns:
            The expanded, lined-up layouts, or None when their blocks differ (tiles or widths).
        """
        while True:
            layouts = [self.expand(layout) for layout in layouts]
            if len({tuple((b.tiles, b.width) for b in layout) for layout in layouts}) != 1:
                return None
            if all(same_structure(layouts[0], other) for other in layouts[1:]):
                return layouts
            changed = False
            for index in range(len(layouts[0])):
                blocks = [layout[index] for layout in layouts]
                cuts = set().union(*(_cuts(block.segments) for block in blocks))
                for block in blocks:
                    offset = 0
                    for gid, size in block.segments:
                        inner = sorted(c - offset for c in cuts if offset < c < offset + size)
                        # A group met twice in one pass is cut once; the next pass sees its parts.
                        if inner and self.find(gid) not in self.parts:
                            self.split(gid, [int(n) for n in np.diff([0, *inner, size])])
                            changed = True
                        offset += size
            if not changed:
                return None

    def freeze(self, layout: Layout, reason: str) -> None:
        for block in layout:
            for gid, _ in block.segments:
                for leaf, _ in self.leaves(gid):
                    self.frozen.setdefault(leaf, reason)

    def fresh(self, width: int, reason: str) -> Layout:
        return (Block(1, ((self.new(width, reason), width),)),)


def _cuts(segments: Sequence[tuple[int, int]]) -> set[int]:
    """The offsets inside a run of segments where one segment ends and the next begins."""
    return {int(c) for c in np.cumsum([n for _, n in segments])[:-1]}


def same_structure(a: Layout, b: Layout) -> bool:
    """Whether two layouts have the same blocks and segment sizes (so their groups line up)."""
    return len(a) == len(b) and all(
        x.tiles == y.tiles and [n for _, n in x.segments] == [n for _, n in y.segments] for x, y in zip(a, b)
    )


def concat(layouts: Sequence[Layout]) -> Layout:
    """The layout of the channel-axis concatenation of ``layouts``."""
    blocks: list[Block] = []
    for layout in layouts:
        for block in layout:
            if blocks and block.tiles == 1 and blocks[-1].tiles == 1:
                blocks[-1] = Block(1, blocks[-1].segments + block.segments)
            else:
                blocks.append(block)
    return tuple(blocks)


def segment_features(layout: Layout):
    """Yield ``(group id, features)`` per segment: ``features[t, c]`` is channel ``c``'s feature index in tile ``t``."""
    offset = 0
    for block in layout:
        start = offset
        for gid, size in block.segments:
            tiles = np.arange(block.tiles)[:, None] * block.width
            yield gid, start + tiles + np.arange(size)[None, :]
            start += size
        offset += block.tiles * block.width


def kept_features(layout: Layout, keep: dict[int, np.ndarray]) -> np.ndarray:
    """Feature indices of ``layout`` left once each group keeps only ``keep[group]`` (all if absent)."""
    mask = np.ones(layout_width(layout), dtype=bool)
    for gid, features in segment_features(layout):
        if gid in keep:
            dropped = np.setdiff1d(np.arange(features.shape[1]), keep[gid])
            mask[features[:, dropped].ravel()] = False
    return np.flatnonzero(mask)
