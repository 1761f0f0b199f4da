"""Ensembles and checkpoint averages built from run folders (single runs, CV runs, prediction files).

The voting and weight-fitting math lives in `ensemble`; this module finds the
members' out-of-fold and test predictions, checks they describe the same
images and classes, and writes the combined submission and score table.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from podium.errors import PodiumError, summarize_list
from podium.evaluation.cv import load_oof, write_test_outputs
from podium.fileio import write_csv, write_json, write_parquet
from podium.rundir import (
    BEST_CHECKPOINT,
    ENSEMBLE_FILE,
    EPOCHS_DIR,
    OOF_FILE,
    SCORES_FILE,
    TEST_PROBABILITIES_FILE,
    folder_kind,
    next_free_file,
    read_classes,
    read_config,
    read_metrics,
    read_table,
    read_val_predictions,
)
from podium.tasks.spec import composite_task

# ---------------------------------------------------------------- checkpoint averaging


_EPOCH_RE = re.compile(r"epoch(\d+)\.ckpt$")


def epoch_checkpoints(run_dir: str | Path) -> dict[int, Path]:
    """``{epoch: path}`` of a run's per-epoch checkpoints (``epochs/epochNNN.ckpt``)."""
    folder = Path(run_dir) / EPOCHS_DIR
    found = {}
    for path in folder.glob("*.ckpt") if folder.is_dir() else []:
        match = _EPOCH_RE.search(path.name)
        if match:
            found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def select_epochs(run_dir: str | Path, *, last: int | None = None, best: int | None = None) -> list[Path]:
    """The last k epochs' checkpoints, or the k with the best ``train.monitor`` in metrics.csv."""
    from podium.rundir import load_run

    if (last is None) == (best is None):
        raise PodiumError("choose which checkpoints to average: --last K or --best K (one of them)")
    k = last if last is not None else best
    if k < 1:
        raise PodiumError(f"the number of checkpoints to average must be >= 1; got {k}")
    run_dir = Path(run_dir)
    available = epoch_checkpoints(run_dir)
    if not available:
        have = sorted(p.name for p in run_dir.glob("*.ckpt"))
        raise PodiumError(
            f"{run_dir} has no per-epoch checkpoints ({EPOCHS_DIR}/epochNNN.ckpt), only {have or 'none'}: averaging "
            "needs the weights of several epochs. Train with per-epoch checkpoints: "
            "`podium train ... train.save_epoch_checkpoints=true` or `podium cv ... --save-epochs`")
    if len(available) < k:
        raise PodiumError(f"{run_dir} has {len(available)} per-epoch checkpoint(s) (epochs {list(available)}); "
                          f"cannot average {k}. Use a smaller K")
    if last is not None:
        return [available[e] for e in list(available)[-k:]]
    cfg = load_run(run_dir).config
    metrics = read_metrics(run_dir)
    monitor = cfg.train.monitor
    if monitor not in metrics.columns:
        raise PodiumError(f"{run_dir}/metrics.csv has no {monitor} column to rank epochs by; use --last K")
    ranked = metrics[metrics["epoch"].isin(list(available))].dropna(subset=[monitor])
    ranked = ranked.sort_values(monitor, ascending=cfg.train.monitor_mode == "min")
    if len(ranked) < k:
        raise PodiumError(f"only {len(ranked)} epoch(s) with a checkpoint have a {monitor} value; use a smaller K")
    return [available[int(e)] for e in sorted(ranked["epoch"].head(k))]


def average_run_checkpoints(run_dir: str | Path, *, last: int | None = None, best: int | None = None,
                            out: str | Path | None = None, evaluate: bool = True, progress: bool = False) -> dict:
    """Write the mean of several epochs' weights and (by default) score it on the run's validation split.

    Averaging the last epochs of a decaying schedule often generalises better
    than any single epoch (SWA); the validation score says whether it did here.
    BatchNorm statistics are averaged too, an approximation of SWA's re-estimate.
    """
    from podium.model.averaging import save_averaged_checkpoint

    run_dir = Path(run_dir)
    paths = select_epochs(run_dir, last=last, best=best)
    default = f"averaged_{'last' if last else 'best'}{len(paths)}.ckpt"
    target = Path(out) if out else run_dir / default
    if target.is_dir():
        target = target / default
    out = next_free_file(target)  # never over best.ckpt, last.ckpt or an earlier average
    try:
        save_averaged_checkpoint(paths, out)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    result = {"checkpoint": str(out), "averaged": [p.name for p in paths]}
    if evaluate:
        result.update(_score_checkpoints(run_dir, {"averaged": out, "best": run_dir / BEST_CHECKPOINT}, progress))
    return result


