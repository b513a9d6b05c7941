"""The ``rl_sizer`` family: a PPO policy that turns the ensemble signal into a position size.

Training (``fit``): the signal (``mu``, ``p_up``) at every training and
validation decision comes from a signal source; ``sizing_env.SizingEnv``
replays the training window as episodes in the evaluator's costed simulator,
and stable-baselines3's PPO (small MLP, CPU, seeded) learns in chunks of
``eval_every`` timesteps. After each chunk the deterministic policy is run
over the validation window; the policy kept is the one with the best
validation Sharpe after costs (checkpoint on improvement, stop after
``patience`` chunks without one). The plain signal-to-position rule's Sharpe
on the same window is recorded beside it: the sizer earns its place only by
beating that rule out of sample (``scoring.compare_with_plain_rule``).

Signal source: a callable ``(bars, idx, horizon) -> Forecast``. Live, the
sizer sizes the trust-weighted ensemble of the active forecasters, so that
is what it is trained and judged on: ``RecordedOrMomentum`` (set by
``use_signals``, which the daemon's training jobs call through
``families.training_family`` / ``load_model``) takes, at each bar whose open
time was recorded, the ensemble signal the daemon published on
``quantum:signals:{SYMBOL}:{TF}`` (``recorded_signals``). That signal is out
of sample by construction: each entry came from models trained on bars
before it, and no later entry is read for an earlier bar. At bars before
the ensemble went live (or older than the trimmed stream's first entry) it
falls back to the cold-start stand-in ``momentum_signal``, which is also the
whole source when nothing was recorded (the CLI's ``train``, a fresh
daemon): ``mu = horizon * ret_24 / 24`` (the mean one-bar log return of the last day,
scaled to the horizon) and ``p_up = Phi(mu / (rvol_24 sqrt(horizon)))``. The
fit record says which source was sized (``signal_source``: ``momentum`` or
``recorded_ensemble+momentum``) and, for the latter, the share of recorded
signals among the training and validation decisions
(``recorded_fraction_train`` / ``_val``; ``offline`` adds ``_test``).

Prediction (``predict``) returns the signal it sized as ``mu``/``p_up`` and
the sizes as ``position``, rolled forward from a flat book at ``idx[0]``;
live sizing keeps a ``sizing_env.Book`` and calls ``decide`` once per bar.

Artifact: the policy network's ``state_dict`` in safetensors
(``policy.safetensors``) and ``rl_sizer.json`` with what rebuilding it needs
(architecture, observation scaling, costs); never sb3's pickled zip.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import gymnasium as gym
import numpy as np
import stable_baselines3
import torch
from safetensors.torch import load_file, save_file
from scipy.special import ndtr
from stable_baselines3 import PPO
from stable_baselines3.common.policies import ActorCriticPolicy

from quantum_daemon.core.evaluation.backtest import cost_rate, next_bar_returns
from quantum_daemon.core.evaluation.performance import sharpe_ratio
from quantum_daemon.core.features import FEATURE_NAMES, build_features
from quantum_daemon.core.scoring import compare_with_plain_rule
from quantum_daemon.domain.bars import Bars
from quantum_daemon.domain.params.rules import SizerParams
from quantum_daemon.domain.signals import RecordedSignals
from quantum_daemon.models.base import FitInfo, Forecast, TrainSet
from quantum_daemon.models.sizing_env import (
    OBS_HIGH,
    OBS_LOW,
    Book,
    EnvSettings,
    SizingData,
    SizingEnv,
    observe,
    rollout,
)

__all__ = ["RlSizerFamily", "SizerParams"]

POLICY_FILE = "policy.safetensors"
STATE_FILE = "rl_sizer.json"
MIN_VOL = 1e-8

SignalSource = Callable[[Bars, np.ndarray, int], Forecast]
MOMENTUM_SOURCE = "momentum"
RECORDED_SOURCE = "recorded_ensemble+momentum"


def momentum_signal(bars: Bars, idx: np.ndarray, horizon: int) -> Forecast:
    """The cold-start signal (module docstring), causal."""
    features = build_features(bars)
    ret_24 = features[idx, FEATURE_NAMES.index("ret_24")]
    vol = features[idx, FEATURE_NAMES.index("rvol_24")]
    mu = np.nan_to_num(horizon * ret_24 / 24.0)
    spread = np.maximum(np.nan_to_num(vol, nan=1.0), MIN_VOL) * np.sqrt(horizon)
    return Forecast(mu=mu, p_up=ndtr(mu / spread))


@dataclass(frozen=True)
class RecordedOrMomentum:
    """A signal source: the recorded ensemble signal at the bars whose ``ts``
    was recorded, ``momentum_signal`` at the others (module docstring). A
    bar's signal is its own recorded entry only: causal."""

    recorded: RecordedSignals

    def __call__(self, bars: Bars, idx: np.ndarray, horizon: int) -> Forecast:
        signal = momentum_signal(bars, idx, horizon)
        mu, p_up = np.array(signal.mu, dtype=np.float64), np.array(signal.p_up, dtype=np.float64)
        at = self.recorded.positions(bars.ts[idx])
        found = at >= 0
        mu[found], p_up[found] = self.recorded.mu[at[found]], self.recorded.p_up[at[found]]
        return Forecast(mu=mu, p_up=p_up)

    def recorded_fraction(self, bars: Bars, idx: np.ndarray) -> float:
        return self.recorded.recorded_fraction(bars.ts[idx])


