"""Amazon S3, anonymous and path-style where an endpoint is given: ListObjectsV2 pages with
URL-encoded keys (any key survives the XML), ranged GETs, region redirects followed."""

from __future__ import annotations

import contextlib
import urllib.parse
import xml.etree.ElementTree as ElementTree

from idcfs.remote.http import Response
from idcfs.remote.http_store import PAGE_SIZE, HttpStore
from idcfs.remote.objects import ObjectInfo

_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


class S3Store(HttpStore):
    source = "aws"

    def _base_url(self, bucket: str) -> str:
        return f"{self.endpoint_url}/{bucket}" if self.endpoint_url else f"https://{bucket}.s3.amazonaws.com"

    def object_http_url(self, bucket: str, key: str) -> str:
        return f"{self._base_url(bucket)}/{urllib.parse.quote(key, safe='/~')}"

    def _probe_url(self) -> str:
        return self._base_url("idc-open-data") + "/"

    def _page(self, bucket: str, prefix: str, token: str | None, timeout: float) -> tuple[list[ObjectInfo], str | None]:
        """One ListObjectsV2 page (keys URL-encoded, so any key survives the XML)."""
        query = {"list-type": "2", "prefix": prefix, "max-keys": str(PAGE_SIZE), "encoding-type": "url"}
        if token:
            query["continuation-token"] = token
        data = self._list_request(f"{self._base_url(bucket)}/?{urllib.parse.urlencode(query)}", timeout)
        root = ElementTree.fromstring(data)
        encoded = (root.findtext(f"{_S3_NS}EncodingType") or "").lower() == "url"
        items = []
        for element in root.iter(f"{_S3_NS}Contents"):
            key = element.findtext(f"{_S3_NS}Key") or ""
            key = urllib.parse.unquote_plus(key) if encoded else key
            size = int(element.findtext(f"{_S3_NS}Size") or 0)
            items.append(ObjectInfo(key[len(prefix) :], size, (element.findtext(f"{_S3_NS}ETag") or "").strip('"')))
        truncated = (root.findtext(f"{_S3_NS}IsTruncated") or "false").lower() == "true"
        return items, (root.findtext(f"{_S3_NS}NextContinuationToken") or None) if truncated else None

    def _redirect_target(self, url: str, response: Response) -> str | None:
        return _s3_redirect_target(url, response)


def _s3_redirect_target(url: str, response: Response) -> str | None:
    """The URL to retry a request at after S3's ``PermanentRedirect`` (same path, new host)."""
    host = None
    with contextlib.suppress(ElementTree.ParseError):
        host = ElementTree.fromstring(response.data).findtext("Endpoint") if response.data else None
    region = response.headers.get("x-amz-bucket-region")
    if not host and region:
        host = f"s3.{region}.amazonaws.com"
    if not host:
        return None
    parts = urllib.parse.urlsplit(url)
    path = parts.path
    bucket = path.split("/")[1] if path.count("/") >= 1 else ""
    if bucket and host.startswith(bucket + ".") and path.startswith(f"/{bucket}"):
        path = path[len(bucket) + 1 :] or "/"  # path-style request, virtual-hosted endpoint
    return urllib.parse.urlunsplit((parts.scheme, host, path, parts.query, ""))
