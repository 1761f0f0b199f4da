"""The Python API: what a notebook calls, and what every `podium` command calls.

Every function takes the same validated config as ``podium train`` and raises
`PodiumError` with the same messages; results are objects holding DataFrames.

    import podium
    cfg = podium.config(data={"train": "data/train"}, model={"name": "resnet18"}, train={"epochs": 3})
    run = podium.train(cfg)                 # Run: .dir, .summary, .metrics, .classes
    preds = run.predict("data/test")        # DataFrame: id, one column per class, prediction
    scores = run.evaluate("data/val")       # Evaluation: .metrics, .per_class, .confusion
    cv = podium.cross_validate(cfg, folds=5)
    ens = podium.ensemble([cv, other], method="weighted")
    model = podium.load("runs/ens")         # any run, cv run, ensemble or exported .onnx
    model.predict(pil_image)                # one image, a list, a folder or a CSV
    report = podium.eda("data/train")
    audit = podium.audit("runs/cv")         # Audit: .issues, .summary, .review_page
    student = podium.distill("runs/cv", model="resnet18")   # a normal Run
    rounds = podium.pseudo_label("runs/cv", "data/unlabeled", rounds=2)
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from podium.errors import PodiumError
from podium.schema import PodiumConfig, deep_merge, load_config, parse_overrides, read_yaml, validate_config

_DEFAULT = "default"


def config(path: str | Path | None = None, *overrides: str, **sections: Any) -> Config:
    """A validated config from an optional YAML file, ``"a.b=v"`` overrides and section dicts.

    ``podium.config("cfg.yaml", "train.lr=0.003", model={"name": "resnet18"})``; the
    file, the sections and the overrides are merged first and validated once, as
    the CLI does, so an override can fix what the file alone would not allow. A bad
    key or value raises `PodiumError` naming the dotted key.
    """
    for name, value in sections.items():
        if not isinstance(value, dict):
            raise PodiumError(f"podium.config({name}=...): expected a dict of {name}.* keys, found {type(value).__name__}")
    raw = read_yaml(path) if path is not None else {}
    cfg = validate_config(deep_merge(deep_merge(raw, sections), parse_overrides(list(overrides))))
    return Config.model_construct(_fields_set=cfg.model_fields_set, **{k: getattr(cfg, k) for k in type(cfg).model_fields})


class Config(PodiumConfig):
    """What `podium.config` returns: the validated `PodiumConfig` (every function takes it), plus
    notebook conveniences."""

    def show_batch(self, n: int = 16, out: str | Path | None = None, log: Callable = print):
        """A grid of ``n`` augmented training images with their labels (`podium.show_batch`)."""
        return show_batch(self, n=n, out=out, log=log)


def _as_config(cfg: PodiumConfig | dict | str | Path | None) -> PodiumConfig | None:
    if cfg is None or isinstance(cfg, PodiumConfig):
        return cfg
    if isinstance(cfg, dict):
        return validate_config(cfg)
    return load_config(cfg)


def _folder(model) -> Any:
    """A folder or file path from a path or an API object (Run, CrossValidation, Ensemble)."""
    return getattr(model, "dir", model)


# ---------------------------------------------------------------- predicting with anything


def load(path: str | Path, *, checkpoint: str = "best", trust: bool = False):
    """Any trained model, ready to predict (an `inference.predict.Model`): a run, a cv run (folds
    averaged), an ensemble folder (members with their weights), or an exported ``.onnx`` (``.pt``
    TorchScript only with ``trust=True``: TorchScript is code). ``.predict(data)`` takes a folder,
    a CSV, or in-memory images (a PIL image, an HxWx3 uint8 array, or a list of them)."""
    from podium.inference.predict import Model
    from podium.inference.predictor import load_predictor

    return Model(load_predictor(_folder(path), checkpoint=checkpoint, trust=trust))


def predict(model, data, *, out: str | Path | None = None, checkpoint: str = "best", tta: Any = _DEFAULT,
            tta_merge: str | None = None, batch_size: int | None = None, biases: str | Path | None = None,
            progress: bool = False, trust: bool = False) -> pd.DataFrame:
    """Probabilities of ``data`` with any model (`load`): id, one column per class, prediction.
    For a folder or CSV, probabilities.parquet and submission.csv are written to a new folder
    named in ``table.attrs``. `podium predict`."""
    from podium.inference.predict import predict as run_predict

    return run_predict(_folder(model), data, out=out, checkpoint=checkpoint, tta=tta, tta_merge=tta_merge,
                       batch_size=batch_size, biases=biases, progress=progress, trust=trust)


def evaluate(model, data, *, out: str | Path | None = None, checkpoint: str = "best", tta: Any = _DEFAULT,
             tta_merge: str | None = None, batch_size: int | None = None, biases: str | Path | None = None,
             progress: bool = False, trust: bool = False):
    """Metrics, per-class table and confusion matrix of any model on labelled data (`Evaluation`).
    `podium evaluate`."""
    from podium.inference.predict import evaluate as run_evaluate

    return run_evaluate(_folder(model), data, out=out, checkpoint=checkpoint, tta=tta, tta_merge=tta_merge,
                        batch_size=batch_size, biases=biases, progress=progress, trust=trust)


def compose(runs: Sequence, data: str | Path, *, out: str | Path | None = None, checkpoint: str = "best",
            tta: Any = _DEFAULT, tta_merge: str | None = None, batch_size: int | None = None, progress: bool = False):
    """One run per attribute (task.mode=per_attribute) -> composite probabilities and a submission
    (`inference.predict.Predictions`). `podium compose`."""
    from podium.inference.predict import compose as run_compose

    return run_compose([_folder(r) for r in runs], data, out=out, checkpoint=checkpoint, tta=tta, tta_merge=tta_merge,
                       batch_size=batch_size, progress=progress)


class _Model:
    """A folder that holds a trained model: predicts and evaluates through the one predictor."""

    dir: Path

    def load(self, checkpoint: str = "best"):
        """This model loaded once, for many predictions (`podium.load`)."""
        return load(self.dir, checkpoint=checkpoint)

    def predict(self, data, **kwargs) -> pd.DataFrame:
        """Probabilities for a folder, CSV or in-memory images (see `podium.predict`)."""
        return predict(self.dir, data, **kwargs)

    def evaluate(self, data, **kwargs):
        """Metrics on a labelled folder or CSV (see `podium.evaluate`)."""
        return evaluate(self.dir, data, **kwargs)

    def export(self, format: str = "onnx", **kwargs):
        """One ONNX/TorchScript file, parity-checked (see `podium.export`)."""
        from podium.deploy.export import export

        return export(self.dir, format, **kwargs)


# ---------------------------------------------------------------- runs


@dataclass
class Run(_Model):
    """A run folder: its summary, per-epoch metrics and class map; predicts and evaluates."""
    dir: Path
    _module: Any = field(default=None, repr=False)

    @property
    def summary(self) -> dict:
        from podium.rundir import read_summary

        return read_summary(self.dir)

    @property
    def metrics(self) -> pd.DataFrame:
        """Per-epoch metrics (metrics.csv): epoch, train_loss, val_loss, val_f1, ..."""
        from podium.rundir import read_metrics

        return read_metrics(self.dir)

    @property
    def classes(self) -> list[str]:
        from podium.rundir import read_classes

        return read_classes(self.dir)

    @property
    def config(self) -> PodiumConfig:
        from podium.rundir import read_config

        return read_config(self.dir)

    @property
    def val_predictions(self) -> pd.DataFrame:
        """The best checkpoint's validation predictions (the prediction table)."""
        from podium.rundir import read_val_predictions

        return read_val_predictions(self.dir)

    def __repr__(self) -> str:
        s = self.summary
        score = s.get("best_metric")
        return f"Run({str(self.dir)!r}, {s.get('monitor', 'best')}={score:.4f})" if score is not None else f"Run({str(self.dir)!r})"


