"""Experiment tracking: TensorBoard, W&B (offline) and MLflow through Lightning's loggers.

`output.loggers` names entries of `LOGGERS`; each factory builds one Lightning
logger for a run folder. The trackers (W&B, MLflow) get the same three things
from every run: the resolved config flattened to dotted keys (``train.lr``),
logged once as hyper-parameters; the per-epoch metrics Lightning logs; and the
final validation metrics of the best checkpoint, logged once as ``final/<name>``.
Runs with ``output.group`` log as one group (W&B ``group``, MLflow tag
``podium.group``); cross-validation sets it to the cv folder's name for its folds.

This module imports no Lightning, W&B or MLflow until a logger is built, so
the config validator can read `LOGGERS` cheaply.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podium.errors import PodiumError

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

    from podium.schema import OutputConfig, PodiumConfig

GROUP_TAG = "podium.group"
FINAL_PREFIX = "final/"


@dataclass
class TrackingContext:
    """What a logger factory needs to know about the run it logs."""

    cfg: PodiumConfig
    run_dir: Path
    params: dict[str, Any]  # the resolved config, dotted keys
    name: str  # run name as trackers show it: "exp-2", or "cv/fold0" in group "cv"
    group: str | None  # output.group (a cv run's folder name for its folds)


def _tensorboard(ctx: TrackingContext) -> Logger:
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=str(ctx.run_dir), name="tb", version="")


def _csv(ctx: TrackingContext) -> None:
    """metrics.csv is written by podium's own epoch callback whatever the list says (resume, the best
    epoch and the report read it), so ``csv`` adds no Lightning logger: it names that file."""
    return None


def _wandb(ctx: TrackingContext) -> Logger:
    _require("wandb", "wandb")
    import wandb

    cls = _tracking_class("lightning.pytorch.loggers", "WandbLogger")
    # offline unless the user chose another mode: no account or network needed; `wandb sync` uploads later
    mode = os.environ.get("WANDB_MODE") or "offline"
    return cls(ctx.params, name=ctx.name, save_dir=str(ctx.run_dir), project=ctx.cfg.output.experiment,
               group=ctx.group, job_type="fold" if ctx.group else "train", mode=mode,
               tags=[ctx.group] if ctx.group else None, settings=wandb.Settings(console="off"))


def _mlflow(ctx: TrackingContext) -> Logger:
    _require("mlflow", "mlflow")
    import mlflow

    cls = _tracking_class("lightning.pytorch.loggers", "MLFlowLogger")
    # None = MLflow's own default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working folder
    uri = ctx.cfg.output.mlflow_uri or mlflow.get_tracking_uri()
    tags = {"podium.run_dir": str(ctx.run_dir.resolve())}
    if ctx.group:
        tags[GROUP_TAG] = ctx.group
    return cls(ctx.params, experiment_name=ctx.cfg.output.experiment, run_name=ctx.name, tracking_uri=uri,
               tags=tags)


#: ``output.loggers`` name -> factory(context) -> a Lightning logger (or None)
LOGGERS: dict[str, Callable[[TrackingContext], Any]] = {
    "tensorboard": _tensorboard, "csv": _csv, "wandb": _wandb, "mlflow": _mlflow,
}


#: trackers that need an optional extra: logger name -> (import name, extra)
EXTRAS = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}


def check_installed(output: OutputConfig) -> None:
    """Refuse a run whose trackers are not installed before its run folder exists (the config
    itself stays valid everywhere, e.g. to predict with the run on a machine without them)."""
    for name in selected_loggers(output):
        if name in EXTRAS:
            _require(*EXTRAS[name])


def _require(module: str, extra: str) -> None:
    """A tracker asked for in the config but not installed: say which extra brings it."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise PodiumError(f"output.loggers asks for {extra}, but the {module!r} package is not installed. "
                          f"Install it with `pip install -e '.[{extra}]'` in the podium clone, or remove {extra} from output.loggers")


