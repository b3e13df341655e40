"""The DICOMweb face (``idcfs serve --dicomweb``): QIDO-RS searches answered from the catalog,
WADO-RS retrievals of the stored bytes through the block cache, read-only, beside the WebDAV
tree on the same server (PS3.18)."""
