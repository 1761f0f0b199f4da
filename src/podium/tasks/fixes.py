"""Label fixes: hand-made corrections (`task.label_fixes`) applied when data is loaded.

A fixes CSV has the columns ``id, attribute, new_value`` and an optional
``action`` column (`ACTIONS`): ``relabel`` (the default when empty or absent),
``drop`` (leave the image out), ``keep`` (a label checked and confirmed; it
changes nothing and is counted) or ``weight`` (keep the image and label, but let it
count ``new_value`` times as much in the training loss: a number >= 0, e.g. 0.2 for
a label that is probably wrong; 1 is the default of every image). Weights land in
the ``sample_weight`` column (`SAMPLE_WEIGHT`; a data CSV may bring its own), which
training reads (`weight_column`); validation scores every image as labelled.
`podium audit`'s review page writes this file.

``id`` is an image id (the ``id`` column: one photo) or a group id (the
``group`` column, e.g. a person: every photo of that person). ``attribute`` is
an attribute of a composite task (``gender``, ``age``) or ``label``: the plain
class of a task without attributes, or a whole composite name
(``wear/female/old``) of a task with them. For a binned attribute (age) the
new value may be a number, which sets the number and its bin.

Every row is validated before anything changes, and bad rows raise one
`PodiumError` listing the first few with the allowed values. Group fixes are
applied before image fixes, so the more specific one wins (weights multiply);
two rows giving one id and attribute different values, or dropping an image
another row relabels or weights, are an error.
"""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from podium.errors import PodiumError, closest
from podium.tasks.attributes import MASK_TASK, AttributeTask, bin_values

FIX_COLUMNS = ("id", "attribute", "new_value")
ACTION_COLUMN = "action"
ACTIONS = ("relabel", "drop", "keep", "weight")
#: the column that `weight` rows set (1.0 where no row names the image)
SAMPLE_WEIGHT = "sample_weight"
#: the attribute name meaning the whole class (plain tasks) or a whole composite name
LABEL = "label"


@dataclass
class FixOutcome:
    """A fixed copy of the samples and what the fixes did to it."""

    frame: pd.DataFrame
    changed: int = 0    # images whose label changed
    dropped: int = 0    # images left out
    kept: int = 0       # images confirmed as labelled (`keep` rows)
    weighted: int = 0   # images whose training weight is not 1 (`weight` rows, the data's own column)
    elsewhere: int = 0  # rows naming images of other data (validation, another source)

    def describe(self) -> str:
        parts = [f"{self.changed} label(s) changed"]
        if self.dropped:
            parts.append(f"{self.dropped} image(s) dropped")
        if self.kept:
            parts.append(f"{self.kept} image(s) kept as labelled")
        if self.weighted:
            parts.append(f"{self.weighted} image(s) with a training weight other than 1")
        if self.elsewhere:
            parts.append(f"{self.elsewhere} row(s) skipped: they name images that are not in this data "
                         "(another source of the run, or its training images when evaluating)")
        return ", ".join(parts)


@dataclass(frozen=True)
class _Fix:
    scope: str   # image, group or elsewhere
    ident: str
    action: str
    attribute: str
    value: tuple[str, Any] | None  # ("class", index) / ("number", value) / ("name", class name) / ("weight", w)


def read_label_fixes(path: str | Path) -> pd.DataFrame:
    """The fixes CSV as strings: id, attribute, new_value, action (relabel when not given)."""
    path = Path(path)
    if not path.is_file():
        raise PodiumError(f"label fixes file not found: {path}")
    fixes = pd.read_csv(path, dtype=str, keep_default_na=False)
    fixes.columns = [str(c).strip() for c in fixes.columns]
    missing = [c for c in FIX_COLUMNS if c not in fixes.columns]
    if missing:
        raise PodiumError(
            f"{path}: missing columns {missing}; found {list(fixes.columns)}. "
            f"Expected a CSV with header: {','.join(FIX_COLUMNS)} (and optionally {ACTION_COLUMN})")
    if ACTION_COLUMN not in fixes.columns:
        fixes[ACTION_COLUMN] = ""
    fixes = fixes[[*FIX_COLUMNS, ACTION_COLUMN]].apply(lambda col: col.str.strip())
    fixes[ACTION_COLUMN] = fixes[ACTION_COLUMN].str.lower().replace("", "relabel")
    return fixes


