"""How many worker restarts are allowed: a crash-loop guard shared by the
training pools and the inference worker's supervisor."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class RestartBudget:
    """At most ``budget`` failures within any ``window_s``: pure, pass ``now``."""

    budget: int
    window_s: float
    times: deque[float] = field(default_factory=deque)

    def record(self, now: float) -> bool:
        """Count a failure; False once the budget is exceeded."""
        self.times.append(now)
        while self.times and self.times[0] <= now - self.window_s:
            self.times.popleft()
        return len(self.times) <= self.budget
