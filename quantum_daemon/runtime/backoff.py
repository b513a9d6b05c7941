"""Exponential backoff with full jitter (retries of transient failures)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays of ``base * 2**attempt`` capped at ``cap``, each drawn uniformly
    from ``[0, delay]`` (full jitter) so that many clients do not retry in step."""

    base: float = 0.1
    cap: float = 10.0
    attempt: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        delay = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        return self.rng.uniform(0, delay)

    def reset(self) -> None:
        self.attempt = 0
