"""Getting a mount up and down safely: preflight checks, the daemon's readiness handshake, umount.

libfuse daemonizes by forking after the mount, and threads started before a fork (DuckDB's,
the fetch pools) do not exist in the child. So idcfs never forks a running process: the
``idcfs mount`` command starts a fresh ``idcfs mount --foreground`` process in its own session,
and waits until that process reports, over a pipe, that the file system answers (or why it
could not start). That is how ratarmount and rclone's ``--daemon`` do it.
"""

from __future__ import annotations

import ctypes.util
import errno
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path


class MountError(RuntimeError):
    """A mount that cannot be made or removed; the message is for the user, as is."""


def prefer_libfuse3() -> None:
    """Point mfusepy at libfuse 3 (it would take libfuse 2 first when both are installed)."""
    if os.environ.get("FUSE_LIBRARY_PATH"):
        return
    library = ctypes.util.find_library("fuse3")
    if library:
        os.environ["FUSE_LIBRARY_PATH"] = library


def fusermount() -> str:
    """The fusermount program (FUSE 3's, else FUSE 2's), or a MountError saying how to get it."""
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    if tool is None:
        raise MountError("fusermount3 not found: install FUSE 3 (Debian/Ubuntu: sudo apt-get install fuse3)")
    return tool


#: What ``idcfs mount`` says on Windows, in one line.
NO_MOUNT_ON_WINDOWS = (
    "idcfs mount needs FUSE, which Windows does not have: run `idcfs serve` and map the share in Explorer "
    "(http://127.0.0.1:8080/), or read idc:// paths from Python"
)


def current_uid() -> int | None:
    """This process's user id; None where there are none (Windows)."""
    if sys.platform == "win32" or not hasattr(os, "getuid"):
        return None
    return os.getuid()


def is_root() -> bool:
    """Whether this process runs as root (never on Windows, which has no uids and no mount)."""
    return current_uid() == 0


def check_mountpoint(mountpoint: Path) -> None:
    """Refuse, with a clear message, what would fail later or obscurely."""
    try:
        st = os.stat(mountpoint)
    except FileNotFoundError:
        raise MountError(f"mountpoint {mountpoint} does not exist (create it with: mkdir -p {mountpoint})") from None
    except OSError as error:
        if error.errno == errno.ENOTCONN:
            raise MountError(
                f"{mountpoint} is a stale mount (its daemon died); run: idcfs umount {mountpoint}"
            ) from None
        raise MountError(f"cannot use mountpoint {mountpoint}: {error.strerror}") from None
    if not os.path.isdir(mountpoint):
        raise MountError(f"mountpoint {mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point (unmount it first: idcfs umount {mountpoint})")
    if not os.access(mountpoint, os.W_OK | os.X_OK) and not is_root():
        raise MountError(f"no write permission on mountpoint {mountpoint}")
    if any(os.scandir(mountpoint)):
        raise MountError(f"mountpoint {mountpoint} is not empty")
    del st


def check_allow_other(allow_other: bool, uid: int | None = None, fuse_conf: Path = Path("/etc/fuse.conf")) -> None:
    """``--allow-other`` by a user other than root needs ``user_allow_other`` in fuse.conf:
    fusermount refuses it otherwise, after the catalog is built, in words only the log saw."""
    if not allow_other or (is_root() if uid is None else uid == 0):
        return
    try:
        lines = fuse_conf.read_text().splitlines()
    except OSError:
        lines = []
    if any(line.split("#", 1)[0].strip() == "user_allow_other" for line in lines):
        return
    raise MountError(
        f"--allow-other needs the line 'user_allow_other' in {fuse_conf} when not mounting as root "
        f"(root adds it: echo user_allow_other | sudo tee -a {fuse_conf}); or mount without --allow-other"
    )


def check_fuse_available() -> None:
    fusermount()
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except FileNotFoundError:
        raise MountError(
            "/dev/fuse does not exist: load the fuse kernel module (modprobe fuse), or in a "
            "container run with --device /dev/fuse --cap-add SYS_ADMIN"
        ) from None
    except PermissionError:
        raise MountError(
            "/dev/fuse is not accessible to this user (check its permissions, or the container's device access)"
        ) from None
    os.close(fd)


