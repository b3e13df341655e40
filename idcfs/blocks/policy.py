"""How far the block reader works ahead of demand: the settings, apart from the machinery, so
the option table (and ``idcfs --help``) can show their defaults without loading the data path."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BLOCK_SIZE = 1 << 20
PREFETCH_MODES = ("off", "file", "series")


@dataclass(frozen=True)
class PrefetchPolicy:
    mode: str = "series"
    max_series_bytes: int = 2 << 30
    max_window: int = 64  # blocks of readahead, at most
    coalesce: int = 8  # blocks fetched by one background GET, at most
    workers: int = 16
    budget_bytes: int = 256 << 20  # bytes in flight in the background, at most
    #: An object read at random (``random_after`` jumps in one open file) and no larger than this
    #: is fetched whole in the background (as s3fs-fuse does; slide viewers read tiles all over).
    max_random_object_bytes: int = 2 << 30
    random_after: int = 4

    def __post_init__(self) -> None:
        if self.mode not in PREFETCH_MODES:
            raise ValueError(f"prefetch mode {self.mode!r} is not one of {', '.join(PREFETCH_MODES)}")
