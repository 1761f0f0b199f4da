"""Predicting and evaluating with any `Predictor`: probabilities per image, the submission, metrics.

Images are read with the model's own config (size, resize mode, eval crop,
crops), batched, passed through the model (TTA views stacked into one batch),
optionally shifted by macro-F1 logit biases, and written as the one prediction
table (`evaluation.tables`) plus a submission CSV, into a new folder
(`rundir.output_dir`: nothing is ever overwritten).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from podium.errors import PodiumError
from podium.inference.predictor import DEFAULT, Predictor, encode_images, load_predictor
from podium.inference.views import requested_views
from podium.schema import SubmissionConfig

#: the labelled prediction table `evaluate` writes beside its metrics
EVALUATION_PREDICTIONS_FILE = "predictions.parquet"


def describe_views(predictor, tta: Any = DEFAULT) -> Any:
    """The views a call uses, for the record: a list, or each member's own (cv runs, ensembles)."""
    if tta != DEFAULT:
        return requested_views(tta) or []
    if predictor.kind in ("cv", "ensemble"):
        return "each member's own predict.tta"
    return predictor.tta or []


# ---------------------------------------------------------------- probabilities


def predict_frame(predictor, frame: pd.DataFrame, *, batch_size: int | None = None, tta: Any = DEFAULT,
                  tta_merge: str | None = None, progress: bool = False) -> np.ndarray:
    """(N, C) probabilities for the images in ``frame`` (a ``path`` column), read as the model reads them."""
    from podium.data.dataset import make_loader, resolve_num_workers

    cfg = predictor.config
    loader = make_loader(predictor.dataset(frame["path"]), batch_size or cfg.train.batch_size,
                         num_workers=min(resolve_num_workers(cfg.data.num_workers), 4))
    with predictor.views(tta) as views:
        return predict_loader(predictor, loader, predictor.device, tta=views, tta_merge=tta_merge or predictor.tta_merge,
                              progress=progress)


def predict_loader(module, loader, device, *, tta: list[str] | None = None, tta_merge: str = "mean",
                   progress: bool = True) -> np.ndarray:
    """(N, C) probabilities for every batch of ``loader`` (images, targets, skipped)."""
    import torch

    from podium.evaluation.tta import parse_views, predict_with_tta, resolve_merge

    module = module.to(device).eval()
    views = parse_views(tta) if tta else None
    merge = resolve_merge(tta_merge)
    chunks = []
    bar = _Progress(progress, len(loader), "predicting")
    with torch.inference_mode():
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