def volatility(bars: Bars, idx: np.ndarray) -> np.ndarray:
    """Market volatility at each decision: ``rvol_24`` of the features (NaN in warm-up)."""
    return build_features(bars)[idx, FEATURE_NAMES.index("rvol_24")]


@dataclass(frozen=True)
class Scaling:
    """What the observation and the simulator need besides the policy."""

    horizon: int
    vol_ref: float
    cost_rate: float

    def settings(self, params: SizerParams) -> EnvSettings:
        return EnvSettings(
            cost_rate=self.cost_rate,
            horizon=self.horizon,
            vol_ref=self.vol_ref,
            episode_length=params.episode_length,
            risk_penalty=params.risk_penalty,
            reward_scale=1.0 / self.vol_ref,  # rewards of order one: PPO's defaults suit them
        )


class RlSizerFamily:
    """``rl_sizer``: see the module docstring."""

    name: ClassVar[str] = "rl_sizer"

    def __init__(self, signal_source: SignalSource | None = None) -> None:
        self.signal_source: SignalSource = signal_source or momentum_signal
        self._policy: ActorCriticPolicy | None = None
        self._params = SizerParams()
        self._scaling = Scaling(1, 1.0, 0.0)
        self._seed = 0
        self._record: dict[str, Any] = {}

    def fit(self, data: TrainSet) -> FitInfo:
        params = SizerParams.from_mapping(data.params)
        torch.set_num_threads(params.threads)
        vol_train = volatility(data.bars, data.train_idx)
        scaling = Scaling(
            horizon=data.horizon,
            vol_ref=max(float(np.nanmedian(vol_train)), MIN_VOL),
            cost_rate=cost_rate(params.fee_bps, params.slippage_bps),
        )
        settings = scaling.settings(params)
        train = self.sizing_data(data.bars, data.train_idx, data.horizon)
        val = self.sizing_data(data.bars, data.val_idx, data.horizon)
        agent = _agent(SizingEnv(train, settings), params, data.seed)
        best = _train_with_validation(agent, params, val, settings)
        agent.policy.load_state_dict(best.state)
        agent.policy.set_training_mode(False)
        self._policy, self._params, self._scaling, self._seed = (
            agent.policy, params, scaling, data.seed,
        )  # fmt: skip
        plain = compare_with_plain_rule(
            best.positions, val.mu, val.p_up, val.asset_returns, scaling.cost_rate
        )
        self._record = {
            "best_timesteps": best.timesteps,
            "timesteps": best.total_timesteps,
            "val_sharpe": best.sharpe,
            "plain_val_sharpe": plain.plain_sharpe,
            "beats_plain_rule_on_validation": plain.beats,
            **self._signal_record(data),
        }
        return FitInfo(best.timesteps, -best.sharpe, dict(self._record))

    def use_signals(self, recorded: RecordedSignals) -> None:
        """Size the recorded ensemble signal where there is one, momentum elsewhere."""
        self.signal_source = RecordedOrMomentum(recorded)

    def _signal_record(self, data: TrainSet) -> dict[str, Any]:
        """Which signal the policy was trained on, and how much of it was recorded."""
        source = self.signal_source
        if isinstance(source, RecordedOrMomentum):
            return {
                "signal_source": RECORDED_SOURCE,
                "recorded_fraction_train": source.recorded_fraction(data.bars, data.train_idx),
                "recorded_fraction_val": source.recorded_fraction(data.bars, data.val_idx),
            }
        name = MOMENTUM_SOURCE if source is momentum_signal else getattr(source, "__name__", "")
        return {"signal_source": name or type(source).__name__}

    def sizing_data(self, bars: Bars, idx: np.ndarray, horizon: int) -> SizingData:
        """The signal, volatility and next-bar returns at decisions ``idx``."""
        signal = self.signal_source(bars, idx, horizon)
        return SizingData(
            mu=np.asarray(signal.mu, dtype=np.float64),
            p_up=np.asarray(signal.p_up, dtype=np.float64),
            volatility=volatility(bars, idx),
            asset_returns=_known_returns(bars, idx),
        )

    def predict(self, bars: Bars, idx: np.ndarray, signal: Forecast | None = None) -> Forecast:
        """Size the signal at decisions ``idx`` (``signal`` given, or from the source)."""
        policy = self._require_policy()
        signal = signal or self.signal_source(bars, idx, self._scaling.horizon)
        data = SizingData(
            mu=np.asarray(signal.mu, dtype=np.float64),
            p_up=np.asarray(signal.p_up, dtype=np.float64),
            volatility=volatility(bars, idx),
            asset_returns=_known_returns(bars, idx),
        )
        positions, _ = rollout(_decider(policy), data, self._scaling.settings(self._params))
        return Forecast(mu=data.mu, p_up=data.p_up, position=positions)

    def decide(self, book: Book, mu: float, p_up: float, vol: float) -> float:
        """Live sizing of one bar: the position for the signal, given the book so far."""
        obs = observe(mu, p_up, vol, book, self._scaling.settings(self._params))
        return float(_decider(self._require_policy())(obs))

    def save(self, directory: Path) -> list[Path]:
        policy = self._require_policy()
        weights, state = directory / POLICY_FILE, directory / STATE_FILE
        save_file({k: v.contiguous() for k, v in policy.state_dict().items()}, str(weights))
        state.write_text(json.dumps(self.metadata(), indent=2, sort_keys=True))
        return [weights, state]

    @classmethod
    def load(cls, directory: Path, meta: Mapping[str, Any]) -> Self:
        state = json.loads((Path(directory) / STATE_FILE).read_text())
        model = cls()
        model._params = SizerParams.from_mapping(state["params"])
        model._scaling = Scaling(**state["scaling"])
        model._seed, model._record = int(state["seed"]), dict(state["fit"])
        policy = build_policy(model._params.net_arch)
        policy.load_state_dict(load_file(str(Path(directory) / POLICY_FILE)))
        policy.set_training_mode(False)
        model._policy = policy
        return model

    def metadata(self) -> dict[str, Any]:
        self._require_policy()
        return {
            "params": self._params.as_dict(),
            "scaling": dataclasses.asdict(self._scaling),
            "seed": self._seed,
            "horizon": self._scaling.horizon,
            "fit": self._record,
            "observation": ["signal_z", "edge", "vol_regime", "drawdown", "position"],
            "library_versions": {
                "torch": torch.__version__,
                "stable_baselines3": stable_baselines3.__version__,
                "gymnasium": gym.__version__,
                "numpy": np.__version__,
            },
        }

    def _require_policy(self) -> ActorCriticPolicy:
        if self._policy is None:
            raise RuntimeError("rl_sizer is not fitted")
        return self._policy


