"""Typed, frozen configuration loaded from TOML.

Every section is a frozen dataclass whose field types carry their constraint
(``config_schema``); unknown keys, wrong types and values out of range are
rejected with a ``ConfigError`` naming the key (the CLI turns it into exit
code 78, EX_CONFIG). Environment variables override a few keys; secrets never
appear in ``repr`` or logs.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from quantum_daemon.domain.config_schema import (
    NON_NEGATIVE,
    PROBABILITY,
    Check,
    Fraction,
    NonNegativeFloat,
    NonNegativeInt,
    Port,
    PositiveFloat,
    PositiveInt,
    Secret,
    Timeframes,
    build,
    one_of,
)
from quantum_daemon.domain.errors import EX_CONFIG as EX_CONFIG  # re-exported
from quantum_daemon.domain.errors import ConfigError
from quantum_daemon.domain.ids import (
    RULES,
    BadIdentifier,
    ModelKey,
    check_model_id,
    check_symbol,
    model_keys,
    symbol_of_pair,
)
from quantum_daemon.domain.multi_models import MultiModels, with_multi
from quantum_daemon.domain.params.catalog import ParamTables
from quantum_daemon.domain.ray_config import RayTrainingConfig
from quantum_daemon.domain.secrets import Redactor, url_secrets

FAMILIES = ("xgb", "lgbm", "nhits", "patchtst", "evo_model", "rl_sizer")

REDIS_URL = Check(lambda v: v.startswith(("redis://", "rediss://", "unix://")), "a redis:// URL")
KEY_PREFIX = Check(lambda v: bool(v) and ":" not in v, "non-empty, without ':'")
POSITION_THRESHOLD = Check(lambda v: 0 <= v < 0.5, "in [0, 0.5)")
DRIFT_DELTA = Check(lambda v: 0 <= v < 1, "in [0, 1) (0: off)")
DM_ALPHA = Check(lambda v: 0 < v <= 1, "in (0, 1] (1: off)")
TRIAL_VARIANCE = Check(NON_NEGATIVE.test, ">= 0 (0: not known)")
KNOWN_FAMILIES = one_of(FAMILIES, "families")


def _symbols_valid(symbols: tuple[str, ...]) -> bool:
    try:
        for symbol in symbols:
            check_symbol(symbol)
    except BadIdentifier:
        return False
    return True


SYMBOLS = Check(
    _symbols_valid,
    f"symbols of {RULES['symbol'].allowed}, at most {RULES['symbol'].max_len} characters",
)


def _pairs_valid(pairs: tuple[str, ...]) -> bool:
    try:
        for pair in pairs:
            symbol_of_pair(pair)
    except BadIdentifier:
        return False
    return bool(pairs)


def parse_utc(text: str) -> datetime:
    """An ISO 8601 time; without an offset it is taken as UTC."""
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _iso_time_valid(text: str) -> bool:
    if not text:
        return True
    try:
        parse_utc(text)
    except ValueError:
        return False
    return True


PAIRS = Check(_pairs_valid, "a non-empty list of pairs BASE/QUOTE (ccxt's form, e.g. 'BTC/USDT')")
EXCHANGE_ID = Check(
    lambda v: re.fullmatch(r"[a-z][a-z0-9]*", v) is not None, "a ccxt exchange id (e.g. 'binance')"
)
ISO_TIME = Check(_iso_time_valid, "an ISO 8601 time such as '2024-08-01T00:00:00Z', or ''")
HTTP_URL = Check(lambda v: v == "" or v.startswith(("http://", "https://")), "an http(s):// URL")
INSTANCE_ID = Check(
    lambda v: v == "" or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", v) is not None,
    "'' (host and data dir) or 1-64 letters, digits, '.', '_', '-'",
)


@dataclass(frozen=True)
class RedisConfig:
    url: Annotated[str, REDIS_URL] = "redis://127.0.0.1:6379/0"
    prefix: Annotated[str, KEY_PREFIX] = "quantum"
    password: Secret = field(default=Secret(""), repr=False)
    connect_timeout_s: PositiveFloat = 5.0
    reconnect_max_s: PositiveFloat = 10.0
    # CA bundle (PEM) that signed the server's certificate, for a rediss:// URL.
    tls_ca_file: str = ""

    def __post_init__(self) -> None:
        if not self.tls_ca_file:
            return
        if not self.url.startswith("rediss://"):
            raise ConfigError("config key 'redis.tls_ca_file' needs a rediss:// redis.url")
        if not Path(self.tls_ca_file).is_file():
            raise ConfigError(f"config key 'redis.tls_ca_file': no such file: {self.tls_ca_file}")

    def client_options(self, url: str | None = None) -> dict[str, Any]:
        """redis-py keyword arguments beside ``url`` (default ``self.url``), the
        same for every client (the URL's own user, password and TLS options
        take precedence)."""
        options: dict[str, Any] = {"password": self.password.reveal() or None}
        if self.tls_ca_file and (url or self.url).startswith("rediss://"):
            options["ssl_ca_certs"] = self.tls_ca_file
            options["ssl_cert_reqs"] = "required"
        return options


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path = Path("./data")


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: Port = 8787
    token: Secret = field(default=Secret(""), repr=False)
    # GET /api/signals/stream (docs/push.md): concurrent clients beyond this get 503
    sse_max_clients: PositiveInt = 16
    sse_heartbeat_s: PositiveFloat = 15.0  # a ": ping" comment this often keeps proxies open


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True)
class DaemonConfig:
    heartbeat_interval_s: PositiveFloat = 5.0
    heartbeat_ttl_s: PositiveFloat = 30.0
    grace_s: PositiveFloat = 10.0
    loop_lag_warn_ms: PositiveFloat = 250.0
    stall_s: PositiveFloat = 60.0  # a loop without progress this long is stalled
    # Series ownership between daemons on one Redis (docs/scaling.md "Ownership"):
    # this daemon's name ('' = host + a digest of the data dir, stable across
    # restarts), how long a series lease lives unrenewed, and how long a
    # starting daemon waits for its peers before it claims series.
    instance: Annotated[str, INSTANCE_ID] = ""
    lease_s: PositiveFloat = 15.0
    settle_s: NonNegativeFloat = 0.0


@dataclass(frozen=True)
class IngestConfig:
    symbols: Annotated[tuple[str, ...], SYMBOLS] = ("BTCUSDT", "ETHUSDT")
    timeframes: Timeframes = ("1h",)
    discover: bool = False
    discover_interval_s: PositiveFloat = 30.0
    group: str = "quantum-daemon"
    batch_size: PositiveInt = 1000
    block_ms: PositiveInt = 200
    claim_idle_ms: PositiveInt = 60_000
    max_entry_bytes: PositiveInt = 4096
    max_in_flight: PositiveInt = 4
    stream_maxlen: PositiveInt = 1_000_000
    # How far a bar's ts may be ahead of the wall clock before it is
    # dead-lettered (ts_in_future); 0: one bar of its stream's timeframe.
    max_future_s: NonNegativeFloat = 0.0


@dataclass(frozen=True)
class EvaluationConfig:
    horizon: PositiveInt = 24
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.15
    n_test_windows: PositiveInt = 3
    fee_bps: NonNegativeFloat = 10.0
    slippage_bps: NonNegativeFloat = 2.0
    n_trials: PositiveInt = 1
    # Minimum distance of p_up from 0.5 before a position is taken (core/evaluation/backtest.py).
    position_threshold: Annotated[float, POSITION_THRESHOLD] = 0.05
    refit_every_window: bool = True
    # Variance of the per-period Sharpe ratios of all trials; 0: not known, the null's 1 / (n - 1).
    trial_sharpe_variance: Annotated[float, TRIAL_VARIANCE] = 0.0


@dataclass(frozen=True)
class TrainingConfig:
    backend: Literal["local", "ray"] = "local"
    ray_address: str = ""
    workers: PositiveInt = 2
    job_timeout_s: PositiveFloat = 900.0
    restart_budget: NonNegativeInt = 5
    restart_window_s: PositiveFloat = 300.0
    worker_threads: PositiveInt = 1
    gpu: Literal["auto", "off"] = "auto"
    history_bars: PositiveInt = 2105
    ray: RayTrainingConfig = field(default_factory=RayTrainingConfig)  # [training.ray]


@dataclass(frozen=True)
class ModelsConfig:
    families: Annotated[tuple[str, ...], KNOWN_FAMILIES] = FAMILIES
    symbols: Annotated[tuple[str, ...], SYMBOLS] = ("BTCUSDT", "ETHUSDT")
    timeframes: Timeframes = ("1h",)
    retrain_every_bars: PositiveInt = 168
    retrain_interval_s: NonNegativeFloat = 0.0
    seed: NonNegativeInt = 42
    # [models.params.<family>] and [models.params."<model_id>"]: hyper-parameters
    # (docs/tuning.md); a model's own table wins over its family's, key by key
    params: ParamTables = field(default_factory=ParamTables)
    # [models.multi] family_TF = [symbols]: one global model over those symbols
    # (``{family}_multi_{TF}``; domain/multi_models.py, docs/families.md)
    multi: MultiModels = field(default_factory=MultiModels)

    def __post_init__(self) -> None:
        # ``[models.multi] lgbm = [...]``: one global model per timeframe
        object.__setattr__(self, "multi", self.multi.for_timeframes(self.timeframes))

    def keys(self) -> list[ModelKey]:
        """Every configured model: each family x symbol x timeframe that no
        global model covers, then the global models (``multi_models.with_multi``)."""
        singles = model_keys(self.families, self.symbols, self.timeframes)
        return with_multi(singles, self.multi.models)


def _tuning_targets_valid(names: tuple[str, ...]) -> bool:
    for name in names:
        if name in FAMILIES:
            continue
        try:
            check_model_id(name)
        except (BadIdentifier, ValueError):
            return False
        if ModelKey.parse(name).family not in FAMILIES:
            return False
    return True


TUNING_TARGETS = Check(
    _tuning_targets_valid, f"families among {list(FAMILIES)} or model ids (family_SYMBOL_TF)"
)


@dataclass(frozen=True)
class TuningConfig:
    """Hyper-parameter search in each training job (docs/tuning.md): Optuna's
    TPE over the family's declared space, on the validation window before the
    first test window; every trial counts in the deflated Sharpe. Off by default."""

    enabled: bool = False
    # which models tune when enabled: families or model ids; empty: every model
    models: Annotated[tuple[str, ...], TUNING_TARGETS] = ()
    max_trials: PositiveInt = 20  # parameter sets tried per job (the defaults are the first)
    timeout_s: NonNegativeFloat = 300.0  # seconds of search per job; 0: max_trials alone
    seed: NonNegativeInt = 42  # TPE's seed: the same bars give the same trials
    startup_trials: PositiveInt = 5  # random trials before TPE models the space
    pruning: bool = True  # stop a trial whose validation curve is below the median's

    def applies_to(self, family: str, model_id: str) -> bool:
        if not self.enabled:
            return False
        return not self.models or family in self.models or model_id in self.models

    def plan_for(self, family: str, model_id: str) -> TuningConfig | None:
        """This section when ``model_id`` tunes, else None (what a job spec carries)."""
        return self if self.applies_to(family, model_id) else None


CONTEXT_FAMILIES = ("xgb", "lgbm")  # the families that read context features


def _context_targets_valid(names: tuple[str, ...]) -> bool:
    for name in names:
        if name in CONTEXT_FAMILIES:
            continue
        try:
            check_model_id(name)
        except (BadIdentifier, ValueError):
            return False
        if ModelKey.parse(name).family not in CONTEXT_FAMILIES:
            return False
    return True


CONTEXT_TARGETS = Check(
    _context_targets_valid,
    f"families among {list(CONTEXT_FAMILIES)} or their model ids (family_SYMBOL_TF)",
)


@dataclass(frozen=True)
class FeaturesConfig:
    """Context features of the tree families (docs/features.md): reference
    symbols' returns and volatility, coarser-timeframe bars. Off by default."""

    context: bool = False
    # symbols whose bars (same timeframe) every other symbol's model reads
    reference_symbols: Annotated[tuple[str, ...], SYMBOLS] = ("BTCUSDT",)
    # coarse bars aggregated from the model's own bars (those longer than its timeframe)
    coarse_timeframes: Timeframes = ("4h", "1d")
    # which models use them when on: families or model ids; empty: every xgb and lgbm model
    models: Annotated[tuple[str, ...], CONTEXT_TARGETS] = ()

    def applies_to(self, family: str, model_id: str) -> bool:
        if not self.context or family not in CONTEXT_FAMILIES:
            return False
        return not self.models or family in self.models or model_id in self.models