def _score_checkpoints(run_dir: Path, ckpts: dict[str, Path], progress: bool) -> dict:
    from podium.data.dataset import encode_labels
    from podium.data.samples import load_split
    from podium.evaluation.scores import macro_f1
    from podium.inference.predict import predict_frame
    from podium.inference.predictor import load_predictor

    classes = read_classes(run_dir)
    val = load_split(run_dir, classes).val
    y = encode_labels(val["label"], classes, "validation split")
    scores = {}
    for name, path in ckpts.items():
        if path.is_file():
            probs = predict_frame(load_predictor(run_dir, checkpoint=str(path)), val, tta=None, progress=progress)
            scores[f"val_macro_f1_{name}"] = macro_f1(y, probs.argmax(1), len(classes))
    return scores


# ---------------------------------------------------------------- ensembles of runs


@dataclass
class Member:
    """One ensemble member: its OOF/validation table (scored, used to fit weights) and test table."""

    name: str
    classes: list[str]
    oof: pd.DataFrame | None
    test: pd.DataFrame | None
    submission: object | None = None  # the member's SubmissionConfig when known
    model: Path | None = None  # the run or cv folder, when the member is a model that can predict new images


def load_member(spec: str | Path, test_probs: str | Path | None = None) -> Member:
    """A CV folder (OOF + averaged test), a run folder (validation predictions) or a parquet table.

    A parquet with a ``target`` column is an OOF/validation table, otherwise a test table.
    """
    from podium.evaluation.tables import probability_columns

    path = Path(spec)
    sub, test, model = None, None, None
    kind = folder_kind(path) if path.is_dir() else None
    if kind == "cv":
        oof, classes, model = load_oof(path), read_classes(path), path
        test_path = path / TEST_PROBABILITIES_FILE
        test = read_table(test_path, f"test probabilities of member {spec}") if test_path.is_file() else None
        sub = read_config(path).output.submission
    elif kind == "run":
        oof, classes, model = read_val_predictions(path), read_classes(path), path
        sub = read_config(path).output.submission
    elif path.is_file() and path.suffix == ".parquet":
        table = read_table(path, f"ensemble member {spec}")
        classes = probability_columns(table)
        oof, test = (table, None) if "target" in table.columns else (None, table)
    else:
        raise PodiumError(f"ensemble member {spec} is neither a cv folder, a finished run folder nor a .parquet "
                          "prediction table")
    if test_probs is not None:
        test = read_table(test_probs, f"test probabilities for member {spec}")
    return Member(str(spec), list(classes), oof, test, sub, model)


def ensemble_members(specs: list[str], method: str = "soft", *, out: str | Path | None = None,
                     test_probs: list[str] | None = None) -> dict:
    """Combine members with ``method`` (hard/soft/weighted/rank); score every member and the ensemble on OOF.

    ``weighted`` fits weights on the OOF rows (so its OOF score is optimistic);
    the same weights are applied to the test tables. Everything is checked
    before the output folder is created, so a refused ensemble leaves nothing.
    """
    from podium.evaluation.ensemble import create_voter

    if not specs:
        raise PodiumError("give at least one ensemble member (CV folder, run folder or parquet file)")
    vote = create_voter(method)
    if test_probs and len(test_probs) != len(specs):
        raise PodiumError(f"--test-probs gives {len(test_probs)} file(s) for {len(specs)} members; give one per member")
    members = [load_member(s, t) for s, t in zip(specs, test_probs or [None] * len(specs))]
    classes = members[0].classes
    result: dict = {"method": method, "members": [m.name for m in members], "classes": classes, "weights": None,
                    "voting": "on the classes"}
    attributes = composite_task(classes)
    if attributes is not None:  # multi-attribute classes: vote each attribute, then compose
        vote = _per_attribute(vote, attributes)
        result["voting"] = "per attribute, then composed"
    oof_table, weights = _combine_oof(members, method, vote, result)
    test = _combine_test(members, vote, weights)
    if oof_table is None and test is None:
        raise PodiumError("the members have neither OOF nor test predictions to combine")
    _write_ensemble(out, members, result, oof_table, test)
    return result


