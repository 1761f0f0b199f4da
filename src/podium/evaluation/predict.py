"""Inference: probabilities per image, the submission CSV, and evaluation.

Inference reuses the run's own class map, image size, normalization and eval
pipeline, so predictions match what validation measured.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from podium.schema import PodiumConfig, SubmissionConfig
from podium.data.dataset import build_eval_dataset, encode_labels, make_loader, resolve_num_workers
from podium.errors import PodiumError
from podium.fileio import write_csv, write_parquet
from podium.rundir import RunInfo, load_run, next_free_dir
from podium.data.samples import is_competition_layout, load_labeled, maybe_crop, prediction_samples
from podium.evaluation.tables import prediction_table, save_probabilities
from podium.model.checkpoints import load_module


def predict_frame(module, frame: pd.DataFrame, cfg: PodiumConfig, *, batch_size: int | None = None,
                  tta: list[str] | None = None, tta_merge: str | None = None, device: str | None = None,
                  progress: bool = True) -> np.ndarray:
    """(N, C) probabilities for the images in ``frame``, in batches, eval mode.

    The device follows ``train.accelerator`` (the same policy as training);
    ``tta_merge`` None means the run's ``predict.tta_merge``.
    """
    from podium.model.engine import inference_device

    dataset = build_eval_dataset(frame["path"], None, cfg.data, cfg.augment)
    loader = make_loader(dataset, batch_size or cfg.train.batch_size,
                         num_workers=min(resolve_num_workers(cfg.data.num_workers), 4))
    return predict_loader(module, loader, device or inference_device(cfg.train.accelerator), tta=tta,
                          tta_merge=tta_merge or cfg.predict.tta_merge, progress=progress)


@torch.inference_mode()
def predict_loader(module, loader, device, *, tta: list[str] | None = None, tta_merge: str = "mean",
                   progress: bool = True) -> np.ndarray:
    """(N, C) probabilities for every batch of ``loader`` (images, targets, skipped)."""
    from podium.evaluation.tta import parse_views, predict_with_tta, resolve_merge

    module = module.to(device).eval()
    views = parse_views(tta) if tta else None
    merge = resolve_merge(tta_merge)
    chunks = []
    bar = _progress(progress, len(loader), "predicting")
    for images, _, _ in loader:
        images = images.to(device, non_blocking=True)
        if views:
            probs = predict_with_tta(module, images, views, merge=merge)
        else:
            probs = module(images).float().softmax(1)
        chunks.append(probs.cpu().numpy())
        bar.advance()
    bar.close()
    return np.concatenate(chunks) if chunks else np.zeros((0, len(module.classes)), dtype=np.float32)


class _progress:
    """A rich progress bar with ETA, or nothing when quiet."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self._bar = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(TextColumn(desc), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            self._bar.start()
            self._task = self._bar.add_task(desc, total=total)

    def advance(self) -> None:
        if self._bar:
            self._bar.advance(self._task)

    def close(self) -> None:
        if self._bar:
            self._bar.stop()


FLIP_OPS = {"HorizontalFlip", "RandomHorizontalFlip"}


def resolve_tta(requested: list[str] | None, cfg: PodiumConfig) -> list[str] | None:
    """The TTA views to run: the plain image plus the requested views.

    ``requested`` None means the run's ``predict.tta``; `auto` there means a
    horizontal flip exactly when training augmented with flips, so the flipped
    view is one the model has learnt; ``["none"]`` or [] means no TTA.
    """
    views = cfg.predict.tta if requested is None else requested
    if views == "auto":
        a = cfg.augment
        flips = any(op.get("name") in FLIP_OPS for op in a.train_ops) if a.train_ops is not None else a.preset != "none"
        views = ["hflip"] if flips else []
    views = [v for v in views if v not in ("none", "identity")]
    return ["identity", *views] if views else None


