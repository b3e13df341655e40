"""wsgidav's resources translated onto :class:`~idcfs.vfs.vfs.Vfs`: a folder of the tree is a
collection, a file a non-collection read through the core's block cache (ranges included).

Read-only by construction: the provider says so, so wsgidav answers every write-type method
(PUT, DELETE, MKCOL, MOVE, COPY, PROPPATCH) with 403, and LOCK has no lock manager (405). A path
with an empty, ``.`` or ``..`` segment, a backslash, a NUL or an overlong name is no resource
(404): the tree is virtual, so nothing outside it can be reached, and nothing odd is looked up.

Windows' client (Explorer's Mini-Redirector) refuses a folder listing over a million bytes and
shows the folder empty: to it, a folder of more than :data:`~idcfs.vfs.groups.GROUP_SIZE`
entries lists as groups of them (:mod:`idcfs.vfs.groups`), each a folder. Every other client
sees the tree as it is; a group's path opens the same files for all.

A resource's ``user.idc.*`` metadata (what ``getfattr`` shows on the mount) are live properties
in the :data:`IDC_NAMESPACE`, given when asked for by name (``DAV:propname`` lists them).
``DAV:allprop`` leaves them out, as RFC 4918 lets a server do with live properties: a listing of
a big folder would otherwise carry the series' metadata once per file.
"""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from wsgidav.dav_error import HTTP_INTERNAL_ERROR, HTTP_NOT_FOUND, DAVError
from wsgidav.dav_provider import DAVCollection, DAVNonCollection, DAVProvider, _DAVResource

from idcfs.vfs.body import FileStream
from idcfs.vfs.files import File
from idcfs.vfs.vfs import Entry, Vfs
from idcfs.vfs.xattrs import PREFIX

#: The XML namespace of the ``user.idc.*`` properties: ``user.idc.modality`` is
#: ``{urn:idcfs:}modality``.
IDC_NAMESPACE = "urn:idcfs:"

#: The longest name a segment may have (POSIX's NAME_MAX, what every filesystem face allows).
MAX_NAME_BYTES = 255


#: How Windows' WebDAV client names itself: the Mini-Redirector of the WebClient service
#: ("Microsoft-WebDAV-MiniRedir/10.0.19045"), and its discovery requests ("DavClnt").
_WINDOWS_CLIENTS = ("Microsoft-WebDAV-MiniRedir/", "DavClnt")


def is_windows_client(environ: dict[str, Any]) -> bool:
    """Whether the request comes from Windows' WebDAV client, whose listings are capped."""
    return str(environ.get("HTTP_USER_AGENT", "")).startswith(_WINDOWS_CLIENTS)


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
        if entry.live:  # rendered at each open: its length and its bytes from one rendering
            opened = self.vfs.open(inner)
            return FileResource(path, environ, self.vfs, inner, replace(entry, size=opened.size), opened)
        return FileResource(path, environ, self.vfs, inner, entry)


class IdcProperties(_DAVResource):
    """The ``user.idc.*`` metadata of a resource as properties, read once per resource."""

    vfs: Vfs
    inner: str
    _metadata: dict[str, str] | None = None

    def get_property_names(self, *, is_allprop: bool) -> list[str]:
        names: list[str] = super().get_property_names(is_allprop=is_allprop)
        return names if is_allprop else [*names, *self._idc_properties()]

    def get_property_value(self, name: str) -> Any:
        if not name.startswith(f"{{{IDC_NAMESPACE}}}"):
            return super().get_property_value(name)
        value = self._idc_properties().get(name)
        if value is None:
            raise DAVError(HTTP_NOT_FOUND)
        return value

    def _idc_properties(self) -> dict[str, str]:
        if self._metadata is None:
            try:
                found = self.vfs.xattrs(self.inner)
            except OSError:
                found = {}
            self._metadata = {f"{{{IDC_NAMESPACE}}}{key.removeprefix(PREFIX)}": value for key, value in found.items()}
        return self._metadata


