"""The hidden folder ``/.idcfs`` that describes a tree: what it is, and ways in.

- ``version``: what is served (release, selection, layout, source, cache), JSON;
- ``manifest.txt``: an s5cmd manifest of exactly the served series (``s5cmd run`` downloads
  what the tree shows);
- ``stats``: live statistics, JSON, rendered at each open (a face reads it without a cache);
- ``by-id/<identifier>``: the folders of a series, study or patient, one a line. It lists
  nothing and answers any identifier the tree holds (``idcfs path`` reads it through a mount).

Its folders are not tree :class:`~idcfs.catalog.tree.Node` objects: no folder of the tree can
be taken for one of them, nor the reverse.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from typing import Any

from cachetools import LRUCache

from idcfs.catalog.layout import unescape_name
from idcfs.catalog.lookup import find
from idcfs.catalog.tree import Tree

#: The control folder's name at the root of every tree.
CONTROL_DIR = ".idcfs"
#: The lookup folder inside it.
BY_ID_DIR = "by-id"
#: Bytes of answers of ``by-id`` kept (a lookup scans the catalog; ``ls`` asks twice).
BY_ID_CACHE_BYTES = 1 << 20
#: Control files whose contents change while the tree is served.
LIVE_FILES = frozenset({"stats"})


class ControlFolder:
    """``/.idcfs`` or ``/.idcfs/by-id``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


CONTROL = ControlFolder("CONTROL")
BY_ID = ControlFolder("BY_ID")


class ControlFiles:
    """The contents of the control files: fixed ones made once, ``stats`` at each read."""

    def __init__(
        self, tree: Tree, info: dict[str, Any], manifest: bytes | Any, stats: Callable[[], dict[str, Any]]
    ) -> None:
        self._tree = tree
        self._stats = stats
        self._fixed: dict[str, bytes | Any] = {
            "version": (json.dumps(info, indent=1, default=str) + "\n").encode(),
            "manifest.txt": manifest,
        }
        self.names = tuple(sorted([*self._fixed, *LIVE_FILES]))
        self._by_id: LRUCache[str, bytes] = LRUCache(maxsize=BY_ID_CACHE_BYTES, getsizeof=lambda text: len(text) + 64)
        self._by_id_lock = threading.Lock()

    def contents(self, name: str) -> bytes | Any:
        """A file of ``/.idcfs``: bytes, or a memory-mapped buffer (the manifest of a big tree);
        None when there is no such file."""
        if name == "stats":
            return (json.dumps(self._stats(), indent=1) + "\n").encode()
        return self._fixed.get(name)

    def folders_of(self, identifier: str) -> bytes | None:
        """``by-id/<identifier>``: the folders of a series, study or patient, one a line (the
        identifier escaped as a folder name is, so a PatientID with a ``/`` can be asked too);
        None when the tree holds nothing of that name."""
        with self._by_id_lock:
            text = self._by_id.get(identifier)
        if text is None:
            found = find(self._tree, unescape_name(identifier))
            text = b"" if found is None else "".join(f"{folder}\n" for folder in found.folders).encode()
            with self._by_id_lock, contextlib.suppress(ValueError):  # larger than the cache: not kept
                self._by_id[identifier] = text
        return text or None
