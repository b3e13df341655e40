"""A mount's statistics as people and monitoring read them: the table ``idcfs stats`` prints
(with rates for ``--watch``) and Prometheus text, both from the one JSON document the daemon
renders (``/.idcfs/stats``), so they cannot disagree."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from idcfs.service.mounting import MountError, control_file, mount_of
from idcfs.util.sizes import binary_size


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _hits(tier: dict[str, int]) -> str:
    hits, misses = tier["hits"], tier["misses"]
    ratio = f" ({100 * hits / (hits + misses):.1f}% hits)" if hits + misses else ""
    return f"{hits:,} hits / {misses:,} misses{ratio}, {binary_size(tier['bytes'])} of {binary_size(tier['capacity'])}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _store_state(store: dict[str, Any]) -> str:
    if store.get("state") != "offline":
        return "online"
    return (
        f"OFFLINE for {_duration(store.get('offline_seconds', 0))} ({store.get('reason', '')}): "
        "uncached reads fail at once; probing in the background"
    )


def _volumes(volumes: dict[str, Any]) -> str:
    building = volumes["building"]
    now = (
        f"building {len(building)} ({', '.join(building[:3])}{', ...' if len(building) > 3 else ''})"
        if building
        else "none building"
    )
    if volumes.get("waiting"):
        now += f", {volumes['waiting']} waiting for a turn"
    return (
        f"{now}   built {volumes['built']:,}   found in the cache {volumes['found']:,}   "
        f"not convertible {volumes['not_convertible']:,}   failed {volumes['failed']:,}"
    )


def format_table(stats: dict[str, Any]) -> str:
    """The compact view ``idcfs stats`` prints."""
    requests, cache, prefetch, latency = stats["requests"], stats["cache"], stats["prefetch"], stats["get_latency"]
    memory, disk, kernel = cache["memory"], cache["disk"], cache["kernel"]
    rows = [
        ("mount", f"{stats['mountpoint']}  up {_duration(stats['uptime_seconds'])}, IDC v{stats['idc_version']}, "
                  f"source {stats['source']}"),
        ("store", _store_state(stats.get("store", {}))),
        ("requests", f"GET {requests['GET']:,}   LIST {requests['LIST']:,}   retries {stats['retries']:,}   "
                     f"errors {stats['errors']:,}   not found {stats['not_found']:,}"),
        ("fetched", binary_size(stats["bytes_fetched"])),
        ("GET latency", f"p50 {_ms(latency['p50'])}   p99 {_ms(latency['p99'])}   (last {latency['window']:,} GETs)"),
        ("memory cache", _hits(memory)),
        ("disk cache", (_hits(disk) if disk["capacity"] else "off")
                       + ("   (writes paused)" if disk.get("paused") else "")),
        ("listings", f"{binary_size(cache.get('listings', {}).get('bytes'))} of "
                     f"{binary_size(cache.get('listings', {}).get('capacity'))} in memory"),
        ("kernel cache", f"{kernel['reads']:,} reads reached idcfs ({binary_size(kernel['bytes'])}); "
                         f"{kernel['files_without_reads']:,} opened files needed none"),
        ("prefetch", f"useful {binary_size(prefetch['useful_bytes'])}   "
                     f"wasted {binary_size(prefetch['wasted_bytes'])}   "
                     f"unread {binary_size(prefetch['unread_bytes'])}   failed {prefetch['failed']:,}"),
        ("open files", f"{stats['open_files']:,}"),
        *([("volumes", _volumes(stats["volumes"]))] if "volumes" in stats else []),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def format_rates(before: dict[str, Any], after: dict[str, Any]) -> str:
    """What happened between two snapshots, per second (``idcfs stats --watch``)."""
    seconds = max(1e-3, after["uptime_seconds"] - before["uptime_seconds"])

    def rate(get: Callable[[dict[str, Any]], int]) -> float:
        return (get(after) - get(before)) / seconds

    return (
        f"{'rates':<12}  GET {rate(lambda s: s['requests']['GET']):.1f}/s   "
        f"fetched {binary_size(rate(lambda s: s['bytes_fetched']))}/s   "
        f"read by apps {binary_size(rate(lambda s: s['cache']['kernel']['bytes']))}/s   "
        f"errors {rate(lambda s: s['errors']):.1f}/s"
    )


def read_stats(path: Path | str) -> dict[str, Any]:
    """The statistics of the idcfs mount that ``path`` (the mount point, or anything in it) is in,
    or of the ``idcfs serve`` at the URL ``path`` (``http://127.0.0.1:8080``, with ``user:password@``
    when it asks for them)."""
    if isinstance(path, str) and path.startswith(("http://", "https://")):
        return _served_stats(path)
    text = control_file(path, "stats")
    try:
        return json.loads(text)
    except ValueError:
        raise MountError(f"{mount_of(path)}/.idcfs/stats is not JSON: a mount of another idcfs version?") from None


def _served_stats(url: str) -> dict[str, Any]:
    import urllib3

    parts = urllib3.util.parse_url(url)
    headers = urllib3.make_headers(basic_auth=parts.auth) if parts.auth else {}
    target = parts._replace(auth=None, path=(parts.path or "/").rstrip("/") + "/.idcfs/stats").url
    try:
        response = urllib3.request("GET", target, headers=headers, timeout=10.0, retries=False)
    except urllib3.exceptions.HTTPError as error:
        raise MountError(f"cannot reach idcfs serve at {parts._replace(auth=None).url}: {error}") from None
    if response.status != 200:
        raise MountError(f"{target} answered {response.status}: is it idcfs serve (and the password right)?")
    try:
        return json.loads(response.data)
    except ValueError:
        raise MountError(f"{target} is not JSON: is it idcfs serve?") from None


# -- Prometheus --------------------------------------------------------------------------------

#: (metric, type, help, samples): each sample is (labels, value) taken from the JSON document.
_Metric = tuple[str, str, str, Callable[[dict[str, Any]], Iterator[tuple[dict[str, str], Any]]]]

PROMETHEUS_METRICS: tuple[_Metric, ...] = (
    ("idcfs_requests_total", "counter", "Requests sent to the object store, by kind.",
     lambda s: (({"kind": kind}, n) for kind, n in s["requests"].items())),
    ("idcfs_fetched_bytes_total", "counter", "Bytes received from the object store.",
     lambda s: iter([({}, s["bytes_fetched"])])),
    ("idcfs_retries_total", "counter", "Request attempts that failed and were retried.",
     lambda s: iter([({}, s["retries"])])),
    ("idcfs_errors_total", "counter", "Requests that failed for good (the reader got EIO).",
     lambda s: iter([({}, s["errors"])])),
    ("idcfs_cache_hits_total", "counter", "Block lookups of reads answered by a cache tier.",
     lambda s: (({"tier": tier}, s["cache"][tier]["hits"]) for tier in ("memory", "disk"))),
    ("idcfs_cache_misses_total", "counter", "Block lookups of reads a cache tier could not answer.",
     lambda s: (({"tier": tier}, s["cache"][tier]["misses"]) for tier in ("memory", "disk"))),
    ("idcfs_cache_bytes", "gauge", "Bytes held by a cache tier.",
     lambda s: (({"tier": tier}, s["cache"][tier]["bytes"]) for tier in ("memory", "disk"))),
    ("idcfs_kernel_reads_total", "counter", "Reads the kernel's page cache passed on to idcfs.",
     lambda s: iter([({}, s["cache"]["kernel"]["reads"])])),
    ("idcfs_prefetch_bytes_total", "counter", "Bytes fetched ahead of reads, by outcome.",
     lambda s: (({"outcome": k}, s["prefetch"][f"{k}_bytes"]) for k in ("useful", "wasted"))),
    ("idcfs_prefetch_unread_bytes", "gauge", "Bytes fetched ahead and not read yet.",
     lambda s: iter([({}, s["prefetch"]["unread_bytes"])])),
    ("idcfs_get_latency_seconds", "summary", "Duration of a ranged GET (recent window for quantiles).",
     lambda s: iter([({"quantile": "0.5"}, s["get_latency"]["p50"]), ({"quantile": "0.99"}, s["get_latency"]["p99"])])),
    ("idcfs_store_offline", "gauge", "1 while the object store cannot be reached (uncached reads fail at once).",
     lambda s: iter([({}, int(s.get("store", {}).get("state") == "offline"))])),
    ("idcfs_volume_builds_total", "counter", "Volume builds (--volumes), by outcome.",
     lambda s: (({"outcome": k}, s["volumes"][k]) for k in ("built", "found", "not_convertible", "failed")
                if "volumes" in s)),
    ("idcfs_volume_builds_running", "gauge", "Volume builds under way (--volumes).",
     lambda s: iter([({}, len(s["volumes"]["building"]))] if "volumes" in s else [])),
    ("idcfs_open_files", "gauge", "Files open in the mount.", lambda s: iter([({}, s["open_files"])])),
    ("idcfs_uptime_seconds", "gauge", "Seconds since the mount started.", lambda s: iter([({}, s["uptime_seconds"])])),
)  # fmt: skip


def _sample(name: str, labels: dict[str, str], value: Any) -> str:
    label_text = ",".join(f'{key}="{val}"' for key, val in labels.items())
    number = "NaN" if value is None else repr(float(value)) if isinstance(value, float) else str(int(value))
    return f"{name}{{{label_text}}} {number}" if label_text else f"{name} {number}"


def prometheus_text(stats: dict[str, Any]) -> str:
    """The statistics in Prometheus' text exposition format (version 0.0.4)."""
    lines = []
    for name, kind, help_text, samples in PROMETHEUS_METRICS:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [_sample(name, labels, value) for labels, value in samples(stats)]
        if kind == "summary":
            lines.append(_sample(name + "_sum", {}, stats["get_latency"]["sum"]))
            lines.append(_sample(name + "_count", {}, stats["get_latency"]["count"]))
    return "\n".join(lines) + "\n"
