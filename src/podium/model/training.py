"""`podium train`: data -> split -> pipelines -> model -> Lightning fit -> final report.

Everything that can fail on bad input (data, config, weights) is built
before the run folder is created, so a mistake never leaves an empty run.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch

from podium.data.datamodule import PodiumDataModule
from podium.data.dataset import class_counts, describe_split, encode_labels, skipped_images_note
from podium.data.images import load_resized
from podium.data.samples import PreparedData, load_split, prepare_data
from podium.data.transforms import build_train_pipeline, channel_stats, resolve_normalization
from podium.errors import PodiumError
from podium.fileio import write_csv, write_json
from podium.model.losses import compute_class_weights
from podium.rundir import (
    LAST_CHECKPOINT,
    METRICS_FILE,
    SPLIT_FILE,
    SUMMARY_FILE,
    VAL_PREDICTIONS_FILE,
    create_run_dir,
    git_commit,
    library_versions,
    load_run,
    run_lock,
    save_run_files,
)
from podium.schema import PodiumConfig
from podium.tasks.spec import TaskSpec, attribute_metrics, ordinal_values, resolve_task


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict
    val_metrics: dict
    module: object = None
    val_predictions: pd.DataFrame | None = None


def _dataset_stats(train: pd.DataFrame, size: tuple[int, int], limit: int = 256, seed: int = 0,
                   resize: str = "squash"):
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(train), size=min(limit, len(train)), replace=False)
    return lambda: channel_stats([load_resized(train["path"].iloc[i], size, mode=resize) for i in idx])


def normalization(cfg: PodiumConfig, prepared: PreparedData) -> tuple[tuple, tuple]:
    """The (mean, std) a new run normalizes with (`augment.normalize`: ImageNet's or the data's own)."""
    return resolve_normalization(cfg.augment, _dataset_stats(prepared.train, cfg.data.size_hw, resize=cfg.data.resize))


def build_module(cfg: PodiumConfig, prepared: PreparedData, mean, std):
    from podium.model.engine import Classifier

    counts = class_counts(encode_labels(prepared.train["label"], prepared.classes, "training data"),
                          len(prepared.classes))
    weights = compute_class_weights(counts, cfg.train.class_weights)
    task = resolve_task(cfg.task)
    head_weights = None
    train_counts = [int(c) for c in counts]
    if task.heads:
        head_weights = [float((cfg.task.head_weights or {}).get(name, 1.0)) for name in task.attributes.names]
        per_attr = task.attributes.decode_array(encode_labels(prepared.train["label"], prepared.classes, "training data"))
        train_counts = [int(c) for n, k in zip(task.attributes.names, task.heads)
                        for c in np.bincount(per_attr[n], minlength=k)]  # concatenated per head, like the weights
        if cfg.train.class_weights != "none" and not isinstance(cfg.train.class_weights, list):
            per_attr = task.attributes.decode_array(encode_labels(prepared.train["label"], prepared.classes, "training data"))
            weights = [compute_class_weights(np.bincount(per_attr[n], minlength=k), cfg.train.class_weights).tolist()
                       for n, k in zip(task.attributes.names, task.heads)]
            weights = [w for ws in weights for w in ws]  # concatenated per head
        elif weights is not None:
            weights = None  # an explicit composite list cannot weight per-attribute heads
    return Classifier(cfg.model, cfg.train, prepared.classes, mean, std,
                      class_weights=None if weights is None else [float(w) for w in np.asarray(weights, dtype=float)],
                      heads=task.heads, head_weights=head_weights, class_counts=train_counts,
                      ordinal=ordinal_specs(task, prepared.train),
                      soft_temperature=None if prepared.soft is None else prepared.soft.temperature,
                      img_size=list(cfg.data.size_hw))


def ordinal_specs(task: TaskSpec, train: pd.DataFrame) -> list[dict] | None:
    """Value range and bin edges of each `task.ordinal` head, from the training values."""
    from podium.model.ordinal import make_spec

    values = ordinal_values(train, task)
    if values is None:
        return None
    return [make_spec(task.attributes.names.index(name), values[:, j], task.attributes.bins[name]).as_dict()
            for j, name in enumerate(task.ordinal)]


@dataclass
class _Start:
    """Where a run starts: a fresh config and data, or a run folder's last checkpoint."""

    cfg: PodiumConfig
    prepared: PreparedData
    mean: tuple
    std: tuple
    run_dir: Path | None = None
    ckpt_path: str | None = None
    start_epoch: int = 0
    extend: list = field(default_factory=list)
    ckpt_shapes: dict | None = None  # a resumed run's last.ckpt weight shapes


