"""Hyper-parameters in config.toml: each family's schema checks its table at
load (a bad key exits 78 naming it), a model's own table wins over its
family's, the values reach the trained artifact, and the rule families train
at the evaluation's costs."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import pytest

from quantum_daemon.core.calibration import Method
from quantum_daemon.core.evaluation.walkforward import EvaluationSettings
from quantum_daemon.domain import config as config_mod
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.errors import EX_CONFIG, ConfigError
from quantum_daemon.domain.params.base import Choices, Range
from quantum_daemon.domain.params.catalog import CALIBRATION_METHODS, FAMILY_PARAMS, checked
from quantum_daemon.storage.bar_files import read_bar_file
from quantum_daemon.storage.registry.registry import Registry
from quantum_daemon.training.offline import OfflineSpec, train_offline, with_evaluation_keys
from tests.cli_helpers import run_cli

DATA = Path(__file__).resolve().parents[1] / "quantum_daemon" / "data" / "BTC_USDT-1h.feather"
NOW = datetime(2024, 9, 1, tzinfo=UTC)


def write_config(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[storage]\ndata_dir = "{tmp_path / "data"}"\n{body}')
    return path


def real_bars(n: int = 1500) -> Bars:
    file = read_bar_file(DATA)
    bars = Bars.from_frame(file.frame, file.symbol, file.tf)
    return bars.slice(len(bars) - n, None)


@pytest.mark.parametrize("family", list(FAMILY_PARAMS))
def test_every_family_declares_a_search_space_its_schema_accepts(family: str) -> None:
    cls = FAMILY_PARAMS[family]
    defaults = cls().as_dict()
    assert cls.search_space, f"{family} declares no search space"
    for name, dim in cls.search_space.items():
        assert name in defaults, f"{family}: {name} is not a parameter"
        assert name not in cls.evaluation_keys
        if isinstance(dim, Range):
            assert dim.low < dim.high and (dim.low > 0 or not dim.log)
            edges: tuple[Any, ...] = (dim.low, dim.high)
            if cls.is_int(name):
                edges = (int(dim.low), int(dim.high))
        else:
            assert isinstance(dim, Choices) and len(dim.values) >= 2
            edges = dim.values
        for value in edges:  # every corner of the space is a valid parameter set
            checked(family, {name: value}, f"models.params.{family}")
        # the configured default is inside: the search's first trial is the untuned model
        inside = (
            dim.low <= defaults[name] <= dim.high
            if isinstance(dim, Range)
            else (defaults[name] in dim.values)
        )
        assert inside, f"{family}: default {name}={defaults[name]} outside {dim}"


def test_calibration_methods_are_the_calibrators() -> None:
    assert CALIBRATION_METHODS == get_args(Method)


def test_the_params_schemas_import_without_a_model_library() -> None:
    code = (
        "import sys\n"
        "import quantum_daemon.domain.config, quantum_daemon.domain.params.catalog\n"
        "from quantum_daemon.daemon import HEAVY_MODULES\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in HEAVY_MODULES))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ("[models.params.lgbm]\nnum_leafs = 16\n", "models.params.lgbm.num_leafs"),
        ("[models.params.lgbm]\nnum_leaves = 1\n", "models.params.lgbm.num_leaves"),
        ('[models.params.xgb]\nmax_depth = "deep"\n', "models.params.xgb.max_depth"),
        ("[models.params.nhits]\ndropout = 1.5\n", "models.params.nhits.dropout"),
        ('[models.params.patchtst]\nloss = "huber"\n', "models.params.patchtst.loss"),
        ("[models.params.evo_model]\nfee_bps = 1.0\n", "models.params.evo_model.fee_bps"),
        ("[models.params.rl_sizer]\nbatch_size = 100\n", "models.params.rl_sizer"),
        ('[models.params.xgb]\ncalibration = "magic"\n', "models.params.xgb.calibration"),
        (
            '[models.params."lgbm_ETHUSDT_1h"]\nmax_depth = 0\n',
            "models.params.lgbm_ETHUSDT_1h.max_depth",
        ),
        ("[models.params.gbm]\nmax_depth = 3\n", "models.params.gbm"),
        ('[tuning]\nenabled = true\nmodels = ["forest"]\n', "tuning.models"),
        ("[tuning]\nenabled = true\ntimeout_s = 900.0\n", "tuning.timeout_s"),
    ],
)
def test_a_bad_parameter_exits_78_naming_the_key(tmp_path: Path, table: str, key: str) -> None:
    write_config(tmp_path, table)
    done = run_cli(tmp_path, "check-config")
    assert done.returncode == EX_CONFIG, done.stdout
    assert f"'{key}" in done.stderr, done.stderr


def test_a_good_table_loads_and_check_config_shows_it(tmp_path: Path) -> None:
    write_config(
        tmp_path,
        '[models.params.lgbm]\nnum_leaves = 16\ncalibration = "isotonic"\n'
        '[models.params."lgbm_ETHUSDT_1h"]\nnum_leaves = 31\n',
    )
    done = run_cli(tmp_path, "check-config")
    assert done.returncode == 0, done.stderr
    assert "'lgbm_ETHUSDT_1h': {'num_leaves': 31}" in done.stdout
    tables = config_mod.load(tmp_path / "config.toml", env={}).models.params
    assert tables.for_model("lgbm", "lgbm_ETHUSDT_1h") == {
        "num_leaves": 31,
        "calibration": "isotonic",
    }
    assert tables.for_model("lgbm", "lgbm_BTCUSDT_1h")["num_leaves"] == 16
    assert tables.for_model("xgb", "xgb_BTCUSDT_1h") == {}


def test_keys_of_both_tables_are_checked_together(tmp_path: Path) -> None:
    # each table is valid alone; together batch_size 96 does not divide n_steps 256
    path = write_config(
        tmp_path,
        "[models.params.rl_sizer]\nn_steps = 256\neval_every = 256\ntotal_timesteps = 512\n"
        '[models.params."rl_sizer_BTCUSDT_1h"]\nbatch_size = 96\n',
    )
    with pytest.raises(ConfigError, match=r"models\.params\.rl_sizer_BTCUSDT_1h"):
        config_mod.load(path, env={})


def test_config_params_reach_the_lightgbm_artifact_and_the_model_table_wins(
    tmp_path: Path,
) -> None:
    write_config(
        tmp_path,
        "[models.params.lgbm]\nnum_leaves = 5\nmin_data_in_leaf = 40\n"
        '[models.params."lgbm_BTCUSDT_1h"]\nnum_leaves = 6\n'
        '[models.params."lgbm_ETHUSDT_1h"]\nnum_leaves = 7\n',
    )
    done = run_cli(tmp_path, "train", "--family", "lgbm", "--data", str(DATA), "--json")
    assert done.returncode == 0, done.stderr
    version = json.loads(done.stdout)["version"]
    folder = tmp_path / "data" / "models" / "lgbm_BTCUSDT_1h" / version
    model_text = (folder / "model.txt").read_text()  # LightGBM's own record of its parameters
    assert "[num_leaves: 6]" in model_text and "[min_data_in_leaf: 40]" in model_text
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["params_set"] == {"num_leaves": 6, "min_data_in_leaf": 40}
    assert meta["params"]["num_leaves"] == 6 and meta["params"]["max_depth"] == 3

    Registry(tmp_path / "data").recover()  # what the daemon does at start: adopt the version
    shown = run_cli(tmp_path, "models", "show", "lgbm_BTCUSDT_1h")
    assert shown.returncode == 0, shown.stderr
    (entry,) = json.loads(shown.stdout)["versions"]
    assert entry["params"]["num_leaves"] == 6 and entry["params"]["min_data_in_leaf"] == 40
    listed = json.loads(run_cli(tmp_path, "models", "list", "--json").stdout)
    assert listed[0]["params"]["num_leaves"] == 6 and listed[0]["tuning"] is None


def test_a_bad_param_on_the_command_line_exits_78(tmp_path: Path) -> None:
    write_config(tmp_path, "")
    done = run_cli(
        tmp_path, "train", "--family", "xgb", "--data", str(DATA), "--param", "max_depth=-2"
    )
    assert done.returncode == EX_CONFIG and "'--param.max_depth'" in done.stderr


def test_config_params_reach_the_xgboost_booster(tmp_path: Path) -> None:
    import xgboost as xgb

    path = write_config(tmp_path, "[models.params.xgb]\nmax_depth = 2\nreg_lambda = 4.5\n")
    cfg = config_mod.load(path, env={})
    bars = real_bars()
    params = cfg.models.params.for_model("xgb", "xgb_BTCUSDT_1h")
    result = train_offline(OfflineSpec("xgb", bars, tmp_path / "data", params=params, now=NOW))
    booster = xgb.Booster()
    booster.load_model(str(result.artifact_dir / "model.ubj"))
    # XGBoost keeps the trees, not the training parameters: read the depth off the trees
    depths = [line.count("\t") for tree in booster.get_dump() for line in tree.splitlines()]
    assert max(depths) == 2  # leaves at depth 2: the default (3) would go one deeper
    meta = json.loads((result.artifact_dir / "metadata.json").read_text())
    assert meta["params"]["max_depth"] == 2 and meta["params"]["reg_lambda"] == 4.5


def test_evo_model_optimises_at_the_evaluation_costs(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        "[evaluation]\nfee_bps = 3.0\nslippage_bps = 0.5\n"
        "[models.params.evo_model]\nmax_evaluations = 120\npatience = 3\n",
    )
    cfg = config_mod.load(path, env={})
    params = cfg.models.params.for_model("evo_model", "evo_model_BTCUSDT_1h")
    spec = OfflineSpec(
        "evo_model", real_bars(), tmp_path / "data", cfg.evaluation, params=params, now=NOW
    )
    meta = json.loads((train_offline(spec).artifact_dir / "metadata.json").read_text())
    assert meta["params"]["fee_bps"] == 3.0 and meta["params"]["slippage_bps"] == 0.5
    assert meta["params"]["max_evaluations"] == 120
    assert meta["model"]["params"]["fee_bps"] == 3.0  # what the rule was evolved at


def test_rl_sizer_gets_the_evaluation_costs_and_other_families_nothing() -> None:
    settings = EvaluationSettings(fee_bps=4.0, slippage_bps=1.0)
    sizer = with_evaluation_keys("rl_sizer", {"gamma": 0.8}, settings)
    assert sizer == {"gamma": 0.8, "fee_bps": 4.0, "slippage_bps": 1.0}
    assert with_evaluation_keys("lgbm", {"num_leaves": 9}, settings) == {"num_leaves": 9}
