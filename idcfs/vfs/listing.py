"""The files of one series folder, held compactly: IDC's largest series has 91,980 of them, and a
``find`` walks thousands of series, so what a listing costs in memory is what the daemon costs.

A dict of one dataclass per object took ~440 bytes an object, and a list of Python strings
~200 with a heap fragmented by 180,000 small objects a listing. Here the escaped names and the
ETags are each one UTF-8 buffer with offsets (:class:`~idcfs.util.names.NameArray`), the sizes one
``array``, and the object's own name kept only where escaping changed it: about 100 bytes an
object, in a handful of allocations that go back to the system whole when the listing is
evicted. A name is found by bisection over the bytes.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from idcfs.catalog.layout import escape_name
from idcfs.remote.objects import ObjectInfo, ObjectTable
from idcfs.util.names import NameArray

#: What the Python objects around the buffers cost, and one escaped name's entry in ``raw_names``.
_OVERHEAD_BYTES = 600
_RAW_NAME_BYTES = 200


@dataclass(frozen=True)
class SeriesListing:
    names: NameArray  # escaped, sorted bytewise (the folder's entries)
    sizes: array  # of int, by position in ``names``
    etags: NameArray
    raw_names: dict[int, str]  # position -> the object's name, where escaping changed it

    @classmethod
    def of(cls, objects: ObjectTable) -> SeriesListing:
        """The folder of a series' objects. Almost no object name needs escaping: then the
        folder's names are the table's own buffer, shared, and nothing is copied."""
        raw_names = {}
        for k, name in enumerate(objects.names):
            if escape_name(name) != name:
                raw_names[k] = name
        if not raw_names:
            return cls(objects.names, objects.sizes, objects.etags, {})
        # Escaping may change the order: sort the escaped names (code-point order is the
        # bytewise order of their UTF-8) and carry the rest along.
        escaped = ObjectTable.of(ObjectInfo(escape_name(o.name), o.size, o.etag) for o in objects)
        position = {escape_name(name): name for name in raw_names.values()}
        renamed = {k: position[name] for k, name in enumerate(escaped.names) if name in position}
        return cls(escaped.names, escaped.sizes, escaped.etags, renamed)

    def __len__(self) -> int:
        return len(self.sizes)

    def position(self, name: str) -> int | None:
        try:
            encoded = name.encode()
        except UnicodeEncodeError:  # a name from the kernel no object can have
            return None
        return self.names.find(encoded)

    def get(self, name: str) -> ObjectInfo | None:
        """The object shown as ``name`` in the folder, or None."""
        k = self.position(name)
        return None if k is None else self.info(k)

    def info(self, k: int) -> ObjectInfo:
        raw = self.raw_names.get(k)
        return ObjectInfo(raw if raw is not None else self.names.get(k), self.sizes[k], self.etags.get(k))

    def entry_names(self) -> Iterator[str]:
        """The folder's entries, sorted (decoded one by one: a readdir holds none of them)."""
        return iter(self.names)

    def __iter__(self) -> Iterator[ObjectInfo]:
        return (self.info(k) for k in range(len(self)))

    def approximate_bytes(self) -> int:
        """Memory held (for the LRU's byte cap): the buffers, plus the few objects around them."""
        return (
            _OVERHEAD_BYTES
            + self.names.nbytes()
            + self.etags.nbytes()
            + self.sizes.itemsize * len(self.sizes)
            + _RAW_NAME_BYTES * len(self.raw_names)
        )