def load_run(path: str | Path) -> Run:
    """An existing run folder (checked: config.yaml and classes.json must be there)."""
    from podium.rundir import load_run as read_run

    return Run(read_run(path).dir)


def train(cfg: PodiumConfig | dict | str | Path | None = None, *, resume: str | Path | None = None,
          dry_run: bool = False, progress: bool = False, log: Callable = print, callbacks: list | None = None,
          epochs: int | None = None) -> Run:
    """Train one run (or continue ``resume``; ``epochs`` extends it) and return it; the CLI's `podium train`."""
    from podium.model.training import train as fit

    cfg = _as_config(cfg)
    if cfg is None and resume is None:
        raise PodiumError("podium.train needs a config (podium.config(...)) or resume=RUN_FOLDER")
    result = fit(cfg, resume=resume, dry_run=dry_run, progress=progress, log=log, callbacks=callbacks, epochs=epochs)
    if dry_run:
        return _DryRun(Path(result.run_dir), result.summary)
    run = Run(Path(result.run_dir), result.module)
    run.__dict__["_result"] = result
    return run


class _DryRun(Run):
    """What a dry run reports: nothing is written, so the summary is held in memory."""

    def __init__(self, path: Path, summary: dict):
        super().__init__(path)
        self._summary = summary

    @property
    def summary(self) -> dict:
        return self._summary


