"""EDA on a planted dataset: every number and every planted problem must come out."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from podium.errors import PodiumError
from podium.reports.eda import class_weights, dhash, hamming, phash, run_eda

SECTIONS = ["Overview", "Class balance", "Attributes", "Image sizes", "Channel statistics", "Sample images",
            "Unreadable files", "Duplicates", "Groups", "Config snippet"]


def smooth_image(seed: int, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """A random but photo-like (smooth) RGB image: distinct seeds give unrelated pictures."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    return cv2.resize(small, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)


def save(rgb: np.ndarray, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return str(path)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("planted")
    root = tmp_path / "data"
    rows = []
    seed = 0
    sizes = {"cat": (64, 64), "dog": (48, 80), "bird": (60, 40)}
    for label, n in [("cat", 6), ("dog", 4), ("bird", 2)]:
        for k in range(n):
            seed += 1
            p = save(smooth_image(seed, sizes[label]), root / label / f"{label}{k}.png")
            rows.append({"path": p, "id": f"{label}/{label}{k}.png", "label": label})
    # exact duplicate across classes: the bytes of cat0 filed under dog
    dup = root / "dog" / "dup_of_cat0.png"
    shutil.copy(root / "cat" / "cat0.png", dup)
    rows.append({"path": str(dup), "id": "dog/dup_of_cat0.png", "label": "dog"})
    # near duplicate across classes: cat1 resized and slightly brightened, filed under bird
    src = np.asarray(Image.open(root / "cat" / "cat1.png"))
    near = np.clip(cv2.resize(src, (48, 48), interpolation=cv2.INTER_AREA).astype(int) + 12, 0, 255).astype(np.uint8)
    rows.append({"path": save(near, root / "bird" / "near_cat1.png"), "id": "bird/near_cat1.png", "label": "bird"})
    # corrupt file: a JPEG cut in half
    buf = cv2.imencode(".jpg", smooth_image(999, (64, 64)))[1].tobytes()
    broken = root / "cat" / "broken.jpg"
    broken.write_bytes(buf[: len(buf) // 2])
    rows.append({"path": str(broken), "id": "cat/broken.jpg", "label": "cat"})
    samples = pd.DataFrame(rows)
    rng = np.random.default_rng(0)
    samples["gender"] = rng.choice(["f", "m"], len(samples))
    samples["age"] = rng.choice(["young", "old"], len(samples))
    samples["group"] = [f"g{k % 5}" for k in range(len(samples))]
    # test split: a re-encoded (JPEG) copy of dog0 plus an unrelated image
    dog0 = np.asarray(Image.open(root / "dog" / "dog0.png"))
    t1 = tmp_path / "test" / "t_dog0.jpg"
    t1.parent.mkdir(parents=True)
    Image.fromarray(dog0).save(t1, quality=90)
    t2 = save(smooth_image(500), tmp_path / "test" / "t_other.png")
    test = pd.DataFrame({"path": [str(t1), t2], "id": ["t_dog0.jpg", "t_other.png"], "label": [None, None],
                         "group": ["g1", "zz"]})
    return samples, test


@pytest.fixture(scope="module")
def eda(planted, tmp_path_factory):
    samples, test = planted
    out = tmp_path_factory.mktemp("eda")
    result = run_eda(samples, out, attributes=["gender", "age"], test_samples=test, max_images_for_stats=1000)
    return samples, test, out, result


def test_sections_and_files(eda):
    _, _, out, result = eda
    page = (out / "eda.html").read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page, title
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") >= 5
    for name in ("class_counts", "sizes", "samples", "duplicates", "groups", "attribute_gender"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000, name
    assert json.loads((out / "eda.json").read_text()) == json.loads(json.dumps(result))


def test_class_counts_and_weights(eda):
    samples, _, out, result = eda
    expected = samples["label"].value_counts().to_dict()
    assert result["classes"]["counts"] == expected == {"cat": 7, "dog": 5, "bird": 3}
    assert list(result["classes"]["counts"]) == ["bird", "cat", "dog"]  # class-map (sorted) order
    assert result["classes"]["imbalance_ratio"] == pytest.approx(7 / 3, abs=1e-3)
    inv = np.sqrt(np.array([1 / 3, 1 / 7, 1 / 5]))  # train.class_weights' default, sqrt
    assert result["classes"]["class_weights"] == pytest.approx(inv / inv.mean(), abs=1e-4)
    page = (out / "eda.html").read_text()
    assert '<td class="text">cat</td><td>7</td>' in page
    assert "class_weights: [" in result["yaml"]


def test_attribute_counts_and_crosstab(eda):
    samples, _, _, result = eda
    assert result["attributes"]["counts"]["gender"] == samples["gender"].value_counts().to_dict()
    tab = result["attributes"]["crosstabs"]["gender x age"]
    for g in ("f", "m"):
        for a in ("young", "old"):
            assert tab[g].get(a, 0) == int(((samples["gender"] == g) & (samples["age"] == a)).sum())


def test_corrupt_file_listed(eda):
    _, _, out, result = eda
    bad = pd.read_csv(out / "unreadable.csv")
    assert bad["path"].str.endswith("broken.jpg").tolist() == [True]
    assert bad["error"].iloc[0]
    assert result["unreadable"]["count"] == 1
    assert "broken.jpg" in (out / "eda.html").read_text()


def test_duplicates_found_across_classes_and_splits(eda):
    _, _, out, result = eda
    pairs = pd.read_csv(out / "duplicates.csv")
    found = {frozenset((Path(a).name, Path(b).name)): r for a, b, r in zip(pairs.path_a, pairs.path_b,
                                                                             pairs.itertuples())}
    exact = found[frozenset(("cat0.png", "dup_of_cat0.png"))]
    assert exact.kind == "exact" and exact.distance == 0 and exact.cross_class and not exact.cross_split
    near = found[frozenset(("cat1.png", "near_cat1.png"))]
    assert near.kind == "near" and near.cross_class
    split = found[frozenset(("dog0.png", "t_dog0.jpg"))]
    assert split.cross_split
    assert len(found) == 3, f"unexpected pairs among distinct images: {list(found)}"
    assert pairs["cross_split"].iloc[0]  # most serious first
    dup = result["duplicates"]
    assert (dup["exact_groups"], dup["cross_class_pairs"], dup["cross_split_pairs"]) == (1, 2, 1)


def test_mean_std_match_numpy(eda):
    samples, _, _, result = eda
    pixels = []
    for p in samples["path"]:
        if not p.endswith("broken.jpg"):
            pixels.append(np.asarray(Image.open(p).convert("RGB")).reshape(-1, 3) / 255.0)
    pixels = np.concatenate(pixels)
    snippet = yaml.safe_load(result["yaml"])
    assert "augment" not in snippet  # ImageNet statistics stay for fine-tuning: the data's own are commented out
    own = yaml.safe_load("\n".join(line[2:] for line in result["yaml"].splitlines() if line.startswith("# ")
                                   and not line.startswith("# training")))
    assert own["augment"]["mean"] == pytest.approx(pixels.mean(axis=0), abs=1e-4)
    assert own["augment"]["std"] == pytest.approx(pixels.std(axis=0), abs=1e-4)
    assert snippet["train"]["class_weights"] == result["classes"]["class_weights"]
    assert result["channels"]["n_images"] == len(samples) - 1


def test_sizes_and_groups(eda):
    samples, _, _, result = eda
    sizes = result["sizes"]["train"]
    assert (sizes["width"]["min"], sizes["width"]["max"], sizes["height"]["min"]) == (40, 80, 48)
    # cat0..5, the exact copy of cat0 and the broken JPEG, whose header survives the cut
    assert sizes["most_common"][0] == [64, 64, 8]
    groups = result["groups"]
    assert groups["n_groups"] == 5 and groups["groups_in_train_and_test"] == 1


def test_hashes_are_robust_to_resize_and_distinct_otherwise():
    a = smooth_image(1, (96, 96))
    resized = cv2.resize(a, (50, 50), interpolation=cv2.INTER_AREA)
    other = smooth_image(2, (96, 96))
    h = lambda img: np.array([phash(img), dhash(img)], dtype=np.uint64)  # noqa: E731
    assert hamming(h(a), h(resized)).max() <= 6
    assert hamming(h(a), h(other)).min() > 12


@pytest.mark.parametrize("per_class, suggested", [((3, 3), False), ((3, 2), True)])
def test_class_weights_are_suggested_only_for_imbalanced_data(tmp_path, per_class, suggested):
    """Balanced data got 'class_weights: [1.0, 1.0]' (no weighting at all) in the config snippet and the
    class-balance section; weights are suggested from the imbalance ratio IMBALANCED_RATIO (1.5) on."""
    rows = [{"path": save(smooth_image(100 * c + k, (24, 24)), tmp_path / "data" / label / f"{k}.png"),
             "id": f"{label}/{k}.png", "label": label}
            for c, (label, n) in enumerate(zip(("a", "b"), per_class)) for k in range(n)]
    result = run_eda(pd.DataFrame(rows), tmp_path / "eda", sample_per_class=1)
    page = (tmp_path / "eda" / "eda.html").read_text()
    assert result["classes"]["imbalance_ratio"] == pytest.approx(max(per_class) / min(per_class))
    assert ("class_weights" in result["yaml"]) is suggested and ("class_weights:" in page) is suggested
    assert ("suggested weight" in page) is suggested and ("no class weights to suggest" in page) is not suggested
    if suggested:
        assert yaml.safe_load(result["yaml"])["train"]["class_weights"] == result["classes"]["class_weights"] != []
    else:
        assert result["classes"]["class_weights"] == []


def test_class_weights_mean_one():
    w = class_weights(pd.Series([10, 30, 60]))
    assert np.mean(w) == pytest.approx(1.0, abs=1e-3) and w[0] > w[1] > w[2]


def test_bad_input_messages(planted, tmp_path):
    samples, _ = planted
    with pytest.raises(PodiumError, match="'path' column"):
        run_eda(samples.drop(columns="path"), tmp_path / "x")
    with pytest.raises(PodiumError, match="ethnicity"):
        run_eda(samples, tmp_path / "x", attributes=["ethnicity"])


def test_unlabeled_samples(planted, tmp_path):
    samples, _ = planted
    result = run_eda(samples.drop(columns=["label", "group"]), tmp_path / "u", sample_per_class=2)
    assert result["classes"]["counts"] == {} and result["classes"]["n_unlabeled"] == len(samples)
    assert "class_weights" not in result["yaml"] and "mean:" in result["yaml"]


def test_copies_in_different_groups_and_tiny_images_are_warned_with_counts(tmp_path):
    rows = []
    for i in range(4):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(smooth_image(10 + i, (64, 64))).save(path)
        rows.append({"path": str(path), "label": "a" if i % 2 else "b", "group": f"person{i}"})
    copy = tmp_path / "copy_of_img0.png"  # the same picture filed under another person
    Image.open(rows[0]["path"]).save(copy)
    rows.append({"path": str(copy), "label": "b", "group": "person9"})
    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.full((2, 2, 3), 128, np.uint8)).save(tiny)
    rows.append({"path": str(tiny), "label": "a", "group": "person1"})
    result = run_eda(pd.DataFrame(rows), tmp_path / "out")
    assert result["duplicates"]["cross_group_pairs"] == 1 and result["tiny_images"] == 1
    page = (tmp_path / "out" / "eda.html").read_text()
    assert "1 pair(s) fall in different groups" in page and "1 image(s) have a side below 16 px" in page
