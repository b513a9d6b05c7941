"""The registry's typed state at its file boundary: a ``state.json`` of the
shape the registry has always written loads and is written back with the
same keys and values; any typed state survives JSON; a file that is not a
registry state is refused with a clear error and left as it is; stages come
back as ``Stage`` members."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quantum_daemon.core.promotion import GateResult, HeadToHead, Verdict
from quantum_daemon.domain.events import Event
from quantum_daemon.domain.stages import Stage
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.registry.registry import STATE_FILE, Registry, RegistryError
from quantum_daemon.storage.registry.state import HistoryEntry, ModelState, VersionRecord

MODEL = "xgb_BTCUSDT_1h"
OLD, LIVE, BAD, NEW = "v20240801_000000", "v20240802_000000", "v20240803_000000", "v20240804_000000"
METRICS = {"trades": 20, "dsr": 0.7, "profit_factor": 1.3, "sharpe": 1.1, "horizon": 24}
GATES = [
    {"gate": "min_trades", "passed": True, "detail": "20 >= 5"},
    {"gate": "min_dsr", "passed": True, "detail": "0.7 >= 0.0"},
    {"gate": "min_profit_factor", "passed": True, "detail": "1.3 >= 1.0"},
    {"gate": "beats_active", "passed": True, "detail": "no active version"},
]


def history(*steps: tuple[str, str, str]) -> list[dict[str, Any]]:
    return [{"stage": stage, "at": at, "reason": reason} for stage, at, reason in steps]


# A state.json as the registry wrote it before its state was typed: every key
# and value literally, one version at each stage.
STATE_JSON: dict[str, Any] = {
    "model_id": MODEL,
    "family": "xgb",
    "symbol": "BTCUSDT",
    "tf": "1h",
    "active": LIVE,
    "commands": ["1725148800000-0", "1725148801000-0"],
    "outbox": [
        {
            "type": "model.promoted",
            "data": {
                "event_id": f"model.promoted|{MODEL}|{LIVE}|h3",
                "model_id": MODEL,
                "family": "xgb",
                "symbol": "BTCUSDT",
                "tf": "1h",
                "version": LIVE,
                "timestamp": "2024-09-01T00:00:09+00:00",
                "from": OLD,
                "to": LIVE,
                "reason": "shadow: beats the active version over 200 bars",
                "metrics": METRICS,
            },
        },
        {
            "type": "training.started",
            "data": {"event_id": "training.started|job-4", "model_id": MODEL, "job_id": "job-4"},
        },
    ],
    "versions": {
        OLD: {
            "stage": "retired",
            "created_at": "2024-08-01T00:00:00+00:00",
            "metrics": METRICS,
            "data_last_ts": 1722470400000,
            "head_to_head": None,
            "verdict": {
                "stage": "candidate",
                "promote": True,
                "reason": "first version of the model to pass the gates",
                "failed_gate": None,
                "gates": GATES,
            },
            "history": history(
                ("trained", "2024-08-01T00:00:00+00:00", "registered"),
                ("candidate", "2024-09-01T00:00:02+00:00", "first version of the model to pass"),
                ("active", "2024-09-01T00:00:04+00:00", "first version of the model to pass"),
                ("retired", "2024-09-01T00:00:08+00:00", f"replaced by {LIVE}"),
            ),
        },
        LIVE: {
            "stage": "active",
            "created_at": "2024-08-02T00:00:00+00:00",
            "metrics": {**METRICS, "sharpe": 1.7},
            "data_last_ts": 1722556800000,
            "head_to_head": {
                "active_version": OLD,
                "n_decisions": 50,
                "first_ts": 1722470400000,
                "last_ts": 1722553200000,
                "new_sharpe": 2.0,
                "active_sharpe": 1.0,
                "new_total_return": 0.031,
                "active_total_return": 0.012,
                "refused": None,
            },
            "verdict": {
                "stage": "candidate",
                "promote": False,
                "reason": f"beats {OLD}: 2.00 > 1.00; waits in shadow for 200 bars",
                "failed_gate": None,
                "gates": GATES,
            },
            "history": history(
                ("trained", "2024-08-02T00:00:00+00:00", "registered"),
                ("candidate", "2024-09-01T00:00:06+00:00", f"beats {OLD}"),
                ("active", "2024-09-01T00:00:08+00:00", "shadow: beats the active version"),
            ),
        },
        BAD: {
            "stage": "rejected",
            "created_at": "2024-08-03T00:00:00+00:00",
            "metrics": {"trades": 2},
            "data_last_ts": 1722643200000,
            "head_to_head": None,
            "verdict": {
                "stage": "rejected",
                "promote": False,
                "reason": "min_trades: 2 < 5",
                "failed_gate": "min_trades",
                "gates": [{"gate": "min_trades", "passed": False, "detail": "2 < 5"}],
            },
            "history": history(
                ("trained", "2024-08-03T00:00:00+00:00", "registered"),
                ("rejected", "2024-09-01T00:00:10+00:00", "min_trades: 2 < 5"),
            ),
        },
        NEW: {
            "stage": "trained",
            "created_at": "2024-08-04T00:00:00+00:00",
            "metrics": {},
            "data_last_ts": None,
            "head_to_head": None,
            "verdict": None,
            "history": history(("trained", "2024-08-04T00:00:00+00:00", "registered")),
        },
    },
}


def state_path(data_dir: Path) -> Path:
    return artifacts.model_dir(data_dir, MODEL) / STATE_FILE


def write_state(data_dir: Path, text: str) -> Path:
    path = state_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def as_written(state: dict[str, Any]) -> str:
    """The bytes the registry writes for ``state`` (``files.encode_state``)."""
    return json.dumps(state, sort_keys=True) + "\n"


def test_a_state_file_of_the_current_shape_round_trips_to_identical_json(
    tmp_path: Path,
) -> None:
    assert ModelState.from_json(copy.deepcopy(STATE_JSON)).to_json() == STATE_JSON
    path = write_state(tmp_path, as_written(STATE_JSON))
    registry = Registry(tmp_path)

    shown = registry.show(MODEL)
    assert [
        {k: v for k, v in entry.items() if k not in ("version", "path")}
        for entry in shown["versions"]
    ] == list(STATE_JSON["versions"].values())
    assert registry.active_version(MODEL) == LIVE
    assert registry.previous_active(MODEL) == OLD

    registry.confirm_events(MODEL, ["nothing with this id"])  # no change: no write
    assert path.read_text() == as_written(STATE_JSON)

    registry.confirm_events(MODEL, [f"model.promoted|{MODEL}|{LIVE}|h3"])
    expected = {**STATE_JSON, "outbox": STATE_JSON["outbox"][1:]}
    assert path.read_text() == as_written(expected)


def test_a_transition_on_an_existing_state_writes_the_same_keys(tmp_path: Path) -> None:
    path = write_state(tmp_path, as_written(STATE_JSON))
    registry = Registry(tmp_path, clock=lambda: datetime(2024, 9, 2, tzinfo=UTC))
    registry.rollback(MODEL, "operator", command_id="1725235200000-0")
    after = json.loads(path.read_text())
    assert after.keys() == STATE_JSON.keys()
    for version, entry in STATE_JSON["versions"].items():
        assert after["versions"][version].keys() == entry.keys()
    assert after["active"] == OLD and after["versions"][LIVE]["stage"] == "retired"
    assert after["versions"][OLD]["history"][-1] == {
        "stage": "active",
        "at": "2024-09-02T00:00:00+00:00",
        "reason": "rollback: operator",
    }
    assert after["versions"][BAD] == STATE_JSON["versions"][BAD]
    assert after["commands"] == [*STATE_JSON["commands"], "1725235200000-0"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"model_id": ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (
            as_written(
                {
                    **STATE_JSON,
                    "versions": {NEW: {**STATE_JSON["versions"][NEW], "stage": "deployed"}},
                }
            ),
            "'deployed' is not a valid Stage",
        ),
        (as_written({k: v for k, v in STATE_JSON.items() if k != "versions"}), "versions"),
        (as_written({**STATE_JSON, "active": 3}), "expected str"),
        (as_written({**STATE_JSON, "outbox": {"type": "x"}}), "expected list"),
    ],
)
def test_a_state_file_that_is_not_a_registry_state_is_refused_and_kept(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = write_state(tmp_path, text)
    registry = Registry(tmp_path)
    for read in (lambda: registry.show(MODEL), lambda: registry.versions(), registry.recover):
        with pytest.raises(RegistryError, match=r"state\.json") as caught:
            read()
        assert problem in str(caught.value)
    with pytest.raises(RegistryError, match=r"state\.json"):
        registry.retire(MODEL, NEW, "operator", command_id="c-1")
    assert path.read_text() == text


def test_stages_come_back_as_stage_members(tmp_path: Path) -> None:
    write_state(tmp_path, as_written(STATE_JSON))
    registry = Registry(tmp_path)
    assert registry.stage(MODEL, LIVE) is Stage.ACTIVE
    assert [v.stage for v in registry.versions(MODEL)] == [
        Stage.RETIRED,
        Stage.ACTIVE,
        Stage.REJECTED,
        Stage.TRAINED,
    ]
    assert all(type(v.stage) is Stage for v in registry.versions(MODEL))
    # a verdict whose stage is a plain string still stores the member
    gates = (GateResult("min_trades", True, "20 >= 5"),)
    registry.apply_verdict(MODEL, NEW, Verdict("candidate", gates, False, "waits"))
    assert registry.stage(MODEL, NEW) is Stage.CANDIDATE


def test_a_foreign_stage_history_in_the_metadata_is_rebuilt_as_trained(tmp_path: Path) -> None:
    at = datetime(2024, 8, 5, tzinfo=UTC)

    def files(folder: Path) -> list[Path]:
        (folder / "model.txt").write_text("weights")
        return [folder / "model.txt"]

    meta = {"family": "xgb", "symbol": "BTCUSDT", "tf": "1h", "metrics": METRICS}
    version = artifacts.write_version(tmp_path, MODEL, files, meta, at).version
    folder = artifacts.model_dir(tmp_path, MODEL) / version
    written = artifacts.read_metadata(folder)
    artifacts.rewrite_metadata(folder, {**written, "stage_history": [{"at": 1}, "active"]})
    registry = Registry(tmp_path)
    assert registry.recover() == [(MODEL, version)]
    assert registry.stage(MODEL, version) is Stage.TRAINED
    assert artifacts.read_metadata(folder)["stage_history"] == [
        {"stage": "trained", "at": written["created_at"], "reason": "registered"}
    ]


# -- any typed state survives its JSON ------------------------------------------
texts = st.text(max_size=12)
timestamps = st.none() | st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat())
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
history_entries = st.builds(HistoryEntry, st.sampled_from(Stage), timestamps, texts)
head_to_heads = st.builds(
    HeadToHead,
    texts,
    st.integers(0, 10**6),
    st.none() | st.integers(),
    st.none() | st.integers(),
    finite,
    finite,
    finite,
    finite,
    st.none() | texts,
)
verdicts = st.builds(
    Verdict,
    st.sampled_from([Stage.CANDIDATE, Stage.REJECTED]),
    st.lists(st.builds(GateResult, texts, st.booleans(), texts), max_size=4).map(tuple),
    st.booleans(),
    texts,
)
records = st.builds(
    VersionRecord,
    stage=st.sampled_from(Stage),
    created_at=timestamps,
    metrics=st.dictionaries(texts, json_values, max_size=4),
    data_last_ts=st.none() | st.integers(),
    head_to_head=st.none() | head_to_heads,
    verdict=st.none() | verdicts,
    history=st.lists(history_entries, min_size=1, max_size=5),
)
events = st.builds(
    Event,
    st.sampled_from(["model.promoted", "training.started"]),
    st.dictionaries(texts, json_values, max_size=4).map(lambda d: {**d, "event_id": "e"}),
)
states = st.builds(
    ModelState,
    model_id=st.just(MODEL),
    family=texts,
    symbol=texts,
    tf=texts,
    active=st.none() | texts,
    versions=st.dictionaries(texts, records, max_size=4),
    outbox=st.lists(events, max_size=3),
    commands=st.lists(texts, max_size=3),
)


@given(states)
def test_any_state_survives_its_json(state: ModelState) -> None:
    text = as_written(state.to_json())
    again = ModelState.from_json(json.loads(text))
    assert again == state
    assert as_written(again.to_json()) == text


def test_a_reader_parses_a_state_once_and_sees_every_write_of_another_process(
    tmp_path: Path,
) -> None:
    write_state(tmp_path, as_written(STATE_JSON))
    reader, writer = Registry(tmp_path), Registry(tmp_path)  # the daemon and the CLI
    first = reader.files.read(MODEL)
    assert reader.files.read(MODEL) is first  # unchanged file: parsed once
    writer.rollback(MODEL, "operator", command_id="1725235200000-0")
    after = reader.files.read(MODEL)
    assert after is not first and after.active == OLD and reader.active_version(MODEL) == OLD
    writer.confirm_events(MODEL, [e.event_id for e in writer.pending_events()])
    assert reader.pending_events() == [] and first.active == LIVE  # the old one untouched
