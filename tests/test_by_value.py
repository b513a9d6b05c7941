"""Training jobs by value (``training.by_value``), in this process: the spec
that travels names no path of the daemon's disk, the version that comes back
is checked and committed atomically, and a tampered, oversized, escaping or
clashing one is refused with nothing left behind. ``[training.ray]`` reaches
the Ray settings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
from datetime import UTC, datetime
from pathlib import Path

import pytest

from quantum_daemon.core.promotion import HeadToHead
from quantum_daemon.domain.config import Config, TrainingConfig, load
from quantum_daemon.domain.errors import ConfigError
from quantum_daemon.domain.ray_config import FamilyGpus, RayTrainingConfig
from quantum_daemon.storage import artifacts
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.by_value import (
    FolderFiles,
    ShippedVersion,
    VersionRefused,
    pack_job,
    receive_version,
    run_by_value,
)
from quantum_daemon.training.jobs import ActiveRef, TrainJobResult, TrainJobSpec
from quantum_daemon.training.ray_backend import RaySettings
from tests.conftest import make_bars

LIMIT = 2**20


def small_version(spec: TrainJobSpec) -> TrainJobResult:
    """A job writing a real version folder (a nested file too) in its data
    dir; with an active version, it reads that one's metadata and weights."""
    active_weights, refused = b"", ""
    if spec.active is not None:
        try:
            artifacts.load_version(Path(spec.active.path))
            active_weights = (Path(spec.active.path) / "weights.bin").read_bytes()
        except artifacts.ArtifactCorrupt as exc:  # as training.jobs.head_to_head does
            refused = str(exc)

    def files(folder: Path) -> list[Path]:
        (folder / "weights.bin").write_bytes(os.urandom(256))
        (folder / "sub").mkdir()
        (folder / "sub" / "state.json").write_text('{"n": 1}')
        return [folder / "weights.bin", folder / "sub" / "state.json"]

    meta = {"family": spec.family, "symbol": spec.symbol, "tf": spec.tf, "metrics": {}}
    stored = artifacts.write_version(
        Path(spec.data_dir), spec.model_id, files, meta, spec.version_time
    )
    h2h = None
    if spec.active is not None:
        h2h = HeadToHead(
            spec.active.version, len(active_weights), None, None, 0.0, 0.0, refused=refused
        )
    return TrainJobResult(spec.job_id, spec.model_id, spec.family, spec.symbol, spec.tf,
                          stored.version, str(stored.path), {}, h2h, 0.0, len(spec.bars),
                          os.getpid())  # fmt: skip


def spec_in(data_dir: Path, day: int = 1, active: ActiveRef | None = None) -> TrainJobSpec:
    return TrainJobSpec(
        job_id=f"job{day}", family="xgb", bars=make_bars(50, symbol="BTCUSDT"),
        data_dir=str(data_dir), version_time=datetime(2024, 3, day, tzinfo=UTC), active=active,
    )  # fmt: skip


def shipped_from(data_dir: Path, day: int = 1, max_bytes: int = LIMIT) -> ShippedVersion:
    return run_by_value(pack_job(small_version, spec_in(data_dir, day), max_bytes))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(data_dir: Path) -> list[Path]:
    return list(data_dir.glob("models/*/.tmp-*"))


def test_a_job_by_value_names_no_daemon_path_and_its_version_is_committed(
    tmp_path: Path,
) -> None:
    daemon = tmp_path / "daemon"
    first = receive_version(daemon, shipped_from(daemon), LIMIT)
    active = ActiveRef(first.version, first.artifact_dir)
    (Path(first.artifact_dir) / ".metadata.json.0a1b.tmp").write_text("{")  # a rewrite under way
    packed = pack_job(small_version, spec_in(daemon, 2, active), LIMIT)
    assert str(daemon).encode() not in pickle.dumps(packed)
    assert packed.active is not None
    assert set(packed.active.files) == {"weights.bin", "sub/state.json", "metadata.json"}

    shipped = run_by_value(packed)
    assert shipped.result.head_to_head is not None
    assert shipped.result.head_to_head.n_decisions == 256  # the active weights arrived
    assert set(shipped.folder.files) == {"weights.bin", "sub/state.json", "metadata.json"}
    result = receive_version(daemon, shipped, LIMIT)
    assert Path(result.artifact_dir) == daemon / "models" / result.model_id / result.version
    stored = artifacts.load_version(Path(result.artifact_dir))
    assert stored.metadata["artifacts"] == {
        name: sha for name, sha in shipped.folder.sha256.items() if name != "metadata.json"
    }
    Registry(daemon).register(result.model_id, result.version, result.head_to_head)
    assert Registry(daemon).stage(result.model_id, result.version).value == "trained"
    assert leftovers(daemon) == []


def tampered(shipped: ShippedVersion, **files: bytes) -> ShippedVersion:
    folder = FolderFiles({**shipped.folder.files, **files}, shipped.folder.sha256)
    return dataclasses.replace(shipped, folder=folder)


def refused(daemon: Path, shipped: ShippedVersion, match: str) -> None:
    with pytest.raises(VersionRefused, match=match):
        receive_version(daemon, shipped, LIMIT)
    assert artifacts.list_versions(daemon, shipped.result.model_id) == []
    assert leftovers(daemon) == []


