"""The registry: stages and their history per version, one atomic write per
transition with its events in the same write, sha256-checked loads, and a
source of truth that survives restarts and crashes."""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from quantum_daemon.core.promotion import HeadToHead, judge
from quantum_daemon.domain.config import PromotionConfig
from quantum_daemon.domain.events import Event
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.registry.registry import STATE_FILE, Registry, RegistryError
from tests.judge_rules import OLD_RULES

MODEL = "xgb_BTCUSDT_1h"
GATES = PromotionConfig(min_trades=5, min_profit_factor=1.0, **OLD_RULES)
AT_ONCE = PromotionConfig(min_trades=5, min_profit_factor=1.0, shadow_min_bars=0, **OLD_RULES)
GOOD = {"trades": 20, "dsr": 0.7, "profit_factor": 1.3, "sharpe": 1.1}
BAD = {"trades": 2, "dsr": 0.7, "profit_factor": 1.3, "sharpe": 1.1}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2024, 9, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def write_version(data_dir: Path, at: datetime, metrics: dict[str, Any] = GOOD) -> str:
    def files(folder: Path) -> list[Path]:
        path = folder / "model.txt"
        path.write_text(f"weights trained at {at.isoformat()}")
        return [path]

    meta = {
        "family": "xgb",
        "symbol": "BTCUSDT",
        "tf": "1h",
        "metrics": metrics,
        "data_window": {"bars": {"first_ts": 0, "last_ts": int(at.timestamp() * 1000)}},
    }
    return artifacts.write_version(data_dir, MODEL, files, meta, at).version


def trained(registry: Registry, data_dir: Path, day: int, metrics: dict[str, Any] = GOOD) -> str:
    version = write_version(data_dir, datetime(2024, 8, day, tzinfo=UTC), metrics)
    registry.register(MODEL, version, job_id=f"job-{day}")
    return version


def evaluate(
    registry: Registry,
    version: str,
    h2h: HeadToHead | None = None,
    gates: PromotionConfig = GATES,
) -> list[Event]:
    metrics = registry.show(MODEL)["versions"]
    values = next(v["metrics"] for v in metrics if v["version"] == version)
    verdict = judge(values, registry.active_version(MODEL), h2h, gates)
    return registry.apply_verdict(MODEL, version, verdict)


def beats(active: str) -> HeadToHead:
    return HeadToHead(active, 50, 0, 1, new_sharpe=2.0, active_sharpe=1.0)


def types(events: list[Event]) -> list[str]:
    return [e.type for e in events]


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path, clock=Clock())


def test_a_registered_version_is_trained_and_its_event_waits_in_the_outbox(
    registry: Registry, tmp_path: Path
) -> None:
    version = trained(registry, tmp_path, 1)
    [info] = registry.versions()
    assert (info.model_id, info.family, info.symbol, info.tf) == (MODEL, "xgb", "BTCUSDT", "1h")
    assert info.version == version and info.stage == "trained" and info.metrics == GOOD
    [event] = registry.pending_events()
    assert event.type == "model.registered" and event.data["job_id"] == "job-1"
    for key in ("model_id", "family", "symbol", "tf", "version", "timestamp", "event_id"):
        assert event.data[key], key
    assert registry.register(MODEL, version) == []  # idempotent


def test_the_first_passing_version_becomes_active_and_history_is_mirrored(
    registry: Registry, tmp_path: Path
) -> None:
    version = trained(registry, tmp_path, 1)
    events = evaluate(registry, version)
    assert types(events) == ["model.evaluated", "model.promoted"]
    assert events[0].data["metrics"] == GOOD
    assert events[1].data["from"] is None and events[1].data["to"] == version
    assert registry.active_version(MODEL) == version
    meta = artifacts.read_metadata(registry.version_path(MODEL, version))
    assert meta["stage"] == "active"
    assert [h["stage"] for h in meta["stage_history"]] == ["trained", "candidate", "active"]


def test_a_failing_version_is_rejected_with_its_gate(registry: Registry, tmp_path: Path) -> None:
    version = trained(registry, tmp_path, 1, metrics=BAD)
    events = evaluate(registry, version)
    assert types(events) == ["model.evaluated", "model.rejected"]
    assert events[1].data["gate"] == "min_trades"
    assert registry.stage(MODEL, version) == "rejected"
    assert registry.active_version(MODEL) is None


