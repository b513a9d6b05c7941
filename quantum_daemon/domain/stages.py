"""The stages of a model version and the moves between them (DESIGN §4).

``trained -> candidate | rejected``; ``candidate -> active | retired |
rejected``; ``active -> retired``; ``retired -> active`` (rollback, operator
promotion). A ``StrEnum``: a stage is its name in JSON, in logs and in
comparisons with plain strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum


class Stage(StrEnum):
    TRAINED = "trained"
    CANDIDATE = "candidate"
    ACTIVE = "active"
    REJECTED = "rejected"
    RETIRED = "retired"


STAGES: tuple[Stage, ...] = tuple(Stage)

NEXT_STAGES: Mapping[Stage, frozenset[Stage]] = {
    Stage.TRAINED: frozenset({Stage.CANDIDATE, Stage.REJECTED}),
    Stage.CANDIDATE: frozenset({Stage.ACTIVE, Stage.RETIRED, Stage.REJECTED}),
    Stage.ACTIVE: frozenset({Stage.RETIRED}),
    Stage.RETIRED: frozenset({Stage.ACTIVE}),
    Stage.REJECTED: frozenset(),
}

SERVING = frozenset({Stage.ACTIVE, Stage.CANDIDATE})  # the stages the inference worker loads


def is_stage(name: object) -> bool:
    return isinstance(name, str) and name in STAGES
