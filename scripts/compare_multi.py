"""Per-symbol models against one global model, on real bars, window for window.

For each family given, on the last ``--bars`` 1h bars of each symbol
(Binance files in ../shared/data/market): one single-symbol version per
symbol (``walk_forward``, as the daemon trains ``{family}_{SYMBOL}_1h``) and
one global version over all of them (``walk_forward_multi``, as it trains
``{family}_multi_1h``), both calibrated as the daemon calibrates, on the
same walk-forward test windows of each symbol, out of sample and after the
configured costs. Printed per symbol: trades, Sharpe, total return, MASE,
and whether the stage-1 gates (``[promotion]`` defaults) pass; the global
version passes only if it passes on every symbol.

    .venv/bin/python scripts/compare_multi.py [--families lgbm,xgb]
        [--symbols BTC_USDT,ETH_USDT,SOL_USDT] [--bars 2105] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from quantum_daemon.core.evaluation.report import metrics_json
from quantum_daemon.core.evaluation.walkforward import (
    EvaluationReport,
    EvaluationSettings,
    walk_forward,
)
from quantum_daemon.core.evaluation.walkforward_multi import walk_forward_multi
from quantum_daemon.core.promotion import sanity_gates
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.config import PromotionConfig
from quantum_daemon.models.families import calibrated_family
from quantum_daemon.models.multi import multi_family
from quantum_daemon.storage.bar_files import read_bar_file

MARKET = Path(__file__).resolve().parents[2] / "shared" / "data" / "market"


def load(name: str, n_bars: int) -> Bars:
    file = read_bar_file(MARKET / f"{name}-1h.feather")
    bars = Bars.from_frame(file.frame, file.symbol, file.tf)
    return bars.slice(max(0, len(bars) - n_bars), None)


def summary(report: EvaluationReport, family: str) -> dict[str, Any]:
    metrics = {**metrics_json(report, "", "", family), "ece": report.ece}
    failed = next((g for g in sanity_gates(metrics, PromotionConfig()) if not g.passed), None)
    return {
        "trades": metrics["trades"],
        "sharpe": metrics["sharpe"],
        "total_return": metrics["total_return"],
        "mase": metrics["mase"],
        "gates": "pass" if failed is None else f"fails {failed.gate}",
    }


def compare(family: str, series: dict[str, Bars]) -> dict[str, Any]:
    settings = EvaluationSettings()
    single = {
        s: summary(walk_forward(calibrated_family(family), b, settings, seed=0).report, family)
        for s, b in series.items()
    }
    multi = walk_forward_multi(multi_family(family), series, settings, seed=0)
    return {
        "family": family,
        "single": single,
        "multi": {s: summary(r, family) for s, r in multi.reports.items()},
    }


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def table(results: list[dict[str, Any]]) -> str:
    head = f"{'family':<10}{'symbol':<10}{'model':<8}{'trades':>7}{'sharpe':>9}{'return':>9}"
    lines = [head + f"{'mase':>8}  gates"]
    for result in results:
        for symbol in result["single"]:
            for kind in ("single", "multi"):
                r = result[kind][symbol]
                lines.append(
                    f"{result['family']:<10}{symbol:<10}{kind:<8}{r['trades']:>7}"
                    f"{_fmt(r['sharpe']):>9}{_fmt(r['total_return']):>9}{_fmt(r['mase']):>8}"
                    f"  {r['gates']}"
                )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="lgbm")
    parser.add_argument("--symbols", default="BTC_USDT,ETH_USDT,SOL_USDT")
    parser.add_argument("--bars", type=int, default=2105, help="last bars of each symbol")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    series = {b.symbol: b for b in (load(n, args.bars) for n in args.symbols.split(","))}
    results = [compare(family, series) for family in args.families.split(",")]
    print(table(results))
    print(json.dumps(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