def test_a_file_altered_on_the_way_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    shipped = shipped_from(tmp_path / "worker")
    refused(tmp_path, tampered(shipped, **{"weights.bin": b"other"}), "does not match its sha256")


def test_checksums_that_disagree_with_the_metadata_are_refused(tmp_path: Path) -> None:
    shipped = shipped_from(tmp_path / "worker")
    weights = b"forged"
    files = {**shipped.folder.files, "weights.bin": weights}
    sha = {**shipped.folder.sha256, "weights.bin": sha256(weights)}
    forged = dataclasses.replace(shipped, folder=FolderFiles(files, sha))
    refused(tmp_path, forged, "not as its metadata")


def test_a_path_leaving_the_version_folder_is_refused(tmp_path: Path) -> None:
    shipped = shipped_from(tmp_path / "worker")
    evil = b"x"
    files = {**shipped.folder.files, "../../escape": evil}
    sha = {**shipped.folder.sha256, "../../escape": sha256(evil)}
    refused(tmp_path, dataclasses.replace(shipped, folder=FolderFiles(files, sha)), "not a path")
    assert not (tmp_path / "escape").exists()


def test_a_version_name_that_is_not_one_is_refused(tmp_path: Path) -> None:
    shipped = shipped_from(tmp_path / "worker")
    bad = "../../v20240301_000000"
    meta = json.loads(shipped.folder.files["metadata.json"]) | {"version": bad}
    raw = json.dumps(meta).encode()
    folder = FolderFiles(
        {**shipped.folder.files, "metadata.json": raw},
        {**shipped.folder.sha256, "metadata.json": sha256(raw)},
    )
    escaping = ShippedVersion(dataclasses.replace(shipped.result, version=bad), folder)
    with pytest.raises(VersionRefused, match="is not a version name"):
        receive_version(tmp_path, escaping, LIMIT)
    assert not list(tmp_path.glob("v2024*")) and leftovers(tmp_path) == []


def test_a_version_over_the_limit_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(VersionRefused, match=r"\[training.ray\] max_version_mb"):
        shipped_from(tmp_path / "worker", max_bytes=100)
    shipped = shipped_from(tmp_path / "worker2")
    with pytest.raises(VersionRefused, match="max_version_mb"):
        receive_version(tmp_path, shipped, 100)
    assert leftovers(tmp_path) == []


def test_a_version_name_already_taken_is_refused(tmp_path: Path) -> None:
    daemon = tmp_path / "daemon"
    receive_version(daemon, shipped_from(tmp_path / "w1"), LIMIT)
    again = shipped_from(tmp_path / "w2")
    with pytest.raises(VersionRefused, match="exists already"):
        receive_version(daemon, again, LIMIT)
    assert len(artifacts.list_versions(daemon, again.result.model_id)) == 1
    assert leftovers(daemon) == []


def test_a_corrupt_active_version_stays_home_and_is_refused_with_the_daemons_reason(
    tmp_path: Path,
) -> None:
    first = receive_version(tmp_path, shipped_from(tmp_path / "w"), LIMIT)
    (Path(first.artifact_dir) / "weights.bin").write_bytes(b"rot")
    active = ActiveRef(first.version, first.artifact_dir)
    packed = pack_job(small_version, spec_in(tmp_path, 2, active), LIMIT)
    assert packed.active is None and "weights.bin has sha256" in packed.active_refused
    result = receive_version(tmp_path, run_by_value(packed), LIMIT)
    assert result.head_to_head is not None
    assert result.head_to_head.refused == packed.active_refused  # names the daemon's path
    assert first.artifact_dir in result.head_to_head.refused


def write_config(tmp_path: Path, ray_table: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"[training.ray]\n{ray_table}\n")
    return path


def test_training_ray_config_reaches_the_ray_settings(tmp_path: Path) -> None:
    table = "num_gpus = 0.5\nmax_version_mb = 8\n"
    table += "[training.ray.family_num_gpus]\npatchtst = 1\nxgb = 0.25"
    cfg = load(write_config(tmp_path, table), env={})
    s = RaySettings.from_config(cfg)
    assert (s.gpus_for("nhits"), s.gpus_for("patchtst"), s.gpus_for("xgb")) == (0.5, 1.0, 0.25)
    assert s.gpus_for("lgbm") == 0.0 and s.max_bytes == 8 * 2**20
    assert s.data_dir == str(cfg.storage.data_dir)
    default = RaySettings.from_config(Config())
    assert default.gpus_for("nhits") == 1.0 and default.gpus_for("evo_model") == 0.0
    assert TrainingConfig().ray == RayTrainingConfig(1.0, FamilyGpus(), 64.0)


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("[training.ray.family_num_gpus]\nnope = 1", "training.ray.family_num_gpus.nope"),
        ("[training.ray.family_num_gpus]\nnhits = -1", "training.ray.family_num_gpus.nhits"),
        ("num_gpus = -1", "training.ray.num_gpus"),
        ("max_version_mb = 0", "training.ray.max_version_mb"),
        ("gpus = 1", "training.ray.gpus"),
    ],
)
def test_a_bad_training_ray_key_is_named(tmp_path: Path, table: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load(write_config(tmp_path, table), env={})
