"""The directory tree above the series level, answered from sorted columnar arrays.

A million series must not become a million Python objects. The catalog's rows are sorted by
their path, so every directory is a contiguous run of rows, and the directories of one level
form a compressed sparse tree: level ``k`` keeps its distinct names (one UTF-8 buffer plus
offsets) and, per directory, its first row. Looking a name up is a binary search among its
siblings; listing is a slice. The last level's nodes are the series rows themselves.

The arrays are plain buffers (bytes, or memory maps of the files :mod:`idcfs.catalog.snapshot` wrote),
so a warm mount maps them instead of rebuilding them, and only the pages it touches cost memory.
Nothing here touches the network.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from idcfs.catalog.index import Catalog
from idcfs.util.names import NameArray


@dataclass
class Level:
    """One path level: the distinct folder names and, per folder, its first catalog row
    (``first_row`` has one more entry: the end of the last folder's rows)."""

    names: NameArray
    first_row: np.ndarray


def build_levels(level_names: list[pa.Array], rows: int) -> list[Level]:
    """From every row's name at each level (rows sorted by path), the folders of each level."""
    levels = []
    new_group = np.zeros(rows, dtype=bool)
    if rows:
        new_group[0] = True
    for names in level_names:
        if rows > 1:
            differs = pc.not_equal(names.slice(1), names.slice(0, rows - 1)).to_numpy(zero_copy_only=False)
            new_group[1:] |= differs
        starts = np.flatnonzero(new_group)
        levels.append(Level(NameArray.from_arrow(names.take(pa.array(starts))), np.append(starts, rows)))
    return levels


@dataclass(frozen=True)
class Node:
    """A directory of the tree: ``depth`` 0 is the root; ``depth == tree.depth`` is a series.

    ``index`` is the node's position in its level (for a series: its catalog row).
    """

    depth: int
    index: int


class Tree:
    """Lookup and listing over a :class:`~idcfs.catalog.index.Catalog` and its levels."""

    def __init__(self, catalog: Catalog, levels: list[Level]) -> None:
        if len(levels) != catalog.template.depth:
            raise ValueError("levels do not match the layout")
        self.catalog = catalog
        self.depth = len(levels)
        self._levels = levels
        # Children of node j of level k are the level-(k+1) nodes whose first rows fall in
        # node j's rows: a searchsorted of first rows, computed once.
        self._child_start = [
            np.searchsorted(levels[k + 1].first_row[:-1], levels[k].first_row) for k in range(self.depth - 1)
        ]
        self._num_top = len(levels[0].names) if levels else 0

    @property
    def root(self) -> Node:
        return Node(0, 0)

    def _children_range(self, node: Node) -> tuple[int, int]:
        if node.depth == 0:
            return 0, self._num_top
        starts = self._child_start[node.depth - 1]
        return int(starts[node.index]), int(starts[node.index + 1])

    def child(self, node: Node, name: str) -> Node | None:
        """The directory ``name`` inside ``node`` (not a series' files), or None."""
        if node.depth >= self.depth:
            return None
        lo, hi = self._children_range(node)
        try:
            encoded = name.encode()
        except UnicodeEncodeError:
            return None
        found = self._levels[node.depth].names.find(encoded, lo, hi)
        return None if found is None else Node(node.depth + 1, found)

    def lookup(self, parts: list[str]) -> Node | None:
        """The directory at ``parts`` below the root (at most ``depth`` names), or None."""
        node: Node | None = self.root
        for part in parts:
            assert node is not None
            node = self.child(node, part)
            if node is None:
                return None
        return node

    def children(self, node: Node) -> Iterator[str]:
        """Names of the directories inside ``node``, sorted (bytewise)."""
        if node.depth >= self.depth:
            return iter(())
        lo, hi = self._children_range(node)
        names = self._levels[node.depth].names
        return (names.get(i) for i in range(lo, hi))

    def num_children(self, node: Node) -> int:
        if node.depth >= self.depth:
            return 0
        lo, hi = self._children_range(node)
        return hi - lo

    def rows(self, node: Node) -> range:
        """Catalog rows (series) under ``node``."""
        if node.depth == 0:
            return range(0, self.catalog.num_series)
        first = self._levels[node.depth - 1].first_row
        return range(int(first[node.index]), int(first[node.index + 1]))

    def is_series(self, node: Node) -> bool:
        return node.depth == self.depth

    def path_of_row(self, row: int) -> list[str]:
        """The path names of series ``row`` (the reverse of :meth:`lookup`)."""
        parts = []
        for level in self._levels:
            index = int(np.searchsorted(level.first_row, row, side="right")) - 1
            parts.append(level.names.get(index))
        return parts
