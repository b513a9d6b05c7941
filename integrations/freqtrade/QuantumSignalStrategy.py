"""QuantumSignalStrategy: Freqtrade trades the signals that quantum-daemon publishes.

Copy this one file into ``user_data/strategies/`` and set, in Freqtrade's
config, the pairs and timeframe the daemon serves and where it publishes:

    "timeframe": "1h",
    "exchange": {"pair_whitelist": ["BTC/USDT"], ...},
    "quantum": {"redis_url": "redis://127.0.0.1:6379/0"}

Live and dry-run read ``quantum:signals:{SYMBOL}:{TF}`` from Redis
(``pip install redis`` in Freqtrade's venv); backtesting and hyperopt read the
``signals.csv`` that ``quantum-daemon simulate`` writes (``"quantum":
{"signals_file": ".../signals.csv"}``) and need no Redis. The signal of the
bar that opened at ``ts`` is known at that bar's close: it sits on the
dataframe row whose ``date`` (Freqtrade's candle open time) is ``ts``, and
Freqtrade acts on it at the next candle's open, as the daemon's own costed
backtest does. A signal that is stale, malformed or from a model not on the
allow-list is refused (logged once, with the reason) and nothing is done on
that candle. See integrations/freqtrade/README.md.

The part above the strategy class needs only the standard library (and
pandas for the signal file, redis-py for Redis), so the reader can be used
and tested outside Freqtrade.
"""

# No "from __future__ import annotations": Freqtrade imports strategy files without
# registering them in sys.modules, where dataclasses cannot resolve string annotations.
import csv
import fnmatch
import json
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

logger = logging.getLogger(__name__)

STATUSES = ("live", "flat", "killed")  # core.ensemble: LIVE, FLAT, KILLED
SIZER = "rl_sizer"  # the sizer's version rides in ``versions``, not in ``contributions``
RECENT_ENTRIES = 16  # stream entries looked at for the last closed candle
TF_MS = {
    "1m": 60_000,
    "5m": 300_000,
    "15m": 900_000,
    "1h": 3_600_000,
    "4h": 14_400_000,
    "1d": 86_400_000,
}


# -- the signal and why one is refused ------------------------------------------------


class SignalRefused(Exception):
    """A signal the strategy will not act on; ``kind`` groups the reasons."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class QuantumSignal:
    """What the strategy uses of one published signal; ``ts`` is the bar's open time (ms)."""

    ts: int
    position: float
    status: str
    models: tuple[str, ...]  # "model_id@version" of every model behind the position


@dataclass(frozen=True)
class SignalPolicy:
    """Which signals are acted on. ``allowed_models``: patterns (``fnmatch``)
    matched against ``model_id@version``; an entry without ``@`` allows every
    version of the models it matches; None allows every model."""

    allowed_models: tuple[str, ...] | None = None

    def unknown_models(self, models: Iterable[str]) -> list[str]:
        if self.allowed_models is None:
            return []
        patterns = [p if "@" in p else p + "@*" for p in self.allowed_models]
        return [m for m in models if not any(fnmatch.fnmatchcase(m, p) for p in patterns)]


def pair_symbol(pair: str) -> str:
    """Freqtrade's pair as the daemon's symbol: ``BTC/USDT``, ``BTC/USDT:USDT`` -> ``BTCUSDT``."""
    return pair.split(":")[0].replace("/", "").upper()


def timeframe_ms(tf: str) -> int:
    if tf not in TF_MS:
        raise ValueError(f"timeframe {tf!r} is not one the daemon serves ({', '.join(TF_MS)})")
    return TF_MS[tf]


def parse_signal(
    fields: Mapping[str, str], symbol: str, tf: str, policy: SignalPolicy
) -> QuantumSignal:
    """A published signal (stream fields, or a row of simulate's signals.csv)
    checked for this series and policy; raises ``SignalRefused``."""
    ts = _int_field(fields, "ts")
    if fields.get("symbol") != symbol or fields.get("tf") != tf:
        raise SignalRefused(
            "malformed", f"signal of {fields.get('symbol')} {fields.get('tf')}, not {symbol} {tf}"
        )
    if ts % timeframe_ms(tf) != 0:
        raise SignalRefused("malformed", f"ts {ts} is not on the {tf} grid")
    for name in ("mu", "p_up", "plain_position"):
        _finite_field(fields, name)
    position = _finite_field(fields, "position")
    if not -1.0 <= position <= 1.0:
        raise SignalRefused("malformed", f"position {position} outside [-1, 1]")
    status = fields.get("status") or "live"  # entries written before the field: live
    if status not in STATUSES:
        raise SignalRefused("malformed", f"unknown status {status!r}")
    if status != "live" and position != 0.0:
        raise SignalRefused("malformed", f"status {status} with position {position}")
    models = _models(fields)
    unknown = policy.unknown_models(models)
    if unknown:
        raise SignalRefused("unknown_model", f"not on the allow-list: {', '.join(unknown)}")
    return QuantumSignal(ts, position, status, models)


