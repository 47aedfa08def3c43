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
    """Union-find over group ids, with frozen reasons and producers per root."""

    def __init__(self):
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: dict[int, str] = {}
        self.producers: dict[int, list[str]] = {}

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

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self.parent[b] = a
        self.producers[a] += self.producers.pop(b)
        if b in self.frozen:
            self.frozen.setdefault(a, self.frozen.pop(b))

    def freeze(self, layout: Layout, reason: str) -> None:
        for block in layout:
            for gid, _ in block.segments:
                self.frozen.setdefault(self.find(gid), reason)

    def fresh(self, width: int, reason: str) -> Layout:
        return (Block(1, ((self.new(width, reason), width),)),)


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
