"""What the demo's config changes against the documented one (config.toml):
printed at the top, so that no loosened rule goes unsaid."""

from __future__ import annotations

import dataclasses
from typing import Any

from quantum_daemon.domain.config import Config

# Sections about models, the judge and trust; where Redis, the API or the data
# dir live is the demo's own business and is printed elsewhere.
JUDGED_SECTIONS = ("evaluation", "training", "models", "promotion", "inference", "trust")


def demo_settings(demo: Config, reference: Config) -> list[str]:
    """One ``section.key = demo (reference)`` line per value that differs."""
    lines = []
    for section in JUDGED_SECTIONS:
        mine, theirs = getattr(demo, section), getattr(reference, section)
        for f in dataclasses.fields(mine):
            value, usual = getattr(mine, f.name), getattr(theirs, f.name)
            if value != usual:
                lines.append(f"{section}.{f.name} = {_show(value)} (config.toml: {_show(usual)})")
    return lines


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)
