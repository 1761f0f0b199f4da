import time

import numpy as np
import pandas as pd
import pytest

from podium.data.competition import check_submission, read_mask_eval, read_mask_train, write_mask_submission
from podium.data.images import load_rgb
from podium.data.synth import synth_mask_dataset
from podium.errors import PodiumError
from podium.tasks.attributes import MASK_TASK


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    start = time.perf_counter()
    summary = synth_mask_dataset(root, people=12, seed=3, image_size=(96, 128))
    summary["elapsed"] = time.perf_counter() - start
    return root, summary


def test_synth_parses_cleanly_and_covers_all_combos(synth):
    root, summary = synth
    df, problems = read_mask_train(root)
    assert problems == []
    assert len(df) == 12 * 7 == summary["train_images"]
    assert df["group"].nunique() == 12
    combos = set(zip(df["gender"], df["age_bin"]))
    assert combos == {(g, a) for g in ("male", "female") for a in range(3)}
    assert set(df["label_index"]) == set(range(18))
    assert len(summary["gender_age_combos"]) == 6
    # Extensions vary like the real data, and the reader still sees every photo.
    extensions = {p.rsplit(".", 1)[1] for p in df["id"]}
    assert "jpg" in extensions and extensions - {"jpg"}
    assert summary["elapsed"] < 2.0


def test_synth_images_have_requested_size(synth):
    root, _ = synth
    df, _ = read_mask_train(root)
    assert load_rgb(df["path"].iloc[0]).shape == (128, 96, 3)


def test_synth_eval_round_trip_scores_perfectly(synth, tmp_path):
    root, summary = synth
    eval_df = read_mask_eval(root)
    assert len(eval_df) == summary["eval_images"] == summary["eval_people"] * 7
    truth = pd.read_csv(summary["eval_truth"], dtype={"ImageID": str})
    assert truth["ImageID"].tolist() == eval_df["id"].tolist()
    assert truth["ans"].between(0, 17).all()
    sub = write_mask_submission(root / "eval" / "info.csv", truth["ImageID"], truth["ans"], tmp_path / "sub.csv")
    assert check_submission(sub, root / "eval" / "info.csv") == []


def test_synth_classes_are_visibly_different(synth):
    # A mask over the lower face changes those pixels relative to the same person without one.
    root, _ = synth
    df, _ = read_mask_train(root)
    person = df[df["group"] == df["group"].iloc[0]].set_index("mask")
    worn = load_rgb(person.loc["wear", "path"].iloc[0]).astype(float)
    bare = load_rgb(person.loc["not_wear", "path"]).astype(float)
    lower = slice(70, 100)
    assert np.abs(worn[lower] - bare[lower]).mean() > 20


def test_synth_is_deterministic(tmp_path):
    a = synth_mask_dataset(tmp_path / "a", people=6, seed=1, image_size=(48, 64), eval_people=1)
    b = synth_mask_dataset(tmp_path / "b", people=6, seed=1, image_size=(48, 64), eval_people=1)
    c = synth_mask_dataset(tmp_path / "c", people=6, seed=2, image_size=(48, 64), eval_people=1)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)
    assert a["class_counts"] == b["class_counts"]
    assert (tmp_path / "a" / "train" / "train.csv").read_bytes() != (tmp_path / "c" / "train" / "train.csv").read_bytes()
    assert len(c["gender_age_combos"]) == 6


def test_synth_rejects_bad_arguments(tmp_path):
    with pytest.raises(PodiumError, match="people"):
        synth_mask_dataset(tmp_path, people=0)
    with pytest.raises(PodiumError, match="32x32"):
        synth_mask_dataset(tmp_path, image_size=(16, 16))


def test_composite_names_match_summary(synth):
    _, summary = synth
    assert set(summary["class_counts"]) <= set(MASK_TASK.composite_names())
    assert sum(summary["class_counts"].values()) == summary["train_images"]