def _int_field(fields: Mapping[str, str], name: str) -> int:
    text = fields.get(name)
    if text is None or text == "":
        raise SignalRefused("malformed", f"missing field {name}")
    try:
        return int(text)
    except ValueError:
        raise SignalRefused("malformed", f"{name} {text!r} is not an integer") from None


def _finite_field(fields: Mapping[str, str], name: str) -> float:
    text = fields.get(name)
    if text is None or text == "":
        raise SignalRefused("malformed", f"missing field {name}")
    try:
        value = float(text)
    except ValueError:
        raise SignalRefused("malformed", f"{name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise SignalRefused("malformed", f"{name} is {text}")
    return value


def _models(fields: Mapping[str, str]) -> tuple[str, ...]:
    """``model_id@version`` of each contributing forecaster, and of the sizer
    when the position is its (the signal names the sizer by family only)."""
    try:
        contributions = json.loads(fields.get("contributions") or "[]")
        versions = json.loads(fields.get("versions") or "{}")
        models = [f"{c['model']}@{c['version']}" for c in contributions]
        if fields.get("position_source") == SIZER:
            models.append(f"{SIZER}@{versions[SIZER]}")
    except (ValueError, TypeError, KeyError) as exc:
        raise SignalRefused("malformed", f"contributions or versions unreadable: {exc}") from None
    return tuple(models)


# -- live: the latest signal on Redis -------------------------------------------------


class RedisSignalReader:
    """The signal for a pair's last closed candle, from ``{prefix}:signals:{SYMBOL}:{TF}``.

    ``client`` is a redis-py client that decodes responses. The candle is
    named by its open time (Freqtrade's ``date`` of the last row): a signal
    for it, or for the bar before it (the daemon answers a few milliseconds
    after the close, and Freqtrade may look first), is acted on; an older one
    is stale."""

    def __init__(self, client: Any, prefix: str = "quantum", policy: SignalPolicy | None = None):
        self.client = client
        self.prefix = prefix
        self.policy = policy or SignalPolicy()

    @classmethod
    def from_url(
        cls, url: str, prefix: str = "quantum", policy: SignalPolicy | None = None
    ) -> "RedisSignalReader":
        import redis  # only live and dry-run need it

        client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=2.0, socket_connect_timeout=2.0
        )
        return cls(client, prefix, policy)

    def close(self) -> None:
        self.client.close()

    def key(self, symbol: str, tf: str) -> str:
        return f"{self.prefix}:signals:{symbol}:{tf}"

    def read(self, pair: str, tf: str, last_closed_open_ms: int) -> QuantumSignal:
        """The signal to act on at the close of the candle that opened at
        ``last_closed_open_ms``; raises ``SignalRefused``."""
        symbol, key = pair_symbol(pair), self.key(pair_symbol(pair), tf)
        fields = self._latest_entry(key, last_closed_open_ms)
        signal = parse_signal(fields, symbol, tf, self.policy)
        oldest_fresh = last_closed_open_ms - timeframe_ms(tf)
        if signal.ts < oldest_fresh:
            behind = (last_closed_open_ms - signal.ts) // timeframe_ms(tf)
            raise SignalRefused(
                "stale", f"newest signal is for the bar at {_iso(signal.ts)}, {behind} bars old"
            )
        return signal

    def _latest_entry(self, key: str, last_closed_open_ms: int) -> dict[str, str]:
        """The newest entry of ``key`` not for a later candle than the last
        closed one (Freqtrade can be a candle behind the daemon)."""
        try:
            entries = self.client.xrevrange(key, count=RECENT_ENTRIES)
        except Exception as exc:  # redis-py's errors, and OSError beneath them
            raise SignalRefused("redis", f"cannot read {key}: {exc}") from None
        for _entry_id, fields in entries:
            try:
                if int(fields.get("ts", "")) > last_closed_open_ms:
                    continue
            except ValueError:
                pass  # the newest entry is unreadable: parse_signal says why
            return dict(fields)
        raise SignalRefused("no_signal", f"no signal on {key} up to {_iso(last_closed_open_ms)}")


