"""quantum_daemon: a continuous-learning engine for crypto trading models."""

__version__ = "0.1.0"