def _starting_point(cfg: PodiumConfig, resume, epochs: int | None, prepared: PreparedData | None, log) -> _Start:
    from podium.model.soft_targets import attach_soft_targets, load_soft_targets

    if resume is None:
        prepared = attach_soft_targets(cfg, prepared or prepare_data(cfg, log=log), log)
        return _Start(cfg, prepared, *normalization(cfg, prepared))
    from podium.model.lifecycle import ExtendSchedule, resume_point

    info = load_run(resume)
    point = resume_point(info, epochs)  # a safe read of last.ckpt, its classes, finished runs
    prepared = load_soft_targets(info.dir, point.cfg, prepared or load_split(info.dir, info.classes))
    return _Start(point.cfg, prepared, info.mean, info.std, run_dir=info.dir,
                  ckpt_path=str(point.checkpoint), start_epoch=point.start_epoch,
                  extend=[ExtendSchedule()] if point.extended else [], ckpt_shapes=point.shapes)


def _check_resume_fits(module, shapes: dict, ckpt_path) -> None:
    """last.ckpt must load into the model the run's config builds; otherwise Lightning stops
    mid-setup with torch's list of every weight of both models."""
    from podium.model.serialization import misfit, state_shapes

    problem = misfit(state_shapes(module.state_dict()), shapes)
    if problem:
        raise PodiumError(
            f"cannot resume: {ckpt_path} does not fit the {module.model_cfg.name} model the run's config.yaml "
            f"builds: {problem}. The checkpoint belongs to another run or configuration; restore this run's "
            "last.ckpt or start a new run")


def build_datamodule(cfg: PodiumConfig, prepared: PreparedData, start_epoch: int = 0) -> PodiumDataModule:
    """Train/val loaders of a run (ordinal heads also get the exact values)."""
    return PodiumDataModule(prepared.train, prepared.val, prepared.classes, cfg.data,
                            build_train_pipeline(cfg.augment, cfg.data.size_hw), cfg.augment,
                            cfg.train.batch_size, cfg.train.sampler, seed=cfg.train.seed, start_epoch=start_epoch,
                            train_values=ordinal_values(prepared.train, resolve_task(cfg.task)),
                            train_soft=prepared.soft)


def train(cfg: PodiumConfig | None, *, resume: str | Path | None = None, dry_run: bool = False,
          callbacks: list | None = None, progress: bool = True, log=print,
          prepared: PreparedData | None = None, epochs: int | None = None) -> TrainResult:
    """Train one run; ``resume`` continues a run folder from its last.ckpt (``epochs``
    extends it, also a finished one). The run folder's status.json says running, finished,
    interrupted (SIGINT/SIGTERM: `RunInterrupted`) or failed.

    ``prepared`` supplies already-split data (cross-validation folds) instead of ``cfg.data``.
    """
    with contextlib.ExitStack() as held:
        return _train(cfg, held, resume=resume, dry_run=dry_run, callbacks=callbacks, progress=progress, log=log,
                      prepared=prepared, epochs=epochs)


