"""The trust-weighted ensemble and the signal it becomes.

At a bar's close every active forecasting model gives (``mu``, ``p_up``);
the ensemble is their linear pool under the trust weights, renormalized over
the families that answered (a family without a trust weight yet enters at
``1/N``, as ``trust.align`` does):

    mu = sum_f w_f mu_f        p_up = sum_f w_f p_up_f

The linear pool is what the exponential-weights guarantee is about: the
Brier score is convex in ``p_up``, so the ensemble's loss is at most the
trust-weighted average of the families' losses. ``rl_sizer`` consumes the
ensemble and is never part of it.

Members with forecast intervals (``core.conformal``) are pooled by quantile
averaging under the same weights, renormalized over the members that have
them: ``q_tau = sum_f w_f q_tau_f``. The pinball loss is convex in the
quantile too, so the pooled quantile's loss is at most the weighted average
of the members'. The signal carries them as ``q05``/``q50``/``q95`` (absent
where no member has intervals).

The signal for ``quantum:signals:{SYMBOL}:{TF}`` carries the ensemble, the
position (``rl_sizer``'s when one is active, else the plain rule's, which is
always included as ``plain_position`` so position families can be scored
against it), each family's contribution, the versions used, and the latency
from bar arrival to signal, with ``status`` ``live``.

When no forecaster is active the signal says so (``flat_signal``): status
``flat``, position 0, the reason, no view of its own (``mu`` 0, ``p_up``
0.5), and the shadow ensemble's values (the candidates' pool) in separate
``shadow_*`` fields, which is what ``rl_sizer`` learns from and the
dashboard shows. Pure: the caller measures the latency.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np

from quantum_daemon.core.evaluation.backtest import (
    DEFAULT_POSITION_THRESHOLD,
    position_from_forecast,
)
from quantum_daemon.core.trust import align
from quantum_daemon.domain.families import SIZER_FAMILIES
from quantum_daemon.domain.forecasting import Forecast

Quantiles = tuple[float, float, float]  # q05, q50, q95 of the horizon log return
QUANTILE_FIELDS = ("q05", "q50", "q95")
PLAIN_RULE = "plain_rule"
# a signal's status: an active ensemble, none, or one the kill switch holds flat
LIVE, FLAT, KILLED = "live", "flat", "killed"


@dataclass(frozen=True)
class MemberForecast:
    """One active model's answer at a bar's close."""

    family: str
    model: str
    version: str
    mu: float
    p_up: float
    quantiles: Quantiles | None = None


@dataclass(frozen=True)
class Contribution:
    """What one family put into the ensemble: its forecast and its weight."""

    family: str
    model: str
    version: str
    weight: float
    mu: float
    p_up: float


@dataclass(frozen=True)
class EnsembleForecast:
    mu: float
    p_up: float
    contributions: tuple[Contribution, ...]
    quantiles: Quantiles | None = None


def combine(members: Sequence[MemberForecast], weights: Mapping[str, float]) -> EnsembleForecast:
    """The linear pool of ``members`` (sizers left out) under ``weights``."""
    pooled = [m for m in members if m.family not in SIZER_FAMILIES]
    families = [m.family for m in pooled]
    if not pooled:
        raise ValueError("no forecasting model to combine")
    if len(set(families)) != len(families):
        raise ValueError(f"one model per family, got {sorted(families)}")
    w = align(weights, families)
    contributions = tuple(
        Contribution(m.family, m.model, m.version, w[m.family], m.mu, m.p_up) for m in pooled
    )
    mu = math.fsum(c.weight * c.mu for c in contributions)
    p_up = math.fsum(c.weight * c.p_up for c in contributions)
    quantiles = pool_quantiles(pooled, w)
    return EnsembleForecast(mu, min(max(p_up, 0.0), 1.0), contributions, quantiles)


def pool_quantiles(
    members: Sequence[MemberForecast], weights: Mapping[str, float]
) -> Quantiles | None:
    """Quantile averaging over the members with quantiles, their weights renormalized."""
    have = [m for m in members if m.quantiles is not None]
    total = math.fsum(weights[m.family] for m in have)
    if not have or total <= 0.0:
        return None
    pooled = [
        math.fsum(weights[m.family] * m.quantiles[k] for m in have if m.quantiles) / total
        for k in range(len(QUANTILE_FIELDS))
    ]
    return (pooled[0], pooled[1], pooled[2])


def pool_forecasts(forecasts: Mapping[str, Forecast], weights: Mapping[str, float]) -> Forecast:
    """The same linear pool over arrays (one forecast per family over the same
    decisions), e.g. to give ``rl_sizer`` an ensemble history offline."""
    pooled = {f: fc for f, fc in forecasts.items() if f not in SIZER_FAMILIES}
    if not pooled:
        raise ValueError("no forecasting family to combine")
    w = align(weights, list(pooled))
    mu = sum(w[f] * np.asarray(fc.mu, dtype=np.float64) for f, fc in pooled.items())
    p_up = sum(w[f] * np.asarray(fc.p_up, dtype=np.float64) for f, fc in pooled.items())
    return Forecast(mu=np.asarray(mu), p_up=np.clip(np.asarray(p_up), 0.0, 1.0))


def plain_position(mu: float, p_up: float, threshold: float = DEFAULT_POSITION_THRESHOLD) -> float:
    """The evaluator's signal-to-position rule for one forecast."""
    return float(position_from_forecast(np.array([mu]), np.array([p_up]), threshold)[0])


