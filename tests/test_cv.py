"""Cross-validation: folds, OOF gathering, TTA on OOF, biases, ensembles, checkpoint averaging.

One tiny 2-fold CV (3 colour classes, 32x32 images, test_resnet, 2 epochs) is
trained once per module and shared by the tests that read its outputs.
"""
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from podium.errors import PodiumError
from podium.evaluation import cv, ensemble_runs
from podium.evaluation.scores import macro_f1
from podium.rundir import BIASES_FILE, OOF_FILE, TEST_PROBABILITIES_FILE, read_classes, read_folds
from podium.schema import load_config

COLORS = {"blue": (220, 0, 0), "green": (0, 200, 0), "red": (0, 0, 220)}  # BGR for cv2


def make_images(root: Path, per_class: int = 14, labeled: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, bgr in COLORS.items():
        folder = root / name if labeled else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.integers(-30, 30, (32, 32, 3))
            img = np.clip(np.array(bgr)[None, None] + noise, 0, 255).astype(np.uint8)
            cv2.imwrite(str(folder / f"{name}_{i}.png"), img)
    return root


def tiny_overrides(data: Path, runs: Path, name: str = "cv", epochs: int = 2) -> list[str]:
    return [f"data.train={data}", "model.name=test_resnet", "model.pretrained=false", "data.image_size=32",
            f"train.epochs={epochs}", "train.batch_size=8", "train.precision='32'", "data.num_workers=0",
            "output.tensorboard=false", f"output.dir={runs}", f"output.name={name}", "train.accelerator=cpu",
            "train.optimizer=adam", "train.lr=0.01"]


def skip_html_report(monkeypatch) -> None:
    """Each fold is a normal run, which ends with an HTML report + Grad-CAM (tested elsewhere); skipping
    it keeps these tests fast. Only the report is skipped: every file CV reads is still written."""
    import podium.model.training

    if hasattr(podium.model.training, "write_report"):
        monkeypatch.setattr(podium.model.training, "write_report", lambda *a, **k: None)


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cv")
    data, test = make_images(tmp / "train"), make_images(tmp / "test", per_class=2, labeled=False, seed=1)
    cfg = load_config(None, tiny_overrides(data, tmp / "runs"))
    with pytest.MonkeyPatch.context() as mp:
        skip_html_report(mp)
        return cv.run_cv(cfg, folds=2, test_data=test, save_epochs=True, progress=False, log=lambda *a: None)


# ---------------------------------------------------------------- a real (tiny) CV


def test_oof_covers_every_image_exactly_once(cv_run):
    run = cv_run.run_dir
    oof = pd.read_parquet(run / OOF_FILE)
    folds = read_folds(run)
    assert sorted(oof["id"]) == sorted(folds["id"]) and not oof["id"].duplicated().any()
    merged = oof.merge(folds, on="id", suffixes=("", "_assigned"))
    assert (merged["fold"] == merged["fold_assigned"]).all()
    assert (merged["target"] == merged["label"]).all()
    classes = sorted(COLORS)
    y = merged["target"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    summary = cv_run.summary
    assert summary["cv_macro_f1"] == pytest.approx(macro_f1(y, merged[classes].to_numpy().argmax(1), 3))
    assert len(summary["folds"]) == 2


def test_each_fold_is_a_normal_run_validating_on_its_fold(cv_run):
    run = cv_run.run_dir
    folds = read_folds(run)
    for k in range(2):
        split = pd.read_csv(run / f"fold{k}" / "split.csv", dtype=str)
        val_ids = set(split.loc[split["split"] == "val", "id"])
        assert val_ids == set(folds.loc[folds["fold"] == k, "id"])
        assert not val_ids & set(split.loc[split["split"] == "train", "id"])
        assert (run / f"fold{k}" / "config.yaml").is_file()
        assert read_classes(run / f"fold{k}") == sorted(COLORS)


def test_test_probabilities_are_the_fold_average(cv_run):
    import podium
    from podium.rundir import read_cv_meta

    run = cv_run.run_dir
    classes = sorted(COLORS)
    test = read_cv_meta(run)["test_data"]
    per_fold = [podium.predict(run / f"fold{k}", test, out=run.parent / f"fold{k}-test").set_index("id")[classes]
                for k in range(2)]
    avg = pd.read_parquet(run / TEST_PROBABILITIES_FILE).set_index("id")[classes]
    np.testing.assert_allclose(avg.to_numpy(), ((per_fold[0] + per_fold[1].loc[per_fold[0].index]) / 2).loc[avg.index], atol=1e-6)
    submission = pd.read_csv(run / "submission.csv")
    assert len(submission) == 6 and set(submission["label"]) <= set(classes)


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy", ignore=shutil.ignore_patterns("*.ckpt")))


def test_gather_names_missing_and_unfinished_folds(cv_run, tmp_path):
    run = _copy(cv_run.run_dir, tmp_path)
    (run / "fold1" / "summary.json").unlink()
    with pytest.raises(PodiumError, match=r"fold 1 unfinished"):
        cv.gather_cv(run)
    shutil.rmtree(run / "fold0")
    with pytest.raises(PodiumError, match=r"fold 0 missing, fold 1 unfinished"):
        cv.gather_cv(run)


def test_gather_refuses_a_fold_that_does_not_cover_its_images(cv_run, tmp_path):
    run = _copy(cv_run.run_dir, tmp_path)
    path = run / "fold1" / "val_predictions.parquet"
    pd.read_parquet(path).iloc[1:].to_parquet(path)
    with pytest.raises(PodiumError, match="fold 1 .* validated on other images"):
        cv.gather_cv(run)


def test_training_a_done_fold_again_is_refused(cv_run):
    cfg = load_config(cv_run.run_dir / "config.yaml")
    cfg.output.dir, cfg.output.name = str(cv_run.run_dir.parent), cv_run.run_dir.name
    with pytest.raises(PodiumError, match="fold 0 is already trained"):
        cv.run_cv(cfg, folds=2, only_fold=0, progress=False, log=lambda *a: None)
    with pytest.raises(PodiumError, match="holds a 2-fold CV"):
        cv.run_cv(cfg, folds=3, only_fold=0, progress=False, log=lambda *a: None)


def test_tta_with_only_identity_equals_plain_predictions(cv_run):
    result = cv.oof_tta(cv_run.run_dir, ["identity"])
    assert result["macro_f1_tta"] == result["macro_f1_plain"] and result["gain"] == 0
    classes = sorted(COLORS)
    plain = pd.read_parquet(cv_run.run_dir / OOF_FILE).set_index("id")[classes]
    tta = pd.read_parquet(Path(result["out_dir"]) / OOF_FILE).set_index("id")[classes]
    np.testing.assert_allclose(tta.loc[plain.index].to_numpy(), plain.to_numpy(), atol=1e-5)
    with pytest.raises(PodiumError, match="unknown TTA view"):
        cv.oof_tta(cv_run.run_dir, ["hflp"])


def test_bias_tuning_reports_a_nested_gain(cv_run):
    result = cv.tune_biases(cv_run.run_dir, n_splits=3)
    assert len(result["biases"]) == 3 and result["recommended"] == (result["gain"] > 0 and result["p_gain"] >= 0.8)
    assert result["f1_before"] == pytest.approx(cv_run.summary["cv_macro_f1"])
    assert (cv_run.run_dir / BIASES_FILE).is_file() and (cv_run.run_dir / "submission_biased.csv").is_file()


def test_bias_tuning_on_a_single_runs_validation_predictions(cv_run, tmp_path):
    """A plain run (here fold 0, copied out of its cv folder) is fitted on its own validation images."""
    run = tmp_path / "single"
    shutil.copytree(cv_run.run_dir / "fold0", run)
    result = cv.tune_biases(run, n_splits=3)
    val = pd.read_parquet(run / "val_predictions.parquet")
    assert result["fitted_on"].startswith(f"{len(val)} validation images")
    assert len(result["biases"]) == 3 and result["recommended"] == (result["gain"] > 0 and result["p_gain"] >= 0.8)
    classes = result["classes"]
    y = val["target"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    assert result["f1_before"] == pytest.approx(macro_f1(y, val[classes].to_numpy().argmax(1), 3))
    assert (run / BIASES_FILE).is_file()


@pytest.mark.parametrize("method", ["soft", "weighted", "hard"])
def test_ensemble_of_identical_members_equals_the_member(cv_run, tmp_path, method):
    run = cv_run.run_dir
    result = ensemble_runs.ensemble_members([str(run), str(run)], method, out=tmp_path / "ens")
    classes = sorted(COLORS)
    member = pd.read_parquet(run / OOF_FILE).set_index("id")
    ens = pd.read_parquet(tmp_path / "ens" / OOF_FILE).set_index("id").loc[member.index]
    assert (ens["prediction"] == member["prediction"]).all()
    scores = result["scores"]
    assert scores["macro_f1"].nunique() == 1
    assert result["beats_best_member"] is False and "does NOT beat" in result["verdict"]  # nested check: a tie
    test = pd.read_parquet(tmp_path / "ens" / "test_probabilities.parquet").set_index("id")
    member_test = pd.read_parquet(run / TEST_PROBABILITIES_FILE).set_index("id").loc[test.index]
    if method != "hard":  # hard voting returns vote shares, not probabilities
        np.testing.assert_allclose(ens[classes].to_numpy(), member[classes].to_numpy())
        np.testing.assert_allclose(test[classes].to_numpy(), member_test[classes].to_numpy())
    assert (pd.read_csv(tmp_path / "ens" / "submission.csv")["label"].to_numpy()
            == np.asarray(classes)[member_test[classes].to_numpy().argmax(1)]).all()


def test_ensemble_refuses_members_over_different_images(cv_run, tmp_path):
    run = cv_run.run_dir
    with pytest.raises(PodiumError, match="covers different images"):
        ensemble_runs.ensemble_members([str(run), str(run / "fold0")], "soft", out=tmp_path / "ens")
    assert not (tmp_path / "ens").exists()  # nothing written on refusal
    with pytest.raises(PodiumError, match="unknown voting method"):
        ensemble_runs.ensemble_members([str(run)], "median")


def test_average_checkpoints_of_the_last_epochs(cv_run, tmp_path):
    from podium.model.checkpoints import load_module

    fold = cv_run.run_dir / "fold0"
    result = ensemble_runs.average_run_checkpoints(fold, last=2, out=tmp_path / "avg.ckpt")
    assert result["averaged"] == ["epoch000.ckpt", "epoch001.ckpt"]
    assert 0.0 <= result["val_macro_f1_averaged"] <= 1.0
    load_module(tmp_path / "avg.ckpt", sorted(COLORS))  # a loadable checkpoint
    assert len(ensemble_runs.select_epochs(fold, best=1)) == 1
    with pytest.raises(PodiumError, match="cannot average 3"):
        ensemble_runs.select_epochs(fold, last=3)
    bare = tmp_path / "bare"
    shutil.copytree(fold, bare, ignore=shutil.ignore_patterns("epochs"))
    with pytest.raises(PodiumError, match="no per-epoch checkpoints"):
        ensemble_runs.select_epochs(bare, last=2)


def test_multi_attribute_members_vote_per_attribute(tmp_path):
    from podium.evaluation.ensemble import vote_per_attribute
    from podium.tasks.attributes import MASK_TASK

    rng = np.random.default_rng(0)
    classes = MASK_TASK.composite_names()
    ids = [f"img{i}" for i in range(40)]
    target = rng.integers(0, 18, 40)
    frames, arrays = [], []
    for m in range(3):
        probs = rng.dirichlet(np.ones(18), 40)
        arrays.append(probs)
        frame = pd.DataFrame(probs, columns=classes)
        frame.insert(0, "target", np.asarray(classes)[target])
        frame.insert(0, "id", ids)
        path = tmp_path / f"m{m}.parquet"
        frame.to_parquet(path)
        frames.append(str(path))
    result = ensemble_runs.ensemble_members(frames, "hard", out=tmp_path / "ens")
    assert result["voting"] == "per attribute, then composed"
    expected = vote_per_attribute([[MASK_TASK.marginal_probs(a, n) for n in MASK_TASK.names] for a in arrays], "hard")
    oof = pd.read_parquet(tmp_path / "ens" / "oof_predictions.parquet")
    np.testing.assert_allclose(oof[classes].to_numpy(), expected, atol=1e-9)