def _combine_oof(members: list, method: str, vote, result: dict) -> tuple[pd.DataFrame | None, np.ndarray | None]:
    """The ensemble's OOF prediction table and weights (``weighted`` only), with every member's
    and the ensemble's scores in ``result``; (None, None) when the members have no OOF rows."""
    from podium.evaluation.ensemble import align_members, member_score_table

    names, classes = result["members"], result["classes"]
    if not _all_or_none(members, "oof", "OOF/validation predictions"):
        if method == "weighted":
            raise PodiumError("the weighted method fits weights on OOF predictions, but no member has any; "
                              "use soft, hard or rank for test-only members")
        return None, None
    arrays = align_members([m.oof for m in members], names, classes)
    y, ids, targets = _common_targets(members, classes)
    weights = _fit_and_check(result, method, arrays, y, vote, _groups(members[0], ids))
    combined = vote(arrays, weights)
    result["scores"] = member_score_table(arrays, y, len(classes), names, {f"ensemble ({method})": combined},
                                          weights)
    result["oof_macro_f1"] = float(result["scores"]["macro_f1"].iloc[-1])
    pred = np.asarray(classes)[combined.argmax(1)]
    base = {"id": ids, "target": targets, "prediction": pred}
    if "path" in members[0].oof.columns:  # image paths let the report show the worst errors
        paths = members[0].oof.assign(id=members[0].oof["id"].astype(str)).set_index("id")["path"]
        base = {"id": ids, "path": paths.reindex(ids).to_numpy(), "target": targets, "prediction": pred}
    return pd.concat([pd.DataFrame(base), pd.DataFrame(combined, columns=classes)], axis=1), weights


def _combine_test(members: list, vote, weights: np.ndarray | None) -> tuple[pd.Series, np.ndarray] | None:
    """The test ids and the combined test probabilities, or None when the members have none."""
    from podium.evaluation.ensemble import align_members

    if not _all_or_none(members, "test", "test probabilities (pass --test-probs, one file per member)"):
        return None
    arrays = align_members([m.test for m in members], [f"{m.name} (test)" for m in members], members[0].classes)
    return members[0].test["id"].astype(str), vote(arrays, weights)


def _write_ensemble(out: str | Path | None, members: list, result: dict, oof_table: pd.DataFrame | None,
                    test: tuple[pd.Series, np.ndarray] | None) -> None:
    """The ensemble folder: scores and OOF table, test outputs (submission), ensemble.json, and
    the report where the OOF rows have image paths. ``result`` gains the folder and its files."""
    from podium.rundir import output_dir

    out_dir = output_dir(out, Path("runs"), "ensemble")
    result["out_dir"] = str(out_dir)
    result["member_models"] = _member_models(members, out_dir)
    if oof_table is not None:
        write_csv(out_dir / SCORES_FILE, result["scores"])
        write_parquet(out_dir / OOF_FILE, oof_table)
    if test is not None:
        from podium.schema import SubmissionConfig

        sub = next((m.submission for m in members if m.submission is not None), None) or SubmissionConfig()
        result.update(write_test_outputs(out_dir, test[0], test[1], result["classes"], sub))
    write_json(out_dir / ENSEMBLE_FILE, {k: v for k, v in result.items() if k != "scores"})
    if oof_table is not None and "path" in oof_table.columns:
        from podium.reports.report import build_run_report

        result["report"] = str(build_run_report(out_dir))


