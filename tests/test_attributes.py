import numpy as np
import pandas as pd
import pytest

from podium.errors import PodiumError
from podium.tasks.attributes import (
    MASK_TASK,
    AttributeTask,
    age_bin,
    ambiguous_age_mask,
    drop_ambiguous_ages,
    mask_task,
)
from podium.tasks.fixes import apply_label_fixes


def test_mask_task_shape_and_names():
    assert MASK_TASK.names == ("mask", "gender", "age")
    assert MASK_TASK.radices == (3, 2, 3)
    assert MASK_TASK.n_classes == 18
    names = MASK_TASK.composite_names()
    assert len(names) == 18 == len(set(names))
    assert names[0] == "wear/male/young"
    assert names[4] == "wear/female/middle"
    assert names[17] == "not_wear/female/old"


def test_encode_decode_round_trip_all_18_classes():
    for code in range(18):
        digits = MASK_TASK.decode(code)
        assert MASK_TASK.encode(digits) == code
        assert code == digits["mask"] * 6 + digits["gender"] * 3 + digits["age"]
        name = MASK_TASK.composite_name(code)
        assert MASK_TASK.code_of(name) == code
        for attr, index in digits.items():
            assert MASK_TASK.attribute_of(code, attr) == index
    assert MASK_TASK.encode({"mask": "incorrect", "gender": "female", "age": "old"}) == 6 + 3 + 2


def test_vectorised_encode_decode():
    codes = np.arange(18)
    digits = MASK_TASK.decode_array(codes)
    np.testing.assert_array_equal(digits["mask"], np.repeat([0, 1, 2], 6))
    np.testing.assert_array_equal(MASK_TASK.encode_array(digits), codes)
    by_name = MASK_TASK.encode_array({"mask": ["not_wear", "wear"], "gender": ["female", "male"], "age": [1, 0]})
    np.testing.assert_array_equal(by_name, [12 + 3 + 1, 0])
    np.testing.assert_array_equal(MASK_TASK.attribute_of(codes, "gender"), np.tile(np.repeat([0, 1], 3), 3))


def test_encode_rejects_bad_values():
    with pytest.raises(PodiumError, match="allowed: male, female"):
        MASK_TASK.encode({"mask": "wear", "gender": "femal", "age": 0})
    with pytest.raises(PodiumError, match="out of range"):
        MASK_TASK.decode(18)
    with pytest.raises(PodiumError, match="missing"):
        MASK_TASK.encode({"mask": "wear", "gender": "male"})
    with pytest.raises(PodiumError, match="out of range"):
        MASK_TASK.encode_array({"mask": [0, 3], "gender": [0, 0], "age": [0, 0]})


def test_task_validation():
    with pytest.raises(PodiumError, match="thresholds"):
        AttributeTask({"a": ("x", "y")}, bins={"a": (1, 2)})
    with pytest.raises(PodiumError, match="duplicated"):
        AttributeTask({"a": ("x", "x")})
    assert hash(mask_task()) == hash(MASK_TASK) and mask_task() == MASK_TASK


def test_general_task_mixed_radix():
    task = AttributeTask({"a": ("p", "q"), "b": ("r", "s", "t", "u")})
    assert task.n_classes == 8
    assert task.encode({"a": "q", "b": "t"}) == 4 + 2
    assert task.composite_names()[6] == "q/t"


def test_marginal_and_joint_probs_are_consistent():
    rng = np.random.default_rng(0)
    heads = {n: rng.dirichlet(np.ones(k), size=5) for n, k in zip(MASK_TASK.names, MASK_TASK.radices)}
    joint = MASK_TASK.joint_probs(heads)
    assert joint.shape == (5, 18)
    np.testing.assert_allclose(joint.sum(axis=1), 1.0)
    for name, p in heads.items():
        np.testing.assert_allclose(MASK_TASK.marginal_probs(joint, name), p)
    expected = MASK_TASK.encode_array({n: p.argmax(1) for n, p in heads.items()})
    np.testing.assert_array_equal(joint.argmax(1), expected)