def apply_label_fixes(df: pd.DataFrame, fixes_csv_path: str | Path, task: AttributeTask | None = MASK_TASK, *,
                      classes: Collection[str] | None = None, other_ids: Collection[str] = (),
                      strict: bool = True) -> FixOutcome:
    """Apply the fixes CSV to ``df`` and recompute the composite label (see the module docstring).

    ``task`` None is a plain task: ``label`` is the only attribute and its new
    values must be among ``classes`` (default: the labels in ``df``). Ids in
    ``other_ids`` belong to other data loaded by the same run (its validation
    source) and are skipped here; with ``strict`` False every unknown id is
    (evaluation data, which a run's fixes need not cover).
    """
    path = Path(fixes_csv_path)
    fixes = read_label_fixes(path)
    image_ids = set(df["id"].astype(str)) if "id" in df else set()
    group_ids = set(df["group"].astype(str)) if "group" in df else set()
    classes = sorted(set(classes) if classes is not None else set(df["label"].astype(str))) if task is None else None
    parsed, problems = _parse_rows(fixes, task, classes, image_ids, group_ids, set(other_ids), strict)
    if problems:
        _raise_problems(path, problems, task, classes, image_ids, group_ids)
    return _apply(df, parsed, task)


def _parse_rows(fixes: pd.DataFrame, task: AttributeTask | None, classes: list[str] | None, image_ids: set[str],
                group_ids: set[str], other_ids: set[str], strict: bool) -> tuple[list[_Fix], list[str]]:
    parsed: list[_Fix] = []
    problems: list[str] = []
    earlier: dict[str, list[tuple[int, str, str, str]]] = {}  # id -> (line, action, attribute, value)
    for i, (ident, attr, raw, action) in enumerate(fixes.itertuples(index=False, name=None)):
        line = i + 2  # the header is line 1
        row_problems: list[str] = []
        scope = ("image" if ident in image_ids else "group" if ident in group_ids
                 else "elsewhere" if ident in other_ids or not strict else None)
        if scope is None:
            row_problems.append(f"unknown id {ident!r} (not a group id in 'group' nor an image id in 'id')")
        value = None
        if action not in ACTIONS:
            row_problems.append(f"unknown action {action!r}; allowed: {', '.join(ACTIONS)} (empty = relabel)")
        elif action == "relabel" or (action == "keep" and attr):
            checked = _check_attribute(task, attr, action)
            if checked is not None:
                row_problems.append(checked)
            elif action == "relabel":
                value = _parse_value(task, classes, attr, raw)
                if isinstance(value, str):
                    row_problems.append(value)
                    value = None
        elif action == "weight":
            value = _parse_weight(raw)
            if isinstance(value, str):
                row_problems.append(value)
                value = None
        attr = attr if action not in ("drop", "weight") else ""
        clash = _conflict(earlier.get(ident, []), action, attr, raw)
        if clash:
            row_problems.append(f"{ident} {' '.join(filter(None, (attr, action, raw)))} conflicts with {clash}")
        earlier.setdefault(ident, []).append((line, action, attr, raw if action in ("relabel", "weight") else ""))
        if row_problems:
            problems.append(f"line {line}: " + "; ".join(row_problems))
        else:
            parsed.append(_Fix(scope, ident, action, attr, value))  # type: ignore[arg-type]
    return parsed, problems


def _conflict(rows: list[tuple[int, str, str, str]], action: str, attr: str, raw: str) -> str | None:
    """The earlier row of the same id this one contradicts: a drop against anything but a drop;
    two different weights; a relabel or keep of the same attribute, or of the whole image (no
    attribute, or `label`), that means something else. A weight goes with a relabel or keep."""
    for line, e_action, e_attr, e_raw in rows:
        if "drop" in (action, e_action):
            same = action == e_action
        elif "weight" in (action, e_action):
            if action != e_action:
                continue
            same = _parse_weight(raw) == _parse_weight(e_raw)
        elif attr == e_attr or not attr or not e_attr or LABEL in (attr, e_attr):
            same = (action, raw if action == "relabel" else "") == (e_action, e_raw)
        else:
            continue
        if not same:
            return f"line {line} ({' '.join(filter(None, (e_attr, e_action, e_raw)))})"
    return None