class _Progress:
    """A rich progress bar with ETA, or nothing when quiet."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self._bar: Any = None
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


def apply_biases(probs: np.ndarray, path: str | Path | None, classes: list[str]) -> np.ndarray:
    """Per-class logit biases fitted for macro F1 (`podium cv-biases`), from a logit_biases.json."""
    if not path:
        return probs
    from podium.evaluation.biases import apply_logit_biases
    from podium.rundir import read_json_file

    saved = read_json_file(path, "logit biases from `podium cv-biases`")
    if list(saved.get("classes", [])) != list(classes):
        raise PodiumError(f"logit biases in {path} are for classes {saved.get('classes')}, not the model's {classes}")
    biases = saved.get("biases")
    if not isinstance(biases, list) or len(biases) != len(classes):
        raise PodiumError(f"logit biases in {path}: 'biases' must be a list of {len(classes)} numbers")
    return apply_logit_biases(probs, np.asarray(biases, dtype=np.float64))


# ---------------------------------------------------------------- submission files


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
                  competition_root: str | Path | None = None, probs_name: str | None = None,
                  sub_name: str | None = None) -> tuple[Path, Path]:
    """Probabilities (id + one column per class) and the submission, in the competition's
    own format when ``competition_root`` holds its eval/info.csv; both written atomically."""
    from podium.evaluation.tables import prediction_table, save_probabilities
    from podium.fileio import write_csv
    from podium.rundir import PROBABILITIES_FILE, SUBMISSION_FILE

    probs_path = save_probabilities(prediction_table(ids, probs, classes), Path(out_dir) / (probs_name or PROBABILITIES_FILE))
    sub_path = Path(out_dir) / (sub_name or SUBMISSION_FILE)
    if competition_root:
        write_competition_submission(competition_root, ids, probs, sub_path)
    else:
        write_csv(sub_path, submission_frame(ids, probs, classes, sub_cfg))
    return probs_path, sub_path


def write_competition_submission(root: str | Path, ids, probs: np.ndarray, out_path: Path) -> Path:
    from podium.data.competition import check_submission, eval_dir, write_mask_submission

    info_csv = eval_dir(Path(root)) / "info.csv"
    path = write_mask_submission(info_csv, list(ids), probs.argmax(1), out_path, n_classes=probs.shape[1])
    problems = check_submission(path, info_csv, n_classes=probs.shape[1])
    if problems:  # a bug, not a user error: the writer should never produce an invalid file
        raise RuntimeError("invalid submission written: " + "; ".join(problems))
    return path


# ---------------------------------------------------------------- predict and evaluate


@dataclass
class Predictions:
    """What `predict` wrote: the output folder and files, and how many images of each class."""

    out_dir: Path | None
    probabilities: Path | None
    submission: Path | None
    n_images: int
    predicted_counts: dict


@dataclass
class Evaluation:
    """A model measured on labelled data."""

    metrics: dict
    per_class: pd.DataFrame
    confusion: pd.DataFrame
    predictions: pd.DataFrame
    dir: Path

    def plot_confusion(self, ax=None, normalize: bool = False):
        """The confusion matrix as a matplotlib figure (rows = truth), for notebooks."""
        from podium.evaluation.metrics import draw_confusion

        return draw_confusion(self.confusion, ax=ax, normalize=normalize)


class Model:
    """A trained model ready to predict: what `podium.load` returns for a run, a cv run, an
    ensemble or an exported file. ``predict`` takes a folder, a CSV or in-memory images."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def __repr__(self) -> str:
        p = self.predictor
        return f"Model({str(p.source)!r}, kind={p.kind}, {len(p.classes)} classes, input {p.image_size})"

    @property
    def classes(self) -> list[str]:
        return self.predictor.classes

    @property
    def kind(self) -> str:
        """run, cv, ensemble, onnx or torchscript."""
        return self.predictor.kind

    @property
    def config(self):
        """How the model reads images and writes submissions."""
        return self.predictor.config

    def predict(self, data, **kwargs) -> pd.DataFrame:
        """Probabilities for a folder, CSV or in-memory images (see `predict`)."""
        return predict(self.predictor, data, **kwargs)

    def evaluate(self, data, **kwargs) -> Evaluation:
        """Metrics on a labelled folder or CSV (see `evaluate`)."""
        return evaluate(self.predictor, data, **kwargs)


def as_predictor(source, *, checkpoint: str = "best", trust: bool = False):
    """A loaded `Predictor` as it is, else `load_predictor` of a path."""
    if isinstance(source, Model):
        source = source.predictor
    if isinstance(source, Predictor):
        if checkpoint != "best":
            raise PodiumError("--checkpoint picks the checkpoint when a model is loaded: load_predictor(path, "
                              "checkpoint=...)")
        return source
    return load_predictor(getattr(source, "dir", source), checkpoint=checkpoint, trust=trust)


def _default_parent(predictor) -> Path:
    """Outputs go inside a run / cv run / ensemble folder, beside an exported file."""
    return predictor.source if predictor.source.is_dir() else predictor.source.parent


def _is_in_memory(data) -> bool:
    from PIL import Image

    if isinstance(data, (Image.Image, np.ndarray)):
        return True
    return isinstance(data, (list, tuple)) and bool(data) and all(isinstance(d, (Image.Image, np.ndarray)) for d in data)


def predict(source, data, *, out: str | Path | None = None, checkpoint: str = "best", batch_size: int | None = None,
            tta: Any = DEFAULT, tta_merge: str | None = None, biases: str | Path | None = None,
            progress: bool = False, trust: bool = False) -> pd.DataFrame:
    """Probabilities for ``data`` with ``source`` (a `Predictor` or a run / cv run / ensemble folder
    / exported file): ``id``, one column per class, ``prediction``.

    ``data`` is a folder, CSV (only its path column is needed) or the competition's
    eval root, whose probabilities.parquet and submission.csv are written to ``out``
    (new or empty; default ``<model>/predictions/<data>``) and named in the table's
    ``attrs``; or in-memory images (a PIL image, an HxWx3 uint8 array, or a list),
    whose table is returned and nothing is written. ``tta`` "default" means the
    model's own views, None or [] none.
    """
    predictor = as_predictor(source, checkpoint=checkpoint, trust=trust)
    if _is_in_memory(data):
        return _predict_in_memory(predictor, data, batch_size=batch_size, tta=tta, tta_merge=tta_merge, biases=biases)
    result, table = predict_to_folder(predictor, data, out=out, batch_size=batch_size, tta=tta, tta_merge=tta_merge,
                                      biases=biases, progress=progress)
    table.attrs.update(out_dir=str(result.out_dir), probabilities=str(result.probabilities),
                       submission=str(result.submission), predicted_counts=result.predicted_counts)
    return table


