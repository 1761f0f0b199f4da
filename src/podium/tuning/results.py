"""Small pieces shared by the study runner and its outputs (kept apart so neither imports the other)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TuneResult:
    """What a finished `podium tune` call wrote and found."""

    study_dir: Path
    study_name: str
    storage: str
    best_trial: int | None
    best_value: float | None
    best_params: dict
    best_config: Path | None
    trials_csv: Path
    report: Path | None
    counts: dict = field(default_factory=dict)


def redact(url: str) -> str:
    """postgresql://user:secret@host/db -> postgresql://user:***@host/db for logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def retry_callback_class():
    """Optuna's stale-trial retry callback (renamed RetryHeartbeatStaleTrialCallback in Optuna 4.9)."""
    import optuna

    return getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
