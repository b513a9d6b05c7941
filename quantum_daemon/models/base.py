"""The one small interface every model family implements: defined in
``quantum_daemon.domain.forecasting`` (so that ``core`` can evaluate and
ensemble families without importing ``models``), re-exported here for the
families."""

from __future__ import annotations

from quantum_daemon.domain.forecasting import Family, FitInfo, Forecast, TrainSet

__all__ = ["Family", "FitInfo", "Forecast", "TrainSet"]
