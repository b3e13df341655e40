"""Bucket mapping, URLs and error classification of the store (no network)."""

from __future__ import annotations

import pytest

from idcfs.store import AWS_TO_GCS_BUCKET, StoreError, _is_not_found, _is_retryable, _ShortRead, bucket_for, object_url


def test_bucket_mapping():
    assert bucket_for("aws", "idc-open-data-two") == "idc-open-data-two"
    assert bucket_for("gcs", "idc-open-data") == "idc-open-data"
    assert bucket_for("gcs", "idc-open-data-two") == "idc-open-idc1"
    assert bucket_for("gcs", "idc-open-data-cr") == "idc-open-cr"
    assert set(AWS_TO_GCS_BUCKET) == {"idc-open-data", "idc-open-data-two", "idc-open-data-cr"}
    with pytest.raises(StoreError):
        bucket_for("gcs", "some-other-bucket")
    with pytest.raises(ValueError):
        bucket_for("azure", "idc-open-data")


def test_urls():
    assert object_url("aws", "idc-open-data-cr", "u/*") == "s3://idc-open-data-cr/u/*"
    assert object_url("gcs", "idc-open-data-cr", "u/i.dcm") == "gs://idc-open-cr/u/i.dcm"


class _HttpLike(Exception):
    def __init__(self, code):
        super().__init__(f"status {code}")
        self.code = code


def _caused_by(cause):
    try:
        raise OSError(5, "wrapped") from cause
    except OSError as error:
        return error


@pytest.mark.parametrize(
    "code, retryable", [(500, True), (503, True), (429, True), (408, True), (403, False), (400, False)]
)
def test_http_statuses(code, retryable):
    assert _is_retryable(_caused_by(_HttpLike(code))) is retryable


def test_transport_failures_retry_and_bugs_do_not():
    assert _is_retryable(TimeoutError())
    assert _is_retryable(ConnectionResetError())
    assert _is_retryable(_ShortRead("short"))
    assert not _is_retryable(ValueError("bug"))
    assert _is_not_found(_caused_by(FileNotFoundError("x")))
    assert _is_not_found(_HttpLike(404))
    assert not _is_not_found(_HttpLike(500))
