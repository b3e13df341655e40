"""The daemon: ``idcfs mount --foreground`` (what ``idcfs mount`` starts detached, and what
systemd runs) builds the file system from the options, mounts it and serves it until unmount.

Everything that owns a thread is made here, in the process that serves, after the catalog's
forked build: libfuse daemonizing by fork, or a fork after threads, would leave threads behind.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

from idcfs.service.heap import Trimmer, bound_heap
from idcfs.service.mounting import MountError, is_root

log = logging.getLogger("idcfs")


def serve(args: argparse.Namespace) -> int:
    """Run the file system in this process until it is unmounted."""
    from idcfs.service.logs import handle_sighup, setup_logging
    from idcfs.service.mounting import check_fuse_available, check_mountpoint, prefer_libfuse3

    setup_logging(args.log_level, args.log_file, args.debug)
    bound_heap()
    handle_sighup()  # before any thread starts
    # FUSE threads answer the kernel while prefetch threads parse responses; the default 5 ms
    # GIL switch interval would make a cached read wait behind that work.
    sys.setswitchinterval(0.0005)
    ready_fd = args.ready_fd
    try:
        if ready_fd is not None:
            check_mountpoint(args.mountpoint)
            check_fuse_available()
            os.chdir("/")  # a daemon must not keep the caller's directory busy
        prefer_libfuse3()
        from idcfs.fuse.operations import FuseOperations
        from idcfs.service.stack import open_tree, probe_store

        vfs = open_tree(args, where=str(args.mountpoint))
        # (``operations`` is bound by the time libfuse calls init, which calls on_ready.)
        operations = FuseOperations(vfs, on_ready=lambda: _announce_ready(args, ready_fd, operations.answering))
        args.offline_warning = probe_store(vfs.store)
        metrics = None
        if args.metrics_port is not None:
            from idcfs.service.metrics import MetricsServer

            metrics = MetricsServer(args.metrics_port, vfs.stats)
    except (MountError, ValueError, OSError) as error:
        _startup_failed(str(error), ready_fd)
        return 1

    from idcfs.blocks.buffers import RECYCLED
    from idcfs.fuse.binding import serve_mount
    from idcfs.service.notify import sd_notify

    if metrics is not None:
        metrics.start()
    # After the catalog's forked build: no thread may exist across a fork.
    trimmer = Trimmer(also=(RECYCLED.release_idle,))
    trimmer.start()
    stderr_mark = _stderr_offset()
    try:
        serve_mount(operations, args.mountpoint, args.allow_other, args.kernel_flags)
    except RuntimeError as error:
        if not operations.ready:
            said = _fuse_said(args.log_file, stderr_mark)  # libfuse's and fusermount's own reasons
            reason = f": {said}" if said else f" (libfuse status {error}); see {args.log_file or 'the log'}"
            _startup_failed(f"FUSE could not mount {args.mountpoint}{reason}", ready_fd)
            return 1
        # libfuse answers SIGTERM and SIGINT by unmounting and returning status 8.
        log.info("stopped by a signal")
    finally:
        trimmer.close()
        if metrics is not None:
            metrics.close()
    sd_notify("STOPPING=1", f"STATUS=unmounted {args.mountpoint}")
    log.info("unmounted %s", args.mountpoint)
    return 0


#: How long the readahead setting is watched for the kernel's INIT to lower it, at most (seconds).
READAHEAD_SETTLE = 10.0


def _stderr_offset() -> int | None:
    """Where the daemon's stderr (its log file) ends now; None when it is not a file."""
    try:
        sys.stderr.flush()
        return os.lseek(2, 0, os.SEEK_END)
    except OSError:
        return None


def _fuse_said(log_file: str | None, offset: int | None, limit: int = 4096) -> str:
    """What libfuse and fusermount wrote to stderr (the log file) since ``offset``
    (``fusermount3: option allow_other only allowed if 'user_allow_other' is set in
    /etc/fuse.conf``): their lines are the ones not in the log's own format, which starts with
    the date. stderr itself is open for appending only: the file is read by its name."""
    if offset is None or not log_file:
        return ""
    try:
        with open(log_file, "rb") as handle:
            handle.seek(offset)
            written = handle.read(limit).decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in written.splitlines()]
    return "; ".join(line for line in lines if line and not line[:4].isdigit())


def _startup_failed(message: str, ready_fd: int | None) -> None:
    """Tell whoever waits (``idcfs mount``, or systemd) why the mount did not come up."""
    from idcfs.service.mounting import report_ready
    from idcfs.service.notify import sd_notify

    log.error("%s", message)
    report_ready(ready_fd, f"ERROR {message}")
    sd_notify(f"STATUS=failed: {message.splitlines()[0] if message else ''}")


def _announce_ready(args: argparse.Namespace, ready_fd: int | None, answering: threading.Event) -> None:
    """The mount answers: release ``idcfs mount`` (the pipe) or systemd (``READY=1``)."""
    from idcfs.service.mounting import report_ready
    from idcfs.service.notify import sd_notify

    log.info(
        "mounted %s (source %s%s)",
        args.mountpoint,
        args.source,
        f", endpoint {args.endpoint_url}" if args.endpoint_url else "",
    )
    if args.kernel_readahead:
        threading.Thread(
            target=_set_kernel_readahead,
            args=(args.mountpoint, args.kernel_readahead, answering),
            name="idcfs-readahead",
        ).start()
    warning = getattr(args, "offline_warning", None)
    report_ready(ready_fd, f"READY {warning}" if warning else "READY")
    sd_notify("READY=1", f"STATUS=mounted {args.mountpoint} (IDC from {args.source})", f"MAINPID={os.getpid()}")


def _set_kernel_readahead(mountpoint: Path, nbytes: int, answering: threading.Event) -> None:
    """Raise the mount's readahead once the kernel has taken libfuse's answer to INIT, which
    lowers it to what the kernel offered (128 KiB) whenever it is processed after our write: and
    that answer goes out after the ``init`` callback that starts this. Read back as set is not
    enough, then; set and held once the mount has answered a request (the kernel sends none
    before INIT is done), or for ``READAHEAD_SETTLE`` seconds when nothing asks."""
    from idcfs.service.mounting import kernel_readahead, set_kernel_readahead

    wanted = max(0, nbytes) // 1024 * 1024
    problem = None
    deadline = time.monotonic() + READAHEAD_SETTLE
    while time.monotonic() < deadline:
        # A steady pace until the mount answers, then at once: the check is done with the
        # mount's first request, not among the lookups after it (reading mountinfo there took
        # the GIL from the lookup that starts a series' LIST).
        answered = answering.wait(0.05)
        if kernel_readahead(mountpoint) == wanted:
            if answered:
                log.debug("kernel readahead of %s: %d KiB", mountpoint, nbytes // 1024)
                return
            continue
        problem = set_kernel_readahead(mountpoint, nbytes)
        if problem is not None and answered:
            break
    if problem is not None:
        log.log(logging.INFO if is_root() else logging.DEBUG, "kernel readahead left as it is: %s", problem)
