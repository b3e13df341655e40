"""How long a request is tried: the setting, apart from the retry machinery, so the option table
can show its defaults without loading the network stack."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying: ``deadline`` seconds in all, each attempt at most ``attempt_timeout``."""

    deadline: float = 60.0
    attempt_timeout: float = 20.0
    first_backoff: float = 0.1
    max_backoff: float = 5.0

    @property
    def longest_operation(self) -> float:
        """The most one operation can take: the deadline, one attempt started just before it, and
        the slack of a connect; a thread waiting on another's fetch waits this long at most."""
        return self.deadline + self.attempt_timeout + 5.0