# ---------------------------------------------------------------- cross-validation


def show_batch(cfg: PodiumConfig | dict | str | Path, *, n: int = 16, out: str | Path | None = None,
               log: Callable = print):
    """A PNG grid of ``n`` augmented training images with their labels (`BatchPreview`: .path,
    .labels; shown inline in a notebook); the CLI's `podium show-batch`, ``cfg.show_batch()``."""
    from podium.quiet import quiet_libraries
    from podium.reports.batch import show_batch as draw

    with quiet_libraries():  # the data pipeline's first import of Lightning/tqdm warns in a notebook
        return draw(_as_config(cfg), n=n, out=out, log=log)


def lr_find(cfg: PodiumConfig | dict | str | Path, *, min_lr: float = 1e-6, max_lr: float = 1.0, steps: int = 100,
            scale_batch: bool = False, out: str | Path | None = None, progress: bool = False, log: Callable = print):
    """Lightning's learning-rate finder on the config's data and model; the CLI's `podium lr-find`.

    Returns an `LRFinding` (.suggestion, .curve DataFrame, .batch_size, .dir with lr_find.png).
    """
    from podium.model.lr_find import find_lr
    from podium.rundir import output_dir

    cfg = _as_config(cfg)
    folder = output_dir(out, Path(cfg.output.dir) / "lr_find", cfg.output.name)
    try:
        return find_lr(cfg, min_lr=min_lr, max_lr=max_lr, steps=steps, scale_batch=scale_batch, out_dir=folder,
                       progress=progress, log=log)
    except BaseException:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a refused or interrupted search leaves no empty folder behind
        raise


@dataclass
class CrossValidation(_Model):
    """A cross-validation folder: OOF predictions, scores and fold runs; predicts with its folds averaged."""
    dir: Path

    @property
    def summary(self) -> dict:
        from podium.rundir import read_cv_summary

        return read_cv_summary(self.dir)

    @property
    def score(self) -> float | None:
        return self.summary.get("cv_macro_f1")

    @property
    def oof(self) -> pd.DataFrame:
        from podium.rundir import OOF_FILE, read_table

        return read_table(self.dir / OOF_FILE, "out-of-fold predictions")

    @property
    def folds(self) -> list[Run]:
        from podium.rundir import fold_dir, is_finished_run, read_cv_meta

        k = int(read_cv_meta(self.dir)["k"])
        return [Run(fold_dir(self.dir, f)) for f in range(k) if is_finished_run(fold_dir(self.dir, f))]

    @property
    def scores(self) -> pd.DataFrame:
        return pd.DataFrame(self.summary.get("folds", []))

    @property
    def missing_folds(self) -> list[int]:
        """Folds not finished yet (trained separately with ``fold=``); gathering needs none missing."""
        from podium.rundir import fold_dir, is_finished_run, read_cv_meta

        return [f for f in range(int(read_cv_meta(self.dir)["k"])) if not is_finished_run(fold_dir(self.dir, f))]


def cross_validate(cfg: PodiumConfig | dict | str | Path, *, folds: int | None = None, fold: int | None = None,
                   test: str | Path | None = None, save_epochs: bool = False, progress: bool = False,
                   log: Callable = print) -> CrossValidation:
    """K-fold cross-validation (grouped when the data has groups); the CLI's `podium cv`."""
    from podium.evaluation.cv import run_cv

    result = run_cv(_as_config(cfg), folds=folds, only_fold=fold, test_data=test, save_epochs=save_epochs,
                    progress=progress, log=log)
    return CrossValidation(Path(result.run_dir))


