"""The memory tier's default size: a share of the memory there is, the cgroup's limit where a
container or a batch job sets one (the machine's figure there is the host's)."""

from __future__ import annotations

import pytest

from idcfs.config.options import MEMORY_CACHE_MAX, MEMORY_CACHE_MIN, default_memory_cache_size
from idcfs.util.memory import cgroup_limit, physical_memory, usable_memory

GIB = 1 << 30


@pytest.mark.parametrize(
    "usable, expected",
    [(None, MEMORY_CACHE_MIN), (2 * GIB, MEMORY_CACHE_MIN), (8 * GIB, GIB), (24 * GIB, MEMORY_CACHE_MAX)],
)
def test_the_memory_tier_takes_a_share_of_memory_within_bounds(usable, expected, monkeypatch):
    if usable is None:
        monkeypatch.setattr("idcfs.config.options.usable_memory", lambda: None)
    assert default_memory_cache_size(usable) == expected


@pytest.mark.parametrize(
    "files, expected",
    [
        ({"memory.max": "4294967296\n"}, 4 * GIB),  # cgroup v2, a job's limit
        ({"memory.max": "max\n"}, None),  # v2, no limit
        ({"memory/memory.limit_in_bytes": "1073741824\n"}, GIB),  # cgroup v1
        ({}, None),  # no cgroups here
        ({"memory.max": "garbage"}, None),
    ],
)
def test_a_cgroups_limit_is_read_where_there_is_one(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert cgroup_limit(tmp_path) == expected


def test_a_jobs_limit_below_the_machines_memory_wins(tmp_path):
    machine = physical_memory()
    assert machine is not None and machine > GIB  # Linux says
    (tmp_path / "memory.max").write_text(str(GIB))
    assert usable_memory(tmp_path) == GIB
    (tmp_path / "memory.max").write_text("max")
    assert usable_memory(tmp_path) == machine
