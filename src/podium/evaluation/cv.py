"""Cross-validation: k normal runs under one folder, their out-of-fold (OOF) predictions
and everything measured on them (CV score, TTA gain, macro-F1 biases, ensembles).

Layout of a CV folder ``runs/<name>/``::

    cv.json                 k, seed, classes, data source, grouped or not
    folds.csv               id, path, label, [group], fold   (the fold of every image)
    config.yaml             the resolved config the folds were trained with
    fold0/ ... fold<k-1>/   normal run folders (train.train), val = that fold
    oof_predictions.parquet  every image exactly once, predicted by the fold that never trained on it
    cv_summary.json          CV score (macro F1 over all OOF rows), per-fold mean +- std, accuracy
    test_probabilities.parquet, submission.csv   fold-averaged test predictions (`--test`), made by
                            the cv run's one predictor (`inference.predictor`) when the folds are gathered

The fold assignment is written before any training and re-read by later
``--fold k`` calls, so separate processes or machines train disjoint folds of
the same split. The class map is built once from all images so every fold's
probability columns line up.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from podium.data.splits import describe_fold_gaps, has_groups, make_folds
from podium.errors import PodiumError, summarize_list
from podium.fileio import write_csv, write_json, write_parquet, write_text
from podium.model.engine import epoch_checkpoint_callback
from podium.rundir import (
    BIASES_FILE,
    CONFIG_FILE,
    CV_FILE,
    CV_SUMMARY_FILE,
    FOLDS_FILE,
    OOF_FILE,
    TEST_PROBABILITIES_FILE,
    fold_dir,
    is_finished_run,
    read_config,
    read_cv_meta,
    read_folds,
    read_summary,
    read_table,
    read_val_predictions,
)
from podium.schema import PodiumConfig, config_to_yaml

#: what `oof_tta` writes beside its OOF table, in ``tta/<views>/``
TTA_SUMMARY_FILE = "tta_summary.json"


# ---------------------------------------------------------------- training


@dataclass
class CVResult:
    run_dir: Path
    trained_folds: list[int]
    summary: dict | None  # cv_summary.json content once every fold is done


def run_cv(cfg: PodiumConfig, *, folds: int | None = None, only_fold: int | None = None,
           test_data: str | Path | None = None, save_epochs: bool = False, progress: bool = True,
           log=print) -> CVResult:
    """Train k folds (or just ``only_fold``) as normal runs inside one CV folder.

    A full run gets a fresh numbered folder (``cv``, ``cv-2``...). ``only_fold``
    writes into ``output.dir/output.name`` exactly, creating it or reusing its
    folds.csv, so that ``--fold 0`` .. ``--fold k-1`` launched separately fill
    the same folder. When every fold is done the OOF tables are gathered.
    """
    existing = Path(cfg.output.dir) / cfg.output.name
    if folds is None and only_fold is not None and (existing / CV_FILE).is_file():
        folds = read_cv_meta(existing)["k"]  # later --fold calls follow the folder's fold count
    k = folds or cfg.cv.folds
    if only_fold is not None and not 0 <= only_fold < k:
        raise PodiumError(f"--fold {only_fold} is out of range: folds are numbered 0..{k - 1}")
    frame, classes = _load_pool(cfg, log)
    if test_data:
        load_test(cfg, test_data)  # a bad --test fails before any folder is made
    if only_fold is None:
        from podium.rundir import next_free_dir

        run_dir = next_free_dir(Path(cfg.output.dir), cfg.output.name)
        frame = _write_cv_files(run_dir, cfg, frame, classes, k, test_data)
    else:
        run_dir = Path(cfg.output.dir) / cfg.output.name
        frame = _reuse_or_write_cv_files(run_dir, cfg, frame, classes, k, test_data)
    log(f"cross-validation folder: {run_dir} ({k} folds, {'grouped' if has_groups(frame) else 'stratified'})")
    gaps = describe_fold_gaps(frame)
    if gaps:
        log(gaps)
    todo = range(k) if only_fold is None else [only_fold]
    for fold in todo:
        _check_fold_free(run_dir, fold)
        train_fold(cfg, run_dir, frame, classes, fold, save_epochs=save_epochs, progress=progress, log=log)
    done = [f for f in range(k) if fold_status(fold_dir(run_dir, f)) == "done"]
    # with folds still missing, the caller says what to run next (the CLI: `--fold`, then cv-gather)
    summary = gather_cv(run_dir, progress=progress) if len(done) == k else None
    return CVResult(run_dir, list(todo), summary)


def train_fold(cfg: PodiumConfig, run_dir: Path, frame: pd.DataFrame, classes: list[str], fold: int, *,
               save_epochs: bool = False, progress: bool = True, log=print):
    """One fold = one normal run named ``fold<k>`` whose validation set is that fold."""
    from podium.data.samples import PreparedData
    from podium.model.training import train

    fold_cfg = cfg.model_copy(deep=True)
    fold_cfg.output.dir = str(run_dir)
    fold_cfg.output.name = f"fold{fold}"
    fold_cfg.output.group = run_dir.name  # trackers show the folds of one cv as one group
    is_val = frame["fold"].to_numpy() == fold
    columns = [c for c in frame.columns if c != "fold"]
    from podium.tasks.spec import drop_training_ages

    train_part = drop_training_ages(frame.loc[~is_val, columns].reset_index(drop=True), cfg.task, log)
    prepared = PreparedData(train_part, frame.loc[is_val, columns].reset_index(drop=True), list(classes), fold=fold)
    callbacks = [epoch_checkpoint_callback(fold_dir(run_dir, fold))] if save_epochs else None
    log(f"fold {fold}: {len(prepared.train)} train / {len(prepared.val)} validation images")
    result = train(fold_cfg, prepared=prepared, callbacks=callbacks, progress=progress, log=log)
    if result.run_dir != fold_dir(run_dir, fold):
        raise PodiumError(f"fold {fold} was written to {result.run_dir}, expected {fold_dir(run_dir, fold)}")
    return result


def train_refit(cfg: PodiumConfig, run_dir: str | Path, *, name: str = "refit", progress: bool = True, log=print):
    """One run on every image of a cv folder's pool (AutoGluon's refit_full): after a fold told how
    long to train and what pays (TTA, biases), the final model also learns from the images that
    were held out. Written as ``<run_dir>/<name>``; its validation part is fold 0, which it trains
    on too, so only its ``last`` checkpoint means anything (its validation scores do not)."""
    from podium.data.samples import PreparedData
    from podium.model.training import train
    from podium.tasks.spec import drop_training_ages

    run_dir = Path(run_dir)
    meta = read_cv_meta(run_dir)
    frame, classes = _load_pool(cfg, log)
    frame = _reuse_or_write_cv_files(run_dir, cfg, frame, classes, meta["k"], None)
    columns = [c for c in frame.columns if c != "fold"]
    refit_cfg = cfg.model_copy(deep=True)
    refit_cfg.output.dir, refit_cfg.output.name, refit_cfg.output.group = str(run_dir), name, run_dir.name
    every = drop_training_ages(frame[columns].reset_index(drop=True), cfg.task, log)
    nominal_val = frame.loc[frame["fold"].to_numpy() == 0, columns].reset_index(drop=True)
    log(f"refit: {len(every)} train images (all of them; fold 0's {len(nominal_val)} also validate, nominally)")
    result = train(refit_cfg, prepared=PreparedData(every, nominal_val, list(classes)), progress=progress, log=log)
    if result.run_dir != run_dir / name:
        raise PodiumError(f"the refit run was written to {result.run_dir}, expected {run_dir / name}")
    return result


def _load_pool(cfg: PodiumConfig, log) -> tuple[pd.DataFrame, list[str]]:
    """All labelled images of data.train, read as `podium train` reads them (task labels, crops)."""
    from podium.data.samples import load_pool

    if cfg.data.val:
        log(f"note: data.val ({cfg.data.val}) is not used: cross-validation draws every fold from data.train")
    frame, classes, bad = load_pool(cfg, log)
    if bad:
        from podium.data.dataset import skipped_images_note

        log(skipped_images_note(bad))
    return frame, classes


def _is_competition(cfg: PodiumConfig, test_data) -> bool:
    from podium.data.samples import is_competition_layout

    return bool(test_data) and cfg.task.mode != "per_attribute" and is_competition_layout(cfg, test_data)


def load_test(cfg: PodiumConfig, test_data) -> pd.DataFrame:
    """Unlabelled test images, read the way `podium predict` reads them."""
    from podium.data.samples import prediction_samples

    return prediction_samples(cfg, test_data, _is_competition(cfg, test_data), log=lambda *a: None)


def _folds_table(frame: pd.DataFrame, folds: np.ndarray) -> pd.DataFrame:
    columns = ["id", "path", "label"] + (["group"] if has_groups(frame) else [])
    return frame[columns].assign(fold=folds).reset_index(drop=True)


def _write_cv_files(run_dir: Path, cfg: PodiumConfig, frame: pd.DataFrame, classes: list[str], k: int,
                    test_data) -> pd.DataFrame:
    folds = make_folds(frame, k, cfg.cv.seed)
    table = _folds_table(frame, folds)
    write_csv(run_dir / FOLDS_FILE, table)
    write_text(run_dir / CONFIG_FILE, config_to_yaml(cfg))
    write_json(run_dir / CV_FILE, {
        "k": k, "seed": cfg.cv.seed, "classes": classes, "grouped": has_groups(frame),
        "n_images": len(table), "data": cfg.data.train, "test_data": str(test_data) if test_data else None,
        "fold_sizes": table["fold"].value_counts().sort_index().tolist(),
    })
    return frame.assign(fold=folds)


def _reuse_or_write_cv_files(run_dir: Path, cfg: PodiumConfig, frame: pd.DataFrame, classes: list[str], k: int,
                             test_data) -> pd.DataFrame:
    if not (run_dir / CV_FILE).is_file():
        run_dir.mkdir(parents=True, exist_ok=True)
        return _write_cv_files(run_dir, cfg, frame, classes, k, test_data)
    meta = read_cv_meta(run_dir)
    if meta["k"] != k or meta["classes"] != classes:
        raise PodiumError(
            f"{run_dir} holds a {meta['k']}-fold CV over classes {summarize_list(meta['classes'])}; this call asks "
            f"for {k} folds over {summarize_list(classes)}. Use the same --folds and data, or another output.name")
    table = read_folds(run_dir)
    if set(table["id"]) != set(frame["id"].astype(str)):
        raise PodiumError(f"the images of data.train differ from {run_dir / FOLDS_FILE}; the folds would disagree. "
                          "Use the same data for every --fold call, or another output.name")
    return frame.assign(fold=frame["id"].astype(str).map(table.set_index("id")["fold"]).astype(int).to_numpy())


def fold_status(folder: Path) -> str:
    """``missing`` (no folder), ``unfinished`` (no summary / OOF table yet) or ``done``."""
    if not folder.is_dir():
        return "missing"
    return "done" if is_finished_run(folder) else "unfinished"


def _check_fold_free(run_dir: Path, fold: int) -> None:
    folder = fold_dir(run_dir, fold)
    status = fold_status(folder)
    if status == "done":
        raise PodiumError(f"fold {fold} is already trained in {folder}; delete that folder to train it again")
    if status == "unfinished":
        raise PodiumError(f"fold {fold} in {folder} is unfinished: continue it with `podium train --resume {folder}` "
                          f"(then `podium cv-gather {run_dir}`), or delete the folder to start the fold over")


# ---------------------------------------------------------------- gathering


def gather_cv(run_dir: str | Path, *, test: str | Path | None = None, progress: bool = False, log=print) -> dict:
    """OOF table, CV score and (with ``test``, or the ``--test`` the cv run was started with)
    the fold-averaged test predictions of a finished CV folder."""
    from podium.data.dataset import encode_labels
    from podium.evaluation.metrics import save_classification_report
    from podium.evaluation.scores import macro_f1

    run_dir = Path(run_dir)
    meta = read_cv_meta(run_dir)
    k, classes = meta["k"], meta["classes"]
    table = read_folds(run_dir)
    _check_all_folds_done(run_dir, k)
    parts, fold_rows = [], []
    for f in range(k):
        part = read_val_predictions(fold_dir(run_dir, f)).assign(fold=f)
        _check_fold_part(run_dir, f, part, table, classes)
        y = encode_labels(part["target"], classes, f"fold {f} predictions")
        pred = part[classes].to_numpy().argmax(1)
        summary = read_summary(fold_dir(run_dir, f))
        fold_rows.append({"fold": f, "n_images": len(part), "macro_f1": macro_f1(y, pred, len(classes)),
                          "accuracy": float((pred == y).mean()), "best_epoch": summary.get("best_epoch"),
                          "wall_time_s": summary.get("wall_time_s")})
        parts.append(part)
    oof = pd.concat(parts, ignore_index=True)
    _check_oof_coverage(oof, table)
    oof = oof[[c for c in oof.columns if c not in classes] + classes]
    write_parquet(run_dir / OOF_FILE, oof)
    y_true = encode_labels(oof["target"], classes, "OOF predictions")
    probs = oof[classes].to_numpy(dtype=np.float64)
    report = save_classification_report(run_dir, y_true, probs, classes, extra={"kind": "out-of-fold"})
    fold_f1 = np.array([r["macro_f1"] for r in fold_rows])
    times = [r["wall_time_s"] for r in fold_rows if r["wall_time_s"] is not None]
    summary = {
        "run_dir": str(run_dir), "k": k, "n_images": len(oof), "classes": classes,
        "cv_macro_f1": macro_f1(y_true, probs.argmax(1), len(classes)),
        "cv_accuracy": float((probs.argmax(1) == y_true).mean()),
        "fold_macro_f1_mean": float(fold_f1.mean()), "fold_macro_f1_std": float(fold_f1.std()),
        "oof_metrics": report, "folds": fold_rows,
        "total_fold_time_s": float(sum(times)) if times else None,
    }
    summary.update(_gathered_test(run_dir, test or meta.get("test_data"), progress, log))
    write_json(run_dir / CV_SUMMARY_FILE, summary)
    from podium.reports.report import build_run_report

    build_run_report(run_dir)  # OOF-based report.html, as train writes for a single run
    return summary


def _check_all_folds_done(run_dir: Path, k: int) -> None:
    bad = {f: s for f in range(k) if (s := fold_status(fold_dir(run_dir, f))) != "done"}
    if bad:
        detail = ", ".join(f"fold {f} {s}" for f, s in bad.items())
        raise PodiumError(
            f"{run_dir}: {len(bad)} of {k} folds are not finished ({detail}). Train them with "
            f"`podium cv CONFIG output.dir={run_dir.parent} output.name={run_dir.name} --folds {k} --fold N` for N in "
            f"{summarize_list(list(bad))}, then gather again")


def _gathered_test(run_dir: Path, test: str | Path | None, progress: bool, log) -> dict:
    """The cv run's one predictor (folds averaged, each with its own TTA) on the test images,
    as test_probabilities.parquet + submission.csv; kept when an earlier gather wrote them."""
    if not test:
        return {}
    done = run_dir / TEST_PROBABILITIES_FILE
    if done.is_file():
        log(f"test predictions {done} exist and are kept; predict other images with `podium predict {run_dir} --data DIR`")
        return {"test_probabilities": str(done), "test_data": str(test)}
    from podium.inference.predict import predict_probabilities
    from podium.inference.predictor import load_predictor

    predictor = load_predictor(run_dir)
    frame, probs, root = predict_probabilities(predictor, test, progress=progress)
    written = write_test_outputs(run_dir, frame["id"], probs, predictor.classes, predictor.config.output.submission,
                                 competition_root=root)
    return {**written, "test_data": str(test)}


def write_test_outputs(out_dir: Path, ids: pd.Series, probs: np.ndarray, classes: list[str], sub_cfg,
                       stem: str = "", competition_root: str | Path | None = None) -> dict:
    """``test_probabilities.parquet`` (id + class columns) and ``submission.csv``
    (the competition's own format when ``competition_root`` is its eval folder)."""
    from podium.inference.predict import write_outputs

    probs_path, sub_path = write_outputs(Path(out_dir), ids, probs, classes, sub_cfg, competition_root=competition_root,
                                         probs_name=f"test_probabilities{stem}.parquet", sub_name=f"submission{stem}.csv")
    return {"test_probabilities": str(probs_path), "submission": str(sub_path), "n_test_images": len(ids)}


def _check_fold_part(run_dir: Path, fold: int, part: pd.DataFrame, table: pd.DataFrame, classes: list[str]) -> None:
    missing_cols = [c for c in classes if c not in part.columns]
    if missing_cols:
        raise PodiumError(f"fold {fold} in {run_dir} has no probability column(s) {summarize_list(missing_cols)}: "
                          "it was trained with another class map")
    want = set(table.loc[table["fold"] == fold, "id"])
    have = set(part["id"].astype(str))
    if want != have:
        raise PodiumError(
            f"fold {fold} in {run_dir} validated on other images than {FOLDS_FILE} assigns to it "
            f"({len(want - have)} missing, {len(have - want)} extra, e.g. {summarize_list(sorted(want ^ have), 3)}). "
            "Was the fold folder copied from another CV? Delete it and train the fold again")


def _check_oof_coverage(oof: pd.DataFrame, table: pd.DataFrame) -> None:
    ids = oof["id"].astype(str)
    dup = sorted(ids[ids.duplicated()].unique())
    missing = sorted(set(table["id"]) - set(ids))
    if dup or missing or len(oof) != len(table):
        raise PodiumError(f"out-of-fold predictions must cover every image exactly once: {len(dup)} id(s) appear "
                          f"twice ({summarize_list(dup, 3)}), {len(missing)} never ({summarize_list(missing, 3)})")


def _competition_root(run_dir: Path, meta: dict) -> str | None:
    test = meta.get("test_data")
    return test if test and (run_dir / CONFIG_FILE).is_file() and _is_competition(read_config(run_dir), test) else None


def _tune_run_biases(run_dir: Path, *, n_splits: int, seed: int) -> dict:
    """`tune_biases` for a single run: fitted on its validation predictions (the same nested
    estimate: biases are scored on validation images they were not fitted on)."""
    from podium.rundir import read_classes

    val = read_val_predictions(run_dir)
    result = _fit_biases(val, read_classes(run_dir), f"{len(val)} validation images of {run_dir}",
                         "validation predictions", n_splits=n_splits, seed=seed)
    write_json(run_dir / BIASES_FILE, result)
    return result


def _fit_biases(table: pd.DataFrame, classes: list[str], fitted_on: str, what: str, *, n_splits: int,
                seed: int) -> dict:
    """Macro-F1 logit biases of a prediction table (target + class columns) with their nested gain."""
    from podium.data.dataset import encode_labels
    from podium.evaluation.biases import nested_bias_gain

    y = encode_labels(table["target"], classes, what)
    report = nested_bias_gain(table[classes].to_numpy(dtype=np.float64), y, len(classes), n_splits=n_splits, seed=seed)
    return {"classes": classes, "biases": report["biases"], "fitted_on": fitted_on,
            **{k: v for k, v in report.items() if k != "biases"}}


def load_oof(run_dir: str | Path) -> pd.DataFrame:
    """The CV folder's OOF table, gathering it first when needed."""
    run_dir = Path(run_dir)
    if not (run_dir / OOF_FILE).is_file():
        gather_cv(run_dir)
    return read_table(run_dir / OOF_FILE, "out-of-fold predictions")


# ---------------------------------------------------------------- measured improvements


def oof_tta(run_dir: str | Path, views: list[str], merge: str = "mean", *, batch_size: int | None = None,
            progress: bool = False) -> dict:
    """Macro F1 of the OOF predictions with and without TTA (each fold predicts its own validation images).

    TTA does not always help (a flip can hurt text or asymmetric classes), so
    the gain is measured on held-out images before it is switched on.
    """
    from podium.data.dataset import encode_labels
    from podium.evaluation.scores import macro_f1
    from podium.evaluation.tta import parse_views
    from podium.inference.predict import predict_frame
    from podium.inference.predictor import load_predictor

    run_dir = Path(run_dir)
    views = ["identity", *[v for v in views if v != "identity"]]  # as predict does: the plain image plus views
    parse_views(views)  # fail on a bad name before any work
    oof = load_oof(run_dir)
    classes = read_cv_meta(run_dir)["classes"]
    parts = []
    for fold, part in oof.groupby("fold", sort=True):
        fold_model = load_predictor(fold_dir(run_dir, int(fold)), tta=list(views))
        probs = predict_frame(fold_model, part, batch_size=batch_size, tta_merge=merge, progress=progress)
        parts.append(part.drop(columns=classes).reset_index(drop=True).join(pd.DataFrame(probs, columns=classes)))
    tta = pd.concat(parts, ignore_index=True)
    tta["prediction"] = np.asarray(classes)[tta[classes].to_numpy().argmax(1)]
    y = encode_labels(oof["target"], classes, "OOF predictions")
    y_tta = encode_labels(tta["target"], classes, "OOF predictions")
    plain_pred, tta_pred = oof[classes].to_numpy().argmax(1), tta[classes].to_numpy().argmax(1)
    n = len(classes)
    per_fold = []
    for fold in sorted(oof["fold"].unique()):
        a, b = (oof["fold"] == fold).to_numpy(), (tta["fold"] == fold).to_numpy()
        per_fold.append({"fold": int(fold), "macro_f1_plain": macro_f1(y[a], plain_pred[a], n),
                         "macro_f1_tta": macro_f1(y_tta[b], tta_pred[b], n)})
    result: dict[str, Any] = {
        "views": list(views), "merge": merge, "n_views": len(parse_views(views)), "n_images": len(tta),
        "macro_f1_plain": macro_f1(y, plain_pred, n), "macro_f1_tta": macro_f1(y_tta, tta_pred, n),
        "accuracy_plain": float((plain_pred == y).mean()), "accuracy_tta": float((tta_pred == y_tta).mean()),
        "per_fold": per_fold,
    }
    result["gain"] = result["macro_f1_tta"] - result["macro_f1_plain"]
    out = run_dir / "tta" / re.sub(r"[^A-Za-z0-9_.+-]", "_", "+".join(views) + f"_{merge}")
    write_parquet(out / OOF_FILE, tta)
    write_json(out / TTA_SUMMARY_FILE, result)
    result["out_dir"] = str(out)
    return result


def tune_biases(run_dir: str | Path, *, n_splits: int = 5, seed: int = 0) -> dict:
    """Per-class logit biases for macro F1, fitted on the OOF table; gain measured by nested CV.

    Writes ``logit_biases.json`` (and a biased submission when fold-averaged test
    probabilities exist). Apply the biases only when ``gain`` > 0: the gain is
    scored on rows the biases were not fitted on.
    """
    from podium.evaluation.biases import apply_logit_biases

    run_dir = Path(run_dir)
    if not (run_dir / CV_FILE).is_file() and is_finished_run(run_dir):
        return _tune_run_biases(run_dir, n_splits=n_splits, seed=seed)
    oof = load_oof(run_dir)
    meta = read_cv_meta(run_dir)
    classes = meta["classes"]
    result = _fit_biases(oof, classes, f"{len(oof)} OOF images of {run_dir}", "OOF predictions",
                         n_splits=n_splits, seed=seed)
    test_path = run_dir / TEST_PROBABILITIES_FILE
    if test_path.is_file():
        test = read_table(test_path, "fold-averaged test probabilities")
        biased = apply_logit_biases(test[classes].to_numpy(dtype=np.float64), result["biases"])
        result.update({f"biased_{k}": v for k, v in write_test_outputs(
            run_dir, test["id"].astype(str), biased, classes, read_config(run_dir).output.submission, stem="_biased",
            competition_root=_competition_root(run_dir, meta)).items()})
    write_json(run_dir / BIASES_FILE, result)
    return result
