"""The directory tree above the series level, answered from sorted columnar arrays.

A million series must not become a million Python objects. The catalog's rows are sorted by
their path, so every directory is a contiguous run of rows, and the directories of one level
form a compressed sparse tree: level ``k`` keeps its distinct names (one Arrow-style byte buffer
plus offsets) and, per directory, where its children start in level ``k + 1``. Looking a name up
is a binary search among its siblings; listing is a slice. The last level's nodes are the series
rows themselves. Nothing here touches the network.
"""

from __future__ import annotations

from array import array as Array
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from idcfs.catalog import Catalog


class NameArray:
    """Strings stored as one UTF-8 buffer and offsets; ``get(i)`` costs one slice."""

    def __init__(self, array: pa.Array) -> None:
        if array.null_count:
            raise ValueError("path names must not be null")
        _, offsets, data = array.buffers()
        offset_type = np.int64 if pa.types.is_large_string(array.type) else np.int32
        window = np.frombuffer(offsets, dtype=offset_type)[array.offset : array.offset + len(array) + 1]
        # array.array: 8 bytes an entry (a list would hold a Python int object each), and
        # indexing it yields a plain int quickly, which the binary search needs.
        self._offsets = Array("q", window.astype(np.int64).tobytes())
        self._data = data.to_pybytes() if data is not None else b""

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def get_bytes(self, index: int) -> bytes:
        return self._data[self._offsets[index] : self._offsets[index + 1]]

    def get(self, index: int) -> str:
        return self.get_bytes(index).decode()

    def find(self, name: bytes, lo: int, hi: int) -> int | None:
        """Index of ``name`` among the sorted names ``[lo, hi)``, or None."""
        offsets, data = self._offsets, self._data
        while lo < hi:
            mid = (lo + hi) // 2
            probe = data[offsets[mid] : offsets[mid + 1]]
            if probe < name:
                lo = mid + 1
            elif probe > name:
                hi = mid
            else:
                return mid
        return None


@dataclass(frozen=True)
class Node:
    """A directory of the tree: ``depth`` 0 is the root; ``depth == tree.depth`` is a series.

    ``index`` is the node's position in its level (for a series: its catalog row).
    """

    depth: int
    index: int


class Tree:
    """Lookup and listing over a :class:`~idcfs.catalog.Catalog`."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.depth = catalog.template.depth
        rows = catalog.num_series
        self._names: list[NameArray] = []
        # _child_start[k][j]..[j+1]: children of node j of level k in level k+1.
        self._child_start: list[np.ndarray] = []
        # _first_row[k][j]: the first catalog row under node j of level k (and a final sentinel).
        self._first_row: list[np.ndarray] = []
        level_names = catalog.take_level_names()
        starts_by_level = _group_starts(level_names, rows)
        for k, starts in enumerate(starts_by_level):
            self._names.append(NameArray(level_names[k].take(pa.array(starts))))
            self._first_row.append(np.append(starts, rows))
        for k in range(self.depth - 1):
            self._child_start.append(np.searchsorted(starts_by_level[k + 1], self._first_row[k]))
        self._num_top = len(starts_by_level[0]) if self.depth else 0

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
        found = self._names[node.depth].find(encoded, lo, hi)
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
        names = self._names[node.depth]
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
        first = self._first_row[node.depth - 1]
        return range(int(first[node.index]), int(first[node.index + 1]))

    def is_series(self, node: Node) -> bool:
        return node.depth == self.depth

    def path_of_row(self, row: int) -> list[str]:
        """The path names of series ``row`` (the reverse of :meth:`lookup`)."""
        parts = []
        for k in range(self.depth):
            index = int(np.searchsorted(self._first_row[k], row, side="right")) - 1
            parts.append(self._names[k].get(index))
        return parts


def _group_starts(level_names: list[pa.Array], rows: int) -> list[np.ndarray]:
    """For each level, the rows where a new directory of that level begins."""
    starts = []
    new_group = np.zeros(rows, dtype=bool)
    if rows:
        new_group[0] = True
    for names in level_names:
        if rows > 1:
            differs = pc.not_equal(names.slice(1), names.slice(0, rows - 1)).to_numpy(zero_copy_only=False)
            new_group[1:] |= differs
        starts.append(np.flatnonzero(new_group))
    return starts