@dataclass(frozen=True)
class PromotionConfig:
    """The two stages of docs/judge.md: sanity gates on a version's test
    window make it a candidate; the model's record and a Diebold–Mariano test
    against the active version make it active. Each rule has an off value."""

    # -- stage 1: the version's own test window (sanity) --
    min_trades: NonNegativeInt = 5
    min_profit_factor: NonNegativeFloat = 1.0
    # beats flat (total return > 0), buy-and-hold (Sharpe) and the naive forecast (MASE < 1)
    beat_baselines: bool = True
    max_ece: Annotated[float, PROBABILITY] = 0.15  # expected calibration error of p_up; 1: off
    # -- stage 2: the model's out-of-sample record across its versions --
    min_dsr: Annotated[float, PROBABILITY] = 0.95  # deflated Sharpe of the record; 0: off
    min_record_bars: NonNegativeInt = 240  # the record is judged from this many bars on
    record_bars: PositiveInt = 2160  # the record's window: its newest bars
    # which trials deflate the record's Sharpe: every version and trial of the
    # zoo, of the model alone, or only evaluation.n_trials (always the floor)
    trial_scope: Literal["zoo", "model", "config"] = "zoo"
    # one-sided Diebold–Mariano test of a candidate against the active version
    # (HAC variance, horizon - 1 lags); 1: off, a lower mean loss suffices
    dm_alpha: Annotated[float, DM_ALPHA] = 0.05
    # 0: a version that beats the active one is promoted at once.
    shadow_min_bars: NonNegativeInt = 120
    shadow_max_bars: PositiveInt = 720
    # -- decay: drift, age, the kill switch --
    drift_delta: Annotated[float, DRIFT_DELTA] = 0.002  # ADWIN's confidence; 0: off
    drift_cooldown_bars: NonNegativeInt = 168  # a model's drifts retrain it once per this
    # an active version whose model has not trained successfully for this many
    # bars is stale and leaves the ensemble; 0: off
    max_age_bars: NonNegativeInt = 720
    kill_window: NonNegativeInt = 168  # the ensemble's rolling loss window (bars); 0: off
    kill_margin: NonNegativeFloat = 0.02  # flat when its Brier exceeds the naive 0.25 by this

    def __post_init__(self) -> None:
        if self.shadow_max_bars < self.shadow_min_bars:
            raise ConfigError(
                f"config key 'promotion.shadow_max_bars' must be >= promotion.shadow_min_bars "
                f"({self.shadow_min_bars}), got {self.shadow_max_bars}"
            )
        if self.record_bars < self.min_record_bars:
            raise ConfigError(
                f"config key 'promotion.record_bars' must be >= promotion.min_record_bars "
                f"({self.min_record_bars}), got {self.record_bars}"
            )


