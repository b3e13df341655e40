"""``make demo``: a local S3 server with generated DICOM at real IDC paths, and idcfs mounted on it.

Works offline. State lives in ``.demo/`` (server pid and URL), data in ``demo-data/``, the mount
on ``demo-mnt/``; ``make demo-stop`` (``python -m tests.testbed.demo stop``) undoes all of it.

The mount holds only the generated series (a manifest of them), not the whole release: it sits
inside the checkout, where ``find .``, ``du`` or ``grep -r`` would otherwise walk a million
empty series folders. ``idcfs mount ~/idc`` is the whole release.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.testbed.dicomgen import generate
from tests.testbed.servers import s3_server

STATE_DIR = Path(".demo")
DATA_DIR = Path("demo-data")
MOUNTPOINT = Path("demo-mnt")


def start() -> int:
    stop(quiet=True)
    series = generate(DATA_DIR, max_instances=40, image_size=256)
    STATE_DIR.mkdir(exist_ok=True)
    server = s3_server(DATA_DIR / "s3", log_path=STATE_DIR / "s3-server.log").start()
    assert server.process is not None
    pid = server.process.pid
    state = {"server_pid": pid, "server_started": _started_at(pid), "url": server.url}
    (STATE_DIR / "state.json").write_text(json.dumps(state))
    manifest = STATE_DIR / "series.txt"
    manifest.write_text("".join(f"{s.crdc_series_uuid}\n" for s in series))
    MOUNTPOINT.mkdir(exist_ok=True)
    idcfs = shutil.which("idcfs") or str(Path(sys.executable).with_name("idcfs"))
    started = time.monotonic()
    result = subprocess.run(
        [idcfs, "mount", str(MOUNTPOINT), "--endpoint-url", server.url, "--cache-dir", str(STATE_DIR / "cache"),
         "--manifest", str(manifest)],
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        server.stop()
        return result.returncode
    mnt = MOUNTPOINT.absolute()
    ct = next(s for s in series if s.modality == "CT")
    sr = next(s for s in series if s.modality == "SR")
    print(f"""
idcfs is mounted on {mnt} ({time.monotonic() - started:.1f}s), reading from a local S3 server at {server.url}
that holds {sum(len(s.files) for s in series)} generated DICOM files of {len(series)} real IDC series.
The tree holds these series (a manifest of them; `idcfs mount ~/idc` is the whole release):
""")
    for s in series:
        print(f"  {s.aws_bucket:18} {s.modality:3} {len(s.files):3} files  {s.path}")
    first = ct.files[0].name
    print(f"""
Try:
  find {mnt} | head                                # the demo's series
  ls -l {mnt}/{ct.path}
  dcmdump {mnt}/{ct.path}/{first} | head -40
  dcmdump {mnt}/{sr.path}/*.dcm | tail -5
  python -c "import pydicom; print(pydicom.dcmread('{mnt}/{ct.path}/{first}'))"
  dcm2niix -o /tmp {mnt}/{ct.path}                   # if dcm2niix is installed
  touch {mnt}/x                                     # read-only: EROFS

Stop with: make demo-stop
""")
    return 0


def stop(quiet: bool = False) -> int:
    from idcfs.service.mounting import MountError, mounted_fuse_points, unmount

    mnt = Path(os.path.realpath(MOUNTPOINT))
    if str(mnt) in mounted_fuse_points():
        try:
            unmount(mnt)
        except MountError as error:
            print(f"demo: {error}; detaching lazily", file=sys.stderr)
            unmount(mnt, lazy=True)
    state_file = STATE_DIR / "state.json"
    if state_file.exists():
        with contextlib.suppress(ValueError, OSError):
            state = json.loads(state_file.read_text())
            pid, started = state.get("server_pid"), state.get("server_started")
            # The pid of a server that died long ago may be another program's now: only the
            # process that started when ours did is ours.
            if pid and started is not None and _started_at(pid) == started:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)
        state_file.unlink()
    if not quiet:
        print("demo stopped: unmounted demo-mnt and stopped the local S3 server")
    return 0


def _started_at(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks after boot, field 22 of /proc/PID/stat): with
    the pid, it names one process for good. None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.demo")
    parser.add_argument("action", choices=("start", "stop"))
    return start() if parser.parse_args().action == "start" else stop()


if __name__ == "__main__":
    sys.exit(main())
