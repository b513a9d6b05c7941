"""Hyper-parameters of a model family: the mixin lives in
``quantum_daemon.domain.params.base`` (the config checks the parameters in the
daemon process, which never imports a model library); re-exported here for
the families."""

from __future__ import annotations

from quantum_daemon.domain.params.base import MappingParams

__all__ = ["MappingParams"]
