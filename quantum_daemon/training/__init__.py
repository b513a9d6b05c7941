"""Training jobs and where they run: frozen specs and results (``jobs``), the
worker-process side (``worker``), the supervised local spawn pool (``pool``)
and the Ray backend (``ray_backend``). Nothing here imports a model library at
module level: the daemon process imports this package."""
