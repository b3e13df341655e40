"""idcfs: the NCI Imaging Data Commons as a read-only FUSE file system."""

__version__ = "0.1.0"