def test_age_bin_default_and_custom_thresholds():
    np.testing.assert_array_equal(age_bin([0, 29, 30, 59, 60, 90]), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(age_bin([29, 30, 57, 58], thresholds=(30, 58)), [0, 1, 1, 2])
    assert age_bin(45) == 1 and isinstance(age_bin(45), int)
    with pytest.raises(PodiumError, match="increasing"):
        age_bin(40, thresholds=(60, 30))


def test_ambiguous_age_drop():
    mask = ambiguous_age_mask([27, 28, 29, 30, 56, 57, 59, 60])
    np.testing.assert_array_equal(mask, [False, True, True, False, False, True, True, False])
    df = pd.DataFrame({"age": [20, 28, 45, 58, 60], "id": list("abcde")})
    kept, dropped = drop_ambiguous_ages(df)
    assert dropped == 2 and kept["id"].tolist() == ["a", "c", "e"]
    kept, dropped = drop_ambiguous_ages(df, bands=[(44, 46)])
    assert dropped == 1 and kept.index.tolist() == [0, 1, 2, 3]


def _samples():
    rows = []
    for person, gender, age in (("000001", "female", 45), ("000002", "male", 25)):
        folder = f"{person}_{gender}_Asian_{age}"
        for stem, mask in (("mask1", "wear"), ("incorrect_mask", "incorrect"), ("normal", "not_wear")):
            rows.append({"id": f"{folder}/{stem}.jpg", "group": person, "mask": mask, "gender": gender,
                         "age": age, "age_bin": age_bin(age)})
    return MASK_TASK.with_labels(pd.DataFrame(rows))


def test_label_fixes_apply_by_person_and_image(tmp_path):
    df = _samples()
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(
        "id,attribute,new_value\n"
        "000001,gender,male\n"                          # person: 3 photos change
        "000002_male_Asian_25/normal.jpg,mask,incorrect\n"  # image: swapped mask photo
        "000002_male_Asian_25/incorrect_mask.jpg,mask,not_wear\n"
        "000002,age,27\n"                               # same bin: no label change
        "000001_female_Asian_45/mask1.jpg,age,old\n"    # image fix wins over person fix
    )
    outcome = apply_label_fixes(df, fixes, MASK_TASK)
    fixed, changed = outcome.frame, outcome.changed
    assert changed == 3 + 2
    by_id = fixed.set_index("id")
    assert (fixed.loc[fixed.group == "000001", "gender"] == "male").all()
    assert by_id.loc["000001_female_Asian_45/mask1.jpg", "label"] == "wear/male/old"
    assert by_id.loc["000001_female_Asian_45/normal.jpg", "label"] == "not_wear/male/middle"
    assert by_id.loc["000002_male_Asian_25/normal.jpg", "label_index"] == 6 + 0 + 0
    assert (fixed.loc[fixed.group == "000002", "age"] == 27).all()
    assert df["gender"].tolist().count("female") == 3  # input untouched


def test_label_fixes_number_moves_age_bin(tmp_path):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("id,attribute,new_value\n000001,age,61\n")
    outcome = apply_label_fixes(_samples(), fixes)
    fixed, changed = outcome.frame, outcome.changed
    assert changed == 3
    assert set(fixed.loc[fixed.group == "000001", "label"].str.split("/").str[2]) == {"old"}


def test_label_fixes_validation_lists_problems(tmp_path):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(
        "id,attribute,new_value\n"
        "009999,gender,male\n"
        "000001,gendr,male\n"
        "000001,gender,femal\n"
        "000002,age,elderly\n"
        "000001,mask,wear\n"
        "000001,mask,not_wear\n"
    )
    with pytest.raises(PodiumError) as info:
        apply_label_fixes(_samples(), fixes)
    msg = str(info.value)
    assert "5 invalid" in msg
    assert "line 2: unknown id '009999'" in msg
    assert "line 3: unknown attribute 'gendr'" in msg and "did you mean 'gender'" in msg
    assert "line 4: value 'femal' is not allowed for gender; allowed: male, female" in msg
    assert "line 5: value 'elderly'" in msg and "young, middle, old or a number" in msg
    assert "line 7:" in msg and "conflicts with line 6" in msg


def test_label_fixes_missing_columns(tmp_path):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("id,value\n000001,male\n")
    with pytest.raises(PodiumError, match="missing columns"):
        apply_label_fixes(_samples(), fixes)


def test_label_fixes_drop_keep_and_whole_composite_name(tmp_path):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(
        "id,attribute,new_value,action\n"
        "000002,,,drop\n"                                          # a whole person left out
        "000001_female_Asian_45/mask1.jpg,label,incorrect/male/young,\n"  # a whole composite name
        "000001_female_Asian_45/normal.jpg,gender,,keep\n"          # checked: stays as labelled
        "other_image.jpg,gender,male,\n"                            # an image of the validation source
    )
    outcome = apply_label_fixes(_samples(), fixes, MASK_TASK, other_ids={"other_image.jpg"})
    assert (outcome.changed, outcome.dropped, outcome.kept, outcome.elsewhere) == (1, 3, 1, 1)
    by_id = outcome.frame.set_index("id")
    assert list(outcome.frame["group"].unique()) == ["000001"]
    assert by_id.loc["000001_female_Asian_45/mask1.jpg", "label"] == "incorrect/male/young"
    assert by_id.loc["000001_female_Asian_45/normal.jpg", "label"] == "not_wear/female/middle"
    assert "1 label(s) changed, 3 image(s) dropped, 1 image(s) kept" in outcome.describe()
    assert "1 row(s) skipped: they name images that are not in this data" in outcome.describe()
    with pytest.raises(PodiumError, match="unknown id 'other_image.jpg'"):
        apply_label_fixes(_samples(), fixes, MASK_TASK)  # without the other source it is a typo
    assert apply_label_fixes(_samples(), fixes, MASK_TASK, strict=False).elsewhere == 1


def test_label_fixes_of_a_plain_task(tmp_path):
    df = pd.DataFrame({"id": [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(3)],
                       "label": ["cat"] * 3 + ["dog"] * 3})
    fixes = tmp_path / "fixes.csv"
    fixes.write_text("id,attribute,new_value,action\ncat/0.png,label,dog,relabel\ndog/2.png,,,drop\n")
    outcome = apply_label_fixes(df, fixes, None)
    assert outcome.frame["label"].tolist() == ["dog", "cat", "cat", "dog", "dog"]
    assert (outcome.changed, outcome.dropped) == (1, 1)
    fixes.write_text("id,attribute,new_value,action\ncat/0.png,label,dgo,\ncat/1.png,label,dog,\n"
                     "cat/1.png,,,drop\ncat/2.png,gender,male,\ncat/2.png,label,dog,remove\n")
    with pytest.raises(PodiumError) as info:
        apply_label_fixes(df, fixes, None)
    msg = str(info.value)
    assert "line 2: value 'dgo' is not a class of this data; allowed: cat, dog (did you mean 'dog'?)" in msg
    assert "line 4:" in msg and "conflicts with line 3" in msg
    assert "line 5: unknown attribute 'gender'; allowed: label" in msg
    assert "line 6: unknown action 'remove'" in msg


def test_label_fixes_weight_images_and_groups(tmp_path):
    fixes = tmp_path / "fixes.csv"
    fixes.write_text(
        "id,attribute,new_value,action\n"
        "000002,,0.5,weight\n"                                       # a whole person at half weight
        "000002_male_Asian_25/mask1.jpg,,0.1,weight\n"                # one of its images: the weights multiply
        "000001_female_Asian_45/normal.jpg,gender,male,\n"            # relabelled and weighted: both apply
        "000001_female_Asian_45/normal.jpg,,0,weight\n"
    )
    outcome = apply_label_fixes(_samples(), fixes, MASK_TASK)
    weights = outcome.frame.set_index("id")["sample_weight"]
    assert weights["000002_male_Asian_25/mask1.jpg"] == pytest.approx(0.05)
    assert weights["000002_male_Asian_25/normal.jpg"] == 0.5
    assert weights["000001_female_Asian_45/normal.jpg"] == 0.0 and weights["000001_female_Asian_45/mask1.jpg"] == 1.0
    assert outcome.frame.set_index("id").loc["000001_female_Asian_45/normal.jpg", "gender"] == "male"
    assert (outcome.changed, outcome.weighted) == (1, 4)
    assert "4 image(s) with a training weight other than 1" in outcome.describe()
    own = _samples().assign(sample_weight=["1", "", "0.5", "1", "1", "2"])  # a data CSV's column: read as text
    fixes.write_text("id,attribute,new_value,action\n000001_female_Asian_45/normal.jpg,,0.5,weight\n")
    both = apply_label_fixes(own, fixes, MASK_TASK)
    assert both.frame["sample_weight"].tolist() == [1.0, 1.0, 0.25, 1.0, 1.0, 2.0] and both.weighted == 2
    assert "sample_weight" not in apply_label_fixes(_samples(), _one_relabel(tmp_path), MASK_TASK).frame
    fixes.write_text("id,attribute,new_value,action\n000002,,-1,weight\n000001,,heavy,weight\n"
                     "000001,,0.5,weight\n000002,,,drop\n")
    with pytest.raises(PodiumError) as info:
        apply_label_fixes(_samples(), fixes, MASK_TASK)
    msg = str(info.value)
    assert "line 2: weight '-1' is not a number >= 0" in msg and "line 3: weight 'heavy'" in msg
    assert "line 5:" in msg and "conflicts with line 2" in msg


def _one_relabel(tmp_path):
    path = tmp_path / "relabel.csv"
    path.write_text("id,attribute,new_value\n000001,gender,male\n")
    return path
