"""The local leaderboard: one row per run, cv run and ensemble found under a folder.

Every number comes from the run-folder contract files (config.yaml,
classes.json, summary.json, metrics.csv, per_class.csv, status.json; cv.json
and cv_summary.json for cross-validation; ensemble.json for ensembles), so any
podium folder can be ranked without loading a model. `run_row` is the one
place a run's headline is computed: `podium runs`, `podium runs compare` and
the top of report.html all show its numbers.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from podium.durations import fmt_duration
from podium.errors import PodiumError, closest
from podium.quiet import shown_epoch
from podium.rundir import (
    CLASSES_FILE,
    CONFIG_FILE,
    CV_FILE,
    CV_SUMMARY_FILE,
    ENSEMBLE_FILE,
    METRICS_FILE,
    PER_CLASS_FILE,
    SUMMARY_FILE,
)

MAX_DEPTH = 4  # runs/<group>/<sub>/<run>: deep enough for tuning trials, shallow enough to stay fast

#: leaderboard columns, in display order; ``score`` (CV/OOF macro F1 where there is one, else
#: validation macro F1) orders the table within its ``score_kind``
COLUMNS = ["name", "kind", "status", "date", "task", "model", "image_size", "epochs", "max_epochs", "monitor",
           "best_val", "best_epoch", "val_f1", "val_acc", "worst_class", "worst_class_f1", "cv_f1", "score",
           "score_kind", "wall_time_s", "path"]

#: what a score was measured on, in the leaderboard's order. Scores of different kinds are not
#: comparable (a 49-image holdout is noisier than 245 out-of-fold rows; ensemble weights are fitted
#: on their OOF rows; a study's best trial was selected on the score it reports), so the table is
#: ranked within each kind, never across them.
SCORE_KINDS = ("ensemble OOF", "OOF", "holdout", "tune")


# ---------------------------------------------------------------- reading files


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, ValueError):
        return {}


def _yaml(path: Path) -> dict:
    try:
        value = yaml.safe_load(path.read_text())
        return value if isinstance(value, dict) else {}
    except (OSError, yaml.YAMLError):
        return {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        return None
    return float(value)


def _date(path: Path) -> str | None:
    """When the folder's first file was written, local time to the minute."""
    try:
        return _dt.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    except OSError:
        return None


def _worst_class(folder: Path) -> tuple[str | None, float | None]:
    """The class with the lowest F1 in per_class.csv (the run's weakest spot)."""
    try:
        table = pd.read_csv(folder / PER_CLASS_FILE)
    except (OSError, ValueError):
        return None, None
    if table.empty or not {"class", "f1"} <= set(table.columns):
        return None, None
    worst = table.loc[table["f1"].idxmin()]
    return str(worst["class"]), float(worst["f1"])


def _metrics_csv(folder: Path) -> pd.DataFrame | None:
    try:
        table = pd.read_csv(folder / METRICS_FILE)
    except (OSError, ValueError):
        return None
    return table if "epoch" in table.columns else None


def _best_from_curve(curve: pd.DataFrame | None, monitor: str, mode: str) -> tuple[int | None, dict]:
    """Best epoch and that epoch's row of metrics.csv (for runs that never wrote summary.json)."""
    if curve is None or monitor not in curve.columns or curve[monitor].isna().all():
        return None, {}
    idx = curve[monitor].idxmin() if mode == "min" else curve[monitor].idxmax()
    row = curve.loc[idx]
    return int(row["epoch"]), {k: _number(v) for k, v in row.items()}


def _task_label(config: dict, n_classes: int | None) -> str:
    task = config.get("task") or {}
    parts = [p for p in (task.get("preset"), task.get("mode")) if p and p not in ("none", "single")]
    if task.get("mode") == "per_attribute" and task.get("target"):
        parts[-1] = f"per_attribute:{task['target']}"
    label = " ".join(parts) or "single"
    return f"{label}, {n_classes} classes" if n_classes else label


def _size_label(config: dict) -> str | None:
    size = (config.get("data") or {}).get("image_size")
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return str(size[0]) if size[0] == size[1] else f"{size[0]}x{size[1]}"
    return None if size is None else str(size)


def _monitor_mode(monitor: str) -> str:
    return "min" if monitor.endswith("loss") else "max"


