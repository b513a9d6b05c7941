"""Typed, frozen configuration loaded from TOML.

Every section is a frozen dataclass; unknown keys, wrong types and values out
of range are rejected with a ``ConfigError`` naming the key (the CLI turns it
into exit code 78, EX_CONFIG). Environment variables override a few keys;
secrets never appear in ``repr`` or logs.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from quantum_daemon.domain.timeframes import TIMEFRAME_MS

EX_CONFIG = 78
FAMILIES = ("xgb", "lgbm", "nhits", "patchtst", "evo_model", "rl_sizer")


class ConfigError(ValueError):
    """The configuration is unusable; the message names the key."""


class Secret(str):
    """A string that never shows itself in ``repr`` or ``str`` formatting of
    the config (logs print ``***``). ``reveal()`` gives the value."""

    def __repr__(self) -> str:
        return "'***'" if self else "''"

    def reveal(self) -> str:
        return str.__str__(self)


def _positive(v: float) -> bool:
    return v > 0


def _non_negative(v: float) -> bool:
    return v >= 0


def _fraction(v: float) -> bool:
    return 0 < v < 1


def _port(v: int) -> bool:
    return 0 <= v <= 65535


# Range checks per "section.key": (predicate, what the value must be).
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {}


def _check(key: str, pred: Callable[[Any], bool], what: str) -> None:
    _CHECKS[key] = (pred, what)


@dataclass(frozen=True)
class RedisConfig:
    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "quantum"
    password: Secret = field(default=Secret(""), repr=False)
    connect_timeout_s: float = 5.0
    reconnect_max_s: float = 10.0


@dataclass(frozen=True)
class StorageConfig:
    data_dir: Path = Path("./data")


@dataclass(frozen=True)
class ApiConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    token: Secret = field(default=Secret(""), repr=False)


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


@dataclass(frozen=True)
class DaemonConfig:
    heartbeat_interval_s: float = 5.0
    heartbeat_ttl_s: float = 30.0
    grace_s: float = 10.0
    loop_lag_warn_ms: float = 250.0


@dataclass(frozen=True)
class IngestConfig:
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    timeframes: tuple[str, ...] = ("1h",)
    discover: bool = False
    discover_interval_s: float = 30.0
    group: str = "quantum-daemon"
    batch_size: int = 1000
    block_ms: int = 200
    claim_idle_ms: int = 60_000
    max_entry_bytes: int = 4096
    max_in_flight: int = 4
    stream_maxlen: int = 1_000_000


@dataclass(frozen=True)
class EvaluationConfig:
    horizon: int = 24
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    n_test_windows: int = 3
    fee_bps: float = 10.0
    slippage_bps: float = 2.0
    n_trials: int = 1
    position_threshold: float = 0.05
    refit_every_window: bool = True
    trial_sharpe_variance: float = 0.0


@dataclass(frozen=True)
class TrainingConfig:
    backend: Literal["local", "ray"] = "local"
    ray_address: str = ""
    workers: int = 2
    job_timeout_s: float = 900.0
    restart_budget: int = 5
    restart_window_s: float = 300.0
    worker_threads: int = 1
    gpu: Literal["auto", "off"] = "auto"
    history_bars: int = 2105


@dataclass(frozen=True)
class ModelsConfig:
    families: tuple[str, ...] = FAMILIES
    symbols: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")
    timeframes: tuple[str, ...] = ("1h",)
    retrain_every_bars: int = 168
    retrain_interval_s: float = 0.0
    seed: int = 42


@dataclass(frozen=True)
class PromotionConfig:
    min_trades: int = 5
    min_dsr: float = 0.0
    min_profit_factor: float = 1.0
    shadow_min_bars: int = 48  # 0: a version that beats the active one is promoted at once
    shadow_max_bars: int = 240

    def __post_init__(self) -> None:
        if self.shadow_max_bars < self.shadow_min_bars:
            raise ConfigError(
                f"config key 'promotion.shadow_max_bars' must be >= promotion.shadow_min_bars "
                f"({self.shadow_min_bars}), got {self.shadow_max_bars}"
            )


@dataclass(frozen=True)
class InferenceConfig:
    max_candidates: int = 2
    signals_maxlen: int = 10_000
    context_bars: int = 512
    worker_threads: int = 1
    request_timeout_s: float = 120.0
    retention_days: int = 90
    max_catch_up: int = 1000


@dataclass(frozen=True)
class TrustConfig:
    learning_rate: float = 2.0
    share: float = 0.05
    history_len: int = 500


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


for _key in (
    "redis.connect_timeout_s",
    "redis.reconnect_max_s",
    "daemon.heartbeat_interval_s",
    "daemon.heartbeat_ttl_s",
    "daemon.grace_s",
    "daemon.loop_lag_warn_ms",
    "ingest.discover_interval_s",
    "ingest.batch_size",
    "ingest.block_ms",
    "ingest.claim_idle_ms",
    "ingest.max_entry_bytes",
    "ingest.max_in_flight",
    "ingest.stream_maxlen",
    "evaluation.horizon",
    "evaluation.n_test_windows",
    "evaluation.n_trials",
    "training.workers",
    "training.job_timeout_s",
    "training.worker_threads",
    "training.history_bars",
    "training.restart_window_s",
    "models.retrain_every_bars",
    "trust.learning_rate",
    "trust.history_len",
    "promotion.shadow_max_bars",
    "inference.max_candidates",
    "inference.signals_maxlen",
    "inference.context_bars",
    "inference.worker_threads",
    "inference.request_timeout_s",
    "inference.retention_days",
    "inference.max_catch_up",
):
    _check(_key, _positive, "> 0")
for _key in (
    "evaluation.fee_bps",
    "evaluation.slippage_bps",
    "models.retrain_interval_s",
    "training.restart_budget",
    "promotion.min_trades",
    "promotion.min_profit_factor",
    "promotion.shadow_min_bars",
    "models.seed",
):
    _check(_key, _non_negative, ">= 0")
for _key in ("evaluation.val_fraction", "evaluation.test_fraction", "trust.share"):
    _check(_key, _fraction, "between 0 and 1 (exclusive)")
_check("evaluation.position_threshold", lambda v: 0 <= v < 0.5, "in [0, 0.5)")
_check("evaluation.trial_sharpe_variance", _non_negative, ">= 0 (0: not known)")
_check("api.port", _port, "a TCP port (0-65535)")
_check("promotion.min_dsr", lambda v: 0 <= v <= 1, "a probability in [0, 1]")
_check("redis.prefix", lambda v: bool(v) and ":" not in v, "non-empty, without ':'")
_check(
    "ingest.timeframes",
    lambda v: all(t in TIMEFRAME_MS for t in v),
    f"timeframes among {list(TIMEFRAME_MS)}",
)
_check(
    "models.timeframes",
    lambda v: all(t in TIMEFRAME_MS for t in v),
    f"timeframes among {list(TIMEFRAME_MS)}",
)
_check(
    "models.families", lambda v: all(f in FAMILIES for f in v), f"families among {list(FAMILIES)}"
)
_check("redis.url", lambda v: v.startswith(("redis://", "rediss://", "unix://")), "a redis:// URL")

ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "QUANTUM_REDIS_URL": ("redis", "url"),
    "QUANTUM_REDIS_PASSWORD": ("redis", "password"),
    "QUANTUM_DATA_DIR": ("storage", "data_dir"),
    "QUANTUM_API_HOST": ("api", "host"),
    "QUANTUM_API_PORT": ("api", "port"),
    "QUANTUM_API_TOKEN": ("api", "token"),
    "QUANTUM_LOG_LEVEL": ("logging", "level"),
}

# systemd LoadCredential= puts secrets in files under $CREDENTIALS_DIRECTORY.
CREDENTIAL_FILES: dict[str, tuple[str, str]] = {
    "redis_password": ("redis", "password"),
    "api_token": ("api", "token"),
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
    return _build(Config, raw, "")


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


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{where}] must be a table, got {type(raw).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            place = f"{where}.{key}" if where else key
            raise ConfigError(f"unknown config key {place!r}; known: {sorted(names)}")
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        key = f"{where}.{f.name}" if where else f.name
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            values[f.name] = _build(hint, raw[f.name], key)  # type: ignore[arg-type]
        else:
            values[f.name] = _coerce(key, hint, raw[f.name])
            _range_check(key, values[f.name])
    return cls(**values)


def _range_check(key: str, value: Any) -> None:
    check = _CHECKS.get(key)
    if check and not check[0](value):
        raise ConfigError(f"config key {key!r} must be {check[1]}, got {value!r}")


def _coerce(key: str, hint: Any, value: Any) -> Any:
    origin = get_origin(hint)
    if origin is Literal:
        if value not in get_args(hint):
            raise ConfigError(
                f"config key {key!r} must be one of {list(get_args(hint))}, got {value!r}"
            )
        return value
    if origin is tuple:
        item = get_args(hint)[0]
        if not isinstance(value, list):
            raise ConfigError(f"config key {key!r} must be a list, got {type(value).__name__}")
        return tuple(_coerce(f"{key}[]", item, v) for v in value)
    if origin in (types.UnionType, typing.Union):
        raise ConfigError(f"unsupported type for {key!r}")
    return _coerce_scalar(key, hint, value)


def _coerce_scalar(key: str, hint: Any, value: Any) -> Any:
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        return float(value)
    if hint in (str, Secret):
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} must be a string, got {type(value).__name__}")
        return Secret(value) if hint is Secret else value
    if hint is Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"config key {key!r} must be a path string, got {value!r}")
        return Path(value)
    raise ConfigError(f"unsupported type for {key!r}")
