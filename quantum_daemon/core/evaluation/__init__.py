"""Honest out-of-sample evaluation, the same for every model family.

- ``splits``: walk-forward train / validation / test windows with an embargo.
- ``backtest``: the position rule and the costed, vectorized backtest.
- ``performance``: trading metrics and forecast errors.
- ``significance``: probabilistic and deflated Sharpe ratios.
- ``walkforward``: fit a family per test window and judge it (``walk_forward``).
- ``report``: the metrics JSON, the returns CSV and the calibration JSON
  (``storage.report_files`` writes them into the report folder).

Pure numpy and pandas: nothing here imports a model library or writes a file.
docs/evaluation.md defines every number.
"""
