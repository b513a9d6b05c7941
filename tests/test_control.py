"""Operator commands reach the same functions from the ``quantum:control``
stream and from the CLI: train, promote, retire, rollback; answers on
``quantum:events``; redelivered commands apply once; ``models list --json``
has the documented shape."""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis

from quantum_daemon.cli import main as cli_main
from quantum_daemon.commands.models import train_now
from quantum_daemon.core.promotion import judge
from quantum_daemon.domain.config import PromotionConfig
from quantum_daemon.lifecycle.control import BadCommand, Command, parse_command
from quantum_daemon.lifecycle.service import LifecycleService
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.bar_store import BarStore
from quantum_daemon.storage.registry.registry import Registry
from tests.daemon_proc import write_config
from tests.lifecycle_harness import (
    GOOD,
    KEYS,
    add_bars,
    events,
    make_config,
    of_model,
    plan,
    published,
    run_service,
    wait_until,
    without_bar_triggers,
)

XGB = "xgb_BTCUSDT_1h"
GATES = PromotionConfig(min_dsr=0.0, beat_baselines=False, max_ece=1.0)


def two_active_versions(data_dir: Path) -> tuple[str, str]:
    """v1 active then replaced by v2 (v1 retired), as the registry records it."""
    registry = Registry(data_dir)
    versions = []
    for day in (1, 2):
        at = datetime(2024, 8, day, tzinfo=UTC)

        def files(folder: Path, at: datetime = at) -> list[Path]:
            (folder / "w.bin").write_text(at.isoformat())
            return [folder / "w.bin"]

        meta = {"family": "xgb", "symbol": "BTCUSDT", "tf": "1h", "metrics": GOOD}
        version = artifacts.write_version(data_dir, XGB, files, meta, at).version
        registry.register(XGB, version)
        registry.apply_verdict(XGB, version, judge(GOOD, None, None, GATES))
        versions.append(version)
    registry.confirm_events(XGB, [e.event_id for e in registry.pending_events()])
    return versions[0], versions[1]


def cli(tmp_path: Path, redis_url: str, *argv: str) -> int:
    config = write_config(tmp_path / "config.toml", redis_url, tmp_path, 0)
    return cli_main(["--config", str(config), *argv])


def test_commands_are_parsed_and_bad_ones_refused() -> None:
    v1 = "v20240101_000000"
    fields = {b"command": b"promote", b"model_id": b"xgb_BTCUSDT_1h", b"version": v1.encode()}
    assert parse_command("1-0", fields) == Command("promote", XGB, v1, "operator", "1-0")
    for bad in (
        {"command": "explode", "model_id": XGB},
        {"command": "train", "model_id": "nonsense"},
        {"command": "retire", "model_id": XGB},
    ):
        with pytest.raises(BadCommand):
            parse_command("1-0", bad)


def test_models_list_json_has_one_object_per_version(
    tmp_path: Path, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, v2 = two_active_versions(tmp_path)
    assert cli(tmp_path, redis_url, "models", "list", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["stage"]) for v in listed] == [(v1, "retired"), (v2, "active")]
    for row in listed:
        assert set(row) == {
            "model_id",
            "family",
            "symbol",
            "tf",
            "version",
            "stage",
            "created_at",
            "metrics",
            "params",  # the hyper-parameters it trained with (docs/tuning.md)
            "tuning",  # None: not tuned
        }
        assert row["metrics"] == GOOD
    assert cli(tmp_path, redis_url, "models", "list") == 0
    assert v2 in capsys.readouterr().out
    assert cli(tmp_path, redis_url, "models", "show", XGB) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["active"] == v2
    assert [h["stage"] for h in shown["versions"][0]["history"]] == [
        "trained",
        "candidate",
        "active",
        "retired",
    ]