@dataclass(frozen=True)
class ShadowView:
    """What the candidates' pool said where nothing is active."""

    mu: float
    p_up: float
    plain_position: float
    versions: Mapping[str, str]


@dataclass(frozen=True)
class Signal:
    """One entry of ``quantum:signals:{SYMBOL}:{TF}``; ``ts`` is the bar's open time."""

    symbol: str
    tf: str
    ts: int
    mu: float
    p_up: float
    position: float
    position_source: str
    plain_position: float
    contributions: tuple[Contribution, ...]
    versions: Mapping[str, str]
    latency_ms: float
    status: str = LIVE
    reason: str = ""
    shadow: ShadowView | None = None
    # the pooled forecast intervals (None: no member has them, or flat)
    q05: float | None = None
    q50: float | None = None
    q95: float | None = None

    def view(self) -> tuple[float, float, float] | None:
        """(mu, p_up, plain position) of the forecast behind the signal: the
        ensemble's, or where it is flat the shadow pool's (None: none)."""
        if self.status != FLAT:
            return self.mu, self.p_up, self.plain_position
        if self.shadow is None:
            return None
        return self.shadow.mu, self.shadow.p_up, self.shadow.plain_position


@dataclass(frozen=True)
class SizerDecision:
    """``rl_sizer``'s position for this bar and the version that chose it."""

    position: float
    model: str
    version: str


def build_signal(
    symbol: str,
    tf: str,
    ts: int,
    ensemble: EnsembleForecast,
    sizer: SizerDecision | None,
    latency_ms: float,
    threshold: float = DEFAULT_POSITION_THRESHOLD,
) -> Signal:
    """The signal of one bar: the sizer's position if there is one, else the plain rule's."""
    plain = plain_position(ensemble.mu, ensemble.p_up, threshold)
    versions = {c.family: c.version for c in ensemble.contributions}
    position, source = plain, PLAIN_RULE
    if sizer is not None:
        position, source = min(max(sizer.position, -1.0), 1.0), "rl_sizer"
        versions["rl_sizer"] = sizer.version
    q05, q50, q95 = ensemble.quantiles or (None, None, None)
    return Signal(
        symbol, tf, ts, ensemble.mu, ensemble.p_up, position, source, plain,
        ensemble.contributions, versions, latency_ms, q05=q05, q50=q50, q95=q95,
    )  # fmt: skip


def flat_signal(
    symbol: str,
    tf: str,
    ts: int,
    reason: str,
    shadow: EnsembleForecast | None,
    latency_ms: float,
    threshold: float = DEFAULT_POSITION_THRESHOLD,
) -> Signal:
    """The signal of a bar without an active forecaster: flat, with the reason
    and the shadow pool's view (``shadow``: the candidates' pool, if any)."""
    view = None
    if shadow is not None:
        view = ShadowView(
            shadow.mu,
            shadow.p_up,
            plain_position(shadow.mu, shadow.p_up, threshold),
            {c.family: c.version for c in shadow.contributions},
        )
    return Signal(
        symbol, tf, ts, 0.0, 0.5, 0.0, FLAT, 0.0, (), {}, latency_ms, FLAT, reason, view
    )


