"""The Python API: what a notebook (and the CLI, which is built on it) calls.

Every function takes the same validated config as ``podium train`` and raises
`PodiumError` with the same messages; results are objects holding DataFrames.

    import podium
    cfg = podium.config(data={"train": "data/train"}, model={"name": "resnet18"}, train={"epochs": 3})
    run = podium.train(cfg)                 # Run: .dir, .summary, .metrics, .classes
    preds = run.predict("data/test")        # DataFrame: id, one column per class, prediction
    scores = run.evaluate("data/val")       # Evaluation: .metrics, .per_class, .confusion
    cv = podium.cross_validate(cfg, folds=5)
    ens = podium.ensemble([cv, other], method="weighted")
    report = podium.eda("data/train")
    run = podium.load_run("runs/exp")
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from podium.schema import PodiumConfig, deep_merge, load_config, parse_overrides, validate_config
from podium.errors import PodiumError


def config(path: str | Path | None = None, *overrides: str, **sections: Any) -> PodiumConfig:
    """A validated config from an optional YAML file, ``"a.b=v"`` overrides and section dicts.

    ``podium.config("cfg.yaml", "train.lr=0.003", model={"name": "resnet18"})``; a bad key or
    value raises `PodiumError` naming the dotted key, as the CLI does.
    """
    for name, value in sections.items():
        if not isinstance(value, dict):
            raise PodiumError(f"podium.config({name}=...): expected a dict of {name}.* keys, found {type(value).__name__}")
    base = load_config(path).model_dump(mode="json") if path is not None else {}
    raw = deep_merge(deep_merge(base, sections), parse_overrides(list(overrides)))
    return validate_config(raw)


def _as_config(cfg: PodiumConfig | dict | str | Path | None) -> PodiumConfig | None:
    if cfg is None or isinstance(cfg, PodiumConfig):
        return cfg
    if isinstance(cfg, dict):
        return validate_config(cfg)
    return load_config(cfg)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass
class Evaluation:
    """A run measured on labelled data."""
    metrics: dict
    per_class: pd.DataFrame
    confusion: pd.DataFrame
    predictions: pd.DataFrame
    dir: Path

    def plot_confusion(self, ax=None, normalize: bool = False):
        """The confusion matrix as a matplotlib figure (rows = truth), for notebooks."""
        from podium.evaluation.metrics import draw_confusion

        return draw_confusion(self.confusion, ax=ax, normalize=normalize)


@dataclass
class Run:
    """A run folder: its summary, per-epoch metrics and class map; predicts and evaluates."""
    dir: Path
    _module: Any = field(default=None, repr=False)

    @property
    def summary(self) -> dict:
        return _read_json(self.dir / "summary.json")

    @property
    def metrics(self) -> pd.DataFrame:
        """Per-epoch metrics (metrics.csv): epoch, train_loss, val_loss, val_f1, ..."""
        path = self.dir / "metrics.csv"
        return pd.read_csv(path) if path.is_file() else pd.DataFrame()

    @property
    def classes(self) -> list[str]:
        return list(_read_json(self.dir / "classes.json").get("classes", []))

    @property
    def config(self) -> PodiumConfig:
        return load_config(self.dir / "config.yaml")

    @property
    def val_predictions(self) -> pd.DataFrame:
        """The best checkpoint's validation predictions (the prediction table)."""
        return pd.read_parquet(self.dir / "val_predictions.parquet")

    def predict(self, data: str | Path, *, out: str | Path | None = None, checkpoint: str = "best",
                tta: list[str] | None = None, tta_merge: str | None = None, batch_size: int | None = None,
                progress: bool = False) -> pd.DataFrame:
        """Probabilities for a folder or CSV of images: id, one column per class, prediction."""
        from podium.evaluation.predict import predict_run

        result = predict_run(self.dir, data, out=out, checkpoint=checkpoint, tta=tta, tta_merge=tta_merge,
                             batch_size=batch_size, progress=progress)
        table = pd.read_parquet(result["probabilities"])
        classes = [c for c in table.columns if c != "id"]
        table["prediction"] = [classes[i] for i in table[classes].to_numpy().argmax(1)]
        table.attrs.update(submission=str(result["submission"]), probabilities=str(result["probabilities"]),
                           out_dir=str(result["out_dir"]))
        return table

    def evaluate(self, data: str | Path, *, out: str | Path | None = None, checkpoint: str = "best",
                 tta: list[str] | None = None, tta_merge: str | None = None, batch_size: int | None = None,
                 progress: bool = False) -> Evaluation:
        """Metrics, per-class table and confusion matrix on labelled data."""
        from podium.evaluation.predict import evaluate_run

        r = evaluate_run(self.dir, data, out=out, checkpoint=checkpoint, tta=tta, tta_merge=tta_merge,
                         batch_size=batch_size, progress=progress)
        out_dir = Path(r["out_dir"])
        return Evaluation(r["metrics"], pd.read_csv(out_dir / "per_class.csv"),
                          pd.read_csv(out_dir / "confusion_matrix.csv", index_col=0),
                          pd.read_parquet(out_dir / "predictions.parquet"), out_dir)

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
    run = Run(Path(result.run_dir), result.module)
    run.__dict__["_result"] = result
    return run if not dry_run else _DryRun(Path(result.run_dir), result.summary)


