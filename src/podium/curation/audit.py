"""`podium audit`: the images whose labels are most likely wrong, and other data problems.

Labels are judged on out-of-fold probabilities, where every image was predicted
by a model that never trained on it: a cv run's OOF table, or a single run's
validation part (its training images were fitted, so they cannot be judged).
Confident learning is cleanlab's (`cleanlab.filter.find_label_issues`, ranked
by `cleanlab.rank.get_label_quality_scores`); podium supplies honest
probabilities and the structure cleanlab does not know about:

* composite tasks are audited per attribute (the marginal probabilities of
  gender, of the age bin...), so an issue says which attribute is wrong;
* an attribute that never changes within a group (a person's gender and age:
  found from the labels, the share of groups whose images all agree) is
  judged per group on the group's pooled probabilities, and a group whose
  images disagree on it is reported;
* near duplicates (EDA's hashes) with different labels or in different groups;
* outliers: tiny images, near-blank ones, and images far from their own class
  in the model's feature space (cleanlab's `OutOfDistribution` per class).

Nothing is changed: the issues go to ``issues.csv`` and the offline review
page, whose keep / relabel / drop choices export a ``label_fixes.csv`` for
`task.label_fixes`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from podium.errors import PodiumError, summarize_list
from podium.fileio import write_csv, write_json
from podium.schema import PodiumConfig
from podium.tasks.fixes import LABEL, belief_weight

AUDIT_FILE = "audit.json"
ISSUES_FILE = "issues.csv"
QUALITY_FILE = "label_quality.csv"
REVIEW_FILE = "review.html"
SUGGESTED_FILE = "suggested_fixes.csv"
#: an attribute is judged per group when at least this share of the groups agree on it
GROUP_LEVEL_SHARE = 0.9
MIN_GROUPS = 5
BLANK_GRAY_STD = 2.0       # grey-level spread (of 255) below which an image is near-blank
FENCE_IQR = 3.0            # feature outliers: kNN distance above Q3 + 3 IQR of the class (Tukey's far out)
MIN_CLASS_FOR_FEATURES = 8
#: what `suggested_fixes` can write for every flagged image
SUGGEST_ACTIONS = ("drop", "relabel", "weight")
ISSUE_COLUMNS = ["kind", "scope", "id", "attribute", "given", "suggested", "p_given", "p_suggested", "suspicion",
                 "group", "fold", "path", "other_id", "other_path", "detail"]


@dataclass
class AuditData:
    """The honest probabilities an audit judges: OOF (cv run) or validation (single run) rows."""

    kind: str                 # "cv" or "run"
    dir: Path
    cfg: PodiumConfig
    classes: list[str]
    table: pd.DataFrame       # id, path, target, group, fold, one column per class
    note: str
    n_total: int


@dataclass
class View:
    """One thing a label says: the plain class, or one attribute of a composite class."""

    name: str                 # what a fix names: `label`, or the attribute
    classes: list[str]
    y: np.ndarray
    probs: np.ndarray
    group_level: bool = False


@dataclass
class Audit:
    """An audit folder: ``issues`` (one row per issue, most suspicious first), ``quality``
    (every image's label quality per attribute), ``summary`` (audit.json) and the review page."""

    dir: Path
    summary: dict
    issues: pd.DataFrame
    quality: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)

    @property
    def review_page(self) -> Path:
        return self.dir / REVIEW_FILE

    def suggested_fixes(self, kinds: tuple[str, ...] = ("label", "group_label"), action: str = "relabel") -> pd.DataFrame:
        """`suggested_fixes` of this audit's issues (a DataFrame; nothing is written or applied)."""
        return suggested_fixes(self.issues, kinds, action)

    def write_suggested_fixes(self, action: str = "drop",
                              kinds: tuple[str, ...] = ("label", "group_label")) -> Path:
        """``suggested_fixes.csv`` in the audit folder: `suggested_fixes` as a label-fixes file that
        `task.label_fixes` applies only when a run is given it (nothing is applied here)."""
        path = self.dir / SUGGESTED_FILE
        write_csv(path, self.suggested_fixes(kinds, action))
        return path


