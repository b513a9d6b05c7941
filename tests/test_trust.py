"""Fixed-share exponential weights: the pure update rule and its guarantees."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quantum_daemon.core.trust import (
    align,
    recovery_rounds,
    switching_regret_bound,
    tuned_parameters,
    uniform,
    update,
)

FAMILIES = ("xgb", "lgbm", "nhits", "patchtst", "evo_model", "rl_sizer")
ETA, ALPHA = 2.0, 0.05  # the config defaults

unit = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def rounds(draw: st.DrawFn) -> tuple[dict[str, float], dict[str, float], float, float]:
    n = draw(st.integers(1, len(FAMILIES)))
    families = FAMILIES[:n]
    raw = [draw(st.floats(1e-6, 1.0)) for _ in families]
    weights = {f: w / sum(raw) for f, w in zip(families, raw, strict=True)}
    awake = draw(st.lists(st.sampled_from(families), unique=True))
    losses = {f: draw(unit) for f in awake}
    eta = draw(st.floats(0.01, 50.0))
    alpha = draw(st.floats(0.0, 0.99))
    return weights, losses, eta, alpha


@given(rounds())
def test_weights_stay_positive_and_sum_to_one(case) -> None:
    weights, losses, eta, alpha = case
    after = update(weights, losses, eta, alpha)
    assert set(after) == set(weights)
    assert all(w > 0 for w in after.values())
    assert math.isclose(math.fsum(after.values()), 1.0, abs_tol=1e-12)


@given(rounds())
def test_share_keeps_every_weight_above_the_floor(case) -> None:
    weights, losses, eta, alpha = case
    if not losses:
        return
    after = update(weights, losses, eta, alpha)
    assert min(after.values()) >= alpha / len(weights) * (1 - 1e-12)


@given(rounds())
def test_sleeping_families_keep_their_mass_without_share(case) -> None:
    """A family without a score this round is neither rewarded nor punished."""
    weights, losses, eta, _ = case
    after = update(weights, losses, eta, alpha=0.0)
    for family in set(weights) - set(losses):
        assert after[family] == pytest.approx(weights[family], rel=1e-12)


def test_no_loss_means_no_change() -> None:
    weights = {"xgb": 0.7, "lgbm": 0.3}
    assert update(weights, {}, ETA, ALPHA) == weights


def test_lower_loss_gains_weight() -> None:
    after = update(uniform(["xgb", "lgbm"]), {"xgb": 0.1, "lgbm": 0.3}, ETA, ALPHA)
    assert after["xgb"] > 0.5 > after["lgbm"]


def test_concentrates_on_an_always_right_family() -> None:
    rng = np.random.default_rng(0)
    weights = uniform(FAMILIES)
    for _ in range(200):
        losses = {f: float(rng.uniform(0.2, 1.0)) for f in FAMILIES}
        losses["nhits"] = 0.0
        weights = update(weights, losses, ETA, ALPHA)
    ceiling = 1 - ALPHA * (len(FAMILIES) - 1) / len(FAMILIES)  # share keeps the rest alive
    assert 0.9 < weights["nhits"] <= ceiling


def _regime(best: str, gap: float, rng: np.random.Generator) -> dict[str, float]:
    """Losses where ``best`` is at least ``gap`` below every other family."""
    low = float(rng.uniform(0.0, 0.1))
    return {f: low if f == best else float(rng.uniform(low + gap, 1.0)) for f in FAMILIES}


def _rounds_to_reach(weights, best, gap, rng, alpha, target=0.5, limit=10_000) -> int:
    for k in range(1, limit + 1):
        weights = update(weights, _regime(best, gap, rng), ETA, alpha)
        if weights[best] >= target:
            return k
    return limit + 1


def test_weights_follow_when_the_advantage_moves_within_the_bound() -> None:
    rng, gap = np.random.default_rng(1), 0.2
    weights = uniform(FAMILIES)
    for _ in range(1000):
        weights = update(weights, _regime("xgb", gap, rng), ETA, ALPHA)
    assert weights["xgb"] > 0.9
    bound = recovery_rounds(ETA, ALPHA, len(FAMILIES), gap)
    assert _rounds_to_reach(weights, "lgbm", gap, rng, ALPHA) <= bound


def test_without_share_recovery_is_not_bounded() -> None:
    """The point of the share: plain exponential weights (alpha = 0) take as
    long to forget as the old regime lasted."""
    rng, gap = np.random.default_rng(2), 0.2
    weights = uniform(FAMILIES)
    for _ in range(300):
        weights = update(weights, _regime("xgb", gap, rng), ETA, 0.0)
    bound = recovery_rounds(ETA, ALPHA, len(FAMILIES), gap)
    assert _rounds_to_reach(weights, "lgbm", gap, rng, 0.0) > 5 * bound


@pytest.mark.parametrize(
    ("eta", "alpha", "gap"), [(2.0, 0.05, 0.2), (1.0, 0.01, 0.1), (5.0, 0.2, 0.3)]
)
def test_recovery_rounds_within_the_closed_form(eta: float, alpha: float, gap: float) -> None:
    """While below ``target`` c the weight grows at least by the factor
    g = (1 - alpha) e / (1 + c (e - 1)) per round, from alpha / N: the orbit
    reaches c within ceil(ln(c N / alpha) / ln g) rounds (docs/trust.md)."""
    n, c, e = len(FAMILIES), 0.5, math.exp(eta * gap)
    growth = (1 - alpha) * e / (1 + c * (e - 1))
    closed_form = math.ceil(math.log(c * n / alpha) / math.log(growth))
    assert 1 <= recovery_rounds(eta, alpha, n, gap, c) <= closed_form


def test_recovery_rounds_refuses_an_unreachable_target() -> None:
    with pytest.raises(ValueError, match="never guaranteed"):
        recovery_rounds(ETA, 0.5, len(FAMILIES), gap=0.1, target=0.9)


def _best_switching_loss(losses: np.ndarray, switches: int) -> float:
    """Least cumulative loss of a sequence of experts with at most ``switches`` changes."""
    n_rounds, n_experts = losses.shape
    best = np.full((switches + 1, n_experts), np.inf)
    best[0] = losses[0]
    for t in range(1, n_rounds):
        stay = best
        move = np.vstack(
            [
                np.full(n_experts, np.inf),
                np.min(best[:-1], axis=1, keepdims=True).repeat(n_experts, 1),
            ]
        )
        best = np.minimum(stay, move) + losses[t]
    return float(best.min())


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.integers(2, 4),
    st.integers(0, 3),
    st.floats(0.1, 5.0),
    st.floats(0.01, 0.5),
)
def test_regret_against_switching_sequences_within_the_theorem(
    seed: int, n_experts: int, switches: int, eta: float, alpha: float
) -> None:
    rng = np.random.default_rng(seed)
    n_rounds = 60
    width = float(rng.choice([1.0, 0.2]))  # full range, or Brier scores of p_up in [0.4, 0.6]
    losses = 0.16 * (width < 1) + width * rng.uniform(0, 1, size=(n_rounds, n_experts))
    best_blocks = rng.integers(0, n_experts, size=switches + 1)
    for block, rows in zip(
        best_blocks, np.array_split(np.arange(n_rounds), switches + 1), strict=True
    ):
        losses[rows, block] = losses[rows].min()  # make a switching sequence worth tracking
    names = [f"f{i}" for i in range(n_experts)]
    weights, weighted_loss = uniform(names), 0.0
    for row in losses:
        weighted_loss += sum(weights[f] * loss for f, loss in zip(names, row, strict=True))
        weights = update(weights, dict(zip(names, map(float, row), strict=True)), eta, alpha)
    regret = weighted_loss - _best_switching_loss(losses, switches)
    bound = switching_regret_bound(n_rounds, switches, n_experts, eta, alpha, loss_range=width)
    assert regret <= bound + 1e-9


def test_tuned_parameters_give_the_corollary_bound() -> None:
    n, m, n_experts = 10_000, 5, 6
    eta, alpha = tuned_parameters(n, m, n_experts)
    entropy = -alpha * math.log(alpha) - (1 - alpha) * math.log(1 - alpha)
    complexity = (m + 1) * math.log(n_experts) + (n - 1) * entropy
    assert switching_regret_bound(n, m, n_experts, eta, alpha) == pytest.approx(
        math.sqrt(n * complexity / 2)
    )
    assert math.sqrt(n * complexity / 2) <= math.sqrt(
        n / 2 * ((m + 1) * math.log(n_experts) + m * math.log(math.e * (n - 1) / m))
    )


def test_regret_bound_without_share_is_infinite_for_switching_sequences() -> None:
    assert switching_regret_bound(100, 1, 6, ETA, 0.0) == math.inf


def test_align_drops_leavers_and_adds_newcomers_at_one_over_n() -> None:
    before = {"xgb": 0.6, "lgbm": 0.3, "nhits": 0.1}
    after = align(before, ["xgb", "lgbm", "patchtst", "evo_model"])
    assert list(after) == ["xgb", "lgbm", "patchtst", "evo_model"]
    assert after["patchtst"] == after["evo_model"] == pytest.approx(0.25)
    assert after["xgb"] / after["lgbm"] == pytest.approx(2.0)
    assert math.fsum(after.values()) == pytest.approx(1.0)


def test_align_from_nothing_is_uniform() -> None:
    assert align({}, ["xgb", "lgbm"]) == {"xgb": 0.5, "lgbm": 0.5}


@pytest.mark.parametrize(
    ("weights", "losses", "match"),
    [
        ({"xgb": 1.0}, {"xgb": 1.5}, "must lie in"),
        ({"xgb": 1.0}, {"xgb": math.nan}, "must lie in"),
        ({"xgb": 1.0}, {"lgbm": 0.1}, "without a weight"),
        ({"xgb": 0.0, "lgbm": 1.0}, {"lgbm": 0.1}, "must be positive"),
    ],
)
def test_rejects_bad_inputs(weights, losses, match) -> None:
    with pytest.raises(ValueError, match=match):
        update(weights, losses, ETA, ALPHA)


@pytest.mark.parametrize(("eta", "alpha"), [(0.0, 0.1), (-1.0, 0.1), (1.0, 1.0), (1.0, -0.1)])
def test_rejects_bad_parameters(eta: float, alpha: float) -> None:
    with pytest.raises(ValueError):
        update({"xgb": 1.0}, {"xgb": 0.5}, eta, alpha)


def test_families_in_any_order_give_the_same_update() -> None:
    weights = {"xgb": 0.5, "lgbm": 0.3, "nhits": 0.2}
    losses = {"xgb": 0.4, "nhits": 0.1}
    forward = update(weights, losses, ETA, ALPHA)
    for perm in itertools.permutations(weights):
        shuffled = update({f: weights[f] for f in perm}, losses, ETA, ALPHA)
        assert shuffled == pytest.approx(forward, rel=1e-12)