class Folder(IdcProperties, DAVCollection):
    def __init__(self, path: str, environ: dict[str, Any], vfs: Vfs, inner: str) -> None:
        super().__init__(path, environ)
        self.vfs = vfs
        self.inner = inner

    def get_member_names(self) -> list[str]:
        return [name for name, _ in self.vfs.list(self.inner, grouped=is_windows_client(self.environ))]

    def get_member_list(self) -> list[Folder | FileResource]:
        return list(self.members())

    def members(self) -> Iterator[Folder | FileResource]:
        """Members from the listing itself, sizes included, made one at a time: no lookup per
        file (a series' files carry its time, as the mount shows them)."""
        prefix = f"{self.inner}/" if self.inner else ""
        base = self.path.rstrip("/")
        mtime_ns = self.vfs.stat(self.inner).mtime_ns
        for name, is_dir, size in self.vfs.list_sized(self.inner, grouped=is_windows_client(self.environ)):
            url = f"{base}/{name}"
            if is_dir:
                yield Folder(url, self.environ, self.vfs, prefix + name)
            else:
                yield FileResource(url, self.environ, self.vfs, prefix + name, Entry(False, size, mtime_ns))

    def with_members(self) -> Iterator[Folder | FileResource]:
        """What a PROPFIND of depth 1 answers for: the folder, then its members."""
        yield self
        yield from self.members()

    def get_member(self, name: str) -> Folder | FileResource | None:
        provider = self.provider
        return provider.get_resource_inst(f"{self.path.rstrip('/')}/{name}", self.environ)

    def get_href(self) -> str:
        """The folder's URL in a multistatus, with its slash; but as the client wrote it when the
        folder is the one it asked about. Finder takes every href whose path is longer than the
        URL it asked for as a member (webdavfs' ``GetComponentName``): a folder asked for
        without its slash listed itself inside itself. gvfs and KIO ignore the slash."""
        href: str = super().get_href()
        if self.path == self.environ.get("PATH_INFO") and not self.path.endswith("/"):
            return href.rstrip("/")
        return href

    def get_used_bytes(self) -> int | None:
        """RFC 4331's quota at the share's root (Finder shows it as the volume's size): the
        selection's bytes, as ``df`` on a mount shows them; elsewhere none, so listings stay small."""
        return self.vfs.usage().total_bytes if not self.inner else None

    def get_available_bytes(self) -> int | None:
        return 0 if not self.inner else None  # read-only: nothing can be written

    def get_last_modified(self) -> float:
        return self.vfs.stat(self.inner).mtime_ns / 1e9  # the release's date, as the mount shows it

    def get_etag(self) -> None:
        return None


class FileResource(IdcProperties, DAVNonCollection):
    def __init__(
        self, path: str, environ: dict[str, Any], vfs: Vfs, inner: str, entry: Entry, opened: File | None = None
    ) -> None:
        super().__init__(path, environ)
        self.vfs = vfs
        self.inner = inner
        self._entry = entry
        self._opened = opened  # a live file's rendering, whose length the entry has

    def open(self) -> File:
        """The file, to read its bytes: a live file's rendering of the entry's length."""
        opened, self._opened = self._opened, None
        return opened if opened is not None else self.vfs.open(self.inner)

    def get_content_length(self) -> int:
        return self._entry.size

    def get_content_type(self) -> str:
        if self.inner.endswith(".dcm"):
            return "application/dicom"
        return mimetypes.guess_type(self.inner)[0] or "application/octet-stream"

    def get_last_modified(self) -> float:
        return self._entry.mtime_ns / 1e9

    def get_etag(self) -> str:
        # IDC objects never change: size and release time name the bytes.
        entry = self._entry
        return f"{entry.size:x}-{entry.mtime_ns:x}"

    def support_etag(self) -> bool:
        return True

    def support_ranges(self) -> bool:
        return True

    def get_content(self) -> FileStream:
        return FileStream(self.open())
