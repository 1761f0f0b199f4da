"""Optimizers (timm's factory) and learning-rate schedules (timm's, plus torch's OneCycle).

Every schedule except `plateau` steps per optimizer update, so warmup and
cosine decay stay smooth even for the 3-epoch fine-tunes that matter most.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from podium.errors import PodiumError, lookup

#: `train.optimizer` -> the name timm's `create_optimizer_v2` knows (`sgd` there is Nesterov momentum,
#: `momentum` plain SGD with momentum, as torchvision's reference recipe uses)
OPTIMIZERS: dict[str, str] = {"sgd": "sgd", "momentum": "momentum", "adam": "adam", "adamw": "adamw"}


def create_optimizer(name: str, model: nn.Module | Iterable, *, lr: float, weight_decay: float = 0.0,
                     momentum: float = 0.9, backbone_lr_mult: float = 1.0,
                     head_prefix: str | None = None) -> torch.optim.Optimizer:
    """timm's optimizer factory: no weight decay on biases and norm layers; `sgd` is Nesterov.

    ``backbone_lr_mult`` != 1 gives every parameter outside ``head_prefix`` (the
    new classifier) ``lr * backbone_lr_mult``: pretrained features move less
    than the freshly initialised head. Schedules scale each group from its own lr.
    """
    from timm.optim import create_optimizer_v2

    opt = lookup(OPTIMIZERS, name, "optimizer")
    kwargs = {"momentum": momentum} if opt in ("sgd", "momentum") else {}
    if backbone_lr_mult != 1.0:
        if not isinstance(model, nn.Module) or not head_prefix:
            raise PodiumError("train.backbone_lr_mult needs the model and the name of its head")
        model = backbone_head_groups(model, head_prefix, lr=lr, weight_decay=weight_decay,
                                     backbone_lr_mult=backbone_lr_mult)
    return create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, **kwargs)


def backbone_head_groups(model: nn.Module, head_prefix: str, *, lr: float, weight_decay: float,
                         backbone_lr_mult: float) -> list[dict]:
    """Param groups (backbone/head x decay/no decay) with timm's no-decay rule (biases, 1-d params)."""
    prefix = head_prefix.rstrip(".") + "."
    groups: dict[tuple[bool, bool], list] = {}
    for pname, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_head = pname.startswith(prefix)
        decay = not (param.ndim <= 1 or pname.endswith(".bias"))
        groups.setdefault((is_head, decay), []).append(param)
    return [{"params": params, "lr": lr * (1.0 if is_head else backbone_lr_mult),
             "weight_decay": weight_decay if decay else 0.0}
            for (is_head, decay), params in sorted(groups.items())]


def create_scheduler(name: str, optimizer: torch.optim.Optimizer, *, epochs: int, steps_per_epoch: int,
                     warmup_epochs: float = 0.0, min_lr: float = 0.0, step_epochs: int = 3,
                     milestones: list[int] | None = None, gamma: float = 0.1, plateau_patience: int = 2,
                     mode: str = "max") -> dict | None:
    """A Lightning ``lr_scheduler`` config dict, or None for a constant learning rate."""
    build = lookup(SCHEDULERS, name, "scheduler")
    sched = build(optimizer, name=name, epochs=epochs, steps_per_epoch=max(1, steps_per_epoch),
                  warmup_epochs=warmup_epochs, min_lr=min_lr, step_epochs=step_epochs, milestones=milestones,
                  gamma=gamma, plateau_patience=plateau_patience, mode=mode)
    return None if sched is None else {"scheduler": sched, "interval": "step", "frequency": 1}


def _onecycle(optimizer, *, epochs, steps_per_epoch, warmup_epochs, **_):
    max_lr = [g["lr"] for g in optimizer.param_groups]
    pct = warmup_epochs / epochs if warmup_epochs > 0 else 0.3
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=epochs * steps_per_epoch, pct_start=min(max(pct, 1e-3), 0.999))


def _plateau(optimizer, *, steps_per_epoch, warmup_epochs, mode, gamma, plateau_patience, min_lr, **_):
    return WarmupPlateau(optimizer, warmup_steps=int(round(warmup_epochs * steps_per_epoch)), mode=mode,
                         factor=gamma, patience=plateau_patience, min_lr=min_lr)


def _timm(optimizer, *, name, epochs, steps_per_epoch, warmup_epochs, min_lr, step_epochs, milestones, gamma, **_):
    """timm's per-update schedules (step, multistep, cosine; `none` = constant after a warmup)."""
    if name == "none" and warmup_epochs <= 0:
        return None
    from timm.scheduler import create_scheduler_v2

    sched, _ = create_scheduler_v2(
        optimizer, sched={"none": "constant"}.get(name, name), num_epochs=epochs, decay_epochs=step_epochs,
        decay_milestones=list(milestones or []), decay_rate=gamma, min_lr=min_lr,
        warmup_lr=min(1e-5, min(g["lr"] for g in optimizer.param_groups) / 10),
        warmup_epochs=warmup_epochs, step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    return sched


#: `train.scheduler` -> builder(optimizer, **schedule settings) -> scheduler or None (constant lr)
SCHEDULERS: dict = {"none": _timm, "step": _timm, "multistep": _timm, "cosine": _timm, "plateau": _plateau,
                    "onecycle": _onecycle}


class WarmupPlateau:
    """Reduce-on-plateau with a per-step linear warmup.

    timm's plateau scheduler keeps its patience state out of checkpoints and
    torch's cannot be chained with a warmup; this one does both, so a resumed
    run decays at the same epoch as an uninterrupted one.
    """

    def __init__(self, optimizer, *, warmup_steps: int, mode: str, factor: float, patience: int, min_lr: float):
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.warmup_steps, self.mode, self.factor = warmup_steps, mode, factor
        self.patience, self.min_lr = patience, min_lr
        self.scale, self.best, self.bad_epochs, self.last_step = 1.0, None, 0, 0
        self._apply()

    def _apply(self) -> None:
        warm = min(1.0, (self.last_step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = max(base * self.scale, self.min_lr) * warm

    def step_update(self, num_updates: int) -> None:
        self.last_step = num_updates
        self._apply()

    def end_epoch(self, metric: float | None) -> None:
        if metric is None:
            return
        if self.best is None or (metric > self.best if self.mode == "max" else metric < self.best):
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
            if self.bad_epochs > self.patience:
                self.scale *= self.factor
                self.bad_epochs = 0
        self._apply()

    def state_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def step_scheduler(scheduler, *, global_step: int) -> None:
    """What Lightning calls after each optimizer update."""
    if hasattr(scheduler, "step_update"):  # timm schedulers and WarmupPlateau count updates
        scheduler.step_update(global_step)
    else:
        scheduler.step()


def end_epoch(scheduler, metric: float | None) -> None:
    """Epoch-level decisions (plateau) once the validation metric is known."""
    if isinstance(scheduler, WarmupPlateau):
        scheduler.end_epoch(metric)
