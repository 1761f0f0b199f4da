"""The one splitter: stratified k folds and holdouts, grouped the same way in both."""
import numpy as np
import pandas as pd
import pytest

from podium.data.dataset import holdout_split
from podium.data.splits import group_ids, has_groups, make_folds
from podium.errors import PodiumError


def _frame(n_per_class=(30, 12, 6), groups_of: int | None = None) -> pd.DataFrame:
    labels = np.concatenate([[c] * n for c, n in zip("abc", n_per_class)])
    frame = pd.DataFrame({"id": [f"img{i}" for i in range(len(labels))], "path": "x", "label": labels})
    if groups_of:
        frame["group"] = [f"{lab}-{i // groups_of}" for i, lab in enumerate(labels)]
    return frame


def test_folds_are_stratified_disjoint_and_seeded():
    frame = _frame()
    folds = make_folds(frame, 3, seed=1)
    assert folds.shape == (len(frame),) and set(folds) == {0, 1, 2}  # every row in exactly one fold
    counts = pd.crosstab(frame["label"], folds)
    expected = frame["label"].value_counts().sort_index().to_numpy()[:, None] / 3
    assert np.abs(counts.to_numpy() - expected).max() <= 1  # each class spread evenly
    assert np.array_equal(folds, make_folds(frame, 3, seed=1))
    assert not np.array_equal(folds, make_folds(frame, 3, seed=2))


def test_grouped_folds_never_split_a_group():
    frame = _frame(groups_of=3)
    folds = make_folds(frame, 4, seed=0)
    assert set(folds) == {0, 1, 2, 3}
    assert (pd.Series(folds).groupby(frame["group"]).nunique() == 1).all()
    assert (pd.crosstab(frame["label"], folds).loc["a"] > 0).all()  # the big class is in every fold


def test_too_few_groups_for_the_folds_is_a_user_error():
    frame = _frame((4, 4, 4), groups_of=4)  # 3 groups
    with pytest.raises(PodiumError, match="3 groups"):
        make_folds(frame, 5, seed=0)


def test_empty_group_values_are_groups_of_their_own_in_holdout_and_folds():
    frame = _frame(groups_of=3)
    frame.loc[[0, 1, 40], "group"] = ["", None, " "]
    frame["path"] = frame["id"]
    assert has_groups(frame)
    ids = group_ids(frame)
    assert len({ids[0], ids[1], ids[40]}) == 3 and ids[2] == frame.loc[2, "group"]
    folds = make_folds(frame, 3, seed=0)
    real = frame["group"].astype(str).str.strip().ne("") & frame["group"].notna()
    assert (pd.Series(folds[real.to_numpy()]).groupby(frame.loc[real, "group"].to_numpy()).nunique() == 1).all()
    train, val = holdout_split(frame, 0.25, seed=0)
    named = lambda f: set(f["group"].dropna().astype(str).str.strip()) - {""}
    assert not named(train) & named(val)  # no named group straddles


def test_no_group_column_means_plain_stratified():
    frame = _frame()
    assert not has_groups(frame)
    assert not has_groups(frame.assign(group=""))
