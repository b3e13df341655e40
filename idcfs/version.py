"""The version of idcfs, in one place: the package metadata, ``idcfs --version``, ``/.idcfs/version``
and the catalog snapshots' key all read it (a snapshot written by another version is rebuilt)."""

__version__ = "0.4.0"
