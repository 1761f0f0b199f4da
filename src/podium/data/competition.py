"""Reader and submission tools for the mask-status competition layout.

::

    <root>/train/train.csv                       id, gender, race, age, path
    <root>/train/images/<id>_<gender>_<race>_<age>/{mask1..mask5,incorrect_mask,normal}.<ext>
    <root>/eval/info.csv                         ImageID, ans
    <root>/eval/images/<ImageID>

Labels come from the folder and file names (train.csv repeats them and is
only cross-checked). Real copies of this data have stray ``.jpeg``/``.png``
photos, macOS ``._`` files and the odd misnamed folder, so the reader never
drops anything silently: whatever it cannot use is returned as a `Problem`
for the caller to print with `format_problems`.
"""
from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from podium.data.images import IMAGE_EXTENSIONS, is_image_file
from podium.errors import PodiumError, closest, summarize_list
from podium.fileio import write_csv
from podium.tasks.attributes import DEFAULT_AGE_THRESHOLDS, age_bin, mask_task

PHOTO_MASK = {
    "mask1": "wear",
    "mask2": "wear",
    "mask3": "wear",
    "mask4": "wear",
    "mask5": "wear",
    "incorrect_mask": "incorrect",
    "normal": "not_wear",
}
PHOTO_STEMS = tuple(PHOTO_MASK)
GENDERS = ("male", "female")
TRAIN_COLUMNS = ("path", "id", "group", "mask", "gender", "race", "age", "age_bin", "label", "label_index")
TRAIN_CSV_COLUMNS = ("id", "gender", "race", "age", "path")
SUBMISSION_HEADER = ("ImageID", "ans")
_FOLDER_RE = re.compile(r"^(?P<id>\d+)_(?P<gender>[^_]+)_(?P<race>[^_]+)_(?P<age>\d+)$")


class Problem(NamedTuple):
    """Something in the data folder that the reader could not use as is."""

    path: str
    reason: str