def test_without_a_daemon_the_cli_changes_the_registry_and_publishes_events(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, _ = two_active_versions(tmp_path)
    assert cli(tmp_path, redis_url, "models", "rollback", XGB) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["mode"] == "direct" and answer["active"] == v1
    assert [e.type for e in events(redis_client)] == ["model.retired", "model.promoted"]
    assert cli(tmp_path, redis_url, "models", "retire", XGB, v1) == 0
    assert Registry(tmp_path).active_version(XGB) is None
    assert cli(tmp_path, redis_url, "models", "promote", XGB, "v19990101_000000") == 1
    assert "unknown version" in capsys.readouterr().err
    assert Registry(tmp_path).pending_events() == []


def test_the_cli_refuses_to_promote_an_altered_artifact(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, _ = two_active_versions(tmp_path)
    (artifacts.model_dir(tmp_path, XGB) / v1 / "w.bin").write_text("tampered")
    assert cli(tmp_path, redis_url, "models", "promote", XGB, v1) == 1
    assert "artifact refused" in capsys.readouterr().err
    assert [e.type for e in events(redis_client)] == ["model.load_refused"]


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with BarStore.in_dir(tmp_path) as bar_store:
        add_bars(bar_store, 400)
        yield bar_store


def answers(client: redis.Redis) -> dict[str, Any]:
    return {e.data["command_id"]: e for e in events(client) if e.type.startswith("control.")}


def test_control_stream_commands_are_applied_answered_and_acknowledged(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: BarStore
) -> None:
    cfg = make_config(tmp_path, redis_url)
    plan(tmp_path, xgb=GOOD)
    sent: list[str] = []

    async def send_commands(svc: LifecycleService) -> None:
        await wait_until(svc, published(redis_client, ("model.promoted", XGB)), 30)
        for fields in (
            {"command": "train", "model_id": XGB},
            {"command": "promote", "model_id": XGB, "version": "v19990101_000000"},
            {"command": "train", "model_id": "xgb_DOGEUSDT_1h"},
            {"command": "dance", "model_id": XGB},
        ):
            sent.append(redis_client.xadd(KEYS.control, fields))

    def all_answered(_: LifecycleService) -> bool:
        got = answers(redis_client)
        trained_twice = of_model(events(redis_client), XGB).count("training.completed") == 2
        return len(sent) == 4 and all(s in got for s in sent) and trained_twice

    asyncio.run(run_service(cfg, store, all_answered, during=send_commands))
    got = answers(redis_client)
    assert got[sent[0]].type == "control.applied" and got[sent[0]].data["did"] == ["queued"]
    assert (
        got[sent[1]].type == "control.rejected" and "unknown version" in got[sent[1]].data["error"]
    )
    assert "xgb_DOGEUSDT_1h" in got[sent[2]].data["error"]
    assert "unknown command" in got[sent[3]].data["error"]
    started = [e for e in events(redis_client) if e.type == "training.started"]
    assert started[-1].data["reasons"] == ["operator"]
    assert redis_client.xpending(KEYS.control, cfg.ingest.group)["pending"] == 0


def test_a_command_redelivered_after_a_crash_is_applied_once(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: BarStore
) -> None:
    v1, _ = two_active_versions(tmp_path)
    cfg = without_bar_triggers(make_config(tmp_path, redis_url))
    group = cfg.ingest.group
    redis_client.xgroup_create(KEYS.control, group, id="0", mkstream=True)
    entry = redis_client.xadd(KEYS.control, {"command": "rollback", "model_id": XGB})
    redis_client.xreadgroup(group, "crashed-daemon", {KEYS.control: ">"})  # read, never acked
    Registry(tmp_path).rollback(XGB, "operator: operator", command_id=entry)  # applied before
    redis_client.xclaim(KEYS.control, group, "me", 0, [entry])

    def answered(_: LifecycleService) -> bool:
        return entry in answers(redis_client)

    asyncio.run(run_service(cfg, store, answered, job_fn=_never, consumer="me"))
    assert answers(redis_client)[entry].data["did"] == []
    assert Registry(tmp_path).active_version(XGB) == v1  # rolled back once, not twice
    assert redis_client.xpending(KEYS.control, group)["pending"] == 0


def _never(spec: Any) -> Any:
    raise AssertionError("no training expected")


def test_with_a_daemon_running_the_cli_goes_through_the_control_stream(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: BarStore
) -> None:
    v1, _ = two_active_versions(tmp_path)
    cfg = without_bar_triggers(make_config(tmp_path, redis_url))
    redis_client.set(KEYS.heartbeat, json.dumps({"pid": 1, "ready": True}), px=60_000)
    codes: list[int] = []

    async def use_cli(_: LifecycleService) -> None:
        thread = threading.Thread(
            target=lambda: codes.append(cli(tmp_path, redis_url, "models", "rollback", XGB))
        )
        thread.start()
        await asyncio.to_thread(thread.join, 30)

    asyncio.run(run_service(cfg, store, lambda _: bool(codes), during=use_cli, job_fn=_never))
    assert codes == [0]
    [answer] = [e for e in events(redis_client) if e.type.startswith("control.")]
    assert answer.type == "control.applied"
    assert answer.data["did"] == ["model.retired", "model.promoted"]
    assert Registry(tmp_path).active_version(XGB) == v1


def test_train_now_asks_the_running_daemon_and_refuses_without_one(
    tmp_path: Path, redis_url: str, redis_client: redis.Redis, store: BarStore
) -> None:
    cfg = without_bar_triggers(make_config(tmp_path, redis_url))
    plan(tmp_path, xgb=GOOD)
    config = write_config(tmp_path / "config.toml", redis_url, tmp_path, 0)
    args = argparse.Namespace(config=str(config))
    assert train_now(args, XGB) == 1  # no heartbeat: no daemon
    codes: list[int] = []

    async def ask(svc: LifecycleService) -> None:
        await wait_until(svc, published(redis_client, ("model.promoted", XGB)), 30)
        redis_client.set(KEYS.heartbeat, json.dumps({"pid": 1, "ready": True}), px=60_000)
        codes.append(await asyncio.to_thread(train_now, args, XGB))

    def retrained(_: LifecycleService) -> bool:
        return of_model(events(redis_client), XGB).count("training.completed") == 2

    asyncio.run(run_service(cfg, store, retrained, during=ask))
    assert codes == [0]
    started = [e for e in events(redis_client) if e.type == "training.started"]
    assert started[-1].data["reasons"] == ["operator"]
