#!/usr/bin/env python3
"""A warm mount's start and the first listing of IDC's largest folder, for two checkouts side by
side: this one, and ``--before DIR`` (a ``git worktree`` of an earlier commit), alternating runs
so that both see the same machine. Needs no storage server (no series folder is opened).

    python scripts/bench_start.py --before ../base --runs 7
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

UNUSED_ENDPOINT = "http://127.0.0.1:9"  # discard port: a mount that never needs the network


def mount(command: list[str], env: dict[str, str], cache: Path, cwd: str | None = None) -> tuple[Path, float]:
    point = Path(tempfile.mkdtemp(prefix="idcfs-start-"))
    started = time.perf_counter()
    result = subprocess.run(
        [*command, "mount", str(point), "--endpoint-url", UNUSED_ENDPOINT, "--cache-dir", str(cache)],
        capture_output=True, text=True, env=env, check=False, cwd=cwd,
    )  # fmt: skip
    if result.returncode:
        raise RuntimeError(result.stderr)
    os.listdir(point)
    return point, time.perf_counter() - started


def unmount(point: Path) -> None:
    subprocess.run(["fusermount3", "-u", str(point)], check=False, capture_output=True)
    deadline = time.monotonic() + 20
    while os.path.ismount(point) and time.monotonic() < deadline:
        time.sleep(0.05)
    shutil.rmtree(point, ignore_errors=True)


def timed_listdir(path: Path) -> float:
    started = time.perf_counter()
    os.listdir(path)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, help="another checkout to measure beside this one")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    variants = {"this checkout": ([str(Path(sys.executable).with_name("idcfs"))], dict(os.environ))}
    cwd: dict[str, str | None] = {"this checkout": None}
    if args.before:
        variants["before"] = ([sys.executable, "-m", "idcfs"], {**os.environ, "PYTHONPATH": str(args.before.resolve())})
        # ``python -m`` puts its working folder ahead of PYTHONPATH: run the other checkout from inside it.
        cwd["before"] = str(args.before.resolve())
    results: dict[str, dict[str, list[float]]] = {name: {"ready": [], "first": [], "warm": []} for name in variants}
    caches = {name: Path(tempfile.mkdtemp(prefix="idcfs-start-cache-")) for name in variants}
    for name, (command, env) in variants.items():  # the catalog is built once, untimed
        point, _ = mount(command, env, caches[name], cwd[name])
        unmount(point)
    for _ in range(args.runs):
        for name, (command, env) in variants.items():
            point, ready = mount(command, env, caches[name], cwd[name])
            try:
                results[name]["ready"].append(ready)
                results[name]["first"].append(timed_listdir(point / "nlst"))
                results[name]["warm"].append(statistics.median(timed_listdir(point / "nlst") for _ in range(5)))
            finally:
                unmount(point)
    print("| | " + " | ".join(variants) + " |")
    print("| --- |" + " --- |" * len(variants))
    for key, label in (("ready", "warm mount -> root listable"), ("first", "first readdir of nlst"),
                       ("warm", "readdir of nlst again")):  # fmt: skip
        cells = [f"{statistics.median(results[name][key]) * 1e3:.0f} ms" for name in variants]
        print(f"| {label} (median of {args.runs}) | " + " | ".join(cells) + " |")
    for cache in caches.values():
        shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