def build_policy(net_arch: tuple[int, ...]) -> ActorCriticPolicy:
    """The network PPO's ``MlpPolicy`` builds for the sizing spaces, untrained."""
    return ActorCriticPolicy(
        gym.spaces.Box(OBS_LOW, OBS_HIGH, dtype=np.float32),
        gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32),
        lr_schedule=_no_learning,
        net_arch=list(net_arch),
    )


def _no_learning(_progress: float) -> float:
    return 0.0


def _agent(env: SizingEnv, params: SizerParams, seed: int) -> PPO:
    return PPO(
        "MlpPolicy",
        env,
        learning_rate=params.learning_rate,
        n_steps=params.n_steps,
        batch_size=params.batch_size,
        n_epochs=params.n_epochs,
        gamma=params.gamma,
        policy_kwargs={"net_arch": list(params.net_arch)},
        seed=seed,
        device="cpu",
        verbose=0,
    )


@dataclass(frozen=True)
class _Checkpoint:
    state: dict[str, torch.Tensor]
    sharpe: float
    timesteps: int
    total_timesteps: int
    positions: np.ndarray


def _train_with_validation(
    agent: PPO, params: SizerParams, val: SizingData, settings: EnvSettings
) -> _Checkpoint:
    """Learn in chunks; keep the policy with the best validation Sharpe."""
    best: _Checkpoint | None = None
    stale = 0
    for chunk in range(params.total_timesteps // params.eval_every):
        agent.learn(params.eval_every, reset_num_timesteps=chunk == 0)
        positions, nets = rollout(_decider(agent.policy), val, settings)
        sharpe = sharpe_ratio(nets, 1.0)
        if best is None or sharpe > best.sharpe:
            state = {k: v.detach().clone() for k, v in agent.policy.state_dict().items()}
            best, stale = _Checkpoint(state, sharpe, agent.num_timesteps, 0, positions), 0
        else:
            stale += 1
        if stale >= params.patience:
            break
    assert best is not None  # total_timesteps >= eval_every: at least one chunk ran
    return dataclasses.replace(best, total_timesteps=agent.num_timesteps)


def _decider(policy: ActorCriticPolicy) -> Callable[[np.ndarray], float]:
    def decide(obs: np.ndarray) -> float:
        action, _ = policy.predict(obs, deterministic=True)
        return float(np.asarray(action).reshape(-1)[0])

    return decide


def _known_returns(bars: Bars, idx: np.ndarray) -> np.ndarray:
    """Next-bar returns where the next bar exists; 0 past the data (the live edge)."""
    out = np.zeros(idx.shape[0])
    has_next = idx + 1 < len(bars)
    out[has_next] = next_bar_returns(bars.close, idx[has_next])
    return out
