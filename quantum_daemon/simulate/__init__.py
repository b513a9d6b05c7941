"""``quantum-daemon simulate``: the continuous-learning loop replayed over
history on a simulated clock, through the live path's own decisions
(docs/simulate.md)."""
