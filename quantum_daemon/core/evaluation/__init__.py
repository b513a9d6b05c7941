"""Honest out-of-sample evaluation, the same for every model family.

- ``splits``: walk-forward train / validation / test windows with an embargo.
- ``backtest``: the position rule and the costed, vectorized backtest.
- ``performance``: trading metrics and forecast errors.
- ``significance``: probabilistic and deflated Sharpe ratios.
- ``walkforward``: fit a family per test window and judge it (``walk_forward``).
- ``report``: the metrics JSON and the report folder.

Pure numpy and pandas: nothing here imports a model library (matplotlib only
inside ``report.write_report``). docs/evaluation.md defines every number.
"""