def load_audit(folder: str | Path) -> Audit:
    """An audit folder written by `run_audit`, read back (summary, issues, per-image quality)."""
    import json

    folder = Path(folder)
    if not (folder / AUDIT_FILE).is_file():
        raise PodiumError(f"{folder} is not an audit folder (no {AUDIT_FILE}); run podium audit on a cv run first")
    text = {"id": str, "group": str, "other_id": str}
    issues = pd.read_csv(folder / ISSUES_FILE, dtype=text).fillna({"group": ""})
    quality = (pd.read_csv(folder / QUALITY_FILE, dtype=text).fillna({"group": ""})
               if (folder / QUALITY_FILE).is_file() else pd.DataFrame())
    return Audit(folder, json.loads((folder / AUDIT_FILE).read_text()), issues, quality)


# ---------------------------------------------------------------- what is judged


def load_audit_data(path: str | Path, log=print) -> AuditData:
    """A cv run's OOF table or a single run's validation predictions, with groups and folds."""
    from podium.rundir import folder_kind

    path = Path(path)
    kind = folder_kind(path)
    if kind == "cv":
        return _cv_data(path, log)
    if kind == "run":
        return _run_data(path)
    if kind == "ensemble":
        raise PodiumError(f"{path} is an ensemble folder; audit one of its cv runs (podium audit runs/cv): the audit "
                          "needs the runs' out-of-fold predictions and models")
    raise PodiumError(f"{path} is not a run or cv folder (no classes.json or cv.json); give a finished run "
                      "(podium train) or cv run (podium cv)")


def _cv_data(path: Path, log) -> AuditData:
    from podium.evaluation.cv import fold_status, gather_cv
    from podium.rundir import (
        OOF_FILE,
        fold_dir,
        read_config,
        read_cv_meta,
        read_folds,
        read_table,
    )

    meta = read_cv_meta(path)
    if not (path / OOF_FILE).is_file():
        unfinished = [f for f in range(int(meta["k"])) if fold_status(fold_dir(path, f)) != "done"]
        if unfinished:
            raise PodiumError(f"{path} has no out-of-fold predictions ({OOF_FILE}): fold(s) "
                              f"{summarize_list(unfinished)} of {meta['k']} are not finished. Train them "
                              f"(podium cv CONFIG --fold N), run podium cv-gather {path}, then audit")
        log(f"gathering the folds of {path}")
        gather_cv(path)
    oof = read_table(path / OOF_FILE, "out-of-fold predictions")
    folds = read_folds(path)
    table = _with_groups(oof, folds)
    note = (f"out-of-fold predictions of all {len(table)} images ({meta['k']} folds): every image was predicted "
            "by a model that never trained on it")
    return AuditData("cv", path, read_config(path), [str(c) for c in meta["classes"]], table, note, len(table))


def _run_data(path: Path) -> AuditData:
    from podium.rundir import (
        VAL_PREDICTIONS_FILE,
        is_finished_run,
        load_run,
        read_split,
        read_val_predictions,
    )

    if not is_finished_run(path):
        raise PodiumError(f"{path} has no validation predictions ({VAL_PREDICTIONS_FILE}): the run has not finished. "
                          f"Finish it (podium train --resume {path}) or audit a cv run")
    info = load_run(path)
    split = read_split(path)
    table = _with_groups(read_val_predictions(path), split)
    n_train = int((split["split"] == "train").sum())
    note = (f"validation part only: {len(table)} of {len(split)} images. The model was fitted on the other "
            f"{n_train}, so their labels cannot be judged by it; audit a cv run (podium cv) to check every image")
    return AuditData("run", path, info.config, info.classes, table, note, len(split))


def _with_groups(preds: pd.DataFrame, source: pd.DataFrame) -> pd.DataFrame:
    """The prediction table with each image's group (from folds.csv / split.csv) and fold."""
    table = preds.copy()
    table["id"] = table["id"].astype(str)
    groups = source.assign(id=source["id"].astype(str)).set_index("id")
    table["group"] = (groups["group"].reindex(table["id"]).fillna("").astype(str).to_numpy()
                      if "group" in groups.columns else "")
    if "fold" not in table.columns:
        table["fold"] = -1
    return table.reset_index(drop=True)


