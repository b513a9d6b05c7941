"""Run by Freqtrade's own Python (tests/test_freqtrade_integration.py): the
strategy in dry-run mode, as Freqtrade's bot calls it on a closed candle,
against the Redis the test's daemon service published to. Prints the last
row's position and signals, and the stake the strategy asks for, as one
JSON line per candle count (one strategy, candle by candle as a bot sees them).

    python freqtrade_live_probe.py STRATEGY_FILE REDIS_URL FIRST_OPEN_MS CANDLES...
"""

import importlib.util
import json
import sys
from typing import Any

import pandas as pd
from freqtrade.data.dataprovider import DataProvider
from freqtrade.enums import CandleType, RunMode

HOUR_MS = 3_600_000
PAIR = "TEST/USDT"


def main() -> None:
    strategy_file, redis_url = sys.argv[1], sys.argv[2]
    first_ms = int(sys.argv[3])
    spec = importlib.util.spec_from_file_location("QuantumSignalStrategy", strategy_file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = {
        "runmode": RunMode.DRY_RUN,
        "timeframe": "1h",
        "stake_currency": "USDT",
        "candle_type_def": CandleType.SPOT,
        "quantum": {"redis_url": redis_url},
    }
    strategy = module.QuantumSignalStrategy(config)
    strategy.dp = DataProvider(config, None)
    strategy.ft_bot_start()
    for candles in sys.argv[4:]:
        print(json.dumps(analyze(strategy, first_ms, int(candles))))


def analyze(strategy: Any, first_ms: int, candles: int) -> dict[str, Any]:
    opens = [first_ms + k * HOUR_MS for k in range(candles)]
    frame = pd.DataFrame({"date": pd.to_datetime(opens, unit="ms", utc=True)})
    for column in ("open", "high", "low", "close", "volume"):
        frame[column] = 1.0
    analyzed = strategy.analyze_ticker(frame, {"pair": PAIR})
    strategy.dp._set_cached_df(PAIR, "1h", analyzed, CandleType.SPOT)
    stake = strategy.custom_stake_amount(PAIR, None, 1.0, 100.0, 5.0, 1000.0, 1.0, None, "long")
    last = analyzed.iloc[-1]
    position = last["quantum_position"]
    return {
        "position": None if pd.isna(position) else float(position),
        "enter_long": bool(last.get("enter_long") == 1),
        "exit_long": bool(last.get("exit_long") == 1),
        "stake": stake,
    }


if __name__ == "__main__":
    main()
