"""Many strings as one UTF-8 buffer and an array of offsets: the folder names of the tree (a
million series) and the file names of a series listing (92,000 in IDC's largest).

As Python objects, each name would cost ~90 bytes and one small allocation; a find over
millions of files would then fragment the heap with names that outlive their neighbours. Here
a whole set is two allocations (large enough to be mapped and unmapped on their own), and a
name costs its bytes plus eight.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where used: a listing needs neither (and numpy starts threads)
    import numpy as np
    import pyarrow as pa


def arrow_string_bytes(array_: pa.Array) -> tuple[np.ndarray, bytes]:
    """The int64 offsets (rebased to 0) and the UTF-8 bytes of an Arrow string array, without a
    Python loop over its values."""
    import numpy as np
    import pyarrow as pa

    _, offsets, data = array_.buffers()
    large = pa.types.is_large_string(array_.type) or pa.types.is_large_binary(array_.type)
    offset_type = np.int64 if large else np.int32
    window = np.frombuffer(offsets, dtype=offset_type)[array_.offset : array_.offset + len(array_) + 1]
    if data is None or not len(window):
        return np.zeros(1, dtype=np.int64), b""
    start = int(window[0])
    return window.astype(np.int64) - start, data.to_pybytes()[start : int(window[-1])]


class NameArray:
    """Strings as one UTF-8 buffer and int64 offsets; ``get(i)`` costs one slice.

    ``offsets`` is a memoryview of int64 (indexing it yields plain ints quickly, which the binary
    search needs); ``data`` is bytes or a memory map.
    """

    def __init__(self, offsets: memoryview, data: bytes | memoryview) -> None:
        self._offsets = offsets
        self._data = data

    @classmethod
    def from_arrow(cls, array_: pa.Array) -> NameArray:
        if array_.null_count:
            raise ValueError("path names must not be null")
        offsets, data = arrow_string_bytes(array_)
        return cls(memoryview(offsets.tobytes()).cast("q"), data)

    @property
    def offsets(self) -> memoryview:
        return self._offsets

    @property
    def data(self) -> bytes | memoryview:
        return self._data

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __iter__(self) -> Iterator[str]:
        return (self.get(k) for k in range(len(self)))

    def get_bytes(self, index: int) -> bytes:
        return bytes(self._data[self._offsets[index] : self._offsets[index + 1]])

    def get(self, index: int) -> str:
        return self.get_bytes(index).decode()

    def nbytes(self) -> int:
        """Memory held by the buffers (the offsets and the UTF-8 bytes)."""
        return 8 * len(self._offsets) + len(self._data)

    def find(self, name: bytes, lo: int = 0, hi: int | None = None) -> int | None:
        """Index of ``name`` among the sorted names ``[lo, hi)``, or None."""
        offsets, data = self._offsets, self._data
        if hi is None:
            hi = len(self)
        while lo < hi:
            mid = (lo + hi) // 2
            probe = bytes(data[offsets[mid] : offsets[mid + 1]])
            if probe < name:
                lo = mid + 1
            elif probe > name:
                hi = mid
            else:
                return mid
        return None


class NameArrayBuilder:
    """Appends names one at a time into the two buffers of a :class:`NameArray` (no list of
    intermediate strings: a page of a listing is parsed, appended and gone)."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._offsets = array("q", [0])

    def append(self, name: bytes) -> None:
        self._data += name
        self._offsets.append(len(self._data))

    def build(self) -> NameArray:
        return NameArray(memoryview(self._offsets), bytes(self._data))