def label_views(data: AuditData) -> list[View]:
    """What the labels say, one view per attribute of a composite task, else one plain view."""
    from podium.data.dataset import encode_labels
    from podium.tasks.spec import resolve_task

    y = encode_labels(data.table["target"], data.classes, "audited predictions")
    probs = data.table[data.classes].to_numpy(dtype=np.float64)
    spec = resolve_task(data.cfg.task)
    if spec.attributes is None or spec.mode == "per_attribute":
        name = LABEL if spec.attributes is None else str(spec.target)
        return [View(name, list(data.classes), y, probs)]
    task = spec.attributes
    digits = task.decode_array(y)
    return [View(a, list(task.classes(a)), digits[a], task.marginal_probs(probs, a)) for a in task.names]


def group_level_views(views: list[View], groups: pd.Series) -> list[str]:
    """Mark (and name) the views that (almost) never change within a group: a person's gender or age."""
    has = groups.astype(str).str.len() > 0
    sizes = groups[has].value_counts()
    multi = sizes[sizes >= 2].index
    if len(multi) < MIN_GROUPS:
        return []
    rows = has.to_numpy() & groups.isin(multi).to_numpy()
    found = []
    for view in views:
        labels = pd.Series(view.y[rows]).groupby(groups[rows].to_numpy()).nunique()
        if (labels == 1).mean() >= GROUP_LEVEL_SHARE:
            view.group_level = True
            found.append(view.name)
    return found


# ---------------------------------------------------------------- label issues (cleanlab)


#: How label issues are flagged: cleanlab's ``find_label_issues(filter_by=...)`` -> the label
#: quality score (``get_label_quality_scores(method=...)``) that ranks them for review.
#: ``low_normalized_margin`` (the default) flags as many images as confident learning estimates
#: are mislabelled, choosing those of lowest normalized margin. On faces_mask3_dev's out-of-fold
#: probabilities with 15% injected noise it flagged fewer images and found more of the flips than
#: cleanlab's own default (``prune_by_noise_rate``): precision 0.712 / 0.731 against 0.608 / 0.594,
#: recall 0.838 / 0.828 against 0.785 / 0.738 (two noise seeds); at 5% noise 0.574 / 0.892
#: against 0.436 / 0.862 (benchmarks/data_centric/RESULTS.md).
LABEL_METHODS = {
    "low_normalized_margin": "normalized_margin",
    "low_self_confidence": "self_confidence",
    "prune_by_noise_rate": "self_confidence",
    "prune_by_class": "self_confidence",
    "both": "self_confidence",
    "confident_learning": "self_confidence",
    "predicted_neq_given": "self_confidence",
}
DEFAULT_LABEL_METHOD = "low_normalized_margin"


def check_label_method(method: str) -> str:
    """``method`` if cleanlab knows it as a ``filter_by``, else the one-message refusal."""
    from podium.errors import lookup

    lookup(LABEL_METHODS, method, "audit method (cleanlab filter_by)")
    return method


def _cleanlab_issues(y: np.ndarray, probs: np.ndarray, notes: list[str], what: str,
                     method: str = DEFAULT_LABEL_METHOD) -> tuple[np.ndarray, np.ndarray]:
    """(flagged mask, label quality 0..1) by confident learning: cleanlab's, not re-derived."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = np.clip(probs, 1e-12, None)
    probs = probs / probs.sum(1, keepdims=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flagged = find_label_issues(labels=y, pred_probs=probs, filter_by=method, n_jobs=1)
        quality = get_label_quality_scores(labels=y, pred_probs=probs, method=LABEL_METHODS[method])
    notes += [f"{what}: cleanlab: {w.message}" for w in caught if issubclass(w.category, UserWarning)]
    return np.asarray(flagged, dtype=bool), np.asarray(quality, dtype=np.float64)


def _other_best(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The most likely class other than the given one: what a flagged label should become."""
    masked = probs.copy()
    masked[np.arange(len(y)), y] = -1.0
    return masked.argmax(1)


