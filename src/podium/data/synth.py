"""A tiny synthetic copy of the mask competition, in its exact folder layout.

The real data cannot ship with the project, yet the reader, the person-wise
split, the 18-class pipeline and the submission writer all need an end-to-end
check. The drawn faces carry each attribute as a visible cue a small CNN can
learn: a mask over nose and mouth (wear), below the nose (incorrect) or none;
long hair and red lips for female, short hair and a beard shadow for male;
hair turning grey and forehead wrinkles with age.
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from podium.data.competition import PHOTO_MASK, PHOTO_STEMS
from podium.errors import PodiumError
from podium.fileio import atomic_path, write_csv
from podium.tasks.attributes import MASK_TASK

RACES = {  # skin tone per race name used in the folder names
    "Asian": (236, 200, 165),
    "Caucasian": (245, 215, 195),
    "African": (120, 80, 55),
    "Hispanic": (200, 150, 110),
}
AGE_RANGES = ((18, 29), (30, 59), (60, 75))  # inclusive, one per age bin at thresholds 30, 60
YOUNG_HAIR = ((40, 25, 15), (90, 60, 30), (20, 20, 20), (110, 70, 35))  # no blonde: it reads as grey
MASK_COLOURS = ((245, 245, 245), (120, 170, 230), (30, 30, 35), (240, 160, 190), (150, 150, 150), (90, 140, 90))
BACKGROUNDS = ((210, 210, 215), (180, 200, 220), (225, 215, 190), (170, 170, 170), (200, 225, 200))
_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


def _person_traits(rng: np.random.Generator, gender: str, age: int, race: str) -> dict[str, Any]:
    """Appearance fixed for all seven photos of a person."""
    young = np.array(YOUNG_HAIR[rng.integers(len(YOUNG_HAIR))], dtype=float)
    grey = np.array([200.0, 200.0, 200.0]) if age >= 60 else np.array([150.0, 150.0, 150.0])
    greyness = 0.0 if age < 30 else (0.45 if age < 60 else 0.9)
    hair = tuple(int(v) for v in young * (1 - greyness) + grey * greyness)
    skin = np.array(RACES[race], dtype=float) * rng.uniform(0.93, 1.05)
    return {
        "skin": tuple(int(v) for v in np.clip(skin, 0, 255)),
        "hair": hair,
        "long_hair": gender == "female",
        "beard": gender == "male",
        "wrinkles": 0 if age < 30 else (2 if age < 60 else 3),
        "face_w": rng.uniform(0.24, 0.30),
        "face_h": rng.uniform(0.24, 0.29),
        "shirt": tuple(int(v) for v in rng.integers(30, 230, size=3)),
    }


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    r, g, b = (int(np.clip(c * factor, 0, 255)) for c in colour)
    return r, g, b


def draw_face(traits: dict[str, Any], mask: str, size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    """One photo: ``mask`` is wear / incorrect / not_wear, ``size`` is (width, height)."""
    w, h = size
    base = np.array(BACKGROUNDS[rng.integers(len(BACKGROUNDS))])
    background = tuple(int(v) for v in np.clip(base + rng.integers(-15, 16, 3), 0, 255))
    im = Image.new("RGB", (w, h), background)
    d = ImageDraw.Draw(im)
    cx = w * (0.5 + rng.uniform(-0.04, 0.04))
    cy = h * (0.45 + rng.uniform(-0.03, 0.03))
    fw, fh = w * traits["face_w"], h * traits["face_h"]
    skin, hair = traits["skin"], traits["hair"]
    d.ellipse([cx - 2.2 * fw, cy + 1.25 * fh, cx + 2.2 * fw, h + 1.5 * fh], fill=traits["shirt"])  # shoulders
    if traits["long_hair"]:
        d.rounded_rectangle([cx - 1.25 * fw, cy - 1.05 * fh, cx + 1.25 * fw, cy + 1.7 * fh], radius=fw * 0.5, fill=hair)
    d.rectangle([cx - 0.35 * fw, cy + 0.7 * fh, cx + 0.35 * fw, cy + 1.35 * fh], fill=_shade(skin, 0.9))  # neck
    d.ellipse([cx - 1.08 * fw, cy - 0.15 * fh, cx - 0.85 * fw, cy + 0.3 * fh], fill=skin)  # ears
    d.ellipse([cx + 0.85 * fw, cy - 0.15 * fh, cx + 1.08 * fw, cy + 0.3 * fh], fill=skin)
    d.ellipse([cx - fw, cy - fh, cx + fw, cy + fh], fill=skin)
    d.chord([cx - 1.05 * fw, cy - 1.12 * fh, cx + 1.05 * fw, cy + 0.2 * fh], 180, 360, fill=hair)  # hair cap
    line = max(1, round(w / 128))
    for k in range(traits["wrinkles"]):
        y = cy - 0.45 * fh + k * 0.12 * fh
        d.line([cx - 0.45 * fw, y, cx + 0.45 * fw, y], fill=_shade(skin, 0.65), width=2 * line)
    for side in (-1, 1):
        ex, ey = cx + side * 0.4 * fw, cy - 0.05 * fh
        d.ellipse([ex - 0.16 * fw, ey - 0.08 * fh, ex + 0.16 * fw, ey + 0.08 * fh], fill=(250, 250, 250))
        d.ellipse([ex - 0.07 * fw, ey - 0.07 * fh, ex + 0.07 * fw, ey + 0.07 * fh], fill=(40, 30, 25))
        d.line([ex - 0.2 * fw, ey - 0.2 * fh, ex + 0.2 * fw, ey - 0.22 * fh], fill=_shade(hair, 0.8), width=2 * line)
    if traits["beard"]:
        d.chord([cx - 0.8 * fw, cy + 0.05 * fh, cx + 0.8 * fw, cy + 1.0 * fh], 0, 180, fill=_shade(skin, 0.78))
    nose = [(cx, cy + 0.05 * fh), (cx - 0.12 * fw, cy + 0.35 * fh), (cx + 0.12 * fw, cy + 0.35 * fh)]
    d.polygon(nose, fill=_shade(skin, 0.8))
    lips = (200, 40, 60) if traits["long_hair"] else _shade(skin, 0.6)
    d.ellipse([cx - 0.3 * fw, cy + 0.5 * fh, cx + 0.3 * fw, cy + 0.64 * fh], fill=lips)
    if mask != "not_wear":
        colour = MASK_COLOURS[rng.integers(len(MASK_COLOURS))]
        top = cy + (0.02 if mask == "wear" else 0.42) * fh  # incorrect: pulled below the nose
        bottom = cy + (0.95 if mask == "wear" else 1.12) * fh
        d.rounded_rectangle([cx - 0.9 * fw, top, cx + 0.9 * fw, bottom], radius=0.25 * fw,
                            fill=colour, outline=_shade(colour, 0.7), width=line)
        for side in (-1, 1):  # ear loops
            loop = [cx + side * 0.9 * fw, top + 0.1 * fh, cx + side * 1.0 * fw, cy + 0.05 * fh]
            d.line(loop, fill=_shade(colour, 0.8), width=line)
    return im


def _save(im: Image.Image, path: Path, quality: int) -> None:
    fmt = _FORMATS[path.suffix.lower()]
    with atomic_path(path) as tmp:
        im.save(tmp, format=fmt, **({"quality": quality} if fmt == "JPEG" else {}))


def _photo_extension(rng: np.random.Generator, vary: bool) -> str:
    # Real copies hold a few .jpeg, .png and upper-case .JPG photos.
    if not vary:
        return ".jpg"
    r = rng.random()
    return ".png" if r < 0.05 else ".jpeg" if r < 0.10 else ".JPG" if r < 0.13 else ".jpg"


def _people(rng: np.random.Generator, n: int, first_id: int) -> list[dict[str, Any]]:
    """n people cycling through the 6 gender x age combos in a shuffled order."""
    combos = [(g, a) for g in ("male", "female") for a in range(3)]
    order = [combos[i % len(combos)] for i in range(n)]
    rng.shuffle(order)
    people = []
    for i, (gender, bin_index) in enumerate(order):
        lo, hi = AGE_RANGES[bin_index]
        race = list(RACES)[rng.integers(len(RACES))]
        people.append({"id": f"{first_id + i:06d}", "gender": gender, "race": race,
                       "age": int(rng.integers(lo, hi + 1)), "age_bin": bin_index})
    return people


def synth_mask_dataset(
    out_dir: str | Path,
    people: int = 12,
    seed: int = 0,
    image_size: tuple[int, int] = (384, 512),
    eval_people: int | None = None,
    vary_extensions: bool = True,
    jpeg_quality: int = 90,
) -> dict[str, Any]:
    """Write a synthetic mask-competition dataset under ``out_dir``; return a summary.

    ``image_size`` is (width, height). Training people cycle through all six
    gender x age combinations, so each appears once ``people >= 6``. Evaluation
    images are all seven photos of ``eval_people`` further people (default
    ``max(1, people // 2)``), shuffled under hash-like names with ``ans=0`` in
    info.csv; their true classes go to ``<out_dir>/eval_truth.csv``, outside
    the competition layout, for scoring end-to-end tests. Same seed, same bytes.
    """
    if people < 1:
        raise PodiumError(f"people must be at least 1, got {people}")
    w, h = (int(v) for v in image_size)
    if w < 32 or h < 32:
        raise PodiumError(f"image_size (width, height) must be at least 32x32, got {image_size}")
    n_eval = max(1, people // 2) if eval_people is None else int(eval_people)
    start = time.perf_counter()
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    train_people = _people(rng, people, first_id=1)
    test_people = _people(rng, n_eval, first_id=people + 1)

    labels = _write_train_split(out, train_people, rng, (w, h), vary_extensions, jpeg_quality)
    eval_images = _write_eval_split(out, test_people, rng, seed, (w, h), jpeg_quality)
    names = MASK_TASK.composite_names()
    return {
        "root": str(out),
        "people": people,
        "eval_people": n_eval,
        "train_images": len(labels),
        "eval_images": eval_images,
        "image_size": [w, h],
        "gender_age_combos": sorted({f"{p['gender']}/{MASK_TASK.classes('age')[p['age_bin']]}" for p in train_people}),
        "class_counts": {names[c]: int(n) for c, n in zip(*np.unique(labels, return_counts=True))},
        "eval_truth": str(out / "eval_truth.csv"),
        "seconds": round(time.perf_counter() - start, 3),
    }


def _write_train_split(out: Path, people: list[dict[str, Any]], rng: np.random.Generator, size: tuple[int, int],
                       vary_extensions: bool, jpeg_quality: int) -> list[int]:
    """train/images/<person folder>/<photo> and train/train.csv, as the competition lays them out;
    the class code of every photo written, in order."""
    csv_rows, labels = [], []
    for person in people:
        traits = _person_traits(rng, person["gender"], person["age"], person["race"])
        folder = f"{person['id']}_{person['gender']}_{person['race']}_{person['age']}"
        for stem in PHOTO_STEMS:
            path = out / "train" / "images" / folder / (stem + _photo_extension(rng, vary_extensions))
            _save(draw_face(traits, PHOTO_MASK[stem], size, rng), path, jpeg_quality)
            labels.append(_code(person, PHOTO_MASK[stem]))
        csv_rows.append({**{k: person[k] for k in ("id", "gender", "race", "age")}, "path": folder})
    write_csv(out / "train" / "train.csv", pd.DataFrame(csv_rows, columns=["id", "gender", "race", "age", "path"]))
    return labels


def _write_eval_split(out: Path, people: list[dict[str, Any]], rng: np.random.Generator, seed: int,
                      size: tuple[int, int], jpeg_quality: int) -> int:
    """eval/images under hash-like names in shuffled order, eval/info.csv with ``ans=0``, and their
    true classes in eval_truth.csv (outside the competition layout); returns the image count."""
    eval_rows = []
    for person in people:
        traits = _person_traits(rng, person["gender"], person["age"], person["race"])
        for stem in PHOTO_STEMS:
            image_id = hashlib.sha1(f"{seed}/{person['id']}/{stem}".encode()).hexdigest() + ".jpg"
            _save(draw_face(traits, PHOTO_MASK[stem], size, rng), out / "eval" / "images" / image_id, jpeg_quality)
            eval_rows.append({"ImageID": image_id, "truth": _code(person, PHOTO_MASK[stem])})
    eval_frame = pd.DataFrame(eval_rows).iloc[rng.permutation(len(eval_rows))].reset_index(drop=True)
    write_csv(out / "eval" / "info.csv", pd.DataFrame({"ImageID": eval_frame["ImageID"], "ans": 0}))
    write_csv(out / "eval_truth.csv", pd.DataFrame({"ImageID": eval_frame["ImageID"], "ans": eval_frame["truth"]}))
    return len(eval_rows)


def _code(person: dict[str, Any], mask: str) -> int:
    return MASK_TASK.encode({"mask": mask, "gender": person["gender"], "age": person["age_bin"]})
