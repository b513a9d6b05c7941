"""Live inference: the worker process that holds the live models, and the
daemon step that turns its answers into signals, scores and trust."""

from quantum_daemon.inference.service import InferenceService

__all__ = ["InferenceService"]