def test_a_version_that_beats_the_active_one_stays_a_candidate_in_shadow(
    registry: Registry, tmp_path: Path
) -> None:
    old = trained(registry, tmp_path, 1)
    evaluate(registry, old)
    new = trained(registry, tmp_path, 2)
    events = evaluate(registry, new, beats(old))
    assert types(events) == ["model.evaluated"]
    assert events[0].data["verdict"]["promote"] is False
    assert (registry.stage(MODEL, old), registry.stage(MODEL, new)) == ("active", "candidate")


def test_without_a_shadow_period_a_better_version_replaces_the_active_one_in_one_write(
    registry: Registry, tmp_path: Path
) -> None:
    old = trained(registry, tmp_path, 1)
    evaluate(registry, old)
    new = trained(registry, tmp_path, 2)
    events = evaluate(registry, new, beats(old), AT_ONCE)
    assert types(events) == ["model.evaluated", "model.retired", "model.promoted"]
    assert events[1].data["version"] == old and events[1].data["replaced_by"] == new
    assert events[2].data["from"] == old and events[2].data["to"] == new
    assert events[2].data["reason"].startswith(f"beats {old}")
    assert (registry.stage(MODEL, old), registry.stage(MODEL, new)) == ("retired", "active")


def test_a_version_that_does_not_beat_the_active_one_is_rejected(
    registry: Registry, tmp_path: Path
) -> None:
    old = trained(registry, tmp_path, 1)
    evaluate(registry, old)
    new = trained(registry, tmp_path, 2)
    events = evaluate(registry, new, HeadToHead(old, 50, 0, 1, new_sharpe=0.5, active_sharpe=1.0))
    assert events[-1].type == "model.rejected" and events[-1].data["gate"] == "beats_active"
    assert registry.active_version(MODEL) == old


def test_a_shadow_win_promotes_only_a_candidate_over_the_version_it_was_judged_against(
    registry: Registry, tmp_path: Path
) -> None:
    old = trained(registry, tmp_path, 1)
    evaluate(registry, old)
    new = trained(registry, tmp_path, 2)
    evaluate(registry, new, beats(old))
    assert registry.promote_candidate(MODEL, new, "v20000101_000000", "shadow") == []
    events = registry.promote_candidate(MODEL, new, old, "shadow")
    assert types(events) == ["model.retired", "model.promoted"]
    assert events[1].data["reason"] == "shadow"
    assert registry.promote_candidate(MODEL, new, old, "shadow") == []  # a replay: nothing
    assert registry.active_version(MODEL) == new


def test_shadow_retirements_act_only_on_candidates_and_once(
    registry: Registry, tmp_path: Path
) -> None:
    active = trained(registry, tmp_path, 1)
    evaluate(registry, active)
    candidates = [trained(registry, tmp_path, day) for day in (2, 3, 4)]
    for version in candidates:
        evaluate(registry, version, beats(active))
    superseded = registry.retire_superseded(MODEL, keep=2)
    assert [(e.type, e.data["version"], e.data["reason"]) for e in superseded] == [
        ("model.retired", candidates[0], "superseded")
    ]
    assert registry.retire_superseded(MODEL, keep=2) == []
    expired = registry.retire_candidate(
        MODEL, candidates[1], active, "shadow", "mean loss 0.3 vs 0.2"
    )
    assert expired[0].data["detail"] == "mean loss 0.3 vs 0.2"
    assert registry.retire_candidate(MODEL, candidates[1], active, "shadow", "again") == []
    assert registry.retire_candidate(MODEL, active, active, "shadow", "x") == []  # never active
    # judged against a version that is no longer the active one: nothing
    assert registry.retire_candidate(MODEL, candidates[2], candidates[0], "shadow", "x") == []
    stages = [registry.stage(MODEL, v) for v in (active, *candidates)]
    assert stages == ["active", "retired", "retired", "candidate"]
    history = registry.show(MODEL)["versions"][2]["history"]
    assert history[-1]["reason"] == "shadow: mean loss 0.3 vs 0.2"


def test_rollback_brings_back_the_previous_active_version(
    registry: Registry, tmp_path: Path
) -> None:
    first = trained(registry, tmp_path, 1)
    evaluate(registry, first)
    second = trained(registry, tmp_path, 2)
    registry.apply_verdict(MODEL, second, judge(GOOD, None, None, GATES))
    assert registry.active_version(MODEL) == second
    events = registry.rollback(MODEL, "operator")
    assert types(events) == ["model.retired", "model.promoted"]
    assert registry.active_version(MODEL) == first
    assert registry.stage(MODEL, second) == "retired"
    assert events[1].data["reason"] == "rollback: operator"


