"""Per-epoch reports from a training run to its Optuna trial, and the pruning decision.

optuna-integration's ``PyTorchLightningPruningCallback`` only warns when the
monitored metric is missing, and raises inside ``trainer.fit`` so the run
never writes its summary. This callback fails loudly on a missing monitor and,
when the pruner says stop, lets the epoch end normally (``trainer.should_stop``):
the pruned trial is still a complete run folder, and the tuner raises
``TrialPruned`` after ``train`` returns. The last epoch is reported but never
pruned: the run is finished by then, and a value is worth more than a prune.
"""
from __future__ import annotations

import lightning.pytorch as pl

from podium.errors import PodiumError


class MonitorMissing(PodiumError):
    """The metric a study optimises never appeared in the run's logged metrics."""


class TrialReporter(pl.Callback):
    """Reports ``monitor`` after every validation epoch to ``trial`` and stops pruned runs."""

    def __init__(self, trial, monitor: str):
        super().__init__()
        self.trial = trial
        self.monitor = monitor
        self.epochs_run = 0
        self.pruned_epoch: int | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        epoch = int(trainer.current_epoch)
        if value is None:
            logged = ", ".join(sorted(k for k in trainer.callback_metrics if k.startswith("val"))) or "none"
            raise MonitorMissing(
                f"train.monitor {self.monitor!r} was not logged at the end of epoch {epoch}; the run logged: {logged}. "
                "Set train.monitor to one of them (for example val_f1)")
        self.epochs_run = epoch + 1
        self.trial.report(float(value), step=epoch)
        last = trainer.max_epochs is not None and epoch + 1 >= trainer.max_epochs
        if not last and self.trial.should_prune():  # after the last epoch there is nothing left to save
            self.pruned_epoch = epoch
            trainer.should_stop = True