def _parse_weight(raw: str) -> tuple[str, float] | str:
    """("weight", w) for a finite number >= 0; a string is the reason it is invalid."""
    try:
        weight = float(raw)
    except ValueError:
        weight = math.nan
    if math.isfinite(weight) and weight >= 0:
        return ("weight", weight)
    return f"weight {raw!r} is not a number >= 0 (the image's share of the training loss; 1 = as every image)"


def _check_attribute(task: AttributeTask | None, attr: str, action: str) -> str | None:
    allowed = [LABEL] if task is None else [*task.names, LABEL]
    if attr in allowed:
        return None
    if not attr:
        return f"{action} needs an attribute ({', '.join(allowed)})"
    hint = closest(attr, allowed)
    return f"unknown attribute {attr!r}; allowed: {', '.join(allowed)}" + (
        f" (did you mean {hint[0]!r}?)" if hint else "")


def _parse_value(task: AttributeTask | None, classes: list[str] | None, attr: str,
                 raw: str) -> tuple[str, Any] | str:
    """("class", index), ("number", value) or ("name", class name); a string is the reason it is invalid."""
    if task is None:
        if raw in (classes or []):
            return ("name", raw)
        hint = closest(raw, classes or [])
        return f"value {raw!r} is not a class of this data; allowed: {', '.join(classes or [])}" + (
            f" (did you mean {hint[0]!r}?)" if hint else "")
    if attr == LABEL:
        names = task.composite_names()
        if raw in names:
            return ("name", raw)
        hint = closest(raw, names)
        return f"value {raw!r} is not a composite class ({'/'.join(task.names)}, e.g. {names[0]!r})" + (
            f" (did you mean {hint[0]!r}?)" if hint else "")
    return _parse_attribute_value(task, attr, raw)


def _parse_attribute_value(task: AttributeTask, attr: str, raw: str) -> tuple[str, Any] | str:
    classes = task.classes(attr)
    if raw in classes:
        return ("class", classes.index(raw))
    if attr in task.bins:
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        if math.isfinite(number):
            return ("number", int(number) if number.is_integer() else number)
        return f"value {raw!r} is not allowed for {attr}; allowed: {', '.join(classes)} or a number"
    hint = closest(raw, classes)
    return f"value {raw!r} is not allowed for {attr}; allowed: {', '.join(classes)}" + (
        f" (did you mean {hint[0]!r}?)" if hint else "")


def _raise_problems(path: Path, problems: list[str], task: AttributeTask | None, classes: list[str] | None,
                    image_ids: set[str], group_ids: set[str]) -> None:
    shown = "\n  ".join(problems[:8])
    more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
    example_image = next(iter(sorted(image_ids)), "?")
    example_group = next(iter(sorted(group_ids)), None)
    ids = f"image ids (e.g. {example_image!r})" + (f" or group ids (e.g. {example_group!r})" if example_group else "")
    values = (f"{LABEL}: {', '.join(classes or [])}" if task is None
              else "; ".join(f"{n}: {', '.join(c)}" for n, c in task.attributes.items()))
    raise PodiumError(f"{path}: {len(problems)} invalid label fix row(s):\n  {shown}{more}\n"
                      f"ids are {ids}; actions: {', '.join(ACTIONS)}; values: {values}")