def test_rollback_without_an_earlier_active_version_is_refused(
    registry: Registry, tmp_path: Path
) -> None:
    evaluate(registry, trained(registry, tmp_path, 1))
    with pytest.raises(RegistryError, match="no earlier active version"):
        registry.rollback(MODEL, "operator")


def test_operator_promote_and_retire_follow_the_allowed_stages(
    registry: Registry, tmp_path: Path
) -> None:
    rejected = trained(registry, tmp_path, 1, metrics=BAD)
    evaluate(registry, rejected)
    with pytest.raises(RegistryError, match="only a candidate or a retired"):
        registry.promote(MODEL, rejected, "operator")
    with pytest.raises(RegistryError, match="unknown version"):
        registry.promote(MODEL, "v20000101_000000", "operator")
    good = trained(registry, tmp_path, 2)
    evaluate(registry, good)
    assert types(registry.retire(MODEL, good, "operator")) == ["model.retired"]
    assert registry.active_version(MODEL) is None
    assert types(registry.promote(MODEL, good, "operator")) == ["model.promoted"]
    assert registry.active_version(MODEL) == good


def test_a_redelivered_command_is_applied_once(registry: Registry, tmp_path: Path) -> None:
    first = trained(registry, tmp_path, 1)
    evaluate(registry, first)
    second = trained(registry, tmp_path, 2)
    registry.apply_verdict(MODEL, second, judge(GOOD, None, None, GATES))
    assert registry.rollback(MODEL, "op", command_id="1-0")
    assert registry.rollback(MODEL, "op", command_id="1-0") == []
    assert registry.active_version(MODEL) == first


def test_an_altered_artifact_is_refused_and_an_active_one_retired(
    registry: Registry, tmp_path: Path
) -> None:
    version = trained(registry, tmp_path, 1)
    evaluate(registry, version)
    registry.verify(MODEL, version)
    (registry.version_path(MODEL, version) / "model.txt").write_text("tampered")
    with pytest.raises(artifacts.ArtifactCorrupt, match="sha256"):
        registry.verify(MODEL, version)
    events = registry.refuse(MODEL, version, "sha256 mismatch")
    assert types(events) == ["model.load_refused", "model.retired"]
    assert registry.active_version(MODEL) is None


def test_the_state_survives_a_restart(registry: Registry, tmp_path: Path) -> None:
    version = trained(registry, tmp_path, 1)
    evaluate(registry, version)
    again = Registry(tmp_path)
    assert again.active_version(MODEL) == version
    assert [v.to_json() for v in again.versions()] == [v.to_json() for v in registry.versions()]


def test_recover_adopts_versions_a_worker_wrote_and_removes_stale_temp_folders(
    registry: Registry, tmp_path: Path
) -> None:
    evaluate(registry, trained(registry, tmp_path, 1))
    orphan = write_version(tmp_path, datetime(2024, 8, 5, tzinfo=UTC))
    stale = artifacts.model_dir(tmp_path, MODEL) / ".tmp-deadbeef"
    stale.mkdir()
    os.utime(stale, (0, 0))
    waiting = registry.recover()
    assert waiting == [(MODEL, orphan)]
    assert registry.stage(MODEL, orphan) == "trained"
    assert not stale.exists()


def test_a_lost_state_file_is_rebuilt_from_the_metadata_mirrors(
    registry: Registry, tmp_path: Path
) -> None:
    first = trained(registry, tmp_path, 1)
    evaluate(registry, first)
    rejected = trained(registry, tmp_path, 2, metrics=BAD)
    evaluate(registry, rejected)
    (artifacts.model_dir(tmp_path, MODEL) / STATE_FILE).unlink()
    rebuilt = Registry(tmp_path)
    assert rebuilt.recover() == []
    assert rebuilt.active_version(MODEL) == first
    assert rebuilt.stage(MODEL, rejected) == "rejected"