def image_label_issues(data: AuditData, view: View, notes: list[str],
                       method: str = DEFAULT_LABEL_METHOD) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(issues, per-image quality) of one view judged image by image."""
    flagged, quality = _cleanlab_issues(view.y, view.probs, notes, f"attribute {view.name}", method)
    best = _other_best(view.probs, view.y)
    rows = np.arange(len(view.y))
    t = data.table
    names = np.asarray(view.classes, dtype=object)
    frame = pd.DataFrame({
        "id": t["id"], "path": t["path"], "group": t["group"], "fold": t["fold"], "attribute": view.name,
        "given": names[view.y], "suggested": names[best], "p_given": view.probs[rows, view.y],
        "p_suggested": view.probs[rows, best], "quality": quality, "flagged": flagged})
    issues = frame[flagged].assign(kind="label", scope="image", suspicion=1.0 - frame["quality"][flagged],
                                   detail=_label_detail(frame[flagged]))
    return issues, frame


def _label_detail(rows: pd.DataFrame) -> list[str]:
    return [f"{a} probably wrong: labelled {g!r} (p {pg:.2f}), the models say {s!r} (p {ps:.2f})"
            for a, g, s, pg, ps in zip(rows["attribute"], rows["given"], rows["suggested"], rows["p_given"],
                                        rows["p_suggested"], strict=True)]


def group_label_issues(data: AuditData, view: View, notes: list[str],
                       method: str = DEFAULT_LABEL_METHOD) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(issues, per-image quality) of a view that belongs to the group: judged on the group's pooled
    probabilities (the geometric mean over its images) against its majority label; a group whose
    images disagree is reported whatever the models say."""
    t = data.table
    grouped = t["group"].astype(str).str.len() > 0
    keys = np.where(grouped, t["group"].astype(str), "\0" + t["id"].astype(str))
    log_p = pd.DataFrame(np.log(np.clip(view.probs, 1e-12, None))).groupby(keys).mean()
    pooled = np.exp(log_p.to_numpy() - log_p.to_numpy().max(1, keepdims=True))
    pooled /= pooled.sum(1, keepdims=True)
    labels = pd.Series(view.y).groupby(keys)
    majority = labels.agg(lambda s: s.value_counts().index[0]).reindex(log_p.index).to_numpy().astype(np.int64)
    counts = labels.agg(lambda s: s.value_counts().to_dict()).reindex(log_p.index)
    flagged, quality = _cleanlab_issues(majority, pooled, notes, f"attribute {view.name} per group", method)
    best = _other_best(pooled, majority)
    names = np.asarray(view.classes, dtype=object)
    disagree = np.array([len(c) > 1 for c in counts])
    first_row = pd.Series(np.arange(len(t))).groupby(keys).first().reindex(log_p.index).to_numpy()
    members = t.groupby(keys)["path"].agg(list).reindex(log_p.index)
    rows = []
    for g, key in enumerate(log_p.index):
        if not (flagged[g] or disagree[g]):
            continue
        suggested = best[g] if flagged[g] else pooled[g].argmax()
        given = " / ".join(f"{names[c]} x{n}" for c, n in counts.iloc[g].items()) if disagree[g] else names[majority[g]]
        detail = (f"the group's {len(members.iloc[g])} images disagree on {view.name}: {given}" if disagree[g]
                  else f"{view.name} of the whole group probably wrong: labelled {names[majority[g]]!r}, its "
                       f"{len(members.iloc[g])} images together say {names[suggested]!r} (p {pooled[g, suggested]:.2f})")
        ident = str(key) if not str(key).startswith("\0") else str(t["id"].iloc[first_row[g]])
        rows.append({"kind": "group_disagrees" if disagree[g] else "group_label",
                     "scope": "group" if not str(key).startswith("\0") else "image", "id": ident,
                     "attribute": view.name, "given": given, "suggested": names[suggested],
                     "p_given": pooled[g, majority[g]], "p_suggested": pooled[g, suggested],
                     "suspicion": 1.0 if disagree[g] else 1.0 - quality[g], "group": ident,
                     "fold": t["fold"].iloc[first_row[g]], "path": ";".join(map(str, members.iloc[g])),
                     "detail": detail})
    per_image = pd.DataFrame({
        "id": t["id"], "path": t["path"], "group": t["group"], "fold": t["fold"], "attribute": view.name,
        "given": names[view.y], "suggested": names[pooled.argmax(1)[log_p.index.get_indexer(keys)]],
        "p_given": view.probs[np.arange(len(t)), view.y], "p_suggested": np.nan,
        "quality": quality[log_p.index.get_indexer(keys)], "flagged": flagged[log_p.index.get_indexer(keys)]})
    return pd.DataFrame(rows), per_image


