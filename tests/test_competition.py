from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from podium.data.competition import (
    PHOTO_STEMS,
    TRAIN_COLUMNS,
    check_submission,
    format_problems,
    read_mask_eval,
    read_mask_train,
    write_mask_submission,
)
from podium.errors import PodiumError


def _image(path: Path, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 30, 30)).save(path, format=fmt)


def _person(images: Path, folder: str, ext: dict | None = None) -> None:
    ext = ext or {}
    for stem in PHOTO_STEMS:
        suffix = ext.get(stem, ".jpg")
        _image(images / folder / f"{stem}{suffix}", "PNG" if suffix.lower() == ".png" else "JPEG")


def _write_train_csv(train: Path, folders: list[str]) -> None:
    rows = []
    for folder in folders:
        pid, gender, race, age = folder.split("_")
        rows.append({"id": pid, "gender": gender, "race": race, "age": age, "path": folder})
    pd.DataFrame(rows).to_csv(train / "train.csv", index=False)


def test_read_clean_train_with_odd_extensions_and_hidden_files(tmp_path):
    images = tmp_path / "train" / "images"
    _person(images, "000001_female_Asian_45", {"mask2": ".JPG", "mask3": ".jpeg", "normal": ".png"})
    _person(images, "000002_male_Asian_60")
    (images / "000001_female_Asian_45" / "._mask1.jpg").write_bytes(b"\0")
    (images / ".DS_Store").write_bytes(b"\0")
    (images / "._000002_male_Asian_60").write_bytes(b"\0")
    _write_train_csv(tmp_path / "train", ["000001_female_Asian_45", "000002_male_Asian_60"])
    df, problems = read_mask_train(tmp_path)
    assert problems == [] and format_problems(problems) == ""
    assert list(df.columns) == list(TRAIN_COLUMNS)
    assert len(df) == 14
    first = df.iloc[:7]
    assert first["id"].tolist()[:3] == [
        "000001_female_Asian_45/mask1.jpg", "000001_female_Asian_45/mask2.JPG", "000001_female_Asian_45/mask3.jpeg"
    ]
    assert first["id"].iloc[6] == "000001_female_Asian_45/normal.png"
    assert first["label"].tolist() == ["wear/female/middle"] * 5 + ["incorrect/female/middle", "not_wear/female/middle"]
    assert first["label_index"].tolist() == [4] * 5 + [10, 16]
    assert (df["group"].iloc[7:] == "000002").all() and (df["label_index"].iloc[7:12] == 2).all()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    # The train folder itself works as root too, with custom age thresholds.
    df2, _ = read_mask_train(tmp_path / "train", age_thresholds=(30, 61))
    assert df2["label"].iloc[7] == "wear/male/middle"


def test_read_train_reports_every_problem(tmp_path):
    images = tmp_path / "train" / "images"
    _person(images, "000001_female_Asian_45")
    person2 = images / "000002_male_Asian_25"
    _person(images, "000002_male_Asian_25")
    (person2 / "normal.jpg").unlink()                        # missing photo
    _image(person2 / "mask1.png", "PNG")                      # duplicate stem
    _image(person2 / "mask6.jpg")                             # unknown stem
    (person2 / "notes.txt").write_text("x")                   # non-image
    _person(images, "bad-folder-name")                        # malformed folder
    _person(images, "000003_unknown_Asian_30")                # bad gender
    _image(images / "loose.jpg")                              # file outside a folder
    _write_train_csv(tmp_path / "train", ["000001_female_Asian_45", "000004_male_Asian_40"])
    df, problems = read_mask_train(tmp_path)
    reasons = {Path(p.path).name: p.reason for p in problems if "train.csv" not in p.path}
    assert "duplicate 'mask1'" in reasons["mask1.png"] and "mask1.jpg is used" in reasons["mask1.png"]
    assert "unknown photo name 'mask6'" in reasons["mask6.jpg"]
    assert "not an image file" in reasons["notes.txt"]
    assert reasons["000002_male_Asian_25"].startswith("missing normal (6 of 7")
    assert "does not match" in reasons["bad-folder-name"]
    assert "gender 'unknown'" in reasons["000003_unknown_Asian_30"]
    assert "outside a person folder" in reasons["loose.jpg"]
    csv_reasons = [p.reason for p in problems if p.path.endswith("train.csv")]
    assert any("'000004_male_Asian_40' not found" in r for r in csv_reasons)
    assert any("'000002_male_Asian_25' is not listed" in r for r in csv_reasons)
    # Usable photos are kept: 7 from person 1 and 6 from person 2, nothing from bad folders.
    assert len(df) == 13 and set(df["group"]) == {"000001", "000002"}
    report = format_problems(problems, limit=3)
    assert report.startswith(f"{len(problems)} problem(s)") and f"and {len(problems) - 3} more" in report


def test_train_csv_value_mismatch_reported(tmp_path):
    images = tmp_path / "train" / "images"
    _person(images, "000001_female_Asian_45")
    pd.DataFrame([{"id": "000001", "gender": "male", "race": "Asian", "age": "45",
                   "path": "000001_female_Asian_45"}]).to_csv(tmp_path / "train" / "train.csv", index=False)
    _, problems = read_mask_train(tmp_path)
    assert len(problems) == 1
    assert "line 2: gender 'male' differs from folder name" in problems[0].reason


