"""Hyper-parameter search with Optuna: `podium tune` and ``podium.tune``.

`space` parses and validates the ``search:`` section against the config
schema, `study` runs the study (storage, sampler, pruner, objective, workers),
`pruning` reports per-epoch values from training, `outputs` writes the trials
table, best config and plots. The package is named ``tuning`` so that the
function ``podium.tune`` is never shadowed by a ``podium.tune`` sub-module.
"""
from __future__ import annotations

from podium.tuning.study import TuneResult, tune

__all__ = ["TuneResult", "tune"]
