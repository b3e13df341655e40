"""Which bucket holds a series on each cloud, and the URLs people see (xattrs, logs, manifests)."""

from __future__ import annotations

from idcfs.remote.errors import StoreError

#: AWS bucket (the index's ``aws_bucket``) -> the GCS bucket holding the same objects.
AWS_TO_GCS_BUCKET = {
    "idc-open-data": "idc-open-data",
    "idc-open-data-two": "idc-open-idc1",
    "idc-open-data-cr": "idc-open-cr",
}

SOURCES = ("aws", "gcs")


def bucket_for(source: str, aws_bucket: str) -> str:
    """The bucket holding a series on ``source``, given its ``aws_bucket`` from the index."""
    if source == "aws":
        return aws_bucket
    if source == "gcs":
        try:
            return AWS_TO_GCS_BUCKET[aws_bucket]
        except KeyError:
            raise StoreError(f"no GCS mirror known for AWS bucket {aws_bucket!r}") from None
    raise ValueError(f"unknown source {source!r} (expected one of {', '.join(SOURCES)})")


def object_url(source: str, aws_bucket: str, key: str) -> str:
    """The ``s3://`` or ``gs://`` URL of an object or prefix (for xattrs and logs)."""
    scheme = "s3" if source == "aws" else "gs"
    return f"{scheme}://{bucket_for(source, aws_bucket)}/{key}"