def predict_probabilities(predictor, data, *, batch_size=None, tta: Any = DEFAULT, tta_merge=None, biases=None,
                          progress: bool = False) -> tuple[pd.DataFrame, np.ndarray, str | Path | None]:
    """The images of ``data`` (as the model reads them), their (N, C) probabilities, and the
    competition root when ``data`` is the mask competition's eval layout (its submission format)."""
    from podium.data.samples import is_competition_layout, prediction_samples

    cfg = predictor.config
    competition = is_competition_layout(cfg, data) and cfg.task.mode != "per_attribute"
    frame = prediction_samples(cfg, data, competition)
    probs = predict_frame(predictor, frame, batch_size=batch_size, tta=tta, tta_merge=tta_merge, progress=progress)
    probs = apply_biases(probs, biases or cfg.predict.logit_biases, predictor.classes)
    return frame, probs, data if competition else None


def predict_to_folder(predictor, data, *, out=None, batch_size=None, tta: Any = DEFAULT, tta_merge=None,
                      biases=None, progress: bool = False) -> tuple[Predictions, pd.DataFrame]:
    """`predict` for files: the result record and the probability table with predictions."""
    from podium.evaluation.tables import prediction_table
    from podium.rundir import PREDICTIONS_DIR, check_output_path, output_dir

    check_output_path(out)
    frame, probs, root = predict_probabilities(predictor, data, batch_size=batch_size, tta=tta, tta_merge=tta_merge,
                                               biases=biases, progress=progress)
    out_dir = output_dir(out, _default_parent(predictor) / PREDICTIONS_DIR, Path(data).stem or "data")
    probs_path, sub_path = write_outputs(out_dir, frame["id"], probs, predictor.classes,
                                         predictor.config.output.submission, competition_root=root)
    counts = pd.Series(np.asarray(predictor.classes)[probs.argmax(1)]).value_counts().to_dict()
    table = prediction_table(frame["id"], probs, predictor.classes, prediction=True)
    return Predictions(out_dir, probs_path, sub_path, len(frame), counts), table


def _predict_in_memory(predictor, data, *, batch_size, tta, tta_merge, biases) -> pd.DataFrame:
    import torch

    from podium.evaluation.tables import prediction_table

    images = list(data) if isinstance(data, (list, tuple)) else [data]
    dataset = predictor.dataset(encode_images(images))
    batch = torch.stack([dataset[i][0] for i in range(len(dataset))])
    step = batch_size or predictor.config.train.batch_size
    merge = tta_merge or predictor.tta_merge
    with predictor.views(tta) as views:
        chunks = [_probabilities(predictor, part, views, merge) for part in torch.split(batch, step)]
    probs = apply_biases(np.concatenate(chunks), biases or predictor.config.predict.logit_biases, predictor.classes)
    return prediction_table([f"image{i}" for i in range(len(images))], probs, predictor.classes, prediction=True)


def _probabilities(predictor, batch, views, merge: str) -> np.ndarray:
    import torch

    from podium.evaluation.tta import predict_with_tta

    with torch.inference_mode():
        if views:
            return predict_with_tta(predictor, batch, views, merge=merge).numpy()
        return predictor(batch).float().softmax(1).numpy()


