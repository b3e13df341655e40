"""Cohorts on a Dask cluster: ``idcfs.dask.map_series`` on a real ``distributed.LocalCluster``
(worker processes) reading through a real mount, and where series are sent when mounts are shards."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from idcfs.catalog.index import shard_of
from idcfs.dask import place_series

from .conftest import requires_fuse, source_file


def series_digest(folder: Path) -> dict:
    """What a task computes on a worker: the SeriesInstanceUID the files carry, and their digests."""
    import pydicom

    files = sorted(folder.iterdir())
    uids = {str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID) for path in files}
    return {
        "files": len(files),
        "uids": ",".join(sorted(uids)),
        "sha256": {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in files},
    }


@pytest.mark.integration
@requires_fuse
def test_map_series_runs_a_cohort_on_worker_processes_through_the_mount(s3_mount, generated):
    import pandas as pd
    from distributed import Client, LocalCluster

    from idcfs.dask import map_series

    cohort = pd.DataFrame({"SeriesInstanceUID": [s.series_uid for s in generated] + ["1.2.3.4.5"]})
    with (
        LocalCluster(n_workers=2, threads_per_worker=2, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        table = map_series(client, series_digest, cohort, s3_mount.path)
    assert list(table["series"]) == list(cohort["SeriesInstanceUID"])  # the cohort's order
    done, failed = table[table["error"].isna()], table[table["error"].notna()]
    assert list(failed["series"]) == ["1.2.3.4.5"] and "not in the mount" in failed["error"].iloc[0]
    for series, (_, row) in zip(generated, done.iterrows(), strict=True):
        assert row["path"] == str(s3_mount.series_dir(series))
        assert row["uids"] == series.series_uid and row["files"] == len(series.files)
        expected = {f.name: hashlib.sha256(source_file(series, f.name).read_bytes()).hexdigest() for f in series.files}
        assert row["sha256"] == expected


def test_series_go_to_the_workers_whose_shard_holds_them():
    mounts = {
        "tcp://a:1": {"host": "a", "shard": "1/2"},
        "tcp://a:2": {"host": "a", "shard": "1/2"},
        "tcp://b:1": {"host": "b", "shard": "2/2"},
        "tcp://c:1": {"host": "c", "error": "c: /mnt/idc is not inside an idcfs mount"},
    }
    patients = {f"s{k}": f"P-{k}" for k in range(20)}
    placement = place_series(list(patients), mounts, patients, ask_held=lambda ids: pytest.fail("no need to ask"))
    assert not placement.unplaced
    for workers, group in placement.groups:
        parts = {mounts[w]["shard"] for w in workers}
        assert len(parts) == 1 and all(f"{shard_of(patients[s], 2)}/2" in parts for s in group)
    assert sorted(s for _, group in placement.groups for s in group) == sorted(patients)
    # Without PatientIDs, each node's catalog says what it holds.
    held = {"tcp://a:1": ["s1"], "tcp://a:2": ["s1"], "tcp://b:1": ["s2"]}
    placement = place_series(["s1", "s2", "s3"], mounts, None, ask_held=lambda ids: held)
    assert sorted(placement.groups) == [(["tcp://a:1", "tcp://a:2"], ["s1"]), (["tcp://b:1"], ["s2"])]
    assert placement.unplaced == {"s3": "not in any worker's mount"}
    # Whole mounts take anything; no mount at all is every series' error.
    whole = {"tcp://d:1": {"host": "d", "shard": None}, **mounts}
    assert place_series(["s1"], whole, None, ask_held=dict).groups == [(["tcp://d:1"], ["s1"])]
    nothing = place_series(["s1"], {"tcp://c:1": mounts["tcp://c:1"]}, None, ask_held=dict)
    assert nothing.groups == [] and "not inside an idcfs mount" in nothing.unplaced["s1"]