@dataclass(frozen=True)
class InferenceConfig:
    max_candidates: PositiveInt = 2
    signals_maxlen: PositiveInt = 10_000
    context_bars: PositiveInt = 512
    worker_threads: PositiveInt = 1
    request_timeout_s: PositiveFloat = 120.0
    retention_days: PositiveInt = 90
    max_catch_up: PositiveInt = 1000
    batch_bars: PositiveInt = 256  # stored bars of the series sent to the worker in one batch


@dataclass(frozen=True)
class TrustConfig:
    learning_rate: PositiveFloat = 2.0
    share: Fraction = 0.05
    history_len: PositiveInt = 500


def _webhook_url_valid(urls: tuple[str, ...]) -> bool:
    for url in urls:
        try:
            parts = urlsplit(url)
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return False
    return len(set(urls)) == len(urls)


WEBHOOK_URLS = Check(_webhook_url_valid, "distinct http:// or https:// URLs with a host")
EVENT_TYPE_PREFIXES = Check(lambda v: all(v), "non-empty event type prefixes")


@dataclass(frozen=True)
class WebhooksConfig:
    """HMAC-signed POSTs of the lifecycle events (docs/push.md); off by default."""

    enabled: bool = False
    urls: Annotated[tuple[str, ...], WEBHOOK_URLS] = ()
    # the HMAC key: QUANTUM_WEBHOOK_SECRET, the webhook_secret credential, or secret_file
    secret: Secret = field(default=Secret(""), repr=False)
    secret_file: str = ""
    event_types: Annotated[tuple[str, ...], EVENT_TYPE_PREFIXES] = ()  # prefixes; empty: all
    timeout_s: PositiveFloat = 5.0  # per request
    retries: NonNegativeInt = 5  # attempts after the first, then the dead-letter stream
    backoff_base_s: PositiveFloat = 1.0
    backoff_max_s: PositiveFloat = 60.0
    max_in_flight: PositiveInt = 8  # deliveries under way per URL
    dlq_maxlen: PositiveInt = 10_000

    def __post_init__(self) -> None:
        if not self.enabled:
            return
        if not self.urls:
            raise ConfigError(
                "config key 'webhooks.urls' must list a URL when webhooks are enabled"
            )
        if not self.secret:
            raise ConfigError(
                "config key 'webhooks.secret' is not set: give QUANTUM_WEBHOOK_SECRET, the "
                "webhook_secret credential or webhooks.secret_file when webhooks are enabled"
            )