def evaluate(source, data, *, out: str | Path | None = None, checkpoint: str = "best", batch_size: int | None = None,
             tta: Any = DEFAULT, tta_merge: str | None = None, biases: str | Path | None = None,
             progress: bool = False, trust: bool = False) -> Evaluation:
    """Metrics, per-class table and confusion matrix of ``source`` on a labelled folder or CSV,
    written to ``out`` (default ``<model>/evaluations/<data>``)."""
    from podium.data.dataset import encode_labels
    from podium.data.samples import load_labeled
    from podium.evaluation.metrics import save_classification_report
    from podium.evaluation.tables import prediction_table, save_probabilities
    from podium.rundir import CONFUSION_FILE, EVALUATIONS_DIR, PER_CLASS_FILE, check_output_path, output_dir

    check_output_path(out)
    predictor = as_predictor(source, checkpoint=checkpoint, trust=trust)
    cfg = predictor.config
    frame = load_labeled(data, cfg, strict_fixes=False)  # the model's label fixes may name other images
    y_true = encode_labels(frame["label"], predictor.classes, f"evaluation data {data}")
    probs = predict_frame(predictor, frame, batch_size=batch_size, tta=tta, tta_merge=tta_merge, progress=progress)
    probs = apply_biases(probs, biases or cfg.predict.logit_biases, predictor.classes)
    out_dir = output_dir(out, _default_parent(predictor) / EVALUATIONS_DIR, Path(data).stem or "data")
    table = prediction_table(frame["id"], probs, predictor.classes, paths=frame["path"], targets=frame["label"])
    save_probabilities(table, out_dir / EVALUATION_PREDICTIONS_FILE)
    metrics = save_classification_report(out_dir, y_true, probs, predictor.classes,
                                         extra={"data": str(data), "model": str(predictor.source), "kind": predictor.kind,
                                                "checkpoint": checkpoint, "tta": describe_views(predictor, tta), "n_images": len(frame)})
    return Evaluation(metrics, pd.read_csv(out_dir / PER_CLASS_FILE),
                      pd.read_csv(out_dir / CONFUSION_FILE, index_col=0), table, out_dir)


def compose(runs: Sequence[str | Path], data: str | Path, *, out: str | Path | None = None, checkpoint: str = "best",
            batch_size: int | None = None, tta: Any = DEFAULT, tta_merge: str | None = None,
            progress: bool = False) -> Predictions:
    """One model per attribute (task.mode=per_attribute) -> composite probabilities and a submission.

    Each run predicts its attribute; the composite probability is the product of
    the attributes' (the same rule as the multi-head model), in mixed-radix order.
    """
    from podium.data.samples import is_competition_layout, maybe_crop, prediction_samples
    from podium.rundir import output_dir
    from podium.tasks.spec import resolve_task

    predictors = [load_predictor(r, checkpoint=checkpoint) for r in runs]
    for p in predictors:
        if p.kind != "run":
            raise PodiumError(f"compose combines single runs (one per attribute); {p.source} is a {p.kind}")
    specs = [resolve_task(p.config.task) for p in predictors]
    not_per_attr = [str(p.source) for p, s in zip(predictors, specs) if s.mode != "per_attribute"]
    if not_per_attr:
        raise PodiumError(f"compose needs runs trained with task.mode=per_attribute; these are not: {not_per_attr}")
    task = specs[0].attributes
    if any(s.attributes != task for s in specs):
        raise PodiumError("the runs were trained on different attribute tasks (names, classes or age thresholds differ)")
    assert task is not None
    targets = [s.target for s in specs]
    if sorted(map(str, targets)) != sorted(task.names):
        raise PodiumError(f"compose needs exactly one run per attribute {list(task.names)}; got runs for {targets}")
    first = predictors[0].config
    competition = is_competition_layout(first, data)  # composed probabilities cover all 18 classes
    frame = prediction_samples(first, data, competition, crop=False)
    attribute_probs = {}
    for predictor, spec in zip(predictors, specs):  # each run crops as it was trained
        attribute_probs[spec.target] = predict_frame(predictor, maybe_crop(frame, predictor.config), batch_size=batch_size,
                                                     tta=tta, tta_merge=tta_merge, progress=progress)
    probs = task.joint_probs(attribute_probs)
    classes = task.composite_names()
    out_dir = output_dir(out, Path(runs[0]).resolve().parent / "composed", Path(data).stem or "data")
    probs_path, sub_path = write_outputs(out_dir, frame["id"], probs, classes, first.output.submission,
                                         competition_root=data if competition else None)
    counts = pd.Series(np.asarray(classes)[probs.argmax(1)]).value_counts().to_dict()
    return Predictions(out_dir, probs_path, sub_path, len(frame), counts)
