"""idcfs: the NCI Imaging Data Commons as a read-only FUSE file system.

From Python (a notebook, a script, a Dask task)::

    import idcfs

    with idcfs.mount("~/idc", collection=["lidc_idri"]) as idc:
        folder = idc.path("1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192")

The names are loaded on first use: the daemon imports this package too, and must not pay for
(or start threads of) what only the API needs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from idcfs.version import __version__

if TYPE_CHECKING:
    from idcfs.api import Mount, MountError, folders_of, mount

__all__ = ["Mount", "MountError", "folders_of", "mount", "__version__"]


def __getattr__(name: str) -> Any:
    if name in ("Mount", "MountError", "folders_of", "mount"):
        from idcfs import api

        return getattr(api, name)
    raise AttributeError(f"module 'idcfs' has no attribute {name!r}")
