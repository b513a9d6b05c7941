"""What the registry raises: a refused request, or a state file it cannot trust."""

from __future__ import annotations


class RegistryError(Exception):
    """An operator request the registry refuses (unknown model or version,
    a transition that the stages do not allow); the message says why."""


class StateCorrupt(RegistryError):
    """A ``state.json`` that is not a registry state (bad JSON, an unknown
    stage, a missing field): nothing is written over it; the message names
    the file and what is wrong."""