def test_read_train_without_photos_is_an_error(tmp_path):
    (tmp_path / "train" / "images" / "junk").mkdir(parents=True)
    with pytest.raises(PodiumError, match="no usable training photos"):
        read_mask_train(tmp_path)
    with pytest.raises(PodiumError, match="no train/images"):
        read_mask_train(tmp_path / "nowhere")


def _eval_set(root: Path, ids: list[str]) -> Path:
    for image_id in ids:
        _image(root / "eval" / "images" / image_id)
    info = root / "eval" / "info.csv"
    pd.DataFrame({"ImageID": ids, "ans": 0}).to_csv(info, index=False)
    return info


def test_read_eval_keeps_order_and_reports_missing(tmp_path):
    ids = ["c.jpg", "a.jpg", "b.jpg"]
    info = _eval_set(tmp_path, ids)
    df = read_mask_eval(tmp_path)
    assert df["id"].tolist() == ids and df["label"].isna().all()
    assert Path(df["path"].iloc[0]).name == "c.jpg"
    (tmp_path / "eval" / "images" / "a.jpg").unlink()
    with pytest.raises(PodiumError, match=r"1 of 3 images .* missing .*a\.jpg"):
        read_mask_eval(tmp_path)
    assert info.is_file()


def test_write_submission_orders_by_info(tmp_path):
    info = _eval_set(tmp_path, ["c.jpg", "a.jpg", "b.jpg"])
    out = write_mask_submission(info, ["a.jpg", "b.jpg", "c.jpg"], [1, 2, 17], tmp_path / "sub.csv")
    assert out.read_text().splitlines() == ["ImageID,ans", "c.jpg,17", "a.jpg,1", "b.jpg,2"]
    assert check_submission(out, info) == []
    with pytest.raises(PodiumError, match="no prediction: b.jpg"):
        write_mask_submission(info, ["a.jpg", "c.jpg"], [1, 2], tmp_path / "sub2.csv")
    with pytest.raises(PodiumError, match="0..17"):
        write_mask_submission(info, ["a.jpg", "b.jpg", "c.jpg"], [1, 2, 18], tmp_path / "sub2.csv")
    assert not (tmp_path / "sub2.csv").exists()


@pytest.mark.parametrize(
    "body, expected",
    [
        ("ImageID,ans\nc.jpg,1\na.jpg,2\nb.jpg,3\n", []),
        ("id,ans\nc.jpg,1\na.jpg,2\nb.jpg,3\n", ["header is 'id,ans'; expected 'ImageID,ans'"]),
        ("ImageID,ans\nc.jpg,1\na.jpg,2\n", ["2 rows; info.csv has 3", "ImageID 'b.jpg' from info.csv is missing"]),
        ("ImageID,ans\nc.jpg,1\na.jpg,2\nb.jpg,3\nz.jpg,4\n", ["4 rows; info.csv has 3", "row 4: ImageID 'z.jpg' is not in info.csv"]),
        ("ImageID,ans\nc.jpg,1\na.jpg,2\na.jpg,3\n",
         ["row 3: ImageID 'a.jpg' duplicates row 2", "ImageID 'b.jpg' from info.csv is missing"]),
        ("ImageID,ans\na.jpg,1\nc.jpg,2\nb.jpg,3\n",
         ["rows are not in info.csv order: row 1 is 'a.jpg', info.csv has 'c.jpg'"]),
        ("ImageID,ans\nc.jpg,x\na.jpg,18\nb.jpg,-1\n",
         ["row 1: ans 'x' is not an integer in 0..17", "row 2: ans '18' is not an integer in 0..17",
          "row 3: ans '-1' is not an integer in 0..17"]),
        ("ImageID,ans\nc.jpg,1,5\na.jpg,2\nb.jpg,3\n", ["row 1: 3 fields; expected 2", "ImageID 'c.jpg' from info.csv is missing"]),
        ("", ["submission file is empty (expected header ImageID,ans)"]),
    ],
)
def test_check_submission_catches_each_problem(tmp_path, body, expected):
    info = _eval_set(tmp_path, ["c.jpg", "a.jpg", "b.jpg"])
    sub = tmp_path / "sub.csv"
    sub.write_text(body)
    assert check_submission(sub, info) == expected


def test_check_submission_missing_file_and_limit(tmp_path):
    ids = [f"{i}.jpg" for i in range(15)]
    info = _eval_set(tmp_path, ids)
    assert check_submission(tmp_path / "nope.csv", info)[0].startswith("submission file not found")
    sub = tmp_path / "sub.csv"
    sub.write_text("ImageID,ans\n" + "".join(f"{i},9.0\n" for i in ids))
    problems = check_submission(sub, info, limit=4)
    assert problems[:4] == [f"row {n}: ans '9.0' is not an integer in 0..17" for n in range(1, 5)]
    assert problems[4] == "... and 11 more ans problem(s)" and len(problems) == 5
