"""`podium auto`: the best submission a time budget buys, in one command.

`plan` measures each candidate (backbone x image size) on this machine and
fits folds, members and epochs into the budget; `pipeline` runs the plan as
normal cv runs (resumable through a state file) and keeps TTA, the ensemble
and per-class biases only where held-out measurements say they pay.
"""
from __future__ import annotations

from podium.autopilot.pipeline import AutoResult, run_auto
from podium.autopilot.plan import PRESETS, Candidate, Plan, make_plan

__all__ = ["PRESETS", "AutoResult", "Candidate", "Plan", "make_plan", "run_auto"]