def cv_gather(run, *, test: str | Path | None = None, progress: bool = False, log: Callable = print) -> CrossValidation:
    """Gather a cv folder whose folds were trained separately (OOF table, CV score, and with
    ``test`` the fold-averaged test predictions); `podium cv-gather`."""
    from podium.evaluation.cv import gather_cv

    gather_cv(_folder(run), test=test, progress=progress, log=log)
    return CrossValidation(Path(_folder(run)))


def cv_tta(run, views: Sequence[str], merge: str = "mean", *, batch_size: int | None = None,
           progress: bool = False) -> dict:
    """Macro F1 of a cv run's OOF images with and without TTA ``views``; `podium cv-tta`."""
    from podium.evaluation.cv import oof_tta

    return oof_tta(_folder(run), list(views), merge, batch_size=batch_size, progress=progress)


def cv_biases(run, *, splits: int = 5, seed: int = 0) -> dict:
    """Per-class macro-F1 logit biases of a cv run's OOF (or a run's validation) predictions,
    with their nested gain; writes logit_biases.json. `podium cv-biases`."""
    from podium.evaluation.cv import tune_biases

    return tune_biases(_folder(run), n_splits=splits, seed=seed)


# ---------------------------------------------------------------- ensembles and averages


@dataclass
class Ensemble(_Model):
    """An ensemble folder: members, fitted weights, OOF scores; predicts with its members."""
    dir: Path
    scores: pd.DataFrame | None = None
    result: dict = field(default_factory=dict)

    @property
    def oof(self) -> pd.DataFrame | None:
        from podium.rundir import OOF_FILE, read_table

        path = self.dir / OOF_FILE
        return read_table(path, "the ensemble's OOF predictions") if path.is_file() else None

    @property
    def record(self) -> dict:
        from podium.rundir import read_ensemble

        return read_ensemble(self.dir)


def ensemble(members: Sequence[Run | CrossValidation | str | Path], method: str = "soft", *,
             out: str | Path | None = None, test_probs: Sequence[str | Path] | None = None) -> Ensemble:
    """Combine cv runs, runs or prediction files; the CLI's `podium ensemble`."""
    from podium.evaluation.ensemble_runs import ensemble_members

    paths = [str(_folder(m)) for m in members]
    r = ensemble_members(paths, method, out=out, test_probs=[str(t) for t in test_probs] if test_probs else None)
    return Ensemble(Path(r["out_dir"]), r.get("scores"), r)


def average_checkpoints(run, *, last: int | None = None, best: int | None = None, out: str | Path | None = None,
                        evaluate: bool = True, progress: bool = False) -> dict:
    """The mean of several epochs' weights (SWA-style), scored on the run's validation split;
    `podium average-checkpoints`."""
    from podium.evaluation.ensemble_runs import average_run_checkpoints
    from podium.rundir import writing_into

    with writing_into(_folder(run), "average-checkpoints", out):
        return average_run_checkpoints(_folder(run), last=last, best=best, out=out, evaluate=evaluate,
                                       progress=progress)


# ---------------------------------------------------------------- auto


def auto(data: str | Path, *, time: str | float, preset: str = "medium", test: str | Path | None = None,
         out: str | Path | None = None, config: str | Path | None = None, overrides: Sequence[str] = (),
         models: Sequence[str] | None = None, sizes: Sequence[int] | None = None, export: bool = True,
         progress: bool = False, log: Callable = print, clock: Callable[[], float] | None = None,
         measure: Callable | None = None):
    """The best submission ``time`` buys (``30m``, ``2h`` or seconds): candidates timed on this
    machine, a plan of folds x members x epochs that fits, each member a grouped cv run, then
    TTA, an OOF-weighted ensemble and per-class biases, each kept only where held-out rows say
    it pays; a fold-averaged submission for ``test``. Run again with the same arguments to
    resume. The CLI's `podium auto`; returns `podium.autopilot.AutoResult`."""
    import time as _time

    from podium.autopilot.pipeline import run_auto

    return run_auto(data, time_budget=time, preset=preset, test=test, out=out, config=config, overrides=overrides,
                    models=models, sizes=sizes, export=export, progress=progress, log=log,
                    clock=clock or _time.monotonic, measure=measure)