# ---------------------------------------------------------------- rows


def _empty_row(folder: Path, kind: str) -> dict:
    row = {c: None for c in COLUMNS}
    row.update(name=folder.name, kind=kind, path=str(folder))
    return row


def run_row(run_dir: str | Path) -> dict:
    """The headline of one run folder: status, model, size, epochs, best val metric and epoch,
    val macro F1 and accuracy of the best checkpoint, its worst class, wall time. Finished runs
    read summary.json; interrupted and failed ones fall back on metrics.csv."""
    from podium.rundir import read_status

    folder = Path(run_dir)
    row = _empty_row(folder, "run")
    config = _yaml(folder / CONFIG_FILE)
    classes = _json(folder / CLASSES_FILE).get("classes") or []
    summary = _json(folder / SUMMARY_FILE)
    train = config.get("train") or {}
    monitor = summary.get("monitor") or train.get("monitor") or "val_f1"
    curve = _metrics_csv(folder)
    curve_epoch, curve_best = _best_from_curve(curve, monitor, _monitor_mode(monitor))
    val = summary.get("val_metrics") or {}
    worst, worst_f1 = _worst_class(folder)
    row.update(
        status=read_status(folder)["status"], date=_date(folder / CLASSES_FILE),
        task=_task_label(config, len(classes) or None), model=(config.get("model") or {}).get("name"),
        image_size=_size_label(config), epochs=len(curve) if curve is not None else summary.get("epochs_trained"),
        max_epochs=train.get("epochs"), monitor=monitor,
        best_val=_number(summary.get("best_metric")) if summary else curve_best.get(monitor),
        best_epoch=summary.get("best_epoch") if summary else curve_epoch,
        val_f1=_number(val.get("f1")) if summary else curve_best.get("val_f1"),
        val_acc=_number(val.get("acc")) if summary else curve_best.get("val_acc"),
        worst_class=worst if summary else None, worst_class_f1=worst_f1 if summary else None,
        wall_time_s=_number(summary.get("wall_time_s")),
    )
    row["score"], row["score_kind"] = row["val_f1"], "holdout"
    return row


def cv_row(cv_dir: str | Path) -> dict:
    """A cross-validation folder as one row: CV macro F1 over all out-of-fold predictions, the
    folds' mean validation F1, total fold time; its status follows its folds until gathered."""
    from podium.rundir import read_status

    folder = Path(cv_dir)
    row = _empty_row(folder, "cv")
    meta, summary = _json(folder / CV_FILE), _json(folder / CV_SUMMARY_FILE)
    config = _yaml(folder / CONFIG_FILE)
    k = meta.get("k")
    folds = [folder / f"fold{f}" for f in range(k)] if isinstance(k, int) else sorted(folder.glob("fold*"))
    statuses = [read_status(f)["status"] for f in folds if f.is_dir()]
    worst, worst_f1 = _worst_class(folder) if summary else (None, None)
    epochs = [len(c) for c in (_metrics_csv(f) for f in folds) if c is not None]
    row.update(
        status=_cv_status(summary, statuses), date=_date(folder / CV_FILE),
        task=_task_label(config, len(meta.get("classes") or []) or None),
        model=(config.get("model") or {}).get("name"), image_size=_size_label(config),
        epochs=max(epochs) if epochs else None, max_epochs=(config.get("train") or {}).get("epochs"),
        monitor="cv_f1", best_val=_number(summary.get("cv_macro_f1")),
        val_f1=_number(summary.get("fold_macro_f1_mean")), val_acc=_number(summary.get("cv_accuracy")),
        worst_class=worst, worst_class_f1=worst_f1, cv_f1=_number(summary.get("cv_macro_f1")),
        wall_time_s=_number(summary.get("total_fold_time_s")),
    )
    row["score"], row["score_kind"] = row["cv_f1"], "OOF"
    return row


def _cv_status(summary: dict, fold_statuses: list[str]) -> str:
    """Gathered -> finished; else the most telling fold status (a fold still running, then a failed
    one, then interrupted); folds all finished but missing or not gathered -> interrupted."""
    if summary:
        return "finished"
    for status in ("running", "failed", "interrupted"):
        if status in fold_statuses:
            return status
    return "interrupted" if fold_statuses else "failed"