def _train(cfg: PodiumConfig, held: contextlib.ExitStack, *, resume, dry_run: bool, callbacks, progress: bool, log,
           prepared: PreparedData | None, epochs: int | None) -> TrainResult:
    """`train` with the run's writer lock held in ``held`` (taken before a resumed run is touched,
    right after a new run's folder is made) until the caller's block ends."""
    from podium.model.distributed import launched_rank
    from podium.model.engine import check_accelerator
    from podium.quiet import quiet_libraries

    if cfg is not None:  # a resumed run's config is its own, read below
        check_accelerator(cfg.train.accelerator)
    started = time.time()
    held.enter_context(quiet_libraries())  # Lightning's banners and tips, for this run only
    if cfg is not None:  # before any data is read; a resumed run's config is checked below
        _check_train_config(cfg)
    ddp_worker = launched_rank() != 0  # ranks >= 1 never create folders: they learn rank 0's (ShareRunDir)
    if resume is not None and not ddp_worker:
        held.enter_context(run_lock(load_run(resume).dir, "train --resume", log))
    start = _starting_point(cfg, resume, epochs, prepared, log)
    _check_train_config(start.cfg)
    if start.prepared.skipped:
        log(skipped_images_note(start.prepared.skipped))
    datamodule, module = _build_model_and_data(start, held)
    if dry_run:
        return _dry_run(start.cfg, module, datamodule, start.prepared, callbacks, progress)
    run_dir = _open_run_dir(start, held, new=resume is None, ddp_worker=ddp_worker, log=log)
    return _fit(start, run_dir, module, datamodule, callbacks, progress=progress, ddp_worker=ddp_worker,
                started=started)


def _check_train_config(cfg: PodiumConfig) -> None:
    """The checks a config passes before any data is read: the accelerator exists, a multi-device
    run was launched as one, SyncBatchNorm has more than one device."""
    from podium.model.distributed import check_launch, check_sync_batchnorm
    from podium.model.engine import check_accelerator

    check_accelerator(cfg.train.accelerator)
    check_launch(cfg.train)
    check_sync_batchnorm(cfg.train)


def _build_model_and_data(start: _Start, held: contextlib.ExitStack) -> tuple[PodiumDataModule, Any]:
    """The seeded datamodule and model of a run, checked (batch norm with the batch size, a resumed
    checkpoint that fits), with the CPU cores shared out for the length of ``held``."""
    from podium.model.guards import check_batch_norm_batch

    cfg = start.cfg
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg, start.prepared, start.start_epoch)
    module = build_module(cfg, start.prepared, start.mean, start.std)
    check_batch_norm_batch(module, cfg.train.batch_size, cfg.model.name)
    if start.ckpt_shapes is not None:
        _check_resume_fits(module, start.ckpt_shapes, start.ckpt_path)
    held.enter_context(share_cpu_cores(cfg, datamodule.num_workers))
    return datamodule, module


def _open_run_dir(start: _Start, held: contextlib.ExitStack, *, new: bool, ddp_worker: bool, log) -> Path:
    """The run folder training writes: a new run's is made (by rank 0) and locked; an extended
    run's config.yaml records its new length. Optional trackers are checked first, so a missing
    W&B/MLflow stops before the folder exists."""
    from podium.model.distributed import launched_rank
    from podium.reports.tracking import check_installed

    cfg, run_dir = start.cfg, start.run_dir
    check_installed(cfg.output)
    if new:
        run_dir = _new_run_dir(cfg, start) if not ddp_worker else Path(cfg.output.dir) / cfg.output.name
        if not ddp_worker:
            held.enter_context(run_lock(run_dir, "train", log))
    if start.extend and not ddp_worker:
        from podium.model.lifecycle import record_extension

        record_extension(run_dir, cfg)
    log(f"run folder: {run_dir}" if not ddp_worker else f"rank {launched_rank()}: rank 0 makes and writes the run folder")
    log(describe_split(start.prepared.train, start.prepared.val).to_string())
    return run_dir


