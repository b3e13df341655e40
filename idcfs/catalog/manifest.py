"""Reading manifests: the exact series a reproducible analysis used.

Three formats, told apart by content:

- JSON: an object with ``crdc_series_uuids`` (and/or ``SeriesInstanceUIDs``) lists — the
  reproducibility recipe of keeping the CRDC UUIDs of what was analysed;
- an s5cmd / IDC portal manifest: ``cp s3://<bucket>/<crdc_series_uuid>/* <dest>`` lines (``gs://``
  URLs and bare URLs are accepted too);
- a plain list: one crdc_series_uuid or DICOM SeriesInstanceUID a line.

Blank lines and ``#`` comments are ignored everywhere. Every identifier keeps its line number,
so a mount can report exactly which lines it could not resolve.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from idcfs.catalog.identifiers import is_crdc_uuid, is_dicom_uid

_URL = re.compile(r"(?:s3|gs)://[^/\s]+/([^/\s]+)/")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message lists the offending lines."""


@dataclass(frozen=True)
class ManifestEntry:
    line: int
    kind: str  # "crdc_series_uuid" or "SeriesInstanceUID"
    value: str


@dataclass
class Manifest:
    path: str
    entries: list[ManifestEntry] = field(default_factory=list)

    def values(self, kind: str) -> list[str]:
        return sorted({e.value for e in self.entries if e.kind == kind})

    def lines_of(self, value: str) -> list[int]:
        return [e.line for e in self.entries if e.value == value]


def read_manifest(path: str | Path) -> Manifest:
    """Parse ``path``; raise ManifestError naming every line that is not an identifier."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as error:
        raise ManifestError(f"cannot read manifest {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"manifest {path} is not UTF-8 text") from None
    manifest = Manifest(str(path))
    if text.lstrip().startswith("{"):
        _read_json(text, manifest)
    else:
        _read_lines(text, manifest)
    if not manifest.entries:
        raise ManifestError(f"manifest {path} names no series")
    return manifest


def _read_json(text: str, manifest: Manifest) -> None:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"manifest {manifest.path}: invalid JSON at line {error.lineno}: {error.msg}") from None
    keys = {"crdc_series_uuids": "crdc_series_uuid", "SeriesInstanceUIDs": "SeriesInstanceUID"}
    if not isinstance(document, dict) or not any(k in document for k in keys):
        raise ManifestError(f"manifest {manifest.path}: a JSON manifest needs a 'crdc_series_uuids' list")
    bad = []
    for key, kind in keys.items():
        values = document.get(key, [])
        if not isinstance(values, list):
            raise ManifestError(f"manifest {manifest.path}: '{key}' must be a list")
        for position, value in enumerate(values):
            if isinstance(value, str) and _kind_of(value.strip()) == kind:
                manifest.entries.append(ManifestEntry(0, kind, _normal(value.strip(), kind)))
            else:
                bad.append(f"{key}[{position}]: {value!r}")
    if bad:
        raise ManifestError(f"manifest {manifest.path}: not a {'/'.join(keys)} value: " + "; ".join(bad[:20]))


def _read_lines(text: str, manifest: Manifest) -> None:
    bad = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        url = _URL.search(line)
        candidate = url.group(1) if url else line
        kind = _kind_of(candidate)
        if kind is None:
            bad.append(f"line {number}: {raw.strip()[:100]!r}")
            continue
        manifest.entries.append(ManifestEntry(number, kind, _normal(candidate, kind)))
    if bad:
        raise ManifestError(
            f"manifest {manifest.path}: {len(bad)} line(s) are neither a crdc_series_uuid, a SeriesInstanceUID "
            "nor an s5cmd 'cp s3://bucket/<uuid>/* .' line:\n  " + "\n  ".join(bad[:20])
        )


def _kind_of(value: str) -> str | None:
    if is_crdc_uuid(value):
        return "crdc_series_uuid"
    if is_dicom_uid(value) and len(value) <= 64:
        return "SeriesInstanceUID"
    return None


def _normal(value: str, kind: str) -> str:
    return value.lower() if kind == "crdc_series_uuid" else value
