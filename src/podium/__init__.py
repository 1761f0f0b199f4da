"""podium: from a folder of images to a scored, leaderboard-ready submission.

The public Python API (see `podium.api`); names load on first use, so
``import podium`` and ``podium --help`` stay fast and import no torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "config": "podium.api", "load_config": "podium.schema", "PodiumConfig": "podium.schema",
    "train": "podium.api", "load_run": "podium.api", "Run": "podium.api", "Evaluation": "podium.api",
    "cross_validate": "podium.api", "CrossValidation": "podium.api", "ensemble": "podium.api",
    "Ensemble": "podium.api", "eda": "podium.api", "EDA": "podium.api", "PodiumError": "podium.errors",
    "RunInterrupted": "podium.errors",  # train() stopped by SIGINT/SIGTERM: resumable, exit 130/143 in the CLI
    "export": "podium.deploy.export", "serve": "podium.deploy.serve", "load_predictor": "podium.deploy.runtime",
    "tune": "podium.tuning", "TuneResult": "podium.tuning",
    "runs": "podium.api", "lr_find": "podium.api",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'podium' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