@dataclass(frozen=True)
class FeedConfig:
    """The exchange bar feed (docs/feed.md): closed bars of ``symbols`` x
    ``timeframes`` from a ccxt exchange onto the bar streams. The daemon runs
    it as one of its loops when ``enabled``; ``quantum-daemon feed`` runs it alone."""

    enabled: bool = False
    exchange: Annotated[str, EXCHANGE_ID] = "binance"
    symbols: Annotated[tuple[str, ...], PAIRS] = ("BTC/USDT", "ETH/USDT")
    timeframes: Timeframes = ("1h",)
    # Asked this long after a bar's close: the exchange needs a moment to close it.
    poll_delay_s: NonNegativeFloat = 5.0
    page_limit: PositiveInt = 1000  # bars per request (Binance spot answers at most 1000)
    # Where an empty series starts: ``since`` if set, else this many bars before now.
    backfill_bars: PositiveInt = 1000
    since: Annotated[str, ISO_TIME] = ""
    request_timeout_s: PositiveFloat = 10.0
    retry_base_s: PositiveFloat = 1.0  # backoff on exchange and Redis errors: first delay
    retry_max_s: PositiveFloat = 60.0  # and its cap
    # Replaces scheme and host of every exchange API URL (a local mirror; the tests).
    api_url: Annotated[str, HTTP_URL] = ""

    def __post_init__(self) -> None:
        if self.retry_max_s < self.retry_base_s:
            raise ConfigError(
                f"config key 'feed.retry_max_s' must be >= feed.retry_base_s "
                f"({self.retry_base_s}), got {self.retry_max_s}"
            )

    def series(self) -> list[tuple[str, str, str]]:
        """(pair, stream symbol, timeframe) of every series fed, in order."""
        return [(p, symbol_of_pair(p), tf) for p in self.symbols for tf in self.timeframes]

    def since_ms(self) -> int | None:
        return int(parse_utc(self.since).timestamp() * 1000) if self.since else None


