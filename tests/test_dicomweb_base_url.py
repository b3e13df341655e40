"""The URLs in DICOMweb answers lead back to the service as the client reached it: directly, or
through a reverse proxy that says what the client used."""

from __future__ import annotations

import pytest

from idcfs.dicomweb.base_url import base_url

DIRECT = {"wsgi.url_scheme": "http", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080"}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"HTTP_HOST": "127.0.0.1:8080"}, "http://127.0.0.1:8080/dicomweb"),
        ({"HTTP_HOST": "127.0.0.1"}, "http://127.0.0.1:8080/dicomweb"),  # dicomweb-client names no port
        ({"HTTP_HOST": "[::1]"}, "http://[::1]:8080/dicomweb"),
        ({}, "http://127.0.0.1:8080/dicomweb"),
        ({"HTTP_HOST": "h", "SCRIPT_NAME": "/idc"}, "http://h:8080/idc/dicomweb"),
        # a reverse proxy: its Host as given, and what it says the client used
        ({"HTTP_HOST": "pacs.example.org", "HTTP_X_FORWARDED_FOR": "10.0.0.7"}, "http://pacs.example.org/dicomweb"),
        (
            {"HTTP_HOST": "pacs.example.org", "HTTP_X_FORWARDED_PROTO": "https"},
            "https://pacs.example.org/dicomweb",
        ),
        (
            {"HTTP_HOST": "internal:8080", "HTTP_X_FORWARDED_PROTO": "https, http", "HTTP_X_FORWARDED_HOST": "a.org"},
            "https://a.org/dicomweb",
        ),
        (
            {"HTTP_HOST": "internal", "HTTP_FORWARDED": 'for=10.0.0.7;proto=https;host="a.org:8443", for=10.0.0.1'},
            "https://a.org:8443/dicomweb",
        ),
        ({"HTTP_HOST": "internal", "HTTP_FORWARDED": "For=10.0.0.7;Proto=HTTPS"}, "https://internal/dicomweb"),
        (  # one proxy says Forwarded (for= only), another X-Forwarded-Proto: each is heard
            {"HTTP_HOST": "a.org", "HTTP_FORWARDED": "for=10.1.1.1", "HTTP_X_FORWARDED_PROTO": "https"},
            "https://a.org/dicomweb",
        ),
        # values that are not a scheme or a host are ignored
        ({"HTTP_HOST": "a.org", "HTTP_X_FORWARDED_PROTO": "javascript"}, "http://a.org/dicomweb"),
        ({"HTTP_HOST": "a.org", "HTTP_X_FORWARDED_HOST": "evil.org/x?"}, "http://a.org/dicomweb"),
        ({"HTTP_HOST": "a.org", "HTTP_FORWARDED": "host=a b;proto=ftp"}, "http://a.org/dicomweb"),
    ],
)
def test_the_base_url_is_the_one_the_client_used(headers, expected):
    assert base_url({**DIRECT, **headers}) == expected