# -- backtesting: simulate's signals.csv ------------------------------------------------


@dataclass
class SignalFile:
    """The signals of one series from ``quantum-daemon simulate``'s
    ``signals.csv``: ``positions`` by bar open time (ms); refused rows by kind."""

    positions: dict[int, float] = field(default_factory=dict)
    refused: Counter[str] = field(default_factory=Counter)
    first_refusal: dict[str, str] = field(default_factory=dict)


def read_signal_file(path: Path, symbol: str, tf: str, policy: SignalPolicy) -> SignalFile:
    """Every row of ``symbol`` ``tf`` checked as a live signal is (a later
    row of the same bar wins, as on the stream); other series are skipped."""
    out = SignalFile()
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("symbol") != symbol or row.get("tf") != tf:
                continue
            try:
                signal = parse_signal(row, symbol, tf, policy)
            except SignalRefused as refused:
                out.refused[refused.kind] += 1
                out.first_refusal.setdefault(refused.kind, f"row ts={row.get('ts')}: {refused}")
                _forget(out.positions, row.get("ts"))
                continue
            out.positions[signal.ts] = signal.position
    return out


def _forget(positions: dict[int, float], ts: str | None) -> None:
    """A refused later row of a bar leaves the bar without a signal."""
    try:
        positions.pop(int(ts or ""), None)
    except ValueError:
        pass


# -- logging a refusal once -------------------------------------------------------------


@dataclass
class RefusalLog:
    """Logs a pair's refusals once per kind until a signal is accepted again."""

    seen: dict[str, set[str]] = field(default_factory=dict)

    def refused(self, pair: str, refusal: SignalRefused) -> None:
        kinds = self.seen.setdefault(pair, set())
        if refusal.kind not in kinds:
            kinds.add(refusal.kind)
            logger.warning("quantum signal refused for %s: %s", pair, refusal)

    def accepted(self, pair: str, signal: QuantumSignal) -> None:
        if self.seen.pop(pair, None):
            logger.info("quantum signal accepted again for %s (bar %s)", pair, _iso(signal.ts))


