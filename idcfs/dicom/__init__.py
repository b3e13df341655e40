"""What is inside an object: each instance's header (the attributes DICOMweb answers with, its
metadata, where its frames lie), read once through the block cache and kept per series in the
cache folder for good (a series UUID names bytes that never change)."""
