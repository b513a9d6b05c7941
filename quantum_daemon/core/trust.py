"""Trust weights of the model families: fixed-share exponential weights.

One round, given the families' current weights ``w`` (positive, summing to
one over the N live families) and the losses ``l`` in [0, 1] of the families
scored in this round (Herbster & Warmuth 1998, "Tracking the best expert";
Cesa-Bianchi & Lugosi 2006, section 5.2):

1. loss update: ``v_i = w_i exp(-eta l_i)`` for the scored ("awake")
   families, rescaled so that together they keep the mass they had; a family
   without a score this round ("asleep": its prediction's horizon has not
   elapsed, or it was not live at the predicted bar) keeps its weight
   (sleeping experts, Freund, Schapire, Singer & Warmuth 1997);
2. share: ``w'_i = alpha / N + (1 - alpha) v_i``.

The share step keeps every weight at or above ``alpha / N``, so a family that
fell behind can regain the lead within a bounded number of rounds once it
becomes the best (``recovery_rounds``); ``switching_regret_bound`` is the
regret guarantee against the best sequence of families with a given number
of switches. docs/trust.md derives both.

Pure functions over plain mappings; no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

Weights = dict[str, float]


def uniform(families: Sequence[str]) -> Weights:
    """Equal weights over ``families``."""
    if not families:
        return {}
    return {family: 1.0 / len(families) for family in families}


def align(weights: Mapping[str, float], live: Sequence[str]) -> Weights:
    """Weights over exactly the ``live`` families.

    Families that left are dropped; each newcomer enters at ``1/N`` (what a
    sleeping expert that never woke up would hold); the families that stay
    share the remaining mass in proportion to their previous weights.
    """
    staying = {f: weights[f] for f in live if f in weights and weights[f] > 0}
    newcomers = [f for f in live if f not in staying]
    if not staying:
        return uniform(list(live))
    n = len(live)
    kept_mass = (n - len(newcomers)) / n
    total = math.fsum(staying.values())
    if len(staying) == len(weights) == n and math.isclose(total, 1.0, abs_tol=1e-12):
        return staying  # nothing joined or left: keep the exact values
    aligned = {f: kept_mass * w / total for f, w in staying.items()}
    aligned.update({f: 1.0 / n for f in newcomers})
    return {f: aligned[f] for f in live}


def update(
    weights: Mapping[str, float], losses: Mapping[str, float], eta: float, alpha: float
) -> Weights:
    """One fixed-share round (see the module docstring).

    ``weights`` are over the live families (use ``align`` first); ``losses``
    holds the families scored in this round, each in [0, 1]. With no loss at
    all the weights come back unchanged: nothing happened, so nothing moves.
    """
    _check_parameters(eta, alpha)
    _check_losses(weights, losses)
    if not losses:
        return dict(weights)
    slept = _loss_update(weights, losses, eta)
    n = len(slept)
    shared = {f: alpha / n + (1.0 - alpha) * v for f, v in slept.items()}
    total = math.fsum(shared.values())
    return {f: w / total for f, w in shared.items()}


def _loss_update(weights: Mapping[str, float], losses: Mapping[str, float], eta: float) -> Weights:
    """Exponential update of the awake families, their total mass kept."""
    awake_mass = math.fsum(weights[f] for f in losses)
    best = min(losses.values())  # shifting by the best loss avoids underflow
    scaled = {f: weights[f] * math.exp(-eta * (loss - best)) for f, loss in losses.items()}
    scaled_mass = math.fsum(scaled.values())
    out = dict(weights)
    for family, value in scaled.items():
        out[family] = awake_mass * value / scaled_mass
    return out


def _check_parameters(eta: float, alpha: float) -> None:
    if not (eta > 0 and math.isfinite(eta)):
        raise ValueError(f"learning rate eta must be a positive number, got {eta!r}")
    if not 0 <= alpha < 1:
        raise ValueError(f"share alpha must lie in [0, 1), got {alpha!r}")


def _check_losses(weights: Mapping[str, float], losses: Mapping[str, float]) -> None:
    unknown = sorted(set(losses) - set(weights))
    if unknown:
        raise ValueError(f"losses for families without a weight: {unknown}")
    for family, loss in losses.items():
        if not 0.0 <= loss <= 1.0:
            raise ValueError(f"loss of {family} must lie in [0, 1], got {loss!r}")
    for family, weight in weights.items():
        if not (weight > 0 and math.isfinite(weight)):
            raise ValueError(f"weight of {family} must be positive, got {weight!r}")


def recovery_rounds(
    eta: float, alpha: float, n_families: int, gap: float, target: float = 0.5
) -> int:
    """Rounds after which a family's weight has certainly reached ``target``.

    Worst case: the family starts at the share floor ``alpha / N`` and in
    every round all live families are scored, its loss being at least ``gap``
    below every other family's. Its weight then stays above the orbit of
    ``b -> alpha/N + (1 - alpha) b e / (1 + b (e - 1))`` with
    ``e = exp(eta * gap)`` (increasing in ``b``), iterated here. Raises
    ``ValueError`` when ``target`` lies above that map's fixed point, i.e. is
    never guaranteed.
    """
    _check_parameters(eta, alpha)
    if not (gap > 0 and 0 < target < 1 and n_families >= 1):
        raise ValueError("need gap > 0, 0 < target < 1 and at least one family")
    e = math.exp(eta * gap)
    floor = alpha / n_families
    weight, rounds = floor, 0
    while weight < target:
        following = floor + (1 - alpha) * weight * e / (1 + weight * (e - 1))
        if following - weight <= 1e-15:
            raise ValueError(f"weight {target} is never guaranteed (it converges to {weight:.6f})")
        weight, rounds = following, rounds + 1
    return rounds


def switching_regret_bound(
    rounds: int,
    switches: int,
    n_families: int,
    eta: float,
    alpha: float,
    loss_range: float = 1.0,
) -> float:
    """Cesa-Bianchi & Lugosi (2006), Theorem 5.1: for losses in [0, 1] and any
    sequence of families with at most ``switches`` changes over ``rounds``
    rounds (all families scored every round), the cumulative weighted loss of
    fixed share exceeds that sequence's cumulative loss by at most

        ((m + 1) ln N + m ln(1/alpha) + (n - m - 1) ln(1/(1 - alpha))) / eta + eta R^2 n / 8

    with R = 1. When every round's losses lie within an interval of width
    ``loss_range`` R (Hoeffding's lemma, used in the proof, only needs that),
    the last term shrinks with R^2.
    """
    _check_parameters(eta, alpha)
    n, m = rounds, switches
    if not 0 <= m < max(n, 1):
        raise ValueError("need 0 <= switches < rounds")
    if m and alpha == 0:
        return math.inf  # without sharing, a family that fell behind may never come back
    switching_cost = m * math.log(1 / alpha) if m else 0.0
    staying_cost = (n - m - 1) * -math.log1p(-alpha)
    complexity = (m + 1) * math.log(n_families) + switching_cost + staying_cost
    return complexity / eta + eta * loss_range**2 * n / 8


def tuned_parameters(rounds: int, switches: int, n_families: int) -> tuple[float, float]:
    """(eta, alpha) of Cesa-Bianchi & Lugosi, Corollary 5.1, for a known
    horizon and number of switches: alpha = m / (n - 1) and
    eta = sqrt(8 ((m + 1) ln N + (n - 1) H(alpha)) / n), H the binary entropy
    in nats. The regret bound is then sqrt(n ((m + 1) ln N + (n - 1) H(alpha)) / 2)."""
    n, m = rounds, switches
    if not 1 <= m < n - 1:
        raise ValueError("need 1 <= switches < rounds - 1")
    alpha = m / (n - 1)
    entropy = -alpha * math.log(alpha) - (1 - alpha) * math.log1p(-alpha)
    complexity = (m + 1) * math.log(n_families) + (n - 1) * entropy
    return math.sqrt(8 * complexity / n), alpha