def ensemble_row(ens_dir: str | Path) -> dict:
    """An ensemble folder: its OOF macro F1 is its score (optimistic for fitted weights)."""
    folder = Path(ens_dir)
    row = _empty_row(folder, "ensemble")
    meta = _json(folder / ENSEMBLE_FILE)
    members = meta.get("members") or []
    worst, worst_f1 = _worst_class(folder)
    row.update(status="finished", date=_date(folder / ENSEMBLE_FILE),
               task=_task_label({}, len(meta.get("classes") or []) or None),
               model=f"{meta.get('method', '?')} ensemble of {len(members)}", monitor="oof_f1",
               best_val=_number(meta.get("oof_macro_f1")), cv_f1=_number(meta.get("oof_macro_f1")),
               worst_class=worst, worst_class_f1=worst_f1)
    row["score"], row["score_kind"] = row["cv_f1"], "ensemble OOF"
    return row


def study_row(study_dir: str | Path) -> dict:
    """A `podium tune` study: its best trial's objective is its score (kind ``tune``: the best of
    N trials on the score it was selected by, so optimistic); scored only when the objective is a
    macro F1, the leaderboard's measure."""
    from podium.tuning.outputs import BEST_FILE
    from podium.tuning.outputs import SUMMARY_FILE as STUDY_FILE

    folder = Path(study_dir)
    row = _empty_row(folder, "study")
    info = _json(folder / STUDY_FILE)
    config = _yaml(folder / BEST_FILE)
    counts = info.get("counts") or {}
    done = int(counts.get("COMPLETE", 0)) + int(counts.get("PRUNED", 0))
    target = info.get("trials_target")
    objective = info.get("objective")
    best = _number(info.get("best_value"))
    row.update(status="finished" if isinstance(target, int) and done >= target else "incomplete",
               date=_date(folder / STUDY_FILE), model=(config.get("model") or {}).get("name"),
               image_size=_size_label(config), monitor=objective, best_val=best,
               task=f"{done} of {target} trials" if target else None)
    if objective in ("val_f1", "cv_macro_f1"):
        row["score"] = best
        row["cv_f1" if objective == "cv_macro_f1" else "val_f1"] = best
    row["score_kind"] = "tune"
    return row


# ---------------------------------------------------------------- scanning


@dataclass
class Found:
    kind: str  # run, cv, ensemble or study
    path: Path


def classify(folder: Path) -> str | None:
    """What a folder is: a cv folder, an ensemble, a tune study, a run, or none of them."""
    from podium.tuning.outputs import SUMMARY_FILE as STUDY_FILE

    if (folder / STUDY_FILE).is_file() and not (folder / CONFIG_FILE).is_file():
        return "study"
    if (folder / CV_FILE).is_file():
        return "cv"
    if (folder / ENSEMBLE_FILE).is_file():
        return "ensemble"
    if (folder / CONFIG_FILE).is_file() and (folder / CLASSES_FILE).is_file():
        return "run"
    return None


def find_runs(root: str | Path, depth: int = MAX_DEPTH) -> list[Found]:
    """Run, cv and ensemble folders under ``root`` (not the folds inside a cv folder: the cv row
    stands for them; nor anything inside a run)."""
    root = Path(root)
    kind = classify(root)
    if kind:
        return [Found(kind, root)]
    if depth <= 0 or not root.is_dir():
        return []
    found: list[Found] = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found.extend(find_runs(child, depth - 1))
    return found


ROW_BUILDERS = {"run": run_row, "cv": cv_row, "ensemble": ensemble_row, "study": study_row}


def _config_of(found: Found) -> dict[str, Any]:
    from podium.schema import flatten_dict

    return flatten_dict(_yaml(found.path / CONFIG_FILE))