def report_ready(fd: int | None, message: str = "READY") -> None:
    """Tell the waiting ``idcfs mount`` how startup went (the pipe carries one line)."""
    if fd is None:
        return
    for kind in ("ERROR ", "READY "):  # JSON keeps a multi-line message on the one line
        if message.startswith(kind):
            message = kind + json.dumps(message[len(kind) :])
    try:
        os.write(fd, (message + "\n").encode())
        os.close(fd)
    except OSError:
        pass


def start_daemon(argv: list[str], log_file: Path, timeout: float) -> None:
    """Run ``idcfs mount --foreground`` detached; return once it is ready, or raise MountError."""
    read_fd, write_fd = os.pipe()
    command = [sys.executable, "-m", "idcfs", *argv, "--foreground", "--ready-fd", str(write_fd)]
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log_handle:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=log_handle,
            pass_fds=(write_fd,),
            start_new_session=True,
            close_fds=True,
            # Every option is on the command line already; the daemon must not re-read a source.
            env={name: value for name, value in os.environ.items() if not name.startswith("IDCFS_")},
        )
    os.close(write_fd)
    try:
        line = _read_line(read_fd, process, timeout)
    finally:
        os.close(read_fd)
    if line == "READY":
        return
    if line.startswith("READY "):  # up, with a warning the user must see (the store is offline)
        print(f"idcfs: warning: {_decoded(line[len('READY ') :])}", file=sys.stderr)
        return
    if line.startswith("ERROR "):
        raise MountError(_decoded(line[len("ERROR ") :]))
    if process.poll() is None:
        process.kill()
        raise MountError(f"the idcfs daemon did not become ready within {timeout:.0f}s (see {log_file})")
    raise MountError(
        f"the idcfs daemon exited with status {process.returncode} before the mount was ready "
        f"(see {log_file}): {_last_line(log_file)}"
    )


def _decoded(message: str) -> str:
    """The daemon's error message (JSON-encoded on the pipe, see :func:`report_ready`)."""
    try:
        decoded = json.loads(message)
    except ValueError:
        return message
    return decoded if isinstance(decoded, str) else message


