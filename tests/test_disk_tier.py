"""The disk tier on a real small disk (a tmpfs): it fits itself to the space there is, and after a
real ENOSPC (someone else filled the disk) it pauses, sweeps what the failed write left, and
works again once there is room. Needs root to mount the tmpfs."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time

import pytest

from idcfs.cache import DiskTier

MIB = 1 << 20


@pytest.fixture
def small_disk(tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(path) -> None:
    with contextlib.suppress(OSError), open(path, "wb") as handle:
        while True:
            handle.write(b"\0" * MIB)


def test_a_cache_capped_above_its_disk_evicts_instead_of_failing(small_disk):
    tier = DiskTier(small_disk / "blocks", 64 * MIB, retry_interval=0.2)
    for k in range(20):
        tier.put(f"k{k}", os.urandom(MIB))
        assert tier.flush(10)
    assert tier.write_failures == 0
    assert tier.get("k19", MIB) is not None  # the newest is there; the oldest made room
    assert tier.get("k0", MIB) is None
    tier.close()


def test_after_a_full_disk_the_tier_works_again_once_there_is_room(small_disk):
    tier = DiskTier(small_disk / "blocks", 64 * MIB, retry_interval=0.2)
    tier.put("before", os.urandom(MIB))
    assert tier.flush(10)
    _fill(small_disk / "filler")  # another program takes every byte left
    for k in range(3):
        tier.put(f"during{k}", os.urandom(MIB))
        tier.flush(10)
    assert tier.write_failures >= 1 and tier.paused
    tier.get("before", MIB)  # reads go on (the block itself may have made room for the filler)
    (small_disk / "filler").unlink()
    deadline = time.monotonic() + 10  # bounds a broken run only
    while tier.paused and time.monotonic() < deadline:
        time.sleep(0.05)
    data = os.urandom(MIB)
    tier.put("after", data)
    assert tier.flush(10)
    assert tier.get("after", MIB) == data
    assert shutil.disk_usage(small_disk).free > MIB  # what the failed write left was swept
    tier.close()
