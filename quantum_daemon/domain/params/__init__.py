"""Hyper-parameters of every model family, importable without the model
libraries: the config validates ``[models.params.<family>]`` with them in the
daemon process, the families build their parameters from them in the
workers, and the tuner reads each family's declared search space
(``base``, ``catalog`` and one module per kind of family)."""
