"""The service's URL as the client reached it: RetrieveURLs and BulkDataURIs in answers start with
it, so a viewer's next request comes back here, by the name, scheme and port the client used.

Directly, that is the request's Host (with the port the client reached when Host names none:
dicomweb-client sends its Host without one). Behind a reverse proxy, the proxy says what the
client used: RFC 7239's ``Forwarded`` (its first element, the hop nearest the client), else
``X-Forwarded-Proto`` and ``X-Forwarded-Host``. Trusting them gives a client no more than Host
already does (the URLs of its own answers); values that are not a scheme or a host are ignored.
"""

from __future__ import annotations

import re
from typing import Any

#: Where DICOMweb is served on the share (the service root clients are given).
ROOT = "/dicomweb"

_DEFAULT_PORTS = {"http": "80", "https": "443"}
#: Headers a reverse proxy adds: then Host is the name it was reached by, port and all.
_FORWARDED = ("HTTP_FORWARDED", "HTTP_X_FORWARDED_HOST", "HTTP_X_FORWARDED_PROTO", "HTTP_X_FORWARDED_FOR")
_SCHEMES = ("http", "https")
#: A host name or address and an optional port: nothing that could change a URL's path.
_HOST = re.compile(r"[A-Za-z0-9._~%-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def base_url(environ: dict[str, Any]) -> str:
    """This service's URL as the client reached it, without a trailing slash."""
    scheme = environ.get("wsgi.url_scheme", "http")
    port = str(environ.get("SERVER_PORT", ""))
    host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', 'localhost')}:{port}"
    if any(key in environ for key in _FORWARDED):
        proto, forwarded_host = _forwarded(environ)
        scheme = proto or scheme
        host = forwarded_host or host
    elif not _names_port(host) and port and port != _DEFAULT_PORTS.get(scheme):
        host = f"{host}:{port}"
    return f"{scheme}://{host}{environ.get('SCRIPT_NAME', '')}{ROOT}"


def _forwarded(environ: dict[str, Any]) -> tuple[str | None, str | None]:
    """The scheme and host a reverse proxy says the client used (None: not said, or not
    valid): each from ``Forwarded`` when it says it, else from its ``X-Forwarded-*`` header (a
    proxy may add one kind, and another proxy or the client the other)."""
    proto = host = None
    forwarded = environ.get("HTTP_FORWARDED")
    if forwarded:
        nearest = forwarded.split(",")[0]
        for pair in nearest.split(";"):
            key, _, value = pair.strip().partition("=")
            value = value.strip().strip('"')
            if key.lower() == "proto":
                proto = value
            elif key.lower() == "host":
                host = value
    proto = proto or _first(environ.get("HTTP_X_FORWARDED_PROTO"))
    host = host or _first(environ.get("HTTP_X_FORWARDED_HOST"))
    proto = proto.lower() if proto and proto.lower() in _SCHEMES else None
    host = host if host and _HOST.fullmatch(host) else None
    return proto, host


def _first(value: str | None) -> str | None:
    """The first of a header's comma-separated values (the one nearest the client)."""
    return value.split(",")[0].strip() if value else None


def _names_port(host: str) -> bool:
    return ":" in host.rpartition("]")[2]  # an IPv6 literal's colons are within its brackets