def _read_line(fd: int, process: subprocess.Popen[bytes], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
        elif process.poll() is not None and not select.select([fd], [], [], 0)[0]:
            break
    return data.decode(errors="replace").strip()


def _last_line(path: Path) -> str:
    try:
        lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


def _unescaped(path: str) -> str:
    """A path as /proc/mounts and mountinfo write it: space, tab, newline, backslash in octal."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def mounted_fuse_points() -> dict[str, str]:
    """Mount point -> file system type of every FUSE mount, stale ones included."""
    points = {}
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3 and fields[2].startswith("fuse"):
                    point = _unescaped(fields[1])
                    points[point] = fields[2]
    except OSError:
        pass
    return points


def mount_of(path: str | os.PathLike[str]) -> Path:
    """The idcfs mount point that ``path`` (any file or folder in it, or the mount point
    itself) lies in. "Does not exist" and "is not in an idcfs mount" are different errors."""
    given = Path(path).expanduser()
    absolute = Path(os.path.abspath(given))
    points = [Path(p) for p, kind in mounted_fuse_points().items() if kind == "fuse.idcfs"]
    try:
        absolute.lstat()
    except FileNotFoundError:
        raise MountError(f"{given} does not exist") from None
    except OSError as error:
        if error.errno != errno.ENOTCONN:  # a stale mount: the caller says what to do
            raise MountError(f"cannot look at {given}: {error.strerror}") from None
    for candidate in (absolute, Path(os.path.realpath(absolute))):
        for point in sorted(points, key=lambda p: len(str(p)), reverse=True):
            if candidate == point or point in candidate.parents:
                return point
    raise MountError(f"{given} is not inside an idcfs mount (see: idcfs mount --help)")


def daemon_gone(point: Path, error: OSError, doing: str) -> MountError:
    """The error of a read in the mount at ``point`` that failed: the clean-up hint when its
    daemon has died (ENOTCONN, "Transport endpoint is not connected"), else what failed."""
    if error.errno == errno.ENOTCONN:
        return MountError(f"the daemon of {point} is gone; clean up with: idcfs umount {point}")
    return MountError(f"cannot {doing}: {error.strerror or error}")


def control_file(path: Path | str, name: str) -> bytes:
    """A file of the ``.idcfs`` folder of the mount that ``path`` lies in."""
    point = mount_of(path)
    target = point / ".idcfs" / name
    try:
        return target.read_bytes()
    except FileNotFoundError:
        raise MountError(f"{point} has no {target.relative_to(point)}: is it mounted by this idcfs version?") from None
    except OSError as error:
        raise daemon_gone(point, error, f"read {target}") from None


def mount_info(path: Path | str) -> dict:
    """What the mount holding ``path`` says of itself (``.idcfs/version``): selection, cache..."""
    try:
        return json.loads(control_file(path, "version"))
    except ValueError:
        raise MountError(f"{mount_of(path)}/.idcfs/version is not JSON: a mount of another idcfs version?") from None


def daemon_pid(mountpoint: Path) -> int | None:
    """The pid of the ``idcfs mount --foreground`` process serving ``mountpoint``, if any."""
    wanted = str(mountpoint).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--foreground" in argv and wanted in argv and any(b"idcfs" in arg for arg in argv):
            return int(entry.name)
    return None


def unmount(mountpoint: Path, lazy: bool = False, wait: float = 60.0) -> None:
    """Unmount, then wait (up to ``wait`` seconds) for the daemon to finish writing its cache
    and exit, so a remount right after finds everything the last one fetched."""
    if str(mountpoint) not in mounted_fuse_points():
        raise MountError(f"{mountpoint} is not a FUSE mount point")
    pid = daemon_pid(mountpoint)
    tool = fusermount()
    command = [tool, "-u", *(["-z"] if lazy else []), str(mountpoint)]
    result = subprocess.run(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False
    )
    if result.returncode != 0:
        detail = result.stdout.strip().removeprefix(f"{tool}: ").strip()
        # fusermount says "failed to unmount PATH: REASON": the reason alone, after ours.
        detail = re.sub(r"^failed to unmount .*?: (?=[^:]+$)", "", detail)
        if "busy" in detail.lower():
            detail += " (close files and shells using it, or use --lazy)"
        raise MountError(f"cannot unmount {mountpoint}: {detail or 'fusermount failed'}")
    if pid is None or lazy:
        return
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return  # exited, not yet reaped by its parent
        except OSError:
            return
        time.sleep(0.05)


def _bdi(mountpoint: Path) -> str | None:
    """The backing device (``major:minor``) of the FUSE mount at ``mountpoint``, from mountinfo."""
    device = None
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            if _unescaped(fields[4]) == str(mountpoint) and " - fuse" in line:
                device = fields[2]  # the last one listed: mounts stack
    return device


def kernel_readahead(mountpoint: Path) -> int | None:
    """The readahead of the mount at ``mountpoint``, in bytes (None if it cannot be read)."""
    try:
        device = _bdi(mountpoint)
        return None if device is None else int(Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text()) * 1024
    except (OSError, ValueError):
        return None


def set_kernel_readahead(mountpoint: Path, nbytes: int) -> str | None:
    """Set the readahead of the mount at ``mountpoint`` (its backing device's ``read_ahead_kb``);
    None when it reads back as set, else why not (not root, no such mount, not yet taken).
    Never touches the mount itself: it may run while the mount's own daemon is starting."""
    try:
        device = _bdi(mountpoint)
    except OSError as error:
        return f"cannot read /proc/self/mountinfo: {error.strerror}"
    if device is None:
        return f"{mountpoint} is not in /proc/self/mountinfo"
    setting = Path(f"/sys/class/bdi/{device}/read_ahead_kb")
    wanted = max(0, nbytes) // 1024
    try:
        setting.write_text(f"{wanted}\n")
        now = int(setting.read_text())
    except (OSError, ValueError) as error:
        return f"cannot set {setting}: {getattr(error, 'strerror', None) or error}"
    return None if now == wanted else f"{setting} is {now}, not {wanted}"