def apply_biases(probs: np.ndarray, path: str | Path | None, classes: list[str]) -> np.ndarray:
    """Per-class logit biases fitted for macro F1 on out-of-fold predictions (`podium cv-biases`)."""
    if not path:
        return probs
    import json

    from podium.evaluation.ensemble import apply_logit_biases

    path = Path(path)
    if not path.is_file():
        raise PodiumError(f"logit biases file not found: {path}")
    saved = json.loads(path.read_text())
    if list(saved.get("classes", [])) != list(classes):
        raise PodiumError(f"logit biases in {path} are for classes {saved.get('classes')}, not the run's {classes}")
    return apply_logit_biases(probs, np.asarray(saved["biases"], dtype=np.float64))


def format_ids(ids: pd.Series, id_format: str) -> pd.Series:
    if id_format == "name":
        return ids.map(lambda s: Path(s).name)
    if id_format == "stem":
        return ids.map(lambda s: Path(s).stem)
    return ids


def submission_frame(ids: pd.Series, probs: np.ndarray, classes: list[str], sub: SubmissionConfig) -> pd.DataFrame:
    pred = probs.argmax(1)
    labels = pred if sub.label_format == "index" else np.asarray(classes, dtype=object)[pred]
    if sub.id_column == sub.label_column:
        raise PodiumError("output.submission.id_column and label_column must differ")
    return pd.DataFrame({sub.id_column: format_ids(ids, sub.id_format).to_numpy(), sub.label_column: labels})


def write_outputs(out_dir: Path, ids: pd.Series, probs: np.ndarray, classes: list[str], sub_cfg: SubmissionConfig, *,
                  competition_root: str | Path | None = None, probs_name: str = "probabilities.parquet",
                  sub_name: str = "submission.csv") -> tuple[Path, Path]:
    """Probabilities (id + one column per class) and the submission, in the competition's
    own format when ``competition_root`` holds its eval/info.csv."""
    probs_path = save_probabilities(prediction_table(ids, probs, classes), Path(out_dir) / probs_name)
    sub_path = Path(out_dir) / sub_name
    if competition_root:
        write_competition_submission(competition_root, ids, probs, sub_path)
    else:
        write_csv(sub_path, submission_frame(ids, probs, classes, sub_cfg))
    return probs_path, sub_path


def write_competition_submission(root: str | Path, ids, probs: np.ndarray, out_path: Path) -> Path:
    from podium.data.competition import _eval_dir, check_submission, write_mask_submission

    info_csv = _eval_dir(Path(root)) / "info.csv"
    path = write_mask_submission(info_csv, list(ids), probs.argmax(1), out_path, n_classes=probs.shape[1])
    problems = check_submission(path, info_csv, n_classes=probs.shape[1])
    if problems:  # a bug, not a user error: the writer should never produce an invalid file
        raise RuntimeError("invalid submission written: " + "; ".join(problems))
    return path


def _output_dir(info: RunInfo, data: str | Path, out: str | Path | None, kind: str) -> Path:
    if out is not None:
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise PodiumError(f"output folder {out} exists and is not empty; choose a new --out (nothing is overwritten)")
        out.mkdir(parents=True, exist_ok=True)
        return out
    name = Path(data).stem or "data"
    return next_free_dir(info.dir / kind, name)


def predict_run(run_dir: str | Path, data: str | Path, *, out: str | Path | None = None, checkpoint: str = "best",
                batch_size: int | None = None, tta: list[str] | None = None, tta_merge: str | None = None,
                progress: bool = True, biases: str | Path | None = None) -> dict:
    """Probabilities parquet + submission CSV for an unlabeled folder or CSV."""
    info = load_run(run_dir)
    module = load_module(info.checkpoint(checkpoint), info.classes)
    competition = is_competition_layout(info.config, data) and info.config.task.mode != "per_attribute"
    frame = prediction_samples(info.config, data, competition)
    tta = resolve_tta(tta, info.config)
    probs = predict_frame(module, frame, info.config, batch_size=batch_size, tta=tta, tta_merge=tta_merge,
                          progress=progress)
    probs = apply_biases(probs, biases or info.config.predict.logit_biases, info.classes)
    out_dir = _output_dir(info, data, out, "predictions")
    probs_path, sub_path = write_outputs(out_dir, frame["id"], probs, info.classes, info.config.output.submission,
                                         competition_root=data if competition else None)
    counts = pd.Series(np.asarray(info.classes)[probs.argmax(1)]).value_counts().to_dict()
    return {"out_dir": out_dir, "probabilities": probs_path, "submission": sub_path, "n_images": len(frame),
            "predicted_counts": counts}