# ---------------------------------------------------------------- duplicates and outliers


def scan(data: AuditData):
    """EDA's scan of every audited image (size, hashes, grey-level spread), threads, small decode."""
    from podium.reports.eda import scan_images

    return scan_images(data.table["path"].astype(str).tolist(), [False] * len(data.table))


def duplicate_issues(data: AuditData, scans) -> pd.DataFrame:
    """Near-duplicate pairs (EDA's hashes) with different labels or in different groups."""
    from podium.reports.eda import duplicate_pairs

    pairs = duplicate_pairs(scans)
    t = data.table
    rows = []
    for a, b, kind, distance in pairs.itertuples(index=False, name=None):
        ga, gb = str(t["group"].iloc[a]), str(t["group"].iloc[b])
        la, lb = str(t["target"].iloc[a]), str(t["target"].iloc[b])
        reasons = ([f"labels differ ({la!r} / {lb!r})"] if la != lb else []) + (
            [f"groups differ ({ga} / {gb}): one picture on both sides of a split"] if ga and gb and ga != gb else [])
        if not reasons:
            continue
        rows.append({"kind": "duplicate", "scope": "image", "id": t["id"].iloc[a], "attribute": LABEL, "given": la,
                     "suggested": lb, "suspicion": 1.0 - distance / 64.0, "group": ga, "fold": t["fold"].iloc[a],
                     "path": t["path"].iloc[a], "other_id": t["id"].iloc[b], "other_path": t["path"].iloc[b],
                     "detail": f"{kind} duplicate (hash distance {distance}): " + "; ".join(reasons)})
    return pd.DataFrame(rows)


def image_outliers(data: AuditData, scans, tiny_px: int) -> pd.DataFrame:
    """Tiny images (a side below ``tiny_px``) and near-blank ones (grey levels hardly vary)."""
    t = data.table
    rows = []
    for i, s in enumerate(scans):
        reason, suspicion = None, 0.0
        if s.error:
            reason, suspicion = f"unreadable now: {s.error}", 1.0
        elif s.width is not None and s.height is not None and min(s.width, s.height) < tiny_px:
            reason = f"tiny: {s.width}x{s.height} px (a side below {tiny_px} px, a quarter of the input size)"
            suspicion = 1.0 - min(s.width, s.height) / tiny_px
        elif s.gray_std is not None and s.gray_std < BLANK_GRAY_STD:
            reason = f"near-blank: grey levels spread {s.gray_std:.1f} of 255"
            suspicion = 1.0 - s.gray_std / BLANK_GRAY_STD
        if reason:
            rows.append(_outlier_row(t, i, reason, suspicion))
    return pd.DataFrame(rows)


def _outlier_row(t: pd.DataFrame, i: int, reason: str, suspicion: float) -> dict:
    return {"kind": "outlier", "scope": "image", "id": t["id"].iloc[i], "attribute": LABEL,
            "given": str(t["target"].iloc[i]), "suggested": "", "suspicion": float(suspicion),
            "group": t["group"].iloc[i], "fold": t["fold"].iloc[i], "path": t["path"].iloc[i], "detail": reason}


