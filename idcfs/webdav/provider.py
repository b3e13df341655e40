"""wsgidav's resources translated onto :class:`~idcfs.vfs.vfs.Vfs`: a folder of the tree is a
collection, a file a non-collection read through the core's block cache (ranges included).

Read-only by construction: the provider says so, so wsgidav answers every write-type method
(PUT, DELETE, MKCOL, MOVE, COPY, PROPPATCH) with 403, and LOCK has no lock manager (405). A path
with an empty, ``.`` or ``..`` segment, a backslash, a NUL or an overlong name is no resource
(404): the tree is virtual, so nothing outside it can be reached, and nothing odd is looked up.
"""

from __future__ import annotations

import io
import mimetypes
from typing import Any

from wsgidav.dav_error import HTTP_INTERNAL_ERROR, DAVError
from wsgidav.dav_provider import DAVCollection, DAVNonCollection, DAVProvider

from idcfs.vfs.files import File
from idcfs.vfs.vfs import Entry, Vfs

#: The longest name a segment may have (POSIX's NAME_MAX, what every filesystem face allows).
MAX_NAME_BYTES = 255


def tree_path(path: str) -> str | None:
    """The tree's path of a URL path (already unquoted by wsgidav), or None if it is not one."""
    inner = path.strip("/")
    if not inner:
        return ""
    parts = inner.split("/")
    for part in parts:
        if part in ("", ".", "..") or "\\" in part or "\0" in part or len(part.encode()) > MAX_NAME_BYTES:
            return None
    return inner


class IdcProvider(DAVProvider):
    def __init__(self, vfs: Vfs) -> None:
        super().__init__()
        self.vfs = vfs
        self.readonly = True

    def is_readonly(self) -> bool:
        return True

    def get_resource_inst(self, path: str, environ: dict[str, Any]) -> Folder | FileResource | None:
        inner = tree_path(path)
        if inner is None:
            return None
        try:
            entry = self.vfs.stat(inner)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as error:  # the store, after its retries
            raise DAVError(HTTP_INTERNAL_ERROR, context_info=str(error)) from None
        if entry.is_dir:
            return Folder(path, environ, self.vfs, inner)
        return FileResource(path, environ, self.vfs, inner, entry)


class Folder(DAVCollection):
    def __init__(self, path: str, environ: dict[str, Any], vfs: Vfs, inner: str) -> None:
        super().__init__(path, environ)
        self.vfs = vfs
        self.inner = inner

    def get_member_names(self) -> list[str]:
        return [name for name, _ in self.vfs.list(self.inner)]

    def get_member_list(self) -> list[Folder | FileResource]:
        """Members from the listing itself, sizes included: no lookup per member."""
        prefix = f"{self.inner}/" if self.inner else ""
        base = self.path.rstrip("/")
        members: list[Folder | FileResource] = []
        for name, is_dir, size in self.vfs.list_sized(self.inner):
            url = f"{base}/{name}"
            if is_dir:
                members.append(Folder(url, self.environ, self.vfs, prefix + name))
            else:
                members.append(FileResource(url, self.environ, self.vfs, prefix + name, None, size))
        return members

    def get_member(self, name: str) -> Folder | FileResource | None:
        provider = self.provider
        return provider.get_resource_inst(f"{self.path.rstrip('/')}/{name}", self.environ)

    def get_last_modified(self) -> float:
        return self.vfs.stat(self.inner).mtime_ns / 1e9  # the release's date, as the mount shows it

    def get_etag(self) -> None:
        return None


class FileResource(DAVNonCollection):
    def __init__(
        self, path: str, environ: dict[str, Any], vfs: Vfs, inner: str, entry: Entry | None, size: int | None = None
    ) -> None:
        super().__init__(path, environ)
        self.vfs = vfs
        self.inner = inner
        self._entry = entry
        self._size = entry.size if entry is not None else size

    def _stat(self) -> Entry:
        if self._entry is None:
            self._entry = self.vfs.stat(self.inner)
        return self._entry

    def get_content_length(self) -> int:
        return self._size if self._size is not None else self._stat().size

    def get_content_type(self) -> str:
        if self.inner.endswith(".dcm"):
            return "application/dicom"
        return mimetypes.guess_type(self.inner)[0] or "application/octet-stream"

    def get_last_modified(self) -> float:
        return self._stat().mtime_ns / 1e9

    def get_etag(self) -> str:
        # IDC objects never change: size and release time name the bytes.
        entry = self._stat()
        return f"{entry.size:x}-{entry.mtime_ns:x}"

    def support_etag(self) -> bool:
        return True

    def support_ranges(self) -> bool:
        return True

    def get_content(self) -> io.BufferedReader:
        return io.BufferedReader(FileStream(self.vfs.open(self.inner)), buffer_size=1 << 20)


class FileStream(io.RawIOBase):
    """An open file of the tree as the file object wsgidav streams (and seeks, for a Range)."""

    def __init__(self, opened: File) -> None:
        self._opened = opened
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._opened.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def tell(self) -> int:
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self._opened.read(self._position, len(view))
        count = len(data)
        view[:count] = data
        self._position += count
        return count

    def close(self) -> None:
        if not self.closed:
            self._opened.close()
        super().close()
