"""Guards that stop a run cleanly instead of training on garbage or crashing inside Lightning.

* `NonFiniteGuard`: a loss that turns inf/nan stops the run before its backward pass,
  naming the epoch and step and the usual suspects; weights that turned non-finite are
  caught before validation, so no checkpoint with nan weights is ever written;
  `FiniteCheckpoint` never makes an epoch with an inf/nan metric the best one.
* `RunOutcome`: remembers the exception that ended ``trainer.fit`` (Lightning turns
  Ctrl+C into ``sys.exit(1)`` and SIGTERM into a bare ``SystemExit``), so training can
  record the run as interrupted and exit 130 / 143.
* `check_batch_norm_batch`: batch size 1 with BatchNorm, explained before the run starts.
"""
from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from podium.errors import PodiumError


def _suspects(pl_module) -> str:
    t = getattr(pl_module, "train_cfg", None)
    if t is None:
        return "a learning rate that is too high, or reduced precision overflowing"
    return (f"usual causes: a learning rate too high (train.lr={t.lr:g}; try 10x lower, or train.warmup_epochs), "
            f"reduced precision overflowing (train.precision={t.precision}; try 32 or bf16-mixed), "
            "no gradient clipping (train.gradient_clip_val=1.0), or corrupt inputs")


class NonFiniteGuard(Callback):
    """Stops training when the loss or the weights stop being finite numbers."""

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            raise PodiumError(
                f"training stopped: the loss became {float(loss.detach().float().mean())} at epoch "
                f"{trainer.current_epoch}, step {trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1} "
                f"of the epoch (global step {trainer.global_step}); {_suspects(pl_module)}. "
                "Checkpoints of earlier epochs are kept; nothing from this epoch was saved.")

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.training:
            return
        bad = [name for name, p in pl_module.named_parameters() if not bool(torch.isfinite(p.detach()).all())]
        if bad:
            raise PodiumError(
                f"training stopped: {len(bad)} weight tensor(s) became non-finite (inf/nan) during epoch "
                f"{trainer.current_epoch}, e.g. {bad[0]}; {_suspects(pl_module)}. "
                "No checkpoint of this epoch was saved.")


class FiniteCheckpoint(ModelCheckpoint):
    """``best.ckpt`` by the monitored metric, never from an epoch whose metric is inf/nan
    (Lightning saves the first epoch's checkpoint whatever its value)."""

    def check_monitor_top_k(self, trainer, current: torch.Tensor | None = None) -> bool:
        # Lightning's public decision "does this value enter the top k?": an inf/nan value never does.
        if current is not None and not bool(torch.isfinite(torch.as_tensor(current, dtype=torch.float64)).all()):
            return False
        return super().check_monitor_top_k(trainer, current)

    @property
    def state_key(self) -> str:
        # Same key as a plain ModelCheckpoint, so runs saved before this class resume their best score.
        return super().state_key.replace(type(self).__qualname__, "ModelCheckpoint", 1)


class RunOutcome(Callback):
    """Records the exception (if any) that ended ``fit``."""

    def __init__(self):
        self.exception: BaseException | None = None

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.exception = exception


def check_batch_norm_batch(module: torch.nn.Module, batch_size: int, model_name: str) -> None:
    """BatchNorm needs at least 2 images per batch in training: say so before the run starts."""
    if batch_size >= 2:
        return
    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        raise PodiumError(
            f"train.batch_size={batch_size} cannot train {model_name}: it has {len(norms)} BatchNorm layer(s), "
            "whose batch statistics need at least 2 images per batch. Use train.batch_size=2 or more "
            "(with train.accumulate_grad_batches to keep the memory of small batches).")