def held_flat(signal: Signal, reason: str) -> Signal:
    """A live signal whose position the kill switch holds at 0 (the ensemble's
    view and the plain rule's position stay, as recorded)."""
    return replace(signal, position=0.0, position_source=KILLED, status=KILLED, reason=reason)


def signal_fields(signal: Signal) -> dict[str, str]:
    """Stream fields of a signal: numbers as decimal strings, nested parts as
    JSON; the ``shadow_*`` fields only where the signal has a shadow view,
    ``q05``/``q50``/``q95`` only where it has intervals."""
    return _base_fields(signal) | _quantile_fields(signal) | _shadow_fields(signal.shadow)


def _quantile_fields(signal: Signal) -> dict[str, str]:
    values = {name: getattr(signal, name) for name in QUANTILE_FIELDS}
    return {k: repr(v) for k, v in values.items() if v is not None}


def _shadow_fields(shadow: ShadowView | None) -> dict[str, str]:
    if shadow is None:
        return {}
    return {
        "shadow_mu": repr(shadow.mu),
        "shadow_p_up": repr(shadow.p_up),
        "shadow_plain_position": repr(shadow.plain_position),
        "shadow_versions": json.dumps(dict(shadow.versions), sort_keys=True),
    }


def _base_fields(signal: Signal) -> dict[str, str]:
    return {
        "symbol": signal.symbol,
        "tf": signal.tf,
        "ts": str(signal.ts),
        "mu": repr(signal.mu),
        "p_up": repr(signal.p_up),
        "position": repr(signal.position),
        "position_source": signal.position_source,
        "plain_position": repr(signal.plain_position),
        "contributions": json.dumps([_shallow(c) for c in signal.contributions]),
        "versions": json.dumps(dict(signal.versions), sort_keys=True),
        "latency_ms": repr(signal.latency_ms),
        "status": signal.status,
        "reason": signal.reason,
    }


def parse_signal(fields: Mapping[str, str] | Mapping[bytes, bytes]) -> Signal:
    """Read back a signal from its stream fields (``str`` or ``bytes``)."""
    f = {field_text(k): field_text(v) for k, v in fields.items()}
    return Signal(
        symbol=f["symbol"],
        tf=f["tf"],
        ts=int(f["ts"]),
        mu=float(f["mu"]),
        p_up=float(f["p_up"]),
        position=float(f["position"]),
        position_source=f["position_source"],
        plain_position=float(f["plain_position"]),
        contributions=tuple(Contribution(**c) for c in json.loads(f["contributions"])),
        versions=json.loads(f["versions"]),
        latency_ms=float(f["latency_ms"]),
        status=f.get("status", LIVE),  # entries written before the field: live
        reason=f.get("reason", ""),
        shadow=_parse_shadow(f),
        q05=_optional_float(f, "q05"),
        q50=_optional_float(f, "q50"),
        q95=_optional_float(f, "q95"),
    )


def _optional_float(f: Mapping[str, str], key: str) -> float | None:
    return float(f[key]) if key in f else None


def _parse_shadow(f: Mapping[str, str]) -> ShadowView | None:
    if "shadow_mu" not in f:
        return None
    return ShadowView(
        float(f["shadow_mu"]),
        float(f["shadow_p_up"]),
        float(f["shadow_plain_position"]),
        json.loads(f["shadow_versions"]),
    )


def signal_json(signal: Signal) -> dict[str, object]:
    """A signal as JSON-able data, for ``/api/signals``."""
    shadow = signal.shadow
    return _shallow(signal) | {
        "contributions": [_shallow(c) for c in signal.contributions],
        "versions": dict(signal.versions),
        "shadow": None if shadow is None else _shallow(shadow) | {"versions": {**shadow.versions}},
    }


def _shallow(obj: Signal | Contribution | ShadowView) -> dict[str, object]:
    # dataclasses.asdict deep-copies every value: a third of simulate's
    # signal time went there, for fields that are numbers and strings.
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def field_text(value: str | bytes) -> str:
    """A Redis field name or value as text (redis-py gives bytes unless it decodes)."""
    return value.decode() if isinstance(value, bytes) else value