@dataclass(frozen=True)
class Config:
    redis: RedisConfig = field(default_factory=RedisConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    trust: TrustConfig = field(default_factory=TrustConfig)
    feed: FeedConfig = field(default_factory=FeedConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    tuning: TuningConfig = field(default_factory=TuningConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)

    def __post_init__(self) -> None:
        if self.tuning.enabled and self.tuning.timeout_s >= self.training.job_timeout_s:
            raise ConfigError(
                f"config key 'tuning.timeout_s' must be < training.job_timeout_s "
                f"({self.training.job_timeout_s}): the search runs inside the job"
            )
        if not self.ingest.discover:
            _check_multi_is_ingested(self.models.multi, self.ingest)
        _check_references_are_ingested(self.features, self.ingest)
        if not self.feed.enabled:
            return
        if not self.ingest.discover:
            _check_feed_is_ingested(self.feed, self.ingest)
        if self.feed.request_timeout_s >= self.daemon.stall_s:
            raise ConfigError(
                "config key 'feed.request_timeout_s' must be < daemon.stall_s "
                f"({self.daemon.stall_s}): a request that long would look like a stalled loop"
            )


def _check_references_are_ingested(features: FeaturesConfig, ingest: IngestConfig) -> None:
    """Context features read the reference symbols' bars from the bar store."""
    if not features.context or ingest.discover:
        return
    missing = [s for s in features.reference_symbols if s not in ingest.symbols]
    if missing:
        raise ConfigError(
            f"config key 'features.reference_symbols': {missing} not in ingest.symbols; "
            "the context features read their bars from the bar store"
        )


def _check_feed_is_ingested(feed: FeedConfig, ingest: IngestConfig) -> None:
    """The daemon's own feed must publish only streams its ingest reads."""
    for pair, symbol, tf in feed.series():
        if symbol not in ingest.symbols or tf not in ingest.timeframes:
            raise ConfigError(
                f"config key 'feed.symbols': {pair} {tf} goes to stream {symbol}:{tf}, which "
                "ingest does not read; add it to ingest.symbols and ingest.timeframes, "
                "or set ingest.discover = true"
            )


def _check_multi_is_ingested(multi: MultiModels, ingest: IngestConfig) -> None:
    """A multi model trains on bars of its symbols: ingest must read them."""
    for key in multi.keys():
        for symbol in multi.symbols_of(key.model_id):
            if symbol not in ingest.symbols or key.tf not in ingest.timeframes:
                raise ConfigError(
                    f"config key 'models.multi.{key.family}_{key.tf}': {symbol} {key.tf} is "
                    "not read by ingest; add it to ingest.symbols and ingest.timeframes, "
                    "or set ingest.discover = true"
                )


ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "QUANTUM_REDIS_URL": ("redis", "url"),
    "QUANTUM_REDIS_PASSWORD": ("redis", "password"),
    "QUANTUM_DATA_DIR": ("storage", "data_dir"),
    "QUANTUM_API_HOST": ("api", "host"),
    "QUANTUM_API_PORT": ("api", "port"),
    "QUANTUM_API_TOKEN": ("api", "token"),
    "QUANTUM_LOG_LEVEL": ("logging", "level"),
    "QUANTUM_WEBHOOK_SECRET": ("webhooks", "secret"),
}

# systemd LoadCredential= puts secrets in files under $CREDENTIALS_DIRECTORY.
CREDENTIAL_FILES: dict[str, tuple[str, str]] = {
    "redis_password": ("redis", "password"),
    "api_token": ("api", "token"),
    "webhook_secret": ("webhooks", "secret"),
}


def load(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """Read ``path`` (TOML; None means defaults only), apply the environment,
    validate, and return the frozen config. Raises ``ConfigError``."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(Path(path))
    _apply_credentials(raw, env)
    _apply_env(raw, env)
    _apply_secret_file(raw)
    return build(Config, raw, "")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config path is a directory: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for var, (section, key) in ENV_OVERRIDES.items():
        if env.get(var):
            value: Any = env[var]
            if key == "port":
                try:
                    value = int(value)
                except ValueError:
                    raise ConfigError(
                        f"{var} (api.port) must be an integer, got {value!r}"
                    ) from None
            raw.setdefault(section, {})[key] = value


def _apply_credentials(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    directory = env.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return
    for name, (section, key) in CREDENTIAL_FILES.items():
        file = Path(directory) / name
        if file.is_file():
            raw.setdefault(section, {})[key] = file.read_text().strip()


def with_keys(cfg: Config, section: str, **values: Any) -> Config:
    """``cfg`` with some keys of one section replaced (values as TOML gives
    them: lists, strings), checked as ``load`` checks them (command-line
    overrides). Raises ``ConfigError``."""
    current = getattr(cfg, section)
    raw = {f.name: _as_toml(getattr(current, f.name)) for f in dataclasses.fields(current)}
    raw.update(values)
    return dataclasses.replace(cfg, **{section: build(type(current), raw, section)})


def _as_toml(value: Any) -> Any:
    if isinstance(value, ParamTables | MultiModels):
        return value.to_toml()
    if isinstance(value, tuple):
        return [_as_toml(v) for v in value]
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, Path):
        return str(value)
    return value


def _apply_secret_file(raw: dict[str, Any]) -> None:
    """``[webhooks] secret_file``: the secret read from that file, unless the
    environment or a credential gave one."""
    section = raw.get("webhooks")
    if not isinstance(section, dict) or not section.get("secret_file") or section.get("secret"):
        return
    path = section["secret_file"]
    if not isinstance(path, str):
        return  # build() names the wrong type
    try:
        section["secret"] = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"config key 'webhooks.secret_file': cannot read {path}: {exc.strerror}"
        ) from None


def secrets_of(cfg: Config) -> tuple[str, ...]:
    """Every secret the config holds: the API token, the Redis password, the
    webhook secret, and a password written into the Redis URL, the Ray
    address or a webhook URL."""
    found = (
        cfg.api.token.reveal(),
        cfg.redis.password.reveal(),
        *url_secrets(cfg.redis.url),
        *url_secrets(cfg.training.ray_address),
        cfg.webhooks.secret.reveal(),
        *(secret for url in cfg.webhooks.urls for secret in url_secrets(url)),
    )
    return tuple(dict.fromkeys(s for s in found if s))


def redactor(cfg: Config) -> Redactor:
    """The redaction of every output of a process running with ``cfg``."""
    return Redactor(secrets_of(cfg))


def display(cfg: Config) -> list[str]:
    """One line per section, each key with its value, secrets hidden (``check-config``)."""
    redact = redactor(cfg)
    lines = []
    for section_field in dataclasses.fields(cfg):
        section = getattr(cfg, section_field.name)
        items = ", ".join(
            f"{f.name}={_shown(getattr(section, f.name))}" for f in dataclasses.fields(section)
        )
        lines.append(redact(f"[{section_field.name}] {items}"))
    return lines


def _shown(value: Any) -> str:
    if isinstance(value, Secret):
        return "'***'" if value else "''"  # set or not, never the value
    if isinstance(value, Path):
        return repr(str(value))
    return repr(value)
