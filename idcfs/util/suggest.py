"""The nearest spellings of a word a user got wrong (an option, a command, a collection, a
preset), for the "did you mean" of every message that refuses one."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, choices: Iterable[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` of ``choices`` close to ``word``, the closest first (none when nothing is)."""
    return difflib.get_close_matches(word, list(choices), n=n, cutoff=cutoff)


def did_you_mean(word: str, choices: Iterable[str], quote: bool = True) -> str:
    """`` (did you mean 'x'?)``, or ``""`` when no choice is close."""
    near = closest(word, choices)
    if not near:
        return ""
    return f" (did you mean {near[0]!r}?)" if quote else f" (did you mean {near[0]}?)"
