"""``make demo``: a local S3 server with generated DICOM at real IDC paths, and idcfs mounted on it.

Works offline. State lives in ``.demo/`` (server pid and URL), data in ``demo-data/``, the mount
on ``demo-mnt/``; ``make demo-stop`` (``python -m tests.testbed.demo stop``) undoes all of it.
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
    (STATE_DIR / "state.json").write_text(json.dumps({"server_pid": server.process.pid, "url": server.url}))
    MOUNTPOINT.mkdir(exist_ok=True)
    idcfs = shutil.which("idcfs") or str(Path(sys.executable).with_name("idcfs"))
    started = time.monotonic()
    result = subprocess.run(
        [idcfs, "mount", str(MOUNTPOINT), "--endpoint-url", server.url, "--cache-dir", str(STATE_DIR / "cache")],
        check=False,
    )
    if result.returncode != 0:
        server.stop()
        return result.returncode
    mnt = MOUNTPOINT.absolute()
    ct = next(s for s in series if s.modality == "CT")
    sr = next(s for s in series if s.modality == "SR")
    print(f"""
idcfs is mounted on {mnt} ({time.monotonic() - started:.1f}s), reading from a local S3 server at {server.url}
that holds {sum(len(s.files) for s in series)} generated DICOM files of {len(series)} real IDC series.
The whole current IDC release is in the tree; only these series have bytes behind them:
""")
    for s in series:
        print(f"  {s.aws_bucket:18} {s.modality:3} {len(s.files):3} files  {s.path}")
    first = ct.files[0].name
    print(f"""
Try:
  ls {mnt} | head                                  # all collections of the index
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
        pid = json.loads(state_file.read_text()).get("server_pid")
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
        state_file.unlink()
    if not quiet:
        print("demo stopped: unmounted demo-mnt and stopped the local S3 server")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.testbed.demo")
    parser.add_argument("action", choices=("start", "stop"))
    return start() if parser.parse_args().action == "start" else stop()


if __name__ == "__main__":
    sys.exit(main())