def format_problems(problems: Sequence[Problem], limit: int = 20) -> str:
    """Readable report of reader problems; empty string when there are none."""
    if not problems:
        return ""
    lines = [f"{len(problems)} problem(s) in the data folder:"]
    lines += [f"  {p.path}: {p.reason}" for p in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    return "\n".join(lines)


# ------------------------------------------------------------------- training
def _train_dir(root: Path) -> Path:
    if (root / "train" / "images").is_dir():
        return root / "train"
    if (root / "images").is_dir():
        return root
    found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
    raise PodiumError(
        f"no train/images folder under {root}"
        + (f"; it contains: {summarize_list(found, 10)}" if found else " (the folder does not exist)")
        + ". Point at the competition root that holds train/images/<id>_<gender>_<race>_<age>/"
    )


def _parse_person_folder(name: str) -> dict | str:
    """Person fields from a folder name, or the reason it does not parse."""
    m = _FOLDER_RE.match(name)
    if not m:
        return "folder name does not match <id>_<gender>_<race>_<age> (e.g. 000001_female_Asian_45)"
    gender = m["gender"].lower()
    if gender not in GENDERS:
        return f"gender {m['gender']!r} in the folder name is not one of {', '.join(GENDERS)}"
    return {"group": m["id"], "gender": gender, "race": m["race"], "age": int(m["age"])}


def _extension_rank(path: Path) -> int:
    ext = path.suffix.lower()
    return IMAGE_EXTENSIONS.index(ext) if ext in IMAGE_EXTENSIONS else len(IMAGE_EXTENSIONS)


def _read_person(folder: Path, person: dict, problems: list[Problem]) -> list[dict]:
    """One row per usable photo of a person folder, in PHOTO_STEMS order."""
    found: dict[str, list[Path]] = {}
    for f in sorted(folder.iterdir()):
        if f.name.startswith("."):
            continue
        if f.is_dir():
            problems.append(Problem(str(f), "unexpected folder inside a person folder (ignored)"))
            continue
        if not is_image_file(f):
            problems.append(Problem(
                str(f), f"not an image file (extension {f.suffix or 'none'!r}; "
                f"allowed: {', '.join(IMAGE_EXTENSIONS)}); ignored"
            ))
            continue
        stem = f.stem.lower()
        if stem not in PHOTO_MASK:
            hint = closest(stem, PHOTO_STEMS, n=1)
            problems.append(Problem(
                str(f), f"unknown photo name {f.stem!r}; expected one of {', '.join(PHOTO_STEMS)}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "") + "; ignored"
            ))
            continue
        found.setdefault(stem, []).append(f)
    rows = []
    for stem in PHOTO_STEMS:
        if stem not in found:
            continue
        keep, *dups = sorted(found[stem], key=lambda p: (_extension_rank(p), p.name))
        for dup in dups:
            problems.append(Problem(str(dup), f"duplicate {stem!r} photo; {keep.name} is used and this one ignored"))
        rows.append({
            "path": str(keep.absolute()),
            "id": f"{folder.name}/{keep.name}",
            "mask": PHOTO_MASK[stem],
            **person,
        })
    missing = [s for s in PHOTO_STEMS if s not in found]
    if missing:
        problems.append(Problem(
            str(folder), f"missing {', '.join(missing)} ({len(PHOTO_STEMS) - len(missing)} of "
            f"{len(PHOTO_STEMS)} photos present; those are kept)"
        ))
    return rows


def _cross_check_csv(csv_path: Path, folders: dict[str, dict | str]) -> list[Problem]:
    """Mismatches between train.csv and the person folders on disk."""
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    table.columns = [str(c).strip() for c in table.columns]
    missing_cols = [c for c in TRAIN_CSV_COLUMNS if c not in table.columns]
    if missing_cols:
        return [Problem(str(csv_path), f"missing columns {missing_cols}; found {list(table.columns)}; not cross-checked")]
    problems = []
    listed: dict[str, int] = {}
    for i, row in enumerate(table.itertuples(index=False)):
        line = i + 2
        folder = row.path.strip()
        if folder in listed:
            problems.append(Problem(
                str(csv_path), f"line {line}: folder {folder!r} already listed on line {listed[folder]}"
            ))
            continue
        listed[folder] = line
        person = folders.get(folder)
        if person is None:
            problems.append(Problem(str(csv_path), f"line {line}: folder {folder!r} not found in images/"))
            continue
        if isinstance(person, str):
            continue  # the folder itself is already reported
        csv_values = {"group": row.id.strip(), "gender": row.gender.strip().lower(),
                      "race": row.race.strip(), "age": row.age.strip()}
        for key, value in csv_values.items():
            if value != str(person[key]):
                column = "id" if key == "group" else key
                problems.append(Problem(
                    str(csv_path), f"line {line}: {column} {value!r} differs from folder name {folder!r} "
                    f"({person[key]!r}); the folder name is used"
                ))
    for folder in folders:
        if folder not in listed:
            problems.append(Problem(str(csv_path), f"folder {folder!r} is not listed in train.csv (its photos are kept)"))
    return problems


def read_mask_train(
    root: str | Path, age_thresholds: Sequence[float] = DEFAULT_AGE_THRESHOLDS
) -> tuple[pd.DataFrame, list[Problem]]:
    """Samples table of the training photos and the list of problems found.

    ``root`` is the competition root (holding ``train/``) or the ``train``
    folder itself. Columns: path (absolute), id (``<folder>/<file>``), group
    (person id: split by it so one person never lands in train and validation),
    mask / gender (class names), race, age (years), age_bin (0/1/2), label
    (composite name, e.g. ``wear/female/middle``) and label_index (0..17).
    Hidden files are skipped; everything else that does not fit is a Problem.
    """
    root = Path(root)
    train_dir = _train_dir(root)
    images_dir = train_dir / "images"
    problems: list[Problem] = []
    rows: list[dict] = []
    folders: dict[str, dict | str] = {}
    owners: dict[str, str] = {}
    for entry in sorted(images_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            problems.append(Problem(
                str(entry), "file outside a person folder (expected images/<id>_<gender>_<race>_<age>/<photo>); ignored"
            ))
            continue
        person = _parse_person_folder(entry.name)
        folders[entry.name] = person
        if isinstance(person, str):
            problems.append(Problem(str(entry), person + "; its photos are ignored"))
            continue
        if person["group"] in owners:
            problems.append(Problem(str(entry), f"person id {person['group']} is also used by folder "
                                    f"{owners[person['group']]!r}; both are kept as one person"))
        owners.setdefault(person["group"], entry.name)
        rows.extend(_read_person(entry, person, problems))
    csv_path = train_dir / "train.csv"
    if csv_path.is_file():
        problems.extend(_cross_check_csv(csv_path, folders))
    if not rows:
        raise PodiumError(f"no usable training photos under {images_dir}\n" + format_problems(problems))
    samples = pd.DataFrame(rows)
    samples["age_bin"] = age_bin(samples["age"].to_numpy(), age_thresholds)
    samples = mask_task(age_thresholds).with_labels(samples)
    return samples[list(TRAIN_COLUMNS)], problems


# ----------------------------------------------------------------- evaluation
def eval_dir(root: Path) -> Path:
    if (root / "eval" / "info.csv").is_file():
        return root / "eval"
    if (root / "info.csv").is_file():
        return root
    raise PodiumError(
        f"no eval/info.csv under {root}. Point at the competition root that holds eval/info.csv and eval/images/"
    )


def _read_info(info_csv: str | Path) -> pd.DataFrame:
    path = Path(info_csv)
    if not path.is_file():
        raise PodiumError(f"info.csv not found: {path}")
    try:
        info = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise PodiumError(f"cannot read info.csv {path}: {str(exc)[:200]}; expected the competition's "
                          "eval/info.csv (columns ImageID,ans)") from None
    if "ImageID" not in info.columns:
        raise PodiumError(f"{path}: no ImageID column; found {list(info.columns)}")
    dup = info["ImageID"][info["ImageID"].duplicated()].tolist()
    if dup:
        raise PodiumError(f"{path}: {len(dup)} duplicated ImageID(s): {summarize_list(dup)}")
    return info


def read_mask_eval(root: str | Path) -> pd.DataFrame:
    """Unlabelled samples table of the evaluation images, in info.csv order.

    Columns: path (absolute), id (ImageID), label (None). The order is kept
    because the submission must follow it.
    """
    eval_folder = eval_dir(Path(root))
    info = _read_info(eval_folder / "info.csv")
    paths = [(eval_folder / "images" / image_id).absolute() for image_id in info["ImageID"]]
    missing = [i for i, p in zip(info["ImageID"], paths) if not p.is_file()]
    if missing:
        raise PodiumError(
            f"{len(missing)} of {len(info)} images listed in {eval_folder / 'info.csv'} are missing from "
            f"{eval_folder / 'images'}: {summarize_list(missing)}"
        )
    return pd.DataFrame({"path": [str(p) for p in paths], "id": info["ImageID"].tolist(), "label": [None] * len(info)})


# ----------------------------------------------------------------- submission
def write_mask_submission(
    info_csv: str | Path, ids: Sequence[str], labels_int: Sequence[int], out_path: str | Path,
    n_classes: int = 18,
) -> Path:
    """Write ``ImageID,ans`` in info.csv order, atomically.

    Predictions are matched by id, so the caller's order does not matter, but
    every info.csv id needs exactly one prediction and no others may be given:
    a mismatch means the wrong eval set was predicted.
    """
    info = _read_info(info_csv)
    ids = [str(i) for i in ids]
    labels = np.asarray(labels_int)
    if len(ids) != len(labels):
        raise PodiumError(f"{len(ids)} ids but {len(labels)} labels")
    if labels.size and (not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= n_classes):
        raise PodiumError(f"labels must be integers in 0..{n_classes - 1}; got dtype {labels.dtype}, "
                          f"range {labels.min()}..{labels.max()}")
    series = pd.Series(labels, index=ids)
    dup = series.index[series.index.duplicated()].unique().tolist()
    if dup:
        raise PodiumError(f"{len(dup)} id(s) predicted more than once: {summarize_list(dup)}")
    wanted = info["ImageID"].tolist()
    missing = [i for i in wanted if i not in series.index]
    if missing:
        raise PodiumError(f"{len(missing)} of {len(wanted)} info.csv images have no prediction: {summarize_list(missing)}")
    extra = sorted(set(ids) - set(wanted))
    if extra:
        raise PodiumError(f"{len(extra)} predicted id(s) are not in {info_csv}: {summarize_list(extra)}")
    frame = pd.DataFrame({"ImageID": wanted, "ans": series.loc[wanted].to_numpy().astype(np.int64)})
    return write_csv(out_path, frame)


def check_submission(path: str | Path, info_csv: str | Path, n_classes: int = 18, limit: int = 10) -> list[str]:
    """Every reason the submission would be rejected or mis-scored; [] means valid.

    "row N" counts data rows from 1 (the header is not a row). At most
    ``limit`` messages per kind of problem are listed, then a count.
    """
    path = Path(path)
    if not path.is_file():
        return [f"submission file not found: {path}"]
    wanted = _read_info(info_csv)["ImageID"].tolist()
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            records = [r for r in csv.reader(fh) if r]  # blank lines are skipped, as pandas does
    except UnicodeDecodeError as exc:
        return [f"submission file is not a text CSV (not UTF-8: byte {exc.object[exc.start]:#04x} at position "
                f"{exc.start}); expected a CSV with header ImageID,ans"]
    except csv.Error as exc:
        return [f"submission file is not a readable CSV: {exc}; expected a CSV with header ImageID,ans"]
    if not records:
        return ["submission file is empty (expected header ImageID,ans)"]
    header, rows = [c.strip() for c in records[0]], records[1:]
    problems: dict[str, list[str]] = {}

    def add(kind: str, message: str) -> None:
        problems.setdefault(kind, []).append(message)

    if tuple(header) != SUBMISSION_HEADER:
        add("header", f"header is {','.join(header)!r}; expected 'ImageID,ans'")
        if not set(SUBMISSION_HEADER) <= set(header):
            return _flatten(problems, limit)
    id_col, ans_col = header.index("ImageID"), header.index("ans")
    if len(rows) != len(wanted):
        add("count", f"{len(rows)} rows; info.csv has {len(wanted)}")
    wanted_set, got = set(wanted), []
    first_row: dict[str, int] = {}
    for n, record in enumerate(rows, start=1):
        if len(record) != len(header):
            add("fields", f"row {n}: {len(record)} fields; expected {len(header)}")
            continue
        image_id, ans = record[id_col], record[ans_col]
        got.append(image_id)
        if image_id in first_row:
            add("duplicate", f"row {n}: ImageID {image_id!r} duplicates row {first_row[image_id]}")
        else:
            first_row[image_id] = n
        if image_id not in wanted_set:
            add("extra", f"row {n}: ImageID {image_id!r} is not in info.csv")
        if not (ans.isascii() and ans.isdigit() and int(ans) < n_classes):
            add("ans", f"row {n}: ans {ans!r} is not an integer in 0..{n_classes - 1}")
    for image_id in wanted:
        if image_id not in first_row:
            add("missing", f"ImageID {image_id!r} from info.csv is missing")
    if "fields" not in problems and set(got) == wanted_set and len(got) == len(wanted) and got != wanted:
        n = next(i for i, (a, b) in enumerate(zip(got, wanted)) if a != b) + 1
        add("order", f"rows are not in info.csv order: row {n} is {got[n - 1]!r}, info.csv has {wanted[n - 1]!r}")
    return _flatten(problems, limit)


def _flatten(problems: dict[str, list[str]], limit: int) -> list[str]:
    out = []
    for kind, messages in problems.items():
        out += messages[:limit]
        if len(messages) > limit:
            out.append(f"... and {len(messages) - limit} more {kind} problem(s)")
    return out