def feature_outliers(data: AuditData, log=print) -> pd.DataFrame:
    """Images far from their own class in the feature space of the model that never trained on
    them (each fold's model on its own images): cleanlab's kNN `OutOfDistribution` score within
    the class, flagged beyond Tukey's far-out fence of the class's distances."""
    from podium.curation.features import fold_features

    t = data.table
    rows = []
    for fold, index, features in fold_features(data, log):
        targets = t["target"].iloc[index].astype(str).to_numpy()
        for label in np.unique(targets):
            members = index[targets == label]
            if len(members) < MIN_CLASS_FOR_FEATURES:
                continue
            distance = _knn_distance(features[targets == label])
            q1, q3 = np.percentile(distance, [25, 75])
            fence = q3 + FENCE_IQR * (q3 - q1)
            for i, d in zip(members, distance, strict=True):
                if d > fence and d > 0:
                    rows.append(_outlier_row(t, int(i), f"far from its class {label!r} in feature space (fold {fold}):"
                                             f" distance {d:.3f} beyond the class's fence {fence:.3f}",
                                             1.0 - fence / d))
    return pd.DataFrame(rows)


def _knn_distance(features: np.ndarray) -> np.ndarray:
    """-log of cleanlab's outlier score (its mean cosine distance to the k nearest neighbours, scaled)."""
    from cleanlab.outlier import OutOfDistribution

    k = min(10, len(features) - 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = OutOfDistribution(params={"k": k}).fit_score(features=features, verbose=False)
    return -np.log(np.clip(scores, 1e-12, 1.0))


# ---------------------------------------------------------------- the audit


def run_audit(path: str | Path, *, out: str | Path | None = None, features: bool = True, max_review: int | None = None,
              method: str = DEFAULT_LABEL_METHOD, log=print) -> Audit:
    """Audit a cv run (every image, OOF) or a single run (its validation part); write the audit folder
    (``issues.csv``, ``label_quality.csv``, ``audit.json``, ``review.html``) beside the run.
    ``method``: how label issues are flagged (`LABEL_METHODS`)."""
    from podium.rundir import output_dir

    check_label_method(method)
    data = load_audit_data(path, log)
    log(f"auditing {data.dir}: {data.note}")
    notes: list[str] = []
    views = label_views(data)
    grouped = group_level_views(views, data.table["group"])
    parts, quality = [], []
    for view in views:
        issues, per_image = (group_label_issues if view.group_level else image_label_issues)(data, view, notes, method)
        parts.append(issues)
        quality.append(per_image)
    scans = scan(data)
    parts += [duplicate_issues(data, scans), image_outliers(data, scans, _tiny_px(data.cfg))]
    if features:
        parts.append(feature_outliers(data, log))
    issues = _issue_table(parts)
    out_dir = output_dir(out, data.dir, "audit")
    summary = _summary(data, views, grouped, issues, notes, features, out_dir, method)
    write_csv(out_dir / ISSUES_FILE, issues)
    quality_table = pd.concat(quality, ignore_index=True)
    write_csv(out_dir / QUALITY_FILE, quality_table)
    from podium.curation.review import MAX_REVIEW, write_review_page

    write_review_page(out_dir / REVIEW_FILE, data, views, issues, summary,
                      max_review=MAX_REVIEW if max_review is None else max_review)
    write_json(out_dir / AUDIT_FILE, summary)
    return Audit(out_dir, summary, issues, quality_table)


def _tiny_px(cfg: PodiumConfig) -> int:
    return max(8, min(cfg.data.size_hw) // 4)


def _issue_table(parts: list[pd.DataFrame]) -> pd.DataFrame:
    frames = [p for p in parts if len(p)]
    if not frames:
        return pd.DataFrame(columns=ISSUE_COLUMNS)
    table = pd.concat(frames, ignore_index=True).reindex(columns=ISSUE_COLUMNS)
    order = {"label": 0, "group_label": 1, "group_disagrees": 1, "duplicate": 2, "outlier": 3}
    table = table.assign(_order=table["kind"].map(order))
    table = table.sort_values(["_order", "suspicion"], ascending=[True, False], kind="stable")
    return table.drop(columns="_order").reset_index(drop=True)


def _summary(data: AuditData, views: list[View], grouped: list[str], issues: pd.DataFrame, notes: list[str],
             features: bool, out_dir: Path, method: str) -> dict:
    from importlib.metadata import version

    labels = issues[issues["kind"].isin(["label", "group_label", "group_disagrees"])]
    return {
        "source": str(data.dir), "kind": data.kind, "note": data.note, "n_images": len(data.table),
        "n_total_images": data.n_total, "classes": data.classes,
        "attributes": [v.name for v in views], "group_attributes": grouped,
        "counts": {k: int(v) for k, v in issues["kind"].value_counts().items()},
        "label_issues_by_attribute": {k: int(v) for k, v in labels["attribute"].value_counts().items()},
        "images_with_label_issues": int(labels.loc[labels["scope"] == "image", "id"].nunique()),
        "groups_with_label_issues": int(labels.loc[labels["scope"] == "group", "id"].nunique()),
        "features": features, "label_fixes_in_use": data.cfg.task.label_fixes,
        "method": {"labels": f"cleanlab.filter.find_label_issues (filter_by={method}) on the probabilities "
                             f"above, ranked by cleanlab.rank.get_label_quality_scores ({LABEL_METHODS[method]})",
                   "groups": f"attributes on which >= {GROUP_LEVEL_SHARE:.0%} of the groups agree are judged per "
                             "group on the geometric mean of its images' probabilities",
                   "duplicates": "podium eda's perceptual + difference hashes",
                   "outliers": f"tiny (a side < {_tiny_px(data.cfg)} px), near-blank (grey spread < {BLANK_GRAY_STD}), "
                               f"feature space: cleanlab OutOfDistribution kNN distance per class beyond Q3 + "
                               f"{FENCE_IQR} IQR"},
        "cleanlab": version("cleanlab"), "notes": notes, "out_dir": str(out_dir),
    }


def suggested_fixes(issues: pd.DataFrame, kinds: tuple[str, ...] = ("label", "group_label"),
                    action: str = "relabel") -> pd.DataFrame:
    """Label-fix rows (id, attribute, new_value, action) for every issue of ``kinds``: its
    suggestion (``relabel``), the image/group left out (``drop``), or kept with a training weight
    (``weight``): how much the folds believe the given label against their suggestion,
    ``min(1, p_given / p_suggested)``, multiplied over an id's flagged attributes (a group's
    weight and its image's multiply when the fixes are applied). For
    notebooks and benchmarks that decide in code what the review page lets a person decide.

    Weighting is what retrained best on faces_mask3_dev with 15% injected noise
    (benchmarks/data_centric/RESULTS.md, 8 seeds): it recovered 0.57 of the F1 lost to noise,
    dropping 0.38. Relabelling to the suggestion, and a per-class cap on dropping (tried and
    removed), scored below dropping."""
    if action not in SUGGEST_ACTIONS:
        raise PodiumError(f"action must be one of {', '.join(SUGGEST_ACTIONS)}, found {action!r}")
    chosen = issues[issues["kind"].isin(kinds)]
    if action == "drop":
        return pd.DataFrame({"id": chosen["id"].drop_duplicates(), "attribute": "", "new_value": "",
                             "action": "drop"}).reset_index(drop=True)
    if action == "weight":  # one row per image or group id; `task.label_fixes` multiplies a group's and an image's
        belief = pd.Series(belief_weight(chosen["p_given"].to_numpy(float), chosen["p_suggested"].to_numpy(float)))
        known = belief.notna().to_numpy()
        weights = belief[known].groupby(chosen["id"].to_numpy()[known], sort=False).prod()
        return pd.DataFrame({"id": weights.index, "attribute": "", "new_value": [f"{w:.4g}" for w in weights],
                             "action": "weight"}).reset_index(drop=True)
    return pd.DataFrame({"id": chosen["id"], "attribute": chosen["attribute"], "new_value": chosen["suggested"],
                         "action": "relabel"}).drop_duplicates(["id", "attribute"]).reset_index(drop=True)
