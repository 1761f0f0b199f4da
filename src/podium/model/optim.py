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
                     head_prefix: str | None = None, layer_decay: float | None = None,
                     model_name: str = "the model") -> torch.optim.Optimizer:
    """timm's optimizer factory: no weight decay on biases and norm layers; `sgd` is Nesterov.

    ``backbone_lr_mult`` != 1 gives every parameter outside ``head_prefix`` (the
    new classifier) ``lr * backbone_lr_mult``: pretrained features move less
    than the freshly initialised head. ``layer_decay`` grades that by depth
    (`layer_decay_groups`). Schedules scale each group from its own lr.
    """
    from timm.optim import create_optimizer_v2

    opt = lookup(OPTIMIZERS, name, "optimizer")
    kwargs = {"momentum": momentum} if opt in ("sgd", "momentum") else {}
    if (backbone_lr_mult != 1.0 or layer_decay is not None) and (not isinstance(model, nn.Module) or not head_prefix):
        key = "layer_decay" if layer_decay is not None else "backbone_lr_mult"
        raise PodiumError(f"train.{key} needs the model and the name of its head")
    if layer_decay is not None:
        model = layer_decay_groups(model, head_prefix, lr=lr, weight_decay=weight_decay, layer_decay=layer_decay,
                                   model_name=model_name)
    elif backbone_lr_mult != 1.0:
        model = backbone_head_groups(model, head_prefix, lr=lr, weight_decay=weight_decay,
                                     backbone_lr_mult=backbone_lr_mult)
    return create_optimizer_v2(model, opt=opt, lr=lr, weight_decay=weight_decay, **kwargs)


def layer_decay_groups(model: nn.Module, head_prefix: str, *, lr: float, weight_decay: float, layer_decay: float,
                       model_name: str = "the model") -> list[dict]:
    """timm's `param_groups_layer_decay` with each group's ``lr_scale`` folded into its ``lr``.

    Folding the scale in (instead of leaving ``lr_scale`` for timm's schedulers)
    keeps it in force under every schedule, torch's OneCycle and the plateau one
    included. timm models bring their own layer grouping (``group_matcher``);
    torchvision CNNs are grouped by `torchvision_layers`.
    """
    from timm.optim import param_groups_layer_decay

    grouped = model if hasattr(model, "group_matcher") else _Grouped(model, torchvision_layers(model, head_prefix,
                                                                                                 model_name))
    groups = param_groups_layer_decay(grouped, weight_decay=weight_decay, layer_decay=layer_decay)
    for group in groups:
        group["lr"] = lr * group.pop("lr_scale")
    return groups


class _Grouped:
    """A model seen through a layer matcher, for timm's grouping functions (the model is not touched)."""

    def __init__(self, model: nn.Module, matcher):
        self.model, self.matcher = model, matcher

    def named_parameters(self, *args, **kwargs):
        return self.model.named_parameters(*args, **kwargs)

    def group_matcher(self, coarse: bool = False):
        return self.matcher


def torchvision_layers(model: nn.Module, head_prefix: str, model_name: str = "the model"):
    """Layer ordinal of a parameter name in a torchvision CNN, for layer-wise decay.

    The layers are the top-level children in forward order, with sequential
    containers (``features`` of MobileNet/EfficientNet/ConvNeXt, ResNet's
    ``layer1..4``) opened into their blocks; the head is the last layer. Models
    without such a trunk (ViT's one ``encoder``) are refused rather than given
    a decay that means nothing.
    """
    head = head_prefix.rstrip(".")
    units: list[str] = []
    for name, child in model.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            units += [f"{name}.{sub}" for sub, block in child.named_children() if _has_params(block)]
        elif _has_params(child):
            units.append(name)
    units = [u for u in units if not (u == head or u.startswith(head + ".") or head.startswith(u + "."))]
    if len(units) < 3:
        raise PodiumError(f"train.layer_decay: cannot find the layers of {model_name} (found {len(units)} trunk "
                          f"block(s): {', '.join(units) or 'none'}); layer-wise decay works with timm models and "
                          "torchvision CNNs (ResNet, MobileNet, EfficientNet, ConvNeXt, ...). Use one of them, or "
                          "train.layer_decay=null")

    def layer_of(param_name: str) -> tuple[float]:
        for i, unit in enumerate(units):
            if param_name.startswith(unit + "."):
                return (float(i),)
        return (float("inf"),)  # the head (and anything outside the trunk) is the top layer

    return layer_of


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


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
    max_lr = [g.get("max_lr", g["lr"]) for g in optimizer.param_groups]  # a rebuilt schedule keeps its peak
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


def move_to_step(scheduler, global_step: int) -> None:
    """Set a freshly built schedule's learning rates for update ``global_step`` (a re-planned
    run continues from where it is, on the new schedule's curve)."""
    if hasattr(scheduler, "step_update"):
        scheduler.step_update(global_step)
    elif isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler) and global_step > 0:
        scheduler.last_epoch = min(global_step, getattr(scheduler, "total_steps", global_step)) - 1
        scheduler.step()


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
