"""The counters the parts of a mount keep: requests, bytes, cache hits, GET latencies.

The data path (store, cache, reader, fs) imports this and nothing of how the numbers are shown:
:mod:`idcfs.service.report` renders them (the ``idcfs stats`` table, Prometheus text) and
:mod:`idcfs.service.metrics` serves them. Counting must cost nothing a read would notice: a few
integer additions under a lock, and a bounded window of recent GET latencies for percentiles.
"""

from __future__ import annotations

import collections
import threading
from typing import Any

#: GET latencies kept for the percentiles: the most recent ones.
LATENCY_WINDOW = 4096


class Counters:
    """Named integer counters, safe to bump from any thread."""

    def __init__(self, *names: str) -> None:
        self._values = dict.fromkeys(names, 0)
        self._lock = threading.Lock()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + amount

    def __getitem__(self, name: str) -> int:
        return self._values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class LatencyWindow:
    """The last :data:`LATENCY_WINDOW` durations, for p50/p99; plus totals for rates."""

    def __init__(self, size: int = LATENCY_WINDOW) -> None:
        self._recent: collections.deque[float] = collections.deque(maxlen=size)
        self._lock = threading.Lock()
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        with self._lock:
            self._recent.append(seconds)
            self.count += 1
            self.total += seconds

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            recent = sorted(self._recent)
            count, total = self.count, self.total

        def quantile(q: float) -> float | None:
            return round(recent[min(len(recent) - 1, int(q * len(recent)))], 6) if recent else None

        return {"p50": quantile(0.5), "p99": quantile(0.99), "count": count, "sum": round(total, 6),
                "window": len(recent)}  # fmt: skip
