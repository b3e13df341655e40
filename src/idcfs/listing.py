"""The files of one series folder, held compactly: IDC's largest series has 91,980 of them, and a
``find`` walks thousands of series, so what a listing costs in memory is what the daemon costs.

A dict of one dataclass per object took ~440 bytes an object; here the escaped names are one
sorted list (shared with the folder's entries), sizes one ``array``, ETags one list, and the
object's own name only where escaping changed it: about 200 bytes an object. A name is found by
bisection.
"""

from __future__ import annotations

import bisect
import sys
from array import array
from dataclasses import dataclass

from idcfs.layout import escape_name
from idcfs.store import ObjectInfo


@dataclass(frozen=True)
class SeriesListing:
    names: list[str]  # escaped, sorted (the folder's entries)
    sizes: array  # of int, by position in ``names``
    etags: list[str]
    raw_names: dict[int, str]  # position -> the object's name, where escaping changed it

    @classmethod
    def of(cls, objects: list[ObjectInfo]) -> SeriesListing:
        # Code-point order, which is also the bytewise order of their UTF-8.
        by_name = sorted(((escape_name(o.name), o) for o in objects), key=lambda pair: pair[0])
        names = [name for name, _ in by_name]
        return cls(
            names=names,
            sizes=array("q", (o.size for _, o in by_name)),
            etags=[o.etag for _, o in by_name],
            raw_names={k: o.name for k, (name, o) in enumerate(by_name) if name != o.name},
        )

    def __len__(self) -> int:
        return len(self.names)

    def position(self, name: str) -> int | None:
        k = bisect.bisect_left(self.names, name)
        return k if k < len(self.names) and self.names[k] == name else None

    def get(self, name: str) -> ObjectInfo | None:
        """The object shown as ``name`` in the folder, or None."""
        k = self.position(name)
        return None if k is None else self.info(k)

    def info(self, k: int) -> ObjectInfo:
        return ObjectInfo(self.raw_names.get(k, self.names[k]), self.sizes[k], self.etags[k])

    def __iter__(self):
        return (self.info(k) for k in range(len(self.names)))

    def approximate_bytes(self) -> int:
        """Memory held: the strings, the list slots, the sizes (for the LRU's byte cap)."""
        if not self.names:
            return 256
        sample = self.names[0], self.etags[0]
        per_object = sys.getsizeof(sample[0]) + sys.getsizeof(sample[1]) + 8 + 8 + 8
        return 256 + per_object * len(self.names) + 200 * len(self.raw_names)
