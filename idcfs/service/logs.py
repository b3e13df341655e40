"""The daemon's log: human-readable lines to stderr (under systemd, to the journal with each
line's priority) or to a file that SIGHUP reopens, for logrotate.

libfuse answers SIGHUP by unmounting. A daemon's SIGHUP should reopen its log instead, so the
signal is blocked in every thread (before any is started) and taken by one thread that waits
for it with ``sigwait``: libfuse's handler never runs for it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from pathlib import Path

log = logging.getLogger(__name__)

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
#: syslog priorities by logging level, for journald's ``<N>`` line prefix.
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
#: Libraries whose own messages are noise unless debugging.
_NOISY = ("urllib3", "asyncio")
#: Whether fd 2 is the log file (the detached daemon's): then a reopen moves fd 2 along.
_redirected_stderr = False


class JournalFormatter(logging.Formatter):
    """``<priority>logger: message``: journald adds the time, the pid and the unit itself."""

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITIES.get(record.levelno, 6)}>{super().format(record)}"


class ReopenableFileHandler(logging.FileHandler):
    """A log file that can be reopened by name, after logrotate has moved it away."""

    def reopen(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # logging.Handler creates it
            if self.stream is not None:
                self.stream.close()
            self.stream = self._open()
            # The daemon's stderr is the log file too (for what C libraries print): follow it.
            if _redirected_stderr:
                os.dup2(self.stream.fileno(), 2)


def stderr_is_journal() -> bool:
    """Whether stderr is connected to journald (systemd sets ``JOURNAL_STREAM=dev:inode``)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in stream.split(":"))
        st = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def setup_logging(level: str = "info", log_file: str | None = None, debug: bool = False) -> logging.Handler:
    """Send every logger's records to ``log_file`` (reopenable) or stderr, at ``level``."""
    global _redirected_stderr
    handler: logging.Handler
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        _redirected_stderr = _same_file(2, log_file)
        handler = ReopenableFileHandler(log_file)
        handler.setFormatter(logging.Formatter("%(asctime)s idcfs[%(process)d] %(levelname)s %(name)s: %(message)s"))
    elif stderr_is_journal():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s idcfs[%(process)d] %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(logging.DEBUG if debug else max(logging.WARNING, LEVELS[level]))
    # mfusepy logs every expected errno (ENOENT, EROFS) with a traceback at DEBUG.
    logging.getLogger("mfusepy").setLevel(logging.DEBUG if debug else max(logging.INFO, LEVELS[level]))
    return handler


def reopen_logs() -> None:
    reopened = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ReopenableFileHandler):
            handler.reopen()
            reopened.append(handler.baseFilename)
    log.info("SIGHUP: %s", f"reopened {', '.join(reopened)}" if reopened else "logging to stderr, nothing to reopen")


def handle_sighup() -> None:
    """Reopen the log on SIGHUP, for the rest of the process's life.

    Must run in the main thread before any other thread starts: threads inherit the blocked
    signal, so only the waiting thread ever receives it.
    """
    if sys.platform == "win32" or not hasattr(signal, "SIGHUP"):
        return  # no hangup signal (Windows): logs are rotated with the process stopped
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})

    def wait_for_hangups() -> None:
        while True:
            signal.sigwait({signal.SIGHUP})
            try:
                reopen_logs()
            except OSError as error:
                log.error("SIGHUP: cannot reopen the log: %s", error)

    threading.Thread(target=wait_for_hangups, name="idcfs-sighup", daemon=True).start()
