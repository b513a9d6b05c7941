"""How many worker restarts are allowed, and how long to wait before each: a
crash-loop guard shared by the training pools and the inference worker's
supervisor."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class RestartBudget:
    """At most ``budget`` failures within any ``window_s``: pure, pass ``now``.

    ``delay()`` is the wait before the next restart: ``base_delay_s`` doubled
    for every other failure still in the window, capped at ``max_delay_s``
    (1 s, 2 s, 4 s, ...), so a worker that cannot start backs off instead of
    spending the whole budget within seconds, and the delay falls back to
    ``base_delay_s`` once the failures age out of the window.
    """

    budget: int
    window_s: float
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    times: deque[float] = field(default_factory=deque)

    def record(self, now: float) -> bool:
        """Count a failure; False once the budget is exceeded."""
        self.times.append(now)
        while self.times and self.times[0] <= now - self.window_s:
            self.times.popleft()
        return len(self.times) <= self.budget

    def delay(self) -> float:
        """Seconds to wait before restarting after the failures recorded."""
        recent = max(1, len(self.times))
        return min(self.max_delay_s, self.base_delay_s * 2 ** (recent - 1))