def _fit(start: _Start, run_dir: Path, module, datamodule: PodiumDataModule, callbacks, *, progress: bool,
         ddp_worker: bool, started: float) -> TrainResult:
    """Lightning's fit, recorded in the run's status.json (running, then finished, interrupted or
    failed), and the run's outputs written by rank 0 (`finish_run`)."""
    from podium.model.distributed import ShareRunDir
    from podium.model.engine import build_callbacks, build_trainer
    from podium.model.guards import RunOutcome
    from podium.model.lifecycle import recorded_run

    cfg = start.cfg
    outcome = RunOutcome()
    shared = ShareRunDir(run_dir)
    with recorded_run(run_dir, enabled=not ddp_worker) as record:
        record.outcome = outcome
        extra = list(callbacks or []) + start.extend + [outcome, shared]
        trainer = build_trainer(cfg, run_dir, callbacks=build_callbacks(cfg, run_dir, extra), progress=progress,
                                loggers=not ddp_worker)
        try:
            record.fitting = True
            # weights_only=True: Lightning's own resume load never unpickles objects either
            trainer.fit(module, datamodule=datamodule, ckpt_path=start.ckpt_path, weights_only=True)
        finally:
            record.fitting = False
        if not trainer.is_global_zero:
            return TrainResult(shared.run_dir, {}, {})
        datamodule.publish_caches()
        result = finish_run(cfg, run_dir, start.prepared, module, trainer, datamodule, started)
        record.status("finished", epoch=int(trainer.current_epoch), best_metric=result.summary.get("best_metric"))
    return result


def _dry_run(cfg: PodiumConfig, module, datamodule, prepared: PreparedData, callbacks, progress: bool) -> TrainResult:
    """One batch through training and validation in a throw-away folder."""
    import tempfile

    from podium.model.engine import build_trainer

    with tempfile.TemporaryDirectory(prefix="podium-dry-run-") as tmp:
        trainer = build_trainer(cfg, Path(tmp), callbacks=callbacks, dry_run=True, progress=progress)
        trainer.fit(module, datamodule=datamodule)
    return TrainResult(Path(tmp), {"dry_run": True, "classes": prepared.classes,
                                   "train_images": len(prepared.train), "val_images": len(prepared.val)}, {})


def _new_run_dir(cfg: PodiumConfig, start: _Start) -> Path:
    """A new run folder with its config, class map and split (rank 0 only)."""
    run_dir = create_run_dir(cfg.output.dir, cfg.output.name)
    prepared = start.prepared
    save_run_files(run_dir, cfg, prepared.classes, start.mean, start.std, {"seed": cfg.train.seed})
    write_csv(run_dir / SPLIT_FILE, pd.concat([prepared.train.assign(split="train"),
                                                prepared.val.assign(split="val")]))
    from podium.model.soft_targets import save_soft_targets

    save_soft_targets(run_dir, prepared)
    return run_dir