def _normalize(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_where(items: list[str] | None) -> list[tuple[str, str]]:
    """``["model.name=resnet18", "status=finished"]`` -> [(key, normalized value)]; values are read as
    YAML, so ``train.lr=0.01`` and ``model.pretrained=false`` match the config's numbers and booleans."""
    out = []
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PodiumError(f"bad --where {item!r}: expected key=value, e.g. model.name=resnet18 or status=finished")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out.append((key.strip(), _normalize(value)))
    return out


def leaderboard(root: str | Path | list = "runs", where: list[str] | str | None = None) -> pd.DataFrame:
    """Every run, cv run, ensemble and tune study under ``root`` as one table, best score first
    within each score kind (holdout / OOF / ensemble OOF / tune: `SCORE_KINDS`).

    ``where`` keeps rows whose config key (``model.name=resnet18``) or column (``status=failed``,
    ``kind=cv``) has that value; several conditions must all hold.
    """
    if isinstance(root, (list, tuple)):  # several folders (runs/ and studies/): one table, ranked within kinds
        tables = [leaderboard(r, where) for r in root]
        return rank(pd.concat([t for t in tables if len(t)], ignore_index=True)) if any(len(t) for t in tables) \
            else tables[0]
    root = Path(root)
    if not root.is_dir():
        raise PodiumError(f"runs folder not found: {root}. Pass the folder that holds your run folders "
                          "(default: runs/, where podium train writes them)")
    conditions = parse_where([where] if isinstance(where, str) else where)
    found = find_runs(root)
    rows, configs = [], []
    for item in found:
        rows.append(ROW_BUILDERS[item.kind](item.path))
        configs.append(_config_of(item))
    _check_where_keys(conditions, configs, root)
    keep = [all(_matches(row, cfg, key, value) for key, value in conditions) for row, cfg in zip(rows, configs)]
    table = pd.DataFrame([r for r, k in zip(rows, keep) if k], columns=COLUMNS)
    return rank(table)


def rank(table: pd.DataFrame) -> pd.DataFrame:
    """Best score first within each score kind (`SCORE_KINDS` order); never one ranking across kinds."""
    order = table["score_kind"].map({k: i for i, k in enumerate(SCORE_KINDS)}).fillna(len(SCORE_KINDS))
    table = table.assign(_kind=order).sort_values(["_kind", "score"], ascending=[True, False],
                                                  na_position="last", kind="stable")
    return table.drop(columns="_kind").reset_index(drop=True)


def _matches(row: dict, config: dict, key: str, value: str) -> bool:
    if key in row:
        return row[key] is not None and _normalize(row[key]) == value
    return key in config and _normalize(config[key]) == value


def _check_where_keys(conditions: list[tuple[str, str]], configs: list[dict], root: Path) -> None:
    """A --where key that no run has is a typo, not an empty result."""
    known = set(COLUMNS).union(*configs) if configs else set(COLUMNS)
    for key, _ in conditions:
        if key not in known:
            hint = closest(key, known)
            raise PodiumError(
                f"unknown --where key {key!r}: no config under {root} has it and it is no column. Use a dotted "
                f"config key (model.name, train.lr, data.image_size...) or a column ({', '.join(COLUMNS[:8])}...)"
                + (f". Did you mean {hint[0]!r}?" if hint else ""))


# ---------------------------------------------------------------- people


def fmt_score(value: Any, digits: int = 3) -> str:
    """0.72222 -> '0.722'; missing -> '-'."""
    number = _number(value)
    return "-" if number is None else f"{number:.{digits}f}"


def headline(row: dict) -> dict[str, str]:
    """A row in words, rounded for people: what report.html opens with and `podium runs` shows."""
    epoch = row.get("best_epoch")
    val = fmt_score(row.get("val_f1"))
    if val != "-" and epoch is not None and not pd.isna(epoch):
        val += f" (epoch {shown_epoch(epoch)})"  # counted from 1, as the epoch lines and 'epochs 2 of 2'
    elif val != "-" and row.get("kind") == "cv":
        val += " (fold mean)"
    epochs = "-" if row.get("epochs") is None or pd.isna(row.get("epochs")) else str(int(row["epochs"]))
    if row.get("max_epochs") is not None and not pd.isna(row.get("max_epochs")):
        epochs += f" of {int(row['max_epochs'])}"
    worst = "-"
    if row.get("worst_class") is not None and not pd.isna(row.get("worst_class_f1")):
        worst = f"{fmt_score(row['worst_class_f1'])} ({row['worst_class']})"
    out = {"status": str(row.get("status") or "-"), "val macro F1": val, "accuracy": fmt_score(row.get("val_acc")),
           "worst class F1": worst}
    if row.get("cv_f1") is not None and not pd.isna(row.get("cv_f1")):
        out["CV macro F1" if row.get("kind") == "cv" else "OOF macro F1"] = fmt_score(row["cv_f1"])
    out.update({"epochs": epochs, "wall time": fmt_duration(row.get("wall_time_s")),
                "model": str(row.get("model") or "-"), "image size": str(row.get("image_size") or "-")})
    return out


def headline_for(folder: str | Path) -> dict[str, str]:
    """The headline of any podium folder (run, cv or ensemble)."""
    folder = Path(folder)
    kind = classify(folder) or "run"
    return headline(ROW_BUILDERS[kind](folder))


# ---------------------------------------------------------------- compare


@dataclass
class Comparison:
    """`podium runs compare`: what differs between runs and how their scores differ."""

    names: list[str]
    config: pd.DataFrame  # one row per config key that differs, one column per run
    metrics: pd.DataFrame  # one row per headline metric, one column per run
    per_class: pd.DataFrame  # class, F1 per run, delta of each later run against the first


COMPARED_METRICS = ("status", "epochs", "best_epoch", "val_f1", "val_acc", "worst_class", "worst_class_f1",
                    "cv_f1", "wall_time_s")


def compare_runs(folders: list[str | Path]) -> Comparison:
    """Config keys that differ, headline metrics side by side, per-class F1 with deltas to the first."""
    paths = [Path(f) for f in folders]
    if len(paths) < 2:
        raise PodiumError(f"compare needs at least two run folders; got {len(paths)}")
    kinds = []
    for path in paths:
        kind = classify(path)
        if kind is None:
            raise PodiumError(f"{path} is not a podium run, cv or ensemble folder "
                              "(no config.yaml + classes.json, cv.json or ensemble.json)")
        kinds.append(kind)
    names = _unique_names(paths)
    rows = [ROW_BUILDERS[k](p) for k, p in zip(kinds, paths)]
    return Comparison(names, _config_diff(paths, kinds, names),
                      pd.DataFrame({n: [r[m] for m in COMPARED_METRICS] for n, r in zip(names, rows)},
                                   index=pd.Index(COMPARED_METRICS, name="metric")).reset_index(),
                      _per_class_deltas(paths, names))


def _unique_names(paths: list[Path]) -> list[str]:
    names = [p.name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def _config_diff(paths: list[Path], kinds: list[str], names: list[str]) -> pd.DataFrame:
    """Keys whose values differ. A key missing from an older run's config.yaml counts as today's
    default (shown as ``value (default)``), so features added since do not all show up as changes."""
    from podium.schema import PodiumConfig, config_to_dict, flatten_dict

    defaults = flatten_dict(config_to_dict(PodiumConfig()))
    configs = [_config_of(Found(k, p)) for k, p in zip(kinds, paths)]
    keys = list(dict.fromkeys(k for c in configs for k in c))

    def value(cfg: dict, key: str) -> tuple[str, str]:
        if key in cfg:
            return _normalize(cfg[key]), _normalize(cfg[key])
        if key in defaults:
            return _normalize(defaults[key]), f"{_normalize(defaults[key])} (default)"
        return "<absent>", "<absent>"

    differ = [k for k in keys if len({value(c, k)[0] for c in configs}) > 1]
    data = {"key": differ}
    for name, cfg in zip(names, configs):
        data[name] = [value(cfg, k)[1] for k in differ]
    return pd.DataFrame(data)


def _per_class_deltas(paths: list[Path], names: list[str]) -> pd.DataFrame:
    tables = {}
    for name, path in zip(names, paths):
        try:
            table = pd.read_csv(path / PER_CLASS_FILE)
        except (OSError, ValueError):
            continue
        if {"class", "f1"} <= set(table.columns):
            tables[name] = table.assign(**{"class": table["class"].astype(str)}).set_index("class")["f1"]
    if not tables:
        return pd.DataFrame(columns=["class"])
    frame = pd.DataFrame(tables)
    first = names[0] if names[0] in tables else next(iter(tables))
    for name in tables:
        if name != first:
            frame[f"delta {name} - {first}"] = frame[name] - frame[first]
    return frame.reset_index().rename(columns={"index": "class"})
