"""``UPath("idc://...")``: universal-pathlib's ``pathlib``-style paths on the ``idc://`` tree.

universal-pathlib finds this class through its entry point (``universal_pathlib.implementations``
in pyproject.toml), so ``UPath`` needs no import of idcfs. It adds nothing to the generic fsspec
path but a name, and it puts the filesystem class where universal-pathlib reads the path rules
(fsspec's registry of loaded classes): without both, every path made warns. Code written for
``pathlib.Path`` (``iterdir``, ``glob``, ``open``, ``read_bytes``, ``stat``, ``/``) runs unchanged
on an ``IdcPath``; its keyword options are ``fsspec.filesystem("idc", ...)``'s.
"""

from __future__ import annotations

from fsspec import get_filesystem_class
from upath.core import UPath

get_filesystem_class("idc")  # loads idc:// into fsspec's registry, where universal-pathlib looks


class IdcPath(UPath):
    __slots__ = ()
