"""systemd's readiness protocol (``Type=notify``): one datagram to ``$NOTIFY_SOCKET``.

The protocol is a few ``KEY=value`` lines sent to a Unix datagram socket (a leading ``@`` names
an abstract socket); writing it here costs fewer lines than a dependency would.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

log = logging.getLogger(__name__)


def sd_notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) to the service manager, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address or sys.platform == "win32" or not hasattr(socket, "AF_UNIX"):
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto("\n".join(fields).encode(), address)
    except OSError as error:
        log.warning("cannot notify the service manager at %s: %s", os.environ["NOTIFY_SOCKET"], error)
        return False
    return True
