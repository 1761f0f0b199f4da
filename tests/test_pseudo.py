"""Pseudo-labelling: per-class thresholds chosen on OOF for a target precision, rounds as normal
cv runs whose validation folds and OOF never hold a pseudo-labelled image, per-fold labels from
the fold model that never saw the fold, groups of the validation part kept out, bad input."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import colour_images

from podium.curation.pseudo import class_thresholds, select
from podium.errors import PodiumError


def test_thresholds_keep_each_class_at_the_target_precision():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    confidence = rng.uniform(0.34, 1.0, 600)
    right = rng.random(600) < confidence  # the more confident, the more often right
    predicted = np.where(right, y, (y + 1) % 3)
    predicted[y == 2] = 0  # class 2 is never predicted right: it must get no pseudo-labels
    probs = np.full((600, 3), 0.0)
    probs[np.arange(600), predicted] = confidence
    probs[np.arange(600), (predicted + 1) % 3] = 1 - confidence
    table = class_thresholds(probs, y, ["a", "b", "c"], precision=0.9)
    for k, row in table.iterrows():
        chosen = (probs.argmax(1) == k) & (probs.max(1) >= row["threshold"])
        if np.isfinite(row["threshold"]):
            assert chosen.sum() >= 5 and (y[chosen] == k).mean() >= 0.9
            looser = (probs.argmax(1) == k) & (probs.max(1) >= row["threshold"] - 0.05)
            assert (y[looser] == k).mean() < 0.9 or looser.sum() == chosen.sum()  # the lowest such threshold
    assert table.loc[2, "threshold"] == np.inf and not select(probs[predicted == 2], table).any()


def test_pseudo_images_whose_group_is_in_validation_are_left_out(tmp_path):
    from podium.data.samples import PreparedData
    from podium.model.soft_targets import pseudo_rows
    from podium.schema import load_config

    table = pd.DataFrame({"path": [f"/x/{i}.png" for i in range(6)], "group": ["p1", "p1", "p2", "p3", "p3", "p4"],
                          "fold": [-1] * 6, "a": [0.9, 0.8, 0.1, 0.2, 0.3, 0.6], "b": [0.1, 0.2, 0.9, 0.8, 0.7, 0.4]})
    table.to_parquet(tmp_path / "labels.parquet")
    cfg = load_config(None, [f"data.pseudo_labels={tmp_path / 'labels.parquet'}", "data.pseudo_mode=hard"])
    prepared = PreparedData(pd.DataFrame({"path": [], "label": [], "group": []}),
                            pd.DataFrame({"path": ["/v.png"], "label": ["a"], "group": ["p3"]}), ["a", "b"])
    frame, targets = pseudo_rows(cfg, prepared, log=lambda *a: None)
    assert frame["group"].tolist() == ["p1", "p1", "p2", "p4"] and frame["label"].tolist() == ["a", "a", "b", "a"]
    assert (targets.hard == 1).all() and (targets.soft == 0).all() and targets.probs[2].tolist() == [0.0, 1.0]
    table.rename(columns={"b": "zebra"}).to_parquet(tmp_path / "other.parquet")
    cfg = load_config(None, [f"data.pseudo_labels={tmp_path / 'other.parquet'}"])
    with pytest.raises(PodiumError, match="one probability column per class of the data .* another class set"):
        pseudo_rows(cfg, prepared, log=lambda *a: None)


@pytest.fixture(scope="module")
def round_one(noisy_cv, tmp_path_factory):
    import podium

    teacher, _ = noisy_cv
    pool = tmp_path_factory.mktemp("pool")
    for person in ("p1", "p2", "p3"):
        colour_images(pool / person, per_class=2, seed=int(person[1]) + 10, labeled=False)
    return teacher, pool, podium.pseudo_label(teacher, pool, rounds=1, precision=0.8, group_by_folder=True,
                                              overrides=["train.epochs=1"], log=lambda *a: None)


def test_a_round_is_a_cv_run_that_never_validates_on_pseudo_labels(round_one):
    from podium.rundir import fold_dir, read_folds, read_split, read_table

    teacher, _, result = round_one
    entry = result.record["rounds"][0]
    model = result.rounds[0]
    assert entry["n_pseudo"] > 0 and entry["per_fold_labels"] and entry["score"] is not None
    labels = read_table(entry["labels"], "pseudo-labels")
    assert set(labels["fold"]) <= {-1, 0, 1, 2} and set(labels["group"]) <= {"p1", "p2", "p3"}
    assert not read_folds(model)["id"].str.startswith("pseudo/").any()  # folds, hence the OOF, hold no pseudo image
    assert not read_table(model / "oof_predictions.parquet", "oof")["id"].str.startswith("pseudo/").any()
    assert read_folds(model)[["id", "fold"]].equals(read_folds(teacher)[["id", "fold"]])  # the teacher's folds
    for f in range(3):
        split = read_split(fold_dir(model, f))
        pseudo = split[split["origin"] == "pseudo"]
        assert len(pseudo) and (pseudo["split"] == "train").all()
        soft = read_table(fold_dir(model, f) / "soft_targets.parquet", "soft").set_index("id")
        mine = labels[labels["fold"] == f].assign(id=lambda t: "pseudo/" + t["id"]).set_index("id")
        classes = [c for c in mine.columns if c not in ("path", "group", "fold")]
        assert set(pseudo["id"]) == set(mine.index)  # fold f learns the labels of the teacher's fold-f model
        assert np.allclose(soft.loc[mine.index, classes].to_numpy(), mine[classes].to_numpy(), atol=1e-5)


def test_bad_pseudo_label_input_gets_one_message(noisy_cv, tmp_path, capsys):
    from podium.cli import main

    teacher, _ = noisy_cv
    paths = colour_images(tmp_path / "pool", per_class=1)
    pd.DataFrame({"path": [str(p) for p in paths], "label": ["zebra", "lion", "cat"]}).to_csv(tmp_path / "pool.csv",
                                                                                        index=False)
    assert main(["pseudo-label", str(teacher), "--unlabeled", str(tmp_path / "pool.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "carry labels of another class set: column 'label' has lion, zebra" in err
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text((teacher / "config.yaml").read_text())
    (tmp_path / "run" / "classes.json").write_text('{"classes": ["cat", "dog", "fox"]}')
    assert main(["pseudo-label", str(tmp_path / "run"), "--unlabeled", str(tmp_path / "pool")]) == 2
    assert "has no validation predictions: the run has not finished" in capsys.readouterr().err


def test_rounds_from_a_single_run_with_hard_labels_keep_validation_clean(noisy_cv, tmp_path):
    import podium
    from podium.rundir import SOFT_TARGETS_FILE, read_config, read_split, read_table

    teacher, _ = noisy_cv
    pool = tmp_path / "pool"
    colour_images(pool, per_class=3, seed=21, labeled=False)
    result = podium.pseudo_label(teacher / "fold0", pool, rounds=2, precision=0.8, mode="hard", out=tmp_path / "ps",
                                 overrides=["data.val_fraction=0.5"], log=lambda *a: None)  # 5+ per class to judge
    first, second = result.record["rounds"]
    assert result.dir == tmp_path / "ps" and second["teacher"] == first["model"]  # round 2 learns from round 1
    assert first["teacher"] == str(teacher / "fold0") and not first["per_fold_labels"]
    for entry in (first, second):
        model = Path(entry["model"])
        cfg = read_config(model)
        assert cfg.data.pseudo_mode == "hard" and cfg.data.pseudo_labels == entry["labels"]
        split = read_split(model)
        pseudo = split[split["origin"].fillna("") == "pseudo"]
        assert len(pseudo) == entry["n_pseudo"] > 0 and (pseudo["split"] == "train").all()
        assert not split.loc[split["split"] == "val", "id"].str.startswith("pseudo/").any()
        soft = read_table(model / SOFT_TARGETS_FILE, "soft").set_index("id").loc[pseudo["id"]]
        probs = soft[podium.load_run(model).classes].to_numpy()
        assert (soft["hard"] == 1).all() and (soft["soft"] == 0).all() and set(np.unique(probs)) == {0.0, 1.0}
        labels = read_table(entry["labels"], "pseudo-labels")
        assert set(labels["fold"]) == {-1} and len(labels) == entry["n_pseudo"]  # one set: the teacher is a run


def test_a_model_without_honest_predictions_or_a_pool_of_another_task_is_refused(noisy_cv, tmp_path):
    import podium
    from podium.model.soft_targets import check_unlabeled_labels
    from podium.schema import load_config

    teacher, _ = noisy_cv
    cv = tmp_path / "cv"
    cv.mkdir()
    for name in ("config.yaml", "cv.json"):
        (cv / name).write_text((teacher / name).read_text())
    with pytest.raises(PodiumError, match=r"has no out-of-fold predictions \(oof_predictions.parquet\) .* cv-gather"):
        podium.pseudo_label(cv, tmp_path, log=lambda *a: None)
    assert not (tmp_path / "cv-pseudo").exists()  # refused before any work
    csv = tmp_path / "pool.csv"
    pd.DataFrame({"path": ["a.png", "b.png"], "gender": ["female", "robot"], "age": ["young", ""]}).to_csv(csv,
                                                                                                         index=False)
    cfg = load_config(None, ['task.attributes={"gender": ["female", "male"], "age": ["young", "old"]}'])
    with pytest.raises(PodiumError, match="column 'gender' has robot, not among the model's female, male"):
        check_unlabeled_labels(csv, cfg, ["female/young", "female/old", "male/young", "male/old"])
    binned = load_config(None, ['task.attributes={"gender": ["female", "robot"], "age": ["young", "old"]}',
                                "task.bins={age: [30]}"])
    check_unlabeled_labels(csv, binned, ["female/young", "female/old", "robot/young", "robot/old"])  # fine


def test_the_class_cap_keeps_the_labelled_proportions_most_confident_first():
    from podium.curation.pseudo import keep_proportions

    rng = np.random.default_rng(2)
    predicted = np.array([0] * 5 + [1] * 200 + [2] * 10)
    confidence = rng.uniform(0.5, 1.0, len(predicted))
    probs = np.zeros((len(predicted), 3))
    probs[np.arange(len(predicted)), predicted] = confidence
    probs[np.arange(len(predicted)), (predicted + 1) % 3] = 1 - confidence
    chosen = np.ones(len(predicted), bool)
    share = np.array([0.1, 0.6, 0.3])
    kept, limiting = keep_proportions(probs, chosen, share)
    # class 2 is scarcest (10 eligible / 0.3 = 33 images in all): 3, 20 and 10 of them
    assert limiting == 2 and np.bincount(predicted[kept], minlength=3).tolist() == [3, 20, 10]
    for k in range(3):
        mine = predicted == k
        assert confidence[mine & kept].min() >= confidence[mine & ~kept].max(initial=0)  # the most confident
    none_rare = chosen & (predicted != 0)
    kept, limiting = keep_proportions(probs, none_rare, share)
    assert limiting == 0 and not kept.any()  # a class with no eligible image leaves none of the others
    kept, _ = keep_proportions(probs, chosen, np.array([0.0, 0.6, 0.4]))
    assert not kept[predicted == 0].any() and kept[predicted == 1].sum() == 15  # 10 / 0.4 = 25 in all


def _planted_round(tmp_path, monkeypatch, pool_predicted: np.ndarray, balance: bool):
    """One round of `pseudo_label` on planted OOF (labelled: 10% a, 60% b, 30% c) and planted pool
    predictions, training replaced by a recorder: what the round would train on."""
    import podium.curation.pseudo as pseudo

    classes = ["a", "b", "c"]
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], [20, 120, 60])
    oof = np.eye(3)[y] * 0.8 + 0.1
    table = pd.DataFrame(oof, columns=classes).assign(target=np.asarray(classes)[y])
    pool = pd.DataFrame({"id": [f"u{i}" for i in range(len(pool_predicted))],
                         "path": [f"/u/{i}.png" for i in range(len(pool_predicted))]})
    probs = np.eye(3)[pool_predicted] * rng.uniform(0.9, 0.95, (len(pool_predicted), 1))
    probs = probs + (1 - probs.sum(1, keepdims=True)) / 3
    predicted = pd.concat([pool.assign(fold=-1), pd.DataFrame(probs, columns=classes)], axis=1)
    trained = []
    monkeypatch.setattr(pseudo, "honest_predictions", lambda model: (table, classes, "out-of-fold predictions"))
    monkeypatch.setattr(pseudo, "predictions", lambda *a, **k: predicted)
    monkeypatch.setattr(pseudo, "_train_round", lambda cfg, *a: trained.append(cfg) or tmp_path / "model")
    monkeypatch.setattr(pseudo, "_score", lambda model: 0.5)
    from podium.schema import load_config

    record = {}
    for r in (1,):
        record = pseudo._round(r, tmp_path / "teacher", pool, classes, load_config(None, []), tmp_path / "out",
                               0.9, "soft", None, False, balance, False, lambda *a: None)
    return record, trained


def test_a_round_keeps_the_labelled_class_proportions_or_stops_saying_why(tmp_path, monkeypatch):
    from podium.rundir import read_table

    # the pool's confident predictions: 4 a, 100 b, 30 c -> balanced: a limits (4 / 0.1 = 40): 4, 24, 12
    entry, trained = _planted_round(tmp_path, monkeypatch, np.repeat([0, 1, 2], [4, 100, 30]), balance=True)
    assert entry["per_class"] == {"a": 4, "b": 24, "c": 12} and entry["balanced_by"] == "a" and len(trained) == 1
    assert entry["eligible"] == {"a": 4, "b": 100, "c": 30}
    assert len(read_table(entry["labels"], "pseudo-labels")) == 40
    unbalanced, _ = _planted_round(tmp_path / "u", monkeypatch, np.repeat([0, 1, 2], [4, 100, 30]), balance=False)
    assert unbalanced["per_class"] == {"a": 4, "b": 100, "c": 30}
    # no confident image of the rare class: nothing keeps the proportions, the round is not trained
    entry, trained = _planted_round(tmp_path / "s", monkeypatch, np.repeat([1, 2], [100, 30]), balance=True)
    assert entry["model"] is None and not trained
    assert "'a' has none that precise" in entry["stopped"] and "balance=False" in entry["stopped"]
