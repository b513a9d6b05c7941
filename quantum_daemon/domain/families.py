"""Model families by role, where more than one layer needs to know.

A sizer family sizes the ensemble signal rather than forecasting: it is
left out of the pooled forecast, the worker feeds it the pool of the active
forecasters, and it is trained on the recorded signals.
"""

from __future__ import annotations

SIZER_FAMILIES = frozenset({"rl_sizer"})
# Families whose answer is a position (scored one bar later, against the plain rule).
POSITION_FAMILIES = frozenset({"evo_model", "rl_sizer"})