# ---------------------------------------------------------------- looking at data and runs


@dataclass
class EDA:
    """An EDA report: the HTML page and its tables."""
    dir: Path
    result: dict

    @property
    def html(self) -> Path:
        return self.dir / "eda.html"

    @property
    def summary(self) -> dict:
        from podium.rundir import read_json_file

        path = self.dir / "eda.json"
        return read_json_file(path, "the EDA summary") if path.is_file() else {}

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        return {p.stem: pd.read_csv(p) for p in sorted(self.dir.glob("*.csv"))}


def eda(data: str | Path | PodiumConfig, *overrides: str, out: str | Path | None = None,
        progress: bool = False) -> EDA:
    """The EDA report of a data folder, CSV or config; the CLI's `podium eda` (no Lightning import).
    ``progress`` shows a bar while the images are scanned (in a terminal)."""
    from podium.data.samples import load_train_and_val
    from podium.reports.eda import run_eda
    from podium.rundir import output_dir
    from podium.tasks.spec import resolve_task

    if isinstance(data, PodiumConfig):
        cfg, name = data, Path(data.data.train or "data").stem
    elif Path(data).suffix.lower() in (".yaml", ".yml"):
        cfg, name = load_config(data, list(overrides)), Path(data).stem
    else:
        cfg, name = load_config(None, [f"data.train={data}", *overrides]), Path(data).stem
    if not cfg.data.train:
        raise PodiumError("data.train is not set: pass a data folder, CSV, or a config with data.train")
    task = resolve_task(cfg.task)
    samples, test = load_train_and_val(cfg, task)
    attributes = list(task.attributes.names) if task.attributes is not None else None
    out_dir = output_dir(out, Path(cfg.output.dir) / "eda", name or "data")
    result = run_eda(samples, out_dir, attributes=attributes, test_samples=test, seed=cfg.train.seed,
                     progress=progress)
    return EDA(out_dir, result)


def report(run, *, gradcam: bool = False, gallery: int | None = None) -> Path:
    """The offline HTML report of a run, cv run or ensemble (curves, confusions, worst errors,
    suspect labels; ``gradcam`` adds heat maps to the worst errors). `podium report`."""
    from podium.reports.report import build_run_report
    from podium.rundir import writing_into

    folder = Path(_folder(run))
    with writing_into(folder, "report"):
        source = _gradcam_source(folder) if gradcam else None
        kwargs = {} if gallery is None else {"max_gallery": gallery}
        return build_run_report(folder, model_forward=source, **kwargs)


def _gradcam_source(run_dir: Path):
    from podium.model.checkpoints import load_module
    from podium.reports.gradcam import gradcam_source
    from podium.rundir import load_run

    info = load_run(run_dir)
    module = load_module(info.checkpoint("best"), info.classes, model_name=info.config.model.name)
    return gradcam_source(module, info.config.data.size_hw)


def runs(dir: str | Path | list = "runs", where: list[str] | str | None = None) -> pd.DataFrame:
    """Every run, cv run, ensemble and study under ``dir`` (or each of a list of folders) as a
    DataFrame, best score first within each score kind; ``where``
    keeps rows whose config key or column has a value (``"model.name=resnet18"``). `podium runs`."""
    from podium.reports.leaderboard import leaderboard

    return leaderboard(dir, where)


def compare_runs(folders: Sequence):
    """The config keys that differ, the headline metrics side by side and per-class F1 with
    deltas to the first run (`leaderboard.Comparison`); `podium runs compare`."""
    from podium.reports.leaderboard import compare_runs as compare

    return compare([str(_folder(f)) for f in folders])


# ---------------------------------------------------------------- data tools


def crop(cfg: PodiumConfig | dict | str | Path) -> dict:
    """Face/box crops of ``data.train`` written once and cached (the config's ``crop.*``);
    `podium preprocess crop`. Returns the crop report (counts, cache folder)."""
    from podium.data.crops import crop_samples
    from podium.data.samples import load_labeled
    from podium.tasks.spec import resolve_task

    resolved = _as_config(cfg)
    assert resolved is not None
    if resolved.crop.detector == "none":
        raise PodiumError("crop.detector is none: set it, e.g. crop.detector=yunet crop.options.model_path=yunet.onnx")
    if not resolved.data.train:
        raise PodiumError("data.train is not set: the images to crop")
    samples = load_labeled(resolved.data.train, resolved, resolve_task(resolved.task), crop=False)
    _, result = crop_samples(samples, resolved)
    return result