def evaluate_run(run_dir: str | Path, data: str | Path, *, out: str | Path | None = None, checkpoint: str = "best",
                 batch_size: int | None = None, tta: list[str] | None = None, tta_merge: str | None = None,
                 progress: bool = True, biases: str | Path | None = None) -> dict:
    """Metrics, per-class table and confusion matrix of a run on a labelled folder or CSV."""
    from podium.evaluation.metrics import save_classification_report

    info = load_run(run_dir)
    frame = load_labeled(data, info.config, strict_fixes=False)  # the run's fixes may name other images
    y_true = encode_labels(frame["label"], info.classes, f"evaluation data {data}")
    module = load_module(info.checkpoint(checkpoint), info.classes)
    tta = resolve_tta(tta, info.config)
    probs = predict_frame(module, frame, info.config, batch_size=batch_size, tta=tta, tta_merge=tta_merge,
                          progress=progress)
    probs = apply_biases(probs, biases or info.config.predict.logit_biases, info.classes)
    out_dir = _output_dir(info, data, out, "evaluations")
    table = prediction_table(frame["id"], probs, info.classes, paths=frame["path"], targets=frame["label"])
    save_probabilities(table, out_dir / "predictions.parquet")
    metrics = save_classification_report(out_dir, y_true, probs, info.classes,
                                         extra={"data": str(data), "checkpoint": checkpoint, "tta": tta or []})
    return {"out_dir": out_dir, "metrics": metrics, "n_images": len(frame)}


def compose_runs(runs: list[str | Path], data: str | Path, *, out: str | Path | None = None, checkpoint: str = "best",
                 batch_size: int | None = None, tta: list[str] | None = None, tta_merge: str | None = None,
                 progress: bool = True) -> dict:
    """One model per attribute (task.mode=per_attribute) -> composite probabilities and a submission.

    Each run predicts its attribute; the composite probability is the product of
    the attributes' (the same rule as the multi-head model), in mixed-radix order.
    """
    from podium.tasks.spec import resolve_task

    infos = [load_run(r) for r in runs]
    specs = [resolve_task(i.config.task) for i in infos]
    not_per_attr = [str(i.dir) for i, s in zip(infos, specs) if s.mode != "per_attribute"]
    if not_per_attr:
        raise PodiumError(f"compose needs runs trained with task.mode=per_attribute; these are not: {not_per_attr}")
    task = specs[0].attributes
    if any(s.attributes != task for s in specs):
        raise PodiumError("the runs were trained on different attribute tasks (names, classes or age thresholds differ)")
    targets = [s.target for s in specs]
    if sorted(targets) != sorted(task.names):
        raise PodiumError(f"compose needs exactly one run per attribute {list(task.names)}; got runs for {targets}")
    first = infos[0].config
    competition = is_competition_layout(first, data)  # composed probabilities cover all 18 classes
    frame = prediction_samples(first, data, competition, crop=False)
    attribute_probs = {}
    for info, spec in zip(infos, specs):  # each run crops as it was trained
        module = load_module(info.checkpoint(checkpoint), info.classes)
        attribute_probs[spec.target] = predict_frame(module, maybe_crop(frame, info.config), info.config,
                                                     batch_size=batch_size, tta=resolve_tta(tta, info.config),
                                                     tta_merge=tta_merge,
                                                     progress=progress)
    probs = task.joint_probs(attribute_probs)
    classes = task.composite_names()
    out_dir = Path(out) if out else next_free_dir(Path(runs[0]).resolve().parent / "composed", Path(data).stem or "data")
    out_dir.mkdir(parents=True, exist_ok=True)
    probs_path, sub_path = write_outputs(out_dir, frame["id"], probs, classes, first.output.submission,
                                         competition_root=data if competition else None)
    return {"out_dir": out_dir, "probabilities": probs_path, "submission": sub_path, "n_images": len(frame)}
