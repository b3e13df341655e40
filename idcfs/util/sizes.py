"""Sizes for people, in one unit system everywhere they are shown (binary: KiB, MiB, GiB), so
that a cap reads the same in ``idcfs stats``, ``idcfs cache info`` and a refusal to prefetch."""

from __future__ import annotations


def binary_size(n: int | float | None) -> str:
    """``20 << 30`` -> ``"20.0 GiB"``; under 1 KiB in bytes."""
    value = float(n or 0)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
