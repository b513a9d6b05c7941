"""The daemon path of #15's shaping: a running daemon fed real bars trains
with the parameters of ``[models.params]`` (read back from LightGBM's own
model file) and tunes the model ``[tuning]`` names, its trials in the
ledger that ``models show`` reports."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import redis

from quantum_daemon.storage.events import parse_entry
from tests.daemon_proc import DaemonProcess, api_port, write_config
from tests.test_lifecycle_e2e import BARS, cli

SHAPED = """
[ingest]
symbols = ["BTCUSDT", "ETHUSDT"]
timeframes = ["1h"]
[models]
families = ["lgbm"]
symbols = ["BTCUSDT", "ETHUSDT"]
timeframes = ["1h"]
[models.params.lgbm]
min_data_in_leaf = 40
[models.params."lgbm_BTCUSDT_1h"]
num_leaves = 6
[tuning]
enabled = true
models = ["lgbm_ETHUSDT_1h"]
max_trials = 3
timeout_s = 0.0
[training]
workers = 2
history_bars = 2105
"""


def registered(client: redis.Redis) -> dict[str, str]:
    found = {}
    for _, fields in client.xrange("quantum:events"):
        event = parse_entry(fields)
        if event.type == "model.registered" and event.model_id:
            found[event.model_id] = event.data["version"]
    return found


def test_a_daemon_trains_with_the_configured_params_and_tunes_the_named_model(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis
) -> None:
    data = tmp_path / "data"
    config = write_config(tmp_path / "config.toml", redis_url, data, api_port(), SHAPED)
    daemon = DaemonProcess(config).start()
    try:
        daemon.wait_for("daemon.ready", timeout=60)
        cli(config, "replay", *map(str, BARS))
        deadline = time.monotonic() + 300
        while len(registered(redis_client)) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        versions = registered(redis_client)
        assert set(versions) == {"lgbm_BTCUSDT_1h", "lgbm_ETHUSDT_1h"}, versions
        daemon.send(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    finally:
        daemon.kill()

    btc = data / "models" / "lgbm_BTCUSDT_1h" / versions["lgbm_BTCUSDT_1h"]
    model_text = (btc / "model.txt").read_text()  # LightGBM's own record of its parameters
    assert "[num_leaves: 6]" in model_text and "[min_data_in_leaf: 40]" in model_text
    btc_meta = json.loads((btc / "metadata.json").read_text())
    assert "tuned_params" not in btc_meta  # tuning names the ETH model only

    eth = data / "models" / "lgbm_ETHUSDT_1h" / versions["lgbm_ETHUSDT_1h"]
    eth_meta = json.loads((eth / "metadata.json").read_text())
    assert eth_meta["trials"] == 3 and eth_meta["evaluation"]["n_trials"] == 3
    for key, value in eth_meta["tuned_params"].items():
        assert eth_meta["params"][key] == value
    shown = json.loads(cli(config, "models", "show", "lgbm_ETHUSDT_1h"))
    assert shown["trials"]["tuning"] == 2 and shown["trials"]["trained"] >= 1
    assert shown["versions"][0]["tuning"]["trials"] == 3
