"""The registry's storage layer: atomic version folders, checksums, and the
metadata that the offline pipeline stores."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from quantum_daemon.domain.config import EvaluationConfig
from quantum_daemon.models.families import load_model
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.artifacts import ArtifactCorrupt, load_version, write_version
from quantum_daemon.training.offline import OfflineSpec, train_offline
from tests.conftest import make_bars

NOW = datetime(2024, 5, 17, 12, 30, 45, tzinfo=UTC)
MODEL = "xgb_BTCUSDT_1h"


def _writer(payload: bytes = b"weights") -> object:
    def write(folder: Path) -> list[Path]:
        (folder / "model.bin").write_bytes(payload)
        (folder / "extra.json").write_text("{}")
        return [folder / "model.bin", folder / "extra.json"]

    return write


def test_a_version_folder_holds_artifacts_checksums_and_history(tmp_path: Path) -> None:
    stored = write_version(tmp_path, "xgb_BTCUSDT_1h", _writer(), {"family": "xgb"}, NOW)
    assert stored.version == "v20240517_123045"
    assert stored.path == tmp_path / "models" / "xgb_BTCUSDT_1h" / "v20240517_123045"
    meta = json.loads((stored.path / "metadata.json").read_text())
    assert meta["family"] == "xgb" and meta["model_id"] == "xgb_BTCUSDT_1h"
    assert meta["artifacts"] == {
        "model.bin": artifacts.sha256_of(stored.path / "model.bin"),
        "extra.json": artifacts.sha256_of(stored.path / "extra.json"),
    }
    assert [h["stage"] for h in meta["stage_history"]] == ["trained"]
    assert meta["stage_history"][0]["at"] == NOW.isoformat()
    assert sorted(p.name for p in stored.path.parent.iterdir()) == [stored.version]  # no temp left
    assert load_version(stored.path).metadata == meta


def test_versions_in_the_same_second_get_distinct_names(tmp_path: Path) -> None:
    names = [write_version(tmp_path, MODEL, _writer(), {}, NOW).version for _ in range(3)]
    assert names == ["v20240517_123045", "v20240517_123046", "v20240517_123047"]
    assert artifacts.list_versions(tmp_path, MODEL) == names


@pytest.mark.parametrize("damage", ["flip_byte", "delete", "bad_json"])
def test_load_version_refuses_a_damaged_folder(tmp_path: Path, damage: str) -> None:
    path = write_version(tmp_path, MODEL, _writer(), {}, NOW).path
    if damage == "flip_byte":
        blob = bytearray((path / "model.bin").read_bytes())
        blob[0] ^= 0xFF
        (path / "model.bin").write_bytes(bytes(blob))
    elif damage == "delete":
        (path / "extra.json").unlink()
    else:
        (path / "metadata.json").write_text("{not json")
    with pytest.raises(ArtifactCorrupt):
        load_version(path)


def test_a_failing_writer_leaves_nothing_behind(tmp_path: Path) -> None:
    def broken(folder: Path) -> list[Path]:
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_version(tmp_path, MODEL, broken, {}, NOW)
    assert list((tmp_path / "models" / MODEL).iterdir()) == []


def test_an_artifact_may_not_shadow_the_metadata(tmp_path: Path) -> None:
    def sneaky(folder: Path) -> list[Path]:
        (folder / "metadata.json").write_text("{}")
        return [folder / "metadata.json"]

    with pytest.raises(ValueError, match="may not be called"):
        write_version(tmp_path, MODEL, sneaky, {}, NOW)


def test_rewrite_metadata_replaces_it_whole(tmp_path: Path) -> None:
    stored = write_version(tmp_path, MODEL, _writer(), {"family": "x"}, NOW)
    history = [*stored.metadata["stage_history"], {"stage": "candidate", "at": "t", "reason": "r"}]
    artifacts.rewrite_metadata(stored.path, {**stored.metadata, "stage_history": history})
    reread = load_version(stored.path).metadata
    assert [h["stage"] for h in reread["stage_history"]] == ["trained", "candidate"]
    assert sorted(p.name for p in stored.path.iterdir()) == [
        "extra.json",
        "metadata.json",
        "model.bin",
    ]


@pytest.mark.parametrize("family", ["xgb", "lgbm"])
def test_offline_version_loads_back_into_the_same_model(tmp_path: Path, family: str) -> None:
    bars = make_bars(1500, seed=9)
    spec = OfflineSpec(
        family=family,
        bars=bars,
        data_dir=tmp_path,
        evaluation=EvaluationConfig(horizon=6, n_test_windows=2),
        seed=3,
        now=NOW,
    )
    result = train_offline(spec)
    assert result.model_id == f"{family}_TESTUSDT_1h" and result.version == "v20240517_123045"
    model, meta = load_model(result.artifact_dir)
    for key in (
        "family",
        "model_id",
        "version",
        "data_window",
        "features",
        "params",
        "seed",
        "library_versions",
        "metrics",
        "artifacts",
        "stage_history",
        "fit",
    ):
        assert key in meta, key
    assert meta["seed"] == 3 and meta["horizon"] == 6
    assert meta["metrics"]["sharpe"] == result.metrics["sharpe"]
    window = meta["data_window"]
    assert window["train"]["last_ts"] < window["val"]["first_ts"] < window["test"]["first_ts"]
    assert window["test"]["last_ts"] == int(bars.ts[-2])
    idx = np.arange(200, 1499)
    again = train_offline(spec)  # same seed, same data: the same model
    reloaded, _ = load_model(again.artifact_dir)
    np.testing.assert_array_equal(model.predict(bars, idx).mu, reloaded.predict(bars, idx).mu)
    artifact = next(iter(meta["artifacts"]))
    (result.artifact_dir / artifact).write_bytes(b"x")
    with pytest.raises(ArtifactCorrupt):
        load_model(result.artifact_dir)