def redacted(url: str) -> str:
    """``url`` without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _patterns(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError("quantum.allowed_models must be a list of model patterns")
    return tuple(str(v) for v in value)


# -- the strategy ---------------------------------------------------------------------

try:
    from freqtrade.strategy import DecimalParameter, IStrategy
except ImportError:  # the reader alone, outside Freqtrade's venv
    IStrategy = None

if IStrategy is not None:
    import pandas as pd
    from freqtrade.enums import RunMode

    BACKTEST_MODES = (RunMode.BACKTEST, RunMode.HYPEROPT, RunMode.PLOT)
    POSITION, REFUSED = "quantum_position", "quantum_refused"

    class QuantumSignalStrategy(IStrategy):
        """Long while the daemon's position is above ``entry_threshold``, out
        when it is at or below 0; short the mirror image where ``can_short``
        (futures) is set. The stake is Freqtrade's stake times |position|."""

        INTERFACE_VERSION = 3
        timeframe = "1h"
        can_short = False
        # exits come from the signal: no ROI table, no stop unless the config sets one
        minimal_roi: ClassVar[dict[str, float]] = {"0": 100.0}
        stoploss = -0.99
        use_exit_signal = True
        exit_profit_only = False
        startup_candle_count = 0
        # live: look again every loop, so a signal that lands just after Freqtrade
        # fetched the closed candle is used within seconds, not a candle later
        process_only_new_candles = False

        entry_threshold = DecimalParameter(0.0, 0.9, default=0.0, decimals=2, space="buy")

        # defaults of the "quantum" section of Freqtrade's config
        quantum_redis_url = "redis://127.0.0.1:6379/0"
        quantum_prefix = "quantum"
        quantum_signals_file: str | None = None
        quantum_allowed_models: tuple[str, ...] | None = None
        quantum_exit_on_refusal = False

        def bot_start(self, **kwargs: Any) -> None:
            options = self.config.get("quantum", {})
            self.policy = SignalPolicy(
                _patterns(options.get("allowed_models", self.quantum_allowed_models))
            )
            self.exit_on_refusal = bool(
                options.get("exit_on_refusal", self.quantum_exit_on_refusal)
            )
            self.refusals = RefusalLog()
            self.files: dict[str, SignalFile] = {}
            self.signals_file = options.get("signals_file", self.quantum_signals_file)
            self.reader: RedisSignalReader | None = None
            if self.dp.runmode in BACKTEST_MODES:
                if not self.signals_file:
                    raise ValueError(
                        "backtesting needs quantum.signals_file (simulate's signals.csv)"
                    )
            else:
                url = options.get("redis_url", self.quantum_redis_url)
                prefix = options.get("prefix", self.quantum_prefix)
                self.reader = RedisSignalReader.from_url(url, prefix, self.policy)
                logger.info("quantum signals from %s (prefix %s)", redacted(url), prefix)

        def populate_indicators(self, dataframe: pd.DataFrame, metadata: dict) -> pd.DataFrame:
            pair = metadata["pair"]
            dataframe[POSITION] = math.nan
            dataframe[REFUSED] = False
            if dataframe.empty:
                return dataframe
            if self.reader is None:
                return self._from_file(dataframe, pair)
            return self._from_redis(dataframe, pair)

        def _from_file(self, dataframe: pd.DataFrame, pair: str) -> pd.DataFrame:
            signals = self._signal_file(pair)
            open_ms = _open_ms(dataframe["date"])
            dataframe[POSITION] = open_ms.map(signals.positions).astype("float64")
            return dataframe

        def _signal_file(self, pair: str) -> SignalFile:
            if pair not in self.files:
                symbol = pair_symbol(pair)
                path = Path(str(self.signals_file))
                signals = read_signal_file(path, symbol, self.timeframe, self.policy)
                for kind, count in signals.refused.items():
                    logger.warning(
                        "quantum signals refused for %s: %d rows %s (first: %s)",
                        pair,
                        count,
                        kind,
                        signals.first_refusal[kind],
                    )
                logger.info(
                    "quantum signals for %s: %d bars from %s", pair, len(signals.positions), path
                )
                if not signals.positions and not signals.refused:
                    logger.warning("no signal of %s %s in %s", symbol, self.timeframe, path)
                self.files[pair] = signals
            return self.files[pair]

        def _from_redis(self, dataframe: pd.DataFrame, pair: str) -> pd.DataFrame:
            assert self.reader is not None
            last = dataframe.index[-1]
            last_open_ms = int(_open_ms(dataframe["date"].iloc[-1:]).iloc[0])
            try:
                signal = self.reader.read(pair, self.timeframe, last_open_ms)
            except SignalRefused as refusal:
                self.refusals.refused(pair, refusal)
                dataframe.loc[last, REFUSED] = True
                return dataframe
            self.refusals.accepted(pair, signal)
            dataframe.loc[last, POSITION] = signal.position
            return dataframe

        def populate_entry_trend(self, dataframe: pd.DataFrame, metadata: dict) -> pd.DataFrame:
            threshold = float(self.entry_threshold.value)
            position = dataframe[POSITION]
            dataframe.loc[position > threshold, ["enter_long", "enter_tag"]] = (1, "quantum")
            if self.can_short:
                dataframe.loc[position < -threshold, ["enter_short", "enter_tag"]] = (1, "quantum")
            return dataframe

        def populate_exit_trend(self, dataframe: pd.DataFrame, metadata: dict) -> pd.DataFrame:
            position = dataframe[POSITION]
            refused = dataframe[REFUSED] & self.exit_on_refusal
            dataframe.loc[(position <= 0) | refused, ["exit_long", "exit_tag"]] = (1, "quantum")
            if self.can_short:
                dataframe.loc[(position >= 0) | refused, ["exit_short", "exit_tag"]] = (
                    1,
                    "quantum",
                )
            return dataframe

        def custom_stake_amount(
            self,
            pair: str,
            current_time: Any,
            current_rate: float,
            proposed_stake: float,
            min_stake: float | None,
            max_stake: float,
            leverage: float,
            entry_tag: str | None,
            side: str,
            **kwargs: Any,
        ) -> float:
            """Freqtrade's stake scaled by |position| of the signal candle (the
            last row Freqtrade hands the strategy at this entry)."""
            dataframe, _ = self.dp.get_analyzed_dataframe(pair, self.timeframe)
            if dataframe.empty or not math.isfinite(dataframe[POSITION].iloc[-1]):
                return 0.0
            scale = min(abs(float(dataframe[POSITION].iloc[-1])), 1.0)
            return min(proposed_stake * scale, max_stake)

    def _open_ms(dates: pd.Series) -> pd.Series:
        """Candle open times as epoch milliseconds, whatever the column's resolution."""
        epoch = pd.Timestamp(0, tz="UTC")
        return (dates - epoch) // pd.Timedelta(milliseconds=1)
