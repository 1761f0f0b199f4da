"""Silent data surprises, said out loud: each check reports what it found through
the loader's ``log`` (the same channel as the competition-layout problems),
naming the files or values and giving a count, and changes nothing.

The data still loads: these are not errors, but each one changes what a run
learns or how it is validated without the user having asked for it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from podium.errors import summarize_list


def report_dangling_links(root: Path, log=print) -> list[str]:
    """Image links below ``root`` whose target does not exist (left out of the data)."""
    from podium.data.images import is_image_file

    dangling = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                      if p.is_symlink() and not p.exists() and is_image_file(p))
    if dangling:
        log(f"warning: {len(dangling)} image link(s) in {root} point to files that do not exist and are "
            f"left out: {summarize_list(dangling, 5)}")
    return dangling


def label_variants(frame: pd.DataFrame) -> dict[str, list[str]]:
    """Labels that differ only by case or surrounding spaces (``Ants``, ``ants ``, ``ants``),
    grouped by their stripped, case-folded form: they would become separate classes."""
    if "label" not in frame.columns or frame["label"].isna().all():
        return {}
    groups: dict[str, list[str]] = {}
    for label in frame["label"].dropna().astype(str).unique():
        groups.setdefault(merged_label(label), []).append(label)
    return {key: sorted(vals) for key, vals in groups.items() if len(vals) > 1}


def merged_label(label: str) -> str:
    """``data.label_case=merge``: a label stripped of surrounding spaces and case-folded."""
    return label.strip().casefold()


def describe_label_variants(frame: pd.DataFrame, clashes: dict[str, list[str]]) -> str:
    """'Ants' (1) / 'ants ' (1) / 'ants' (3); ... for the first five groups of variants."""
    counts = frame["label"].dropna().astype(str).value_counts()
    shown = "; ".join(" / ".join(f"{v!r} ({counts[v]})" for v in vals) for vals in list(clashes.values())[:5])
    return shown + (f" (and {len(clashes) - 5} more groups)" if len(clashes) > 5 else "")


def report_empty_groups(frame: pd.DataFrame, where, group_column: str | None, log=print) -> int:
    """Empty group ids: all such images would silently form one big group."""
    if "group" not in frame.columns:
        return 0
    empty = frame["group"].isna() | (frame["group"].astype(str).str.strip() == "")
    n = int(empty.sum())
    if n:
        log(f"warning: {n} of {len(frame)} image(s) in {where} have an empty group "
            f"({group_column or 'group'} column) and are treated as ONE group: "
            f"{summarize_list(frame.loc[empty, 'id'].astype(str).tolist(), 5)}. Fill in their group ids.")
    return n


def report_unvalidated_classes(train: pd.DataFrame, val: pd.DataFrame, log=print) -> list[str]:
    """Classes with images in train but none in validation (a single image, or all in one group):
    they are trained on but never measured."""
    counts = train["label"].astype(str).value_counts()
    missing = sorted(set(counts.index) - set(val["label"].astype(str)))
    if missing:
        detail = [f"{c!r} ({counts[c]} image{'s' if counts[c] != 1 else ''})" for c in missing]
        log(f"warning: {len(missing)} class(es) have no validation images and end up only in train "
            f"(too few images to split): {summarize_list(detail, 5)}. Add images or set data.val.")
    return missing