@dataclass
class _DryRun(Run):
    """What a dry run reports: nothing is written, so the summary is held in memory."""
    _summary: dict = field(default_factory=dict)

    @property
    def summary(self) -> dict:
        return self._summary

    def __init__(self, path: Path, summary: dict):
        super().__init__(path)
        self._summary = summary


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
class CrossValidation:
    """A cross-validation folder: OOF predictions, scores and fold runs."""
    dir: Path

    @property
    def summary(self) -> dict:
        return _read_json(self.dir / "cv_summary.json")

    @property
    def score(self) -> float | None:
        return self.summary.get("cv_macro_f1")

    @property
    def oof(self) -> pd.DataFrame:
        return pd.read_parquet(self.dir / "oof_predictions.parquet")

    @property
    def folds(self) -> list[Run]:
        return [Run(p) for p in sorted(self.dir.glob("fold*")) if p.is_dir() and (p / "summary.json").is_file()]

    @property
    def scores(self) -> pd.DataFrame:
        return pd.DataFrame(self.summary.get("folds", []))


def cross_validate(cfg: PodiumConfig | dict | str | Path, *, folds: int | None = None, fold: int | None = None,
                   test: str | Path | None = None, save_epochs: bool = False, progress: bool = False,
                   log: Callable = print) -> CrossValidation:
    """K-fold cross-validation (grouped when the data has groups); the CLI's `podium cv`."""
    from podium.evaluation.cv import run_cv

    result = run_cv(_as_config(cfg), folds=folds, only_fold=fold, test_data=test, save_epochs=save_epochs,
                    progress=progress, log=log)
    return CrossValidation(Path(result.run_dir))


@dataclass
class Ensemble:
    dir: Path
    scores: pd.DataFrame | None
    result: dict

    @property
    def oof(self) -> pd.DataFrame | None:
        path = self.dir / "oof_predictions.parquet"
        return pd.read_parquet(path) if path.is_file() else None


def ensemble(members: Sequence[Run | CrossValidation | str | Path], method: str = "soft", *,
             out: str | Path | None = None, test_probs: Sequence[str | Path] | None = None) -> Ensemble:
    """Combine cv runs, runs or prediction files; the CLI's `podium ensemble`."""
    from podium.evaluation.ensemble_runs import ensemble_members

    paths = [str(m.dir) if hasattr(m, "dir") else str(m) for m in members]
    r = ensemble_members(paths, method, out=out, test_probs=list(test_probs) if test_probs else None)
    return Ensemble(Path(r["out_dir"]), r.get("scores"), r)


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
        return _read_json(self.dir / "eda.json")

    @property
    def tables(self) -> dict[str, pd.DataFrame]:
        return {p.stem: pd.read_csv(p) for p in sorted(self.dir.glob("*.csv"))}


def eda(data: str | Path | PodiumConfig, *overrides: str, out: str | Path | None = None) -> EDA:
    """The EDA report of a data folder, CSV or config; the CLI's `podium eda` (no Lightning import)."""
    from podium.data.samples import load_train_and_val
    from podium.reports.eda import run_eda
    from podium.rundir import next_free_dir
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
    out_dir = Path(out) if out else next_free_dir(Path(cfg.output.dir) / "eda", name or "data")
    result = run_eda(samples, out_dir, attributes=attributes, test_samples=test, seed=cfg.train.seed)
    return EDA(out_dir, result)


def runs(dir: str | Path = "runs", where: list[str] | str | None = None) -> pd.DataFrame:
    """Every run, cv run and ensemble under ``dir`` as a DataFrame, best score first; ``where``
    keeps rows whose config key or column has a value (``"model.name=resnet18"``). `podium runs`."""
    from podium.reports.leaderboard import leaderboard

    return leaderboard(dir, where)