def test_confirmed_events_leave_the_outbox(registry: Registry, tmp_path: Path) -> None:
    evaluate(registry, trained(registry, tmp_path, 1))
    pending = registry.pending_events()
    assert types(pending) == ["model.registered", "model.evaluated", "model.promoted"]
    assert len({e.event_id for e in pending}) == 3
    registry.confirm_events(MODEL, [e.event_id for e in pending[:2]])
    assert types(registry.pending_events()) == ["model.promoted"]


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    registry = Registry(tmp_path)

    def add(n: int) -> None:
        for i in range(10):
            event = Event("training.started", {"event_id": f"{n}-{i}", "model_id": MODEL})
            Registry(tmp_path).add_events(MODEL, [event])

    threads = [threading.Thread(target=add, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(registry.pending_events()) == 40
    folder = artifacts.model_dir(tmp_path, MODEL)
    assert not list(folder.glob(".*.tmp"))
    assert json.loads((folder / STATE_FILE).read_text())["model_id"] == MODEL


def test_model_ids_are_checked(registry: Registry) -> None:
    with pytest.raises(RegistryError):
        registry.show("../../etc")
    with pytest.raises(RegistryError, match="unknown model"):
        registry.show(MODEL)


def test_finished_versions_beyond_the_newest_fifty_go_to_the_archive(
    registry: Registry, tmp_path: Path
) -> None:
    """state.json is read whole by every view and transition: it stays
    bounded (the soak's memory grew with it, issue #16). Rejected versions
    beyond the newest KEEP_FINISHED move to archive.jsonl; the active
    version, and retired ones that were active, stay; recovery does not
    register the archived folders again."""
    from datetime import timedelta

    from quantum_daemon.storage.registry.files import ARCHIVE_FILE
    from quantum_daemon.storage.registry.state import KEEP_FINISHED

    first = trained(registry, tmp_path, 1)
    evaluate(registry, first)  # active
    start = datetime(2024, 8, 2, tzinfo=UTC)
    losing = {**GOOD, "trades": 1}
    rejected = []
    for k in range(KEEP_FINISHED + 20):
        version = write_version(tmp_path, start + timedelta(hours=k), losing)
        registry.register(MODEL, version)
        assert types(evaluate(registry, version)) == ["model.evaluated", "model.rejected"]
        rejected.append(version)
    state = registry.files.read(MODEL)
    archived = registry.files.archived_versions(MODEL)
    assert first in state.versions and state.active == first
    assert len(state.finished()) <= KEEP_FINISHED + 1
    assert archived and archived == set(rejected[: len(archived)])  # the oldest went
    assert (
        state.archived
        == len(archived)
        == (tmp_path / "models" / MODEL / ARCHIVE_FILE).read_text().count("\n")
    )
    assert rejected[-1] in state.versions
    assert registry.show(MODEL)["archived"] == len(archived)
    assert registry.ledger(MODEL)["trained"] == KEEP_FINISHED + 21  # every trial still counted
    assert Registry(tmp_path).recover() == []  # nothing archived comes back
    assert set(registry.files.read(MODEL).versions).isdisjoint(archived)


def test_rollback_targets_beyond_the_newest_ten_count_as_finished(
    registry: Registry, tmp_path: Path
) -> None:
    """Every promotion leaves a retired version that was active: without a
    bound, state.json grows with every promotion (issue #16's soak). Beyond
    the newest KEEP_ROLLBACK_TARGETS they count as finished (archived past
    KEEP_FINISHED), and rollback still finds its target."""
    from quantum_daemon.storage.registry.state import KEEP_FINISHED, KEEP_ROLLBACK_TARGETS

    start = datetime(2024, 8, 2, tzinfo=UTC)
    promoted: list[str] = []
    for k in range(KEEP_FINISHED + KEEP_ROLLBACK_TARGETS + 15):
        version = write_version(tmp_path, start + timedelta(hours=k))
        registry.register(MODEL, version)
        evaluate(registry, version, beats(promoted[-1]) if promoted else None)
        registry.promote(MODEL, version, "test")  # a candidate: the operator promotes it
        promoted.append(version)
    state = registry.files.read(MODEL)
    assert state.active == promoted[-1]
    assert len(state.versions) == KEEP_FINISHED + KEEP_ROLLBACK_TARGETS + 1
    assert set(state.finished()).isdisjoint(promoted[-KEEP_ROLLBACK_TARGETS - 1 :])
    archived = registry.files.archived_versions(MODEL)
    assert archived == set(promoted[: len(archived)])  # the oldest went ...
    assert len(archived) + len(state.versions) == len(promoted)  # ... and nothing else
    registry.rollback(MODEL, "test")
    assert registry.active_version(MODEL) == promoted[-2]