def _apply(df: pd.DataFrame, parsed: list[_Fix], task: AttributeTask | None) -> FixOutcome:
    out = df.copy()
    if task is not None:
        for name in task.bins:  # materialise the bin column so class-name fixes have a home
            if task.bin_column(name) not in out and name in out:
                out[task.bin_column(name)] = bin_values(out[name].to_numpy(dtype=float), task.bins[name])
    before = _codes(out, task)
    here = [f for f in parsed if f.scope != "elsewhere"]
    ordered = [f for f in here if f.scope == "group"] + [f for f in here if f.scope == "image"]
    for fix in ordered:
        if fix.action == "relabel":
            _relabel(out, _rows(out, fix), fix, task)
    drop = np.zeros(len(out), dtype=bool)
    kept = np.zeros(len(out), dtype=bool)
    if SAMPLE_WEIGHT in out or any(f.action == "weight" for f in ordered):
        out[SAMPLE_WEIGHT] = weight_column(out)  # numbers (a data CSV's own column is read as text), 1 = unweighted
    for fix in ordered:
        if fix.action == "drop":
            drop |= _rows(out, fix).to_numpy()
        elif fix.action == "keep":
            kept |= _rows(out, fix).to_numpy()
        elif fix.action == "weight":  # a group's and an image's own weight multiply
            assert fix.value is not None
            out.loc[_rows(out, fix), SAMPLE_WEIGHT] *= float(fix.value[1])
    if task is not None:
        out = task.with_labels(out)
    changed = int(((_codes(out, task) != before) & ~drop).sum())
    weighted = int(((out[SAMPLE_WEIGHT] != 1.0) & ~drop).sum()) if SAMPLE_WEIGHT in out else 0
    return FixOutcome(out.loc[~drop].reset_index(drop=True), changed=changed, dropped=int(drop.sum()),
                      kept=int((kept & ~drop).sum()), weighted=weighted,
                      elsewhere=sum(f.scope == "elsewhere" for f in parsed))


def belief_weight(p_given, p_suggested):
    """How much the folds believe a flagged label against their suggestion, ``min(1, p_given /
    p_suggested)``: the ``weight`` row that `podium audit --suggest weight` and the review page's
    weight choice write for it (nan where either probability is unknown)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.minimum(1.0, np.asarray(p_given, float) / np.maximum(np.asarray(p_suggested, float), 1e-12))


def weight_column(frame: pd.DataFrame) -> np.ndarray:
    """(N,) float64 per-sample training weights: the ``sample_weight`` column (empty = 1), all 1
    without one; a value that is not a number >= 0 raises, naming the images."""
    if SAMPLE_WEIGHT not in frame:
        return np.ones(len(frame))
    raw = frame[SAMPLE_WEIGHT]
    numbers = pd.to_numeric(raw, errors="coerce")
    empty = raw.isna() | (raw.astype(str).str.strip() == "")
    bad = (numbers.isna() & ~empty) | ~np.isfinite(numbers.fillna(1.0)) | (numbers < 0)
    if bad.any():
        ids = frame["id"] if "id" in frame else pd.Series(frame.index.astype(str), index=frame.index)
        shown = ", ".join(f"{i} ({v!r})" for i, v in zip(ids[bad].head(5), raw[bad].head(5), strict=True))
        raise PodiumError(f"{int(bad.sum())} image(s) have a sample_weight that is not a number >= 0: {shown}. "
                          "Give each image's weight in the training loss (1 = as every image; empty = 1)")
    return numbers.fillna(1.0).to_numpy(np.float64)


def _rows(out: pd.DataFrame, fix: _Fix) -> pd.Series:
    return (out["group"].astype(str) if fix.scope == "group" else out["id"].astype(str)) == fix.ident


def _codes(out: pd.DataFrame, task: AttributeTask | None) -> np.ndarray:
    if task is None:
        return out["label"].astype(str).to_numpy()
    return task.encode_array(task.attribute_indices(out)) if len(out) else np.zeros(0, np.int64)


def _relabel(out: pd.DataFrame, rows: pd.Series, fix: _Fix, task: AttributeTask | None) -> None:
    assert fix.value is not None
    kind, value = fix.value
    if task is None:
        out.loc[rows, "label"] = value
        return
    if fix.attribute == LABEL:  # a whole composite name: one fix per attribute
        for name, index in task.decode(task.code_of(value)).items():
            _set_attribute(out, rows, task, name, "class", index)
        return
    _set_attribute(out, rows, task, fix.attribute, kind, value)


def _set_attribute(out: pd.DataFrame, rows: pd.Series, task: AttributeTask, attr: str, kind: str, value: Any) -> None:
    if attr in task.bins:
        if kind == "number":
            if isinstance(value, float) and pd.api.types.is_integer_dtype(out[attr]):
                out[attr] = out[attr].astype(float)
            out.loc[rows, attr] = value
            out.loc[rows, task.bin_column(attr)] = bin_values(value, task.bins[attr])
        else:
            out.loc[rows, task.bin_column(attr)] = value
    elif attr in out and pd.api.types.is_integer_dtype(out[attr]):
        out.loc[rows, attr] = value
    else:
        out.loc[rows, attr] = task.classes(attr)[value]
