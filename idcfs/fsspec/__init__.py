"""``idc://``: the IDC tree as an fsspec filesystem, in-process and without FUSE (see
:mod:`idcfs.fsspec.filesystem`). ``pip install idcfs`` registers the protocol (entry point
``fsspec.specs``), so ``fsspec.open("idc://...")`` works with no import of this package."""

from idcfs.fsspec.filesystem import IdcFileSystem

__all__ = ["IdcFileSystem"]
