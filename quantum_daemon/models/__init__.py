"""Model families. Worker-side only: modules here may import torch, xgboost or
lightgbm, so the daemon process never imports this package's families."""
