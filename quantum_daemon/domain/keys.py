"""Every Redis name the daemon reads or writes, in one place (DESIGN §2)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Redis key names under a configurable prefix (default ``quantum``)."""

    prefix: str = "quantum"

    def bars(self, symbol: str, tf: str) -> str:
        return f"{self.prefix}:bars:{symbol}:{tf}"

    @property
    def bars_pattern(self) -> str:
        return f"{self.prefix}:bars:*:*"

    def parse_bars(self, stream: str) -> tuple[str, str] | None:
        """(symbol, tf) of a bar stream name, or None if it is not one."""
        parts = stream.split(":")
        head = self.prefix.split(":")
        if len(parts) != len(head) + 3 or parts[: len(head)] != head or parts[len(head)] != "bars":
            return None
        symbol, tf = parts[-2], parts[-1]
        if symbol == "dlq" or not symbol or not tf:
            return None
        return symbol, tf

    @property
    def dlq(self) -> str:
        return f"{self.prefix}:bars:dlq"

    @property
    def control(self) -> str:
        return f"{self.prefix}:control"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    def signals(self, symbol: str, tf: str) -> str:
        return f"{self.prefix}:signals:{symbol}:{tf}"

    @property
    def signals_pattern(self) -> str:
        return f"{self.prefix}:signals:*:*"

    def parse_signals(self, stream: str) -> tuple[str, str] | None:
        """(symbol, tf) of a signal stream name, or None if it is not one."""
        head = f"{self.prefix}:signals:"
        if not stream.startswith(head):
            return None
        symbol, sep, tf = stream[len(head) :].partition(":")
        if not sep or not symbol or not tf or ":" in tf:
            return None
        return symbol, tf

    def webhook_group(self, target: str) -> str:
        """The consumer group on ``events`` of one webhook URL (``target``: a
        digest of the URL, so the name holds no secret of it)."""
        return f"{self.prefix}:webhooks:{target}"

    @property
    def webhooks_dlq(self) -> str:
        """Webhook deliveries given up: url, event, reason, attempts."""
        return f"{self.prefix}:webhooks:dlq"

    def trust(self, family: str) -> str:
        return f"{self.prefix}:trust:{family}"

    def trust_series(self, family: str, symbol: str, tf: str) -> str:
        """The family's weight on one series, moved by that series' scores
        only (``trust`` is the aggregate over every series)."""
        return f"{self.prefix}:trust:{family}:{symbol}:{tf}"

    @property
    def trust_history(self) -> str:
        return f"{self.prefix}:trust:history"

    def trust_events(self, family: str) -> str:
        return f"{self.prefix}:trust:events:{family}"

    @property
    def heartbeat(self) -> str:
        return f"{self.prefix}:daemon:heartbeat"

    def heartbeat_of(self, instance: str) -> str:
        """One daemon's own heartbeat (several daemons share a Redis)."""
        return f"{self.prefix}:daemon:heartbeat:{instance}"

    @property
    def heartbeat_pattern(self) -> str:
        return f"{self.prefix}:daemon:heartbeat:*"

    @property
    def instances(self) -> str:
        """Sorted set of live daemon instances, scored by when they expire (ms)."""
        return f"{self.prefix}:daemon:instances"

    def owner(self, symbol: str, tf: str) -> str:
        """The lease of a series: ``{instance} {fencing token}`` with a TTL."""
        return f"{self.prefix}:owner:{symbol}:{tf}"

    @property
    def owner_pattern(self) -> str:
        return f"{self.prefix}:owner:*:*"

    def parse_owner(self, key: str) -> tuple[str, str] | None:
        head = f"{self.prefix}:owner:"
        if not key.startswith(head) or key == self.owner_fence:
            return None
        symbol, sep, tf = key[len(head) :].partition(":")
        return (symbol, tf) if sep and symbol and tf and ":" not in tf else None

    @property
    def owner_fence(self) -> str:
        """The counter every lease's fencing token is drawn from."""
        return f"{self.prefix}:owner:fence"

    @property
    def owner_moves(self) -> str:
        """Hash of operators' moves: ``{SYMBOL}:{TF}`` -> the instance to own it."""
        return f"{self.prefix}:owner:moves"

    def control_inbox(self, instance: str) -> str:
        """Commands forwarded to the daemon ``instance`` (it owns their model)."""
        return f"{self.prefix}:control:{instance}"

    @property
    def scored(self) -> str:
        """Sorted set of (model, version, bar) keys already scored: replays score
        nothing twice. Outside ``trust:`` so that namespace holds exactly the
        contract's keys."""
        return f"{self.prefix}:scoring:scored"
