"""podium: from a folder of images to a scored, leaderboard-ready submission.

The public Python API (see `podium.api`); names load on first use, so
``import podium`` and ``podium --help`` stay fast and import no torch.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "config": "podium.api", "load_config": "podium.schema", "PodiumConfig": "podium.schema",
    "config_reference": "podium.schema", "config_to_yaml": "podium.schema", "run_demo": "podium.demo",
    "compare_runs": "podium.api", "ServeSettings": "podium.deploy.serve",
    "train": "podium.api", "load_run": "podium.api", "Run": "podium.api",
    "load": "podium.api", "predict": "podium.api", "evaluate": "podium.api", "compose": "podium.api",
    "Predictor": "podium.inference.predictor", "load_predictor": "podium.inference.predictor",
    "Evaluation": "podium.inference.predict", "Model": "podium.inference.predict",
    "cross_validate": "podium.api", "CrossValidation": "podium.api", "cv_gather": "podium.api",
    "cv_tta": "podium.api", "cv_biases": "podium.api", "ensemble": "podium.api", "Ensemble": "podium.api",
    "average_checkpoints": "podium.api", "eda": "podium.api", "EDA": "podium.api", "report": "podium.api",
    "runs": "podium.api", "crop": "podium.api", "synth_mask": "podium.api", "check_submission": "podium.api",
    "PodiumError": "podium.errors",
    "RunInterrupted": "podium.errors",  # train() stopped by SIGINT/SIGTERM: resumable, exit 130/143 in the CLI
    "export": "podium.deploy.export", "serve": "podium.deploy.serve",
    "tune": "podium.tuning", "TuneResult": "podium.tuning",
    "lr_find": "podium.api", "show_batch": "podium.api", "audit": "podium.api", "Audit": "podium.curation.audit",
    "distill": "podium.api", "pseudo_label": "podium.api", "auto": "podium.api",
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
