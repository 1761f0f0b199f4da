import pandas as pd
import pytest
from conftest import make_folder

from podium.data.dataset import (
    build_class_map,
    check_images,
    encode_labels,
    holdout_split,
    load_samples,
    read_csv_samples,
    scan_image_folder,
)
from podium.errors import PodiumError
from podium.schema import DataConfig


def test_image_folder_scan(image_folder):
    frame = scan_image_folder(image_folder)
    assert len(frame) == 36 and sorted(frame["label"].unique()) == ["cat", "dog", "fox"]
    assert frame["id"].iloc[0] == "cat/cat_000.png"


def test_missing_empty_and_classless_folders(tmp_path):
    with pytest.raises(PodiumError, match="not found"):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PodiumError, match="no class sub-folders"):
        scan_image_folder(tmp_path / "empty")
    root = make_folder(tmp_path / "d", {"cat": 2})
    (root / "dog").mkdir()
    (root / "dog" / "notes.txt").write_text("x")
    with pytest.raises(PodiumError, match="without images.*dog"):
        scan_image_folder(root)


def test_csv_source_and_errors(tmp_path, image_folder):
    rows = scan_image_folder(image_folder)
    csv = tmp_path / "data dir" / "labels.csv"
    pd.DataFrame({"file": rows["id"], "cls": rows["label"]}).to_csv(csv, index=False)
    cfg = DataConfig(path_column="file", label_column="cls", root=str(image_folder))
    frame = read_csv_samples(csv, cfg)
    assert len(frame) == 36 and set(frame["label"]) == {"cat", "dog", "fox"}
    with pytest.raises(PodiumError, match=r"lacks column\(s\) \['path', 'label'\].*has \['file', 'cls'\]"):
        read_csv_samples(csv, DataConfig(root=str(image_folder)))
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"path": [f"missing_{i}.png" for i in range(7)], "label": ["a"] * 7}).to_csv(bad, index=False)
    with pytest.raises(PodiumError, match=r"7 of 7 image paths .* missing_0.png, missing_1.png, missing_2.png \(and 4 more\)"):
        read_csv_samples(bad, DataConfig())


def test_bad_image_error_and_skip(tmp_path):
    root = make_folder(tmp_path / "d", {"cat": 3, "dog": 3})
    (root / "cat" / "broken.png").write_bytes(b"garbage")
    frame = load_samples(root, DataConfig())
    with pytest.raises(PodiumError, match="broken.png.*on_bad_image=skip"):
        check_images(frame, "error")
    kept, bad = check_images(frame, "skip")
    assert len(kept) == 6 and len(bad) == 1


def test_stratified_holdout_is_reproducible(image_folder):
    frame = scan_image_folder(image_folder)
    tr1, va1 = holdout_split(frame, 0.25, seed=3)
    tr2, va2 = holdout_split(frame, 0.25, seed=3)
    assert list(va1["id"]) == list(va2["id"])
    assert va1["label"].value_counts().to_dict() == {"cat": 3, "dog": 3, "fox": 3}
    assert not set(tr1["id"]) & set(va1["id"])


def test_grouped_holdout_never_splits_a_group(image_folder):
    frame = scan_image_folder(image_folder)
    frame["group"] = [f"p{i // 3}" for i in range(len(frame))]
    train, val = holdout_split(frame, 0.25, seed=0)
    assert not set(train["group"]) & set(val["group"])


def test_unknown_labels_are_named():
    with pytest.raises(PodiumError, match="never saw: wolf"):
        encode_labels(["cat", "wolf"], ["cat", "dog"], "evaluation data")
    with pytest.raises(PodiumError, match="at least 2 classes"):
        build_class_map(["cat", "cat"])
    assert encode_labels(["dog", "cat"], ["cat", "dog"], "x").tolist() == [1, 0]


def test_eval_crop_pct_keeps_the_center_of_a_larger_resize(tmp_path):
    """data.eval_crop_pct: resize to size / pct, keep the center size (torchvision's 256 -> 224)."""
    import numpy as np
    from PIL import Image

    from podium.data.dataset import build_eval_dataset, eval_load_size
    from podium.data.images import load_resized
    from podium.schema import AugmentConfig

    rng = np.random.default_rng(0)
    path = tmp_path / "a.png"
    Image.fromarray(rng.integers(0, 255, (90, 60, 3), dtype=np.uint8)).save(path)
    assert eval_load_size((64, 64), 0.875) == (73, 73)  # floor, as torchvision's int(224 / 0.875) = 256
    assert eval_load_size((32, 48), 1.0) == (32, 48)
    for backend in ("albumentations", "torchvision"):
        augment = AugmentConfig(backend=backend)
        whole = build_eval_dataset([path], None, DataConfig(image_size=32, resize="crop"), augment)[0][0]
        assert np.array_equal(whole.permute(1, 2, 0).numpy(), load_resized(path, (32, 32), mode="crop"))
        center = build_eval_dataset([path], None, DataConfig(image_size=32, resize="crop", eval_crop_pct=0.5),
                                    augment)[0][0]
        big = load_resized(path, (64, 64), mode="crop")
        assert center.shape == (3, 32, 32)
        assert np.array_equal(center.permute(1, 2, 0).numpy(), big[16:48, 16:48])


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, float("nan")])
def test_eval_crop_pct_out_of_range_is_refused(bad):
    with pytest.raises(Exception, match="eval_crop_pct"):
        DataConfig(eval_crop_pct=bad)