@functools.cache
def _tracking_class(module: str, name: str) -> type:
    """Lightning's logger class with podium's two rules added: the hyper-parameters are the
    flattened run config (not the LightningModule's own hparams), logged once; and
    `log_final` records the best checkpoint's metrics, then closes the tracker's run."""
    import importlib

    base = getattr(importlib.import_module(module), name)

    class Tracking(base):  # type: ignore[valid-type,misc]  # the base is chosen at run time (W&B, MLflow, ...)
        def __init__(self, params: dict[str, Any], **kwargs):
            super().__init__(**kwargs)
            getattr(self, "_wandb_init", {}).pop("anonymous", None)  # deprecated in W&B: warns even when None
            self._podium_params = params
            self._params_logged = False

        def log_hyperparams(self, params, *args, **kwargs) -> None:
            if not self._params_logged:
                self._params_logged = True
                super().log_hyperparams(self._podium_params)

        def finalize(self, status: str) -> None:
            super().finalize(status)
            run = getattr(self, "_experiment", None)  # W&B only; MLflow marks the run FAILED itself
            if status != "success" and run is not None and hasattr(run, "finish"):
                run.finish(exit_code=1)  # W&B: a failed or interrupted run closes as failed

        def log_final(self, metrics: dict[str, float], step: int) -> None:
            self.log_hyperparams({})  # a run stopped before fit's start still records its config
            self.log_metrics(metrics, step=step)
            if hasattr(self.experiment, "finish"):  # W&B: end this run so the next one (a fold) starts fresh
                self.experiment.finish()

    # a module-level name (see `__getattr__`) keeps the logger picklable for spawned DDP workers
    Tracking.__name__ = Tracking.__qualname__ = f"Podium{name}"
    Tracking.__module__ = __name__
    return Tracking


_LAZY_CLASSES = {"PodiumWandbLogger": "WandbLogger", "PodiumMLFlowLogger": "MLFlowLogger"}


def __getattr__(name: str):
    if name in _LAZY_CLASSES:
        return _tracking_class("lightning.pytorch.loggers", _LAZY_CLASSES[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def selected_loggers(output: OutputConfig) -> list[str]:
    """``output.loggers`` in order without repeats; ``output.tensorboard: false`` drops tensorboard."""
    names = list(dict.fromkeys(output.loggers))
    return [n for n in names if n != "tensorboard" or output.tensorboard]


def flatten_config(cfg: PodiumConfig) -> dict[str, Any]:
    """The resolved config as ``{"train.lr": 0.01, ...}``: scalars kept, lists and maps as compact
    JSON, so W&B and MLflow show the same values under the same keys."""
    from podium.schema import config_to_dict, flatten_dict

    return flatten_dict(config_to_dict(cfg))


def create_loggers(cfg: PodiumConfig, run_dir: Path) -> list[Logger]:
    """The Lightning loggers ``output.loggers`` asks for, all writing under ``run_dir``."""
    run_dir = Path(run_dir)
    group = cfg.output.group
    ctx = TrackingContext(cfg, run_dir, flatten_config(cfg), f"{group}/{run_dir.name}" if group else run_dir.name,
                          group)
    loggers = [LOGGERS[name](ctx) for name in selected_loggers(cfg.output)]
    return [lg for lg in loggers if lg is not None]


def final_metrics(summary: dict) -> dict[str, float]:
    """The numbers a finished run reports once: the best checkpoint's validation metrics
    (``final/f1``, ``final/acc``...), the best monitored value and epoch, and the wall time."""
    out = {f"{FINAL_PREFIX}{k}": float(v) for k, v in (summary.get("val_metrics") or {}).items()
           if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for key in ("best_metric", "best_epoch", "epochs_trained", "wall_time_s"):
        if isinstance(summary.get(key), (int, float)):
            out[f"{FINAL_PREFIX}{key}"] = float(summary[key])
    return out


def log_final_metrics(loggers: list, summary: dict, step: int) -> None:
    """Send `final_metrics` to every tracker of the run (TensorBoard and CSV keep their curves)."""
    metrics = final_metrics(summary)
    for logger in loggers:
        if hasattr(logger, "log_final"):
            logger.log_final(metrics, step)
