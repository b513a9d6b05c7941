"""The promotion decision on a trained version (DESIGN §7).

A version is judged against the gates and the model's active version: it is
rejected, promoted (the model's first passing version), or it becomes a
candidate that waits in shadow for its live record (the inference service
promotes or retires it). Registry work runs in a thread.
"""

from __future__ import annotations

import asyncio

from quantum_daemon.core.promotion import HeadToHead, Verdict, judge
from quantum_daemon.domain.config import PromotionConfig
from quantum_daemon.domain.events import MODEL_PROMOTED, MODEL_REJECTED, Event
from quantum_daemon.domain.stages import Stage
from quantum_daemon.runtime.logs import get_logger
from quantum_daemon.storage.registry.registry import Registry

log = get_logger()

LOGGED_EVENTS = (MODEL_PROMOTED, MODEL_REJECTED)


def judge_version(
    registry: Registry, promotion: PromotionConfig, model_id: str, version: str
) -> tuple[Verdict, list[Event]]:
    """Judge a registered version against the gates and the model's active
    version, and apply the verdict; the live lifecycle and ``simulate`` both
    decide here."""
    show = registry.show(model_id)
    entry = next(v for v in show["versions"] if v["version"] == version)
    verdict = judge(
        entry["metrics"],
        show["active"],
        HeadToHead.from_dict(entry.get("head_to_head")),
        promotion,
    )
    return verdict, registry.apply_verdict(model_id, version, verdict)


async def decide_version(
    registry: Registry, promotion: PromotionConfig, model_id: str, version: str
) -> str:
    """Judge and apply in a thread; returns the version's stage (``active`` if promoted)."""
    verdict, events = await asyncio.to_thread(
        judge_version, registry, promotion, model_id, version
    )
    _log_decision(model_id, version, verdict, events)
    return verdict.stage if not verdict.promote else Stage.ACTIVE


def _log_decision(model_id: str, version: str, verdict: Verdict, events: list[Event]) -> None:
    for event in events:
        if event.type in LOGGED_EVENTS:
            log.info(
                event.type,
                model_id=model_id,
                version=event.data["version"],
                reason=event.data.get("reason"),
                gate=event.data.get("gate"),
            )
    if events and verdict.stage == Stage.CANDIDATE and not verdict.promote:
        log.info("model.in_shadow", model_id=model_id, version=version, reason=verdict.reason)
