"""``quantum-daemon train``: train one model version offline, evaluate it, store it.

Bars come from a file (``--data``, any format ``replay`` reads; symbol and
timeframe from a Freqtrade file name unless given) or from the bar store in
``storage.data_dir``. The version is written into the registry folder
(``data_dir/models/{model_id}/{version}``); the metrics are printed as a table,
or with ``--json`` as one JSON object (keys: ``evaluation.report.JSON_KEYS``).

Hyper-parameters: the model's ``[models.params]`` tables of config.toml,
then ``--param KEY=VALUE`` on top. ``--tune`` searches the family's space
first with the ``[tuning]`` budget (``--tune-trials`` overrides
``max_trials``), also when ``[tuning]`` is off; a model that ``[tuning]``
names tunes without it (docs/tuning.md).

With ``[features] context`` on, an ``xgb`` / ``lgbm`` model reads its
reference symbols' bars of the same timeframe from ``--reference FILE...``
or, without it, from the bar store (docs/features.md); a reference series
with no bars there is exit 65 naming it.

Exit codes (``domain/errors.py``): 0 done, 2 neither ``--family`` nor
``--now``, 65 unusable data (too few bars), 66 no input (file or series
missing), 78 bad configuration or a bad hyper-parameter.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantum_daemon.domain.errors import EX_DATAERR, EX_NOINPUT, EX_OK, EX_USAGE, ConfigError


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "train", help="train and evaluate one model version offline, store it in the registry"
    )
    from quantum_daemon.models.families import family_names

    parser.add_argument("--family", choices=family_names(), help="model family (offline training)")
    parser.add_argument(
        "--now",
        metavar="MODEL_ID",
        help="ask the running daemon to retrain MODEL_ID now (e.g. xgb_BTCUSDT_1h)",
    )
    parser.add_argument(
        "--data", type=Path, help="bar file (CSV, Freqtrade JSON, feather, parquet)"
    )
    parser.add_argument(
        "--reference",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="bar files of the [features] reference symbols (default: the bar store)",
    )
    parser.add_argument("--symbol", help="symbol, e.g. BTCUSDT (default: from the file name)")
    parser.add_argument("--tf", help="timeframe, e.g. 1h (default: from the file name)")
    parser.add_argument("--from", dest="start", type=parse_time, help="first bar (ISO UTC or ms)")
    parser.add_argument("--to", dest="end", type=parse_time, help="end, exclusive (ISO or ms)")
    parser.add_argument("--report", type=Path, help="write metrics.json, returns.csv, equity.png")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seed", type=int, help="random seed (default: models.seed)")
    parser.add_argument("--horizon", type=int, help="bars ahead (default: evaluation.horizon)")
    parser.add_argument("--n-trials", type=int, help="trials tried, for the deflated Sharpe")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="family hyper-parameter override (repeatable)",
    )
    parser.add_argument(
        "--tune",
        action="store_true",
        help="search the family's hyper-parameter space first ([tuning] budget)",
    )
    parser.add_argument(
        "--tune-trials", type=int, help="tuning trials (default: tuning.max_trials)"
    )
    parser.set_defaults(func=train)


def parse_time(text: str) -> int:
    """Epoch milliseconds from an integer (ms) or an ISO 8601 date/time (UTC if naive)."""
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (ISO 8601 or epoch ms)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def parse_params(pairs: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param wants KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return params


def train(args: argparse.Namespace) -> int:
    from quantum_daemon.cli import load_config

    if args.now:
        from quantum_daemon.commands.models import train_now

        return train_now(args, args.now)
    if not args.family:
        return _fail("train: give --family FAMILY (offline) or --now MODEL_ID (daemon)", EX_USAGE)
    cfg = load_config(args)
    try:
        bars = _read_bars(args, cfg.storage.data_dir)
        params = parse_params(args.param)
    except _NoInput as exc:
        return _fail(str(exc), EX_NOINPUT)
    except ValueError as exc:
        return _fail(str(exc), EX_DATAERR)
    return _run(args, cfg, bars, params)


def _tuning(args: argparse.Namespace, cfg: Any, model_id: str) -> Any:
    """The tuning budget of this run: None when the model does not tune."""
    from quantum_daemon.domain.config import with_keys

    if args.tune_trials is not None:
        cfg = with_keys(cfg, "tuning", max_trials=args.tune_trials)
    if args.tune:
        return with_keys(cfg, "tuning", enabled=True, models=[]).tuning
    return cfg.tuning.plan_for(args.family, model_id)


def _run(args: argparse.Namespace, cfg: Any, bars: Any, params: dict[str, Any]) -> int:
    from quantum_daemon.core.evaluation.splits import InsufficientData
    from quantum_daemon.domain.ids import model_id
    from quantum_daemon.domain.params.catalog import checked, refuse_evaluation_keys
    from quantum_daemon.training.offline import OfflineSpec, train_offline

    mid = model_id(args.family, bars.symbol, bars.tf)
    try:
        refuse_evaluation_keys(args.family, params, "--param")
        params = checked(
            args.family, {**cfg.models.params.for_model(args.family, mid), **params}, "--param"
        )
        tuning = _tuning(args, cfg, mid)
    except ConfigError as exc:
        return _fail(str(exc), exc.exit_code)
    try:
        context = _feature_context(args, cfg, bars)
    except ValueError as exc:
        return _fail(str(exc), EX_DATAERR)

    spec = OfflineSpec(
        family=args.family,
        bars=bars,
        data_dir=Path(cfg.storage.data_dir),
        evaluation=cfg.evaluation,
        params=params,
        seed=cfg.models.seed if args.seed is None else args.seed,
        horizon=args.horizon,
        n_trials=args.n_trials,
        report_dir=args.report,
        tuning=tuning,
        context=context,
    )
    try:
        result = train_offline(spec)
    except InsufficientData as exc:
        return _fail(str(exc), EX_DATAERR)
    except ConfigError as exc:  # a hyper-parameter the family refuses
        return _fail(str(exc), exc.exit_code)
    except ValueError as exc:  # e.g. an unknown feature name
        return _fail(str(exc), EX_DATAERR)
    if args.json:
        print(json.dumps(result.metrics, allow_nan=False))
    else:
        print(format_table(result.metrics, len(bars), str(result.artifact_dir)))
    return EX_OK


class _NoInput(Exception):
    pass


def _read_bars(args: argparse.Namespace, data_dir: Path) -> Any:
    bars = _bars_from_file(args) if args.data else _bars_from_store(args, data_dir)
    keep = _time_mask(bars.ts, args.start, args.end)
    bars = bars if keep is None else _subset(bars, keep)
    if len(bars) == 0:
        raise _NoInput(f"no bars for {bars.symbol} {bars.tf} in the requested range")
    return bars


def _bars_from_file(args: argparse.Namespace) -> Any:
    from quantum_daemon.domain.bars import Bars
    from quantum_daemon.storage.bar_files import BarFileError, read_bar_file

    if not args.data.is_file():
        raise _NoInput(f"bar file not found: {args.data}")
    try:
        file = read_bar_file(args.data, symbol=args.symbol, tf=args.tf)
    except BarFileError as exc:
        raise ValueError(str(exc)) from None
    return Bars.from_frame(file.frame, file.symbol, file.tf)


def _bars_from_store(args: argparse.Namespace, data_dir: Path) -> Any:
    from quantum_daemon.storage.bar_store import DB_FILENAME, BarStore

    if not args.symbol or not args.tf:
        raise ValueError("without --data, --symbol and --tf name the series in the bar store")
    path = Path(data_dir) / DB_FILENAME
    if not path.is_file():
        raise _NoInput(f"no bar store at {path}; pass --data FILE or ingest bars first")
    with BarStore(path) as store:
        return store.read_bars(args.symbol, args.tf, start_ms=args.start, end_ms=args.end)


def _feature_context(args: argparse.Namespace, cfg: Any, bars: Any) -> Any:
    """``[features]``' context of the model: reference bars from ``--reference``
    files, else from the bar store (None: off for this model)."""
    from quantum_daemon.core.context_features import (
        empty_bars,
        feature_context,
        reference_window,
    )

    files = {b.symbol: b for b in map(_reference_file, args.reference)}

    def read(symbol: str, target: Any) -> Any:
        if symbol in files:
            return reference_window(files[symbol], target)
        path = Path(cfg.storage.data_dir) / "bars.sqlite3"
        if not path.is_file():
            return empty_bars(symbol, target.tf)
        from quantum_daemon.storage.bar_store import BarStore

        end = int(target.ts[-1]) + 1
        with BarStore(path) as store:
            return store.read_bars(symbol, target.tf, start_ms=int(target.ts[0]), end_ms=end)

    return feature_context(cfg.features, args.family, bars, read)


def _reference_file(path: Path) -> Any:
    from quantum_daemon.domain.bars import Bars
    from quantum_daemon.storage.bar_files import BarFileError, read_bar_file

    if not path.is_file():
        raise ValueError(f"reference bar file not found: {path}")
    try:
        file = read_bar_file(path)
    except BarFileError as exc:
        raise ValueError(str(exc)) from None
    return Bars.from_frame(file.frame, file.symbol, file.tf)


def _time_mask(ts: Any, start: int | None, end: int | None) -> Any:
    if start is None and end is None:
        return None
    keep = ts >= (start if start is not None else ts.min())
    return keep & (ts < end) if end is not None else keep


def _subset(bars: Any, keep: Any) -> Any:
    from quantum_daemon.domain.bars import Bars

    return Bars(
        bars.symbol,
        bars.tf,
        bars.ts[keep],
        bars.open[keep],
        bars.high[keep],
        bars.low[keep],
        bars.close[keep],
        bars.volume[keep],
    )


def _fail(message: str, code: int) -> int:
    import sys

    print(f"quantum-daemon train: {message}", file=sys.stderr)
    return code


ROWS = (
    ("trades", "{:d}"),
    ("win_rate", "{:.3f}"),
    ("sharpe", "{:.3f}"),
    ("sortino", "{:.3f}"),
    ("profit_factor", "{:.3f}"),
    ("max_drawdown", "{:.4f}"),
    ("exposure", "{:.3f}"),
    ("turnover", "{:.4f}"),
    ("total_return", "{:.4f}"),
)
FORECAST_ROWS = (
    ("psr", "{:.4f}"),
    ("dsr", "{:.4f}"),
    ("mae", "{:.5f}"),
    ("mase", "{:.4f}"),
    ("hit_rate", "{:.4f}"),
    ("n_test_bars", "{:d}"),
)


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def format_table(metrics: dict[str, Any], n_bars: int, artifact_dir: str) -> str:
    """A plain-text table: the strategy beside the baselines, then the forecast scores."""
    bh, flat = metrics["baselines"]["buy_and_hold"], metrics["baselines"]["flat"]
    lines = [
        f"{metrics['model_id']} {metrics['version']} ({n_bars} bars) -> {artifact_dir}",
        f"{'metric':<15}{'strategy':>12}{'buy_and_hold':>14}{'flat':>10}",
    ]
    for key, fmt in ROWS:
        cells = (_cell(metrics[key], fmt), _cell(bh[key], fmt), _cell(flat[key], fmt))
        lines.append(f"{key:<15}{cells[0]:>12}{cells[1]:>14}{cells[2]:>10}")
    lines += [f"{key:<15}{_cell(metrics[key], fmt):>12}" for key, fmt in FORECAST_ROWS]
    return "\n".join(lines)