def synth_mask(out: str | Path, *, people: int = 30, seed: int = 0, image_size: tuple[int, int] = (384, 512)) -> dict:
    """A synthetic dataset in the exact mask-competition layout; `podium data synth-mask`."""
    from podium.data.synth import synth_mask_dataset

    return synth_mask_dataset(out, people=people, seed=seed, image_size=image_size)


def check_submission(file: str | Path, info: str | Path, *, classes: int = 18) -> None:
    """Raise `PodiumError` listing every problem of a competition submission (header, rows, ids,
    order, label range); `podium submission check`."""
    from podium.data.competition import check_submission as problems_of

    problems = problems_of(file, info, n_classes=classes)
    if problems:
        raise PodiumError(f"{file} is not a valid submission:\n  " + "\n  ".join(problems))


def audit(source: str | Path | CrossValidation | Run, *, out: str | Path | None = None, features: bool = True,
          max_review: int | None = None, method: str | None = None, log: Callable = print):
    """The images whose labels are probably wrong (cleanlab on out-of-fold probabilities; a single
    run: its validation part only), duplicates and outliers, with an offline review page whose
    choices export a label_fixes.csv. ``method``: cleanlab's ``filter_by`` (see
    `podium.curation.audit.LABEL_METHODS`; None: its benchmarked ``DEFAULT_LABEL_METHOD``, owned
    there). The CLI's `podium audit`. Returns `podium.curation.audit.Audit`."""
    from podium.curation.audit import DEFAULT_LABEL_METHOD, run_audit

    return run_audit(_folder(source), out=out, features=features, max_review=max_review,
                     method=method or DEFAULT_LABEL_METHOD, log=log)


def distill(teacher: str | Path | CrossValidation | Ensemble, *, model: str | None = None,
            config: str | Path | None = None, overrides: Sequence[str] = (), unlabeled: str | Path | None = None,
            temperature: float | None = None, alpha: float | None = None, progress: bool = False,
            log: Callable = print) -> Run:
    """A student trained on a teacher's soft probabilities (a cv run's or an ensemble's out-of-fold
    table for the training images; its predictions for ``unlabeled`` images), blended with the true
    labels (``alpha``), at ``temperature``; configured like the teacher but with ``model``. The
    result is a normal run. The CLI's `podium distill`."""
    from podium.curation.distill import distill as fit

    result = fit(_folder(teacher), model=model, config=config, overrides=overrides, unlabeled=unlabeled,
                 temperature=temperature, alpha=alpha, progress=progress, log=log)
    return Run(Path(result.run_dir), result.module)


def pseudo_label(model: str | Path | Run | CrossValidation | Ensemble, unlabeled: str | Path, *, rounds: int = 1,
                 precision: float = 0.9, mode: str = "soft", folds: int | None = None,
                 config: str | Path | None = None, overrides: Sequence[str] = (), group_by_folder: bool = False,
                 balance: bool = False, out: str | Path | None = None, progress: bool = False,
                 log: Callable = print):
    """Rounds of training on labelled + pseudo-labelled images: the model of each round labels the
    unlabelled images whose class clears a per-class threshold chosen on its out-of-fold (or
    validation) predictions for ``precision``; every round is a normal run, or cv run with
    ``folds`` (default: a cv model's own). Pseudo-labelled images never enter validation or the
    OOF score. ``balance``: the pseudo-labels keep the labelled class proportions (a class none
    are precise enough for limits the others; `podium.curation.pseudo.keep_proportions`; off by
    default). The
    CLI's `podium pseudo-label`; returns `podium.curation.pseudo.PseudoLabelResult`."""
    from podium.curation.pseudo import pseudo_label as run_rounds

    return run_rounds(_folder(model), unlabeled, rounds=rounds, precision=precision, mode=mode, folds=folds,
                      config=config, overrides=overrides, group_by_folder=group_by_folder, balance=balance,
                      out=out, progress=progress, log=log)
