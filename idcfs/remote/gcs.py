"""Google Cloud Storage through its JSON API, anonymous: listing pages that ask only for the
fields a listing uses, and ``alt=media`` ranged GETs."""

from __future__ import annotations

import json
import urllib.parse

from idcfs.remote.http_store import PAGE_SIZE, HttpStore
from idcfs.remote.objects import ObjectInfo


class GcsStore(HttpStore):
    source = "gcs"

    def _base_url(self) -> str:
        return self.endpoint_url or "https://storage.googleapis.com"

    def object_http_url(self, bucket: str, key: str) -> str:
        quoted = urllib.parse.quote(key, safe="")
        return f"{self._base_url()}/download/storage/v1/b/{bucket}/o/{quoted}?alt=media"

    def _probe_url(self) -> str:
        return self._base_url() + "/storage/v1/b/idc-open-data"

    def _page(self, bucket: str, prefix: str, token: str | None, timeout: float) -> tuple[list[ObjectInfo], str | None]:
        """One JSON API page, asking only for the fields a listing uses."""
        query = {
            "prefix": prefix,
            "maxResults": str(PAGE_SIZE),
            "fields": "items(name,size,md5Hash),nextPageToken",
        }
        if token:
            query["pageToken"] = token
        url = f"{self._base_url()}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o"
        page = json.loads(self._list_request(f"{url}?{urllib.parse.urlencode(query)}", timeout))
        items = [
            ObjectInfo(item["name"][len(prefix) :], int(item["size"]), item.get("md5Hash", ""))
            for item in page.get("items", [])
        ]
        return items, page.get("nextPageToken") or None
