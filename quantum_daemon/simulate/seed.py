"""``simulate --seed-live``: hand a simulation's evidence to the live daemon.

A freshly started daemon has no record: its models would wait
``min_record_bars`` live bars before the record rule can pass, and
``rl_sizer`` has no signal history to learn from. Seeding writes, into the
configured ``storage.data_dir``:

- each model's out-of-sample record (``predictions.sqlite3``
  ``model_record``, source ``simulated``): the costed returns of its
  simulated versions' positions, newest version per bar. Live rows of the
  same bars win (their version names are newer);
- the simulated signal history (``decisions``, latency 0), which the
  lifecycle merges with the signal stream when it trains ``rl_sizer``
  (``recorded_signals.seeded_rows``); a signal already recorded live is kept;
- the trial ledger: each model's simulated versions (kind ``simulated``)
  and the variants the simulation judged (``trials.json``): the record's
  deflated Sharpe counts them all.

Seeding twice adds the trials twice: it is a record of what was tried.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from quantum_daemon.domain.ids import ModelKey
from quantum_daemon.simulate.engine import Simulation
from quantum_daemon.simulate.records import signal_view
from quantum_daemon.storage.prediction_records import (
    NO_VIEW,
    RECORDS_FILE,
    SIMULATED,
    DecisionRow,
    PredictionRecords,
    RecordRow,
)
from quantum_daemon.storage.registry.registry import Registry


@dataclass(frozen=True)
class Seeded:
    models: int
    record_rows: int
    signals: int
    trials: int

    def describe(self, data_dir: Path) -> str:
        return (
            f"seeded {data_dir}: the records of {self.models} models ({self.record_rows} bars), "
            f"{self.signals} signals, {self.trials} trials"
        )


def seed_live(sim: Simulation, data_dir: Path, variants: int) -> Seeded:
    """Write the simulation's records, signals and trials into ``data_dir``."""
    records = PredictionRecords(data_dir / RECORDS_FILE)
    try:
        added = records.add_record(_record_rows(sim))
        signals = _decision_rows(sim)
        records.record([], signals)
    finally:
        records.close()
    registry = Registry(data_dir)
    trials = 0
    for model_id, count in sorted(_versions_per_model(sim).items()):
        registry.count_trials(model_id, "simulated", count)
        trials += count
    registry.count_zoo_trials("simulated_variants", variants)
    return Seeded(len(sim.model_records), added, len(signals), trials + variants)


def _record_rows(sim: Simulation) -> list[RecordRow]:
    rows = []
    for model_id, record in sorted(sim.model_records.items()):
        symbol = ModelKey.parse(model_id).symbol
        for ts, (version, net) in sorted(record.items()):
            rows.append(RecordRow(model_id, symbol, sim.tf, ts, version, SIMULATED, net, SIMULATED))
    return rows


def _decision_rows(sim: Simulation) -> list[DecisionRow]:
    rows = []
    for (symbol, tf), bars in sorted(sim.bars.items()):
        for bar in bars:
            if bar.signal is None:
                continue
            view = signal_view(bar.signal)
            mu, p_up, plain = view or (0.0, 0.5, 0.0)
            status = NO_VIEW if view is None else str(bar.signal.get("status", "live"))
            position = float(bar.signal["position"])
            rows.append(DecisionRow(symbol, tf, bar.ts, mu, p_up, position, plain, 0.0, status))
    return rows


def _versions_per_model(sim: Simulation) -> dict[str, int]:
    counts: dict[str, int] = {}
    for model_id, _ in sim.versions:
        counts[model_id] = counts.get(model_id, 0) + 1
    return counts