def _fit_and_check(result: dict, method: str, arrays: list[np.ndarray], y: np.ndarray, vote,
                   groups: np.ndarray | None) -> np.ndarray | None:
    """Weights of the `weighted` method (log loss, then macro F1) and the nested check of every
    ensemble of several members: it and its best member scored on OOF rows nothing was fitted on."""
    from podium.evaluation.ensemble import fit_ensemble_weights, nested_ensemble_check

    n_classes, weights = len(result["classes"]), None
    if method == "weighted":
        weights = fit_ensemble_weights(arrays, y, n_classes, combine=vote)
        result["weights"] = [float(w) for w in weights]
        result["weights_fitted_for"] = "macro F1 (coordinate ascent from the log-loss weights)"
        result["note"] = "weights were fitted on these OOF rows: the ensemble's OOF score is optimistic"
    if len(arrays) > 1:
        try:
            nested = nested_ensemble_check(arrays, y, n_classes, combine=vote, names=result["members"], groups=groups,
                                           fit=fit_ensemble_weights if method == "weighted" else None)
        except PodiumError as exc:
            result["nested"] = {"skipped": str(exc)}
            return weights
        result["nested"] = nested
        result["beats_best_member"] = nested["beats_best_member"]
        result["verdict"] = ensemble_verdict(method, nested)
    return weights


def ensemble_verdict(method: str, nested: dict) -> str:
    """The nested check in one plain sentence."""
    scores = (f"{nested['ensemble_nested_f1']:.4f} vs {nested['best_member_nested_f1']:.4f} for the best member, "
              f"macro F1 on OOF rows held out of {nested['n_splits']} fits")
    if nested["beats_best_member"]:
        return f"the {method} ensemble beats its best member: {scores}"
    return (f"the {method} ensemble does NOT beat its best member ({scores}); submit the best member alone, "
            "or add members that err differently")


def _groups(member: Member, ids: np.ndarray) -> np.ndarray | None:
    """Each OOF row's group (person, source photo) when the member is a grouped cv folder."""
    from podium.data.splits import group_ids, has_groups
    from podium.rundir import read_folds

    path = member.model
    if path is None or folder_kind(path) != "cv":
        return None
    folds = read_folds(path)
    if not has_groups(folds):
        return None
    return pd.Series(group_ids(folds), index=folds["id"].astype(str)).reindex(ids).to_numpy()


def _per_attribute(vote, task):
    from podium.evaluation.ensemble import vote_per_attribute

    def voter(arrays, weights=None):
        marginals = [[task.marginal_probs(a, name) for name in task.names] for a in arrays]
        return vote_per_attribute(marginals, vote, weights)

    return voter


def _all_or_none(members: list[Member], attr: str, what: str) -> bool:
    lacking = [m.name for m in members if getattr(m, attr) is None]
    if lacking and len(lacking) < len(members):
        raise PodiumError(f"member(s) {summarize_list(lacking)} have no {what} while the others do; "
                          "every member must cover the same images")
    return not lacking


def _common_targets(members: list[Member], classes: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from podium.data.dataset import encode_labels

    for m in members:
        if "target" not in m.oof.columns:
            raise PodiumError(f"member {m.name} has no target column: OOF tables must carry the true class")
    first = members[0].oof
    ids = first["id"].astype(str).to_numpy()
    targets = first["target"].astype(str).to_numpy()
    for m in members[1:]:
        other = m.oof.assign(id=m.oof["id"].astype(str)).set_index("id")["target"].astype(str).reindex(ids).to_numpy()
        differ = ids[other != targets]
        if len(differ):
            raise PodiumError(f"member {m.name} gives other true classes than {members[0].name} for "
                              f"{len(differ)} image(s): {summarize_list(differ.tolist(), 3)}")
    return encode_labels(targets, classes, "ensemble OOF targets"), ids, targets


def _member_models(members: list[Member], out_dir: Path) -> list[dict]:
    """Where each member lives (absolute, and relative to the ensemble folder so a tree moved as a
    whole still resolves), so the ensemble can be loaded as one predictor (`inference.predictor`)."""
    entries = []
    for m in members:
        where = (m.model or Path(m.name)).resolve()
        entries.append({"name": m.name, "path": str(where), "relative": os.path.relpath(where, out_dir.resolve()),
                        "kind": folder_kind(where) if where.is_dir() else "table"})
    return entries