@contextlib.contextmanager
def share_cpu_cores(cfg: PodiumConfig, loader_workers: int) -> Iterator[None]:
    """On CPU, leave the loader workers their cores while the block runs: one torch thread per
    core on top of them oversubscribes the machine (4-5x slower steps measured on 2 cores).
    The caller's thread count comes back when the block ends (it is process-wide)."""
    from podium.data.cache import available_cpus
    from podium.model.engine import uses_cuda

    before = torch.get_num_threads()
    if not uses_cuda(cfg.train.accelerator):
        torch.set_num_threads(max(1, available_cpus() - loader_workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def finish_run(cfg: PodiumConfig, run_dir: Path, prepared: PreparedData, module, trainer, datamodule,
               started: float) -> TrainResult:
    """Evaluate the best weights on validation; write predictions, tables and summary.json.

    The trained module takes the best checkpoint's weights in place, and the
    validation loader (with its decoded-image cache) is reused: nothing is
    rebuilt or decoded twice.
    """
    from podium.evaluation.metrics import save_classification_report
    from podium.evaluation.tables import prediction_table, save_probabilities
    from podium.inference.predict import predict_loader
    from podium.model.checkpoints import read_checkpoint
    from podium.model.engine import inference_device, uses_cuda

    ckpt = trainer.checkpoint_callback
    best_path = Path(ckpt.best_model_path) if ckpt and ckpt.best_model_path else run_dir / LAST_CHECKPOINT
    module.load_state_dict(read_checkpoint(best_path)["state_dict"], strict=True)
    module.eval()
    # Lightning hands the module back on the CPU: predict where it trained (the GPU), not there
    probs = predict_loader(module, datamodule.eval_loader(whole=True), inference_device(cfg.train.accelerator), progress=False)
    y_true = encode_labels(prepared.val["label"], prepared.classes, "validation data")
    table = prediction_table(prepared.val["id"], probs, prepared.classes, paths=prepared.val["path"],
                             targets=prepared.val["label"])
    save_probabilities(table, run_dir / VAL_PREDICTIONS_FILE)
    val_metrics = save_classification_report(run_dir, y_true, probs, prepared.classes)
    per_attribute = attribute_metrics(resolve_task(cfg.task), y_true, probs)
    if per_attribute:
        val_metrics["attributes"] = per_attribute
    if module.ordinal:
        val_metrics["ordinal"] = save_ordinal_cuts(run_dir, module, datamodule.eval_loader(whole=True), y_true)
    best_score = float(ckpt.best_model_score) if ckpt and ckpt.best_model_score is not None else None
    best_epoch = _best_epoch(run_dir / METRICS_FILE, cfg.train.monitor, cfg.train.monitor_mode)
    summary = {
        "run_dir": str(run_dir), "monitor": cfg.train.monitor, "best_metric": best_score,
        "best_epoch": best_epoch, "epochs_trained": int(trainer.current_epoch),
        "best_checkpoint": best_path.name, "val_metrics": val_metrics,
        "skipped_images": int(module.skipped_images) + len(prepared.skipped), "train_images": len(prepared.train),
        "val_images": len(prepared.val), "classes": prepared.classes,
        "wall_time_s": round(time.time() - started, 2), "seed": cfg.train.seed,
        "git_commit": git_commit(), "versions": library_versions(),
        "device": "cuda" if uses_cuda(cfg.train.accelerator) else "cpu",
    }
    if prepared.soft is not None:
        summary["soft_targets"] = prepared.soft.record
    summary.update(_time_limit_record(trainer))
    write_json(run_dir / SUMMARY_FILE, summary)
    from podium.reports.tracking import log_final_metrics

    log_final_metrics(trainer.loggers, summary, step=int(trainer.global_step))
    if cfg.output.report:
        write_report(run_dir, module, cfg)
    return TrainResult(run_dir, summary, val_metrics, module, table)


def _time_limit_record(trainer) -> dict:
    """What `train.max_time` did: the limit, the epochs it planned and the measured epoch times."""
    from podium.model.timelimit import PlanToDeadline

    plan = next((c for c in trainer.callbacks if isinstance(c, PlanToDeadline)), None)
    if plan is None:
        return {}
    return {"max_time_s": plan.seconds, "planned_epochs": plan.planned,
            "epoch_times_s": [round(t, 3) for t in plan.epoch_times]}


def save_ordinal_cuts(run_dir: Path, module, loader, y_true: np.ndarray) -> dict:
    """Tune the ordinal heads' bin edges on validation and write ordinal_cuts.json.

    The tuned edges are used at predict time only where their nested (held-out)
    gain is positive; the run's own validation scores keep the task's edges, so
    they are not fitted on the images they score.
    """
    from podium.model.ordinal import ORDINAL_CUTS_FILE, tune_module_cuts

    with torch.inference_mode():
        raw = torch.cat([module._run_model(module._prepare(images.to(module.device))).float().cpu()
                         for images, _, _ in loader])
    report = tune_module_cuts(module, raw, y_true)
    for entry in report.values():
        entry["applied"] = entry["nested_gain"] > 0
    write_json(run_dir / ORDINAL_CUTS_FILE, report)
    return report


def write_report(run_dir: Path, module, cfg: PodiumConfig) -> Path:
    """The HTML training report, written at the end of every run (Grad-CAM from the best weights)."""
    from podium.reports.gradcam import gradcam_source
    from podium.reports.report import build_run_report

    source = gradcam_source(module, cfg.data.size_hw) if cfg.output.gradcam else None
    return build_run_report(run_dir, model_forward=source)


def _best_epoch(metrics_csv: Path, monitor: str, mode: str) -> int | None:
    if not metrics_csv.exists():
        return None
    table = pd.read_csv(metrics_csv)
    if monitor not in table or table[monitor].isna().all():
        return None
    idx = table[monitor].idxmin() if mode == "min" else table[monitor].idxmax()
    return int(table.loc[idx, "epoch"])
