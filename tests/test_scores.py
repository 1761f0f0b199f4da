"""One macro F1: sklearn's definition, and every command reports the same number for the same predictions."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import fast_overrides
from sklearn.metrics import f1_score
from torchmetrics.classification import MulticlassF1Score

from podium.evaluation.scores import macro_f1, macro_f1_of_labels


@pytest.mark.parametrize("seed", range(20))
def test_equals_sklearn_macro_over_labels_present(seed):
    rng = np.random.default_rng(seed)
    n = 7
    y = rng.integers(0, n, 40)
    pred = rng.integers(0, n, 40)
    y[y == 3] = 0  # class 3 absent from the truth, maybe present in predictions
    pred[pred == 5] = 1
    y[y == 5] = 1  # class 5 absent from both: left out, not counted as 0
    assert macro_f1(y, pred, n) == pytest.approx(f1_score(y, pred, average="macro", zero_division=0))
    tm = MulticlassF1Score(n, average="macro")(torch.as_tensor(pred), torch.as_tensor(y))
    assert macro_f1(y, pred, n) == pytest.approx(float(tm), abs=1e-6)


def test_class_names_and_empty_inputs():
    assert macro_f1_of_labels(["a", "b", "b"], ["a", "b", "a"]) == pytest.approx(
        f1_score(["a", "b", "b"], ["a", "b", "a"], average="macro"))
    assert macro_f1([], [], 3) == 0.0


def _oof_f1(frame: pd.DataFrame, classes: list[str]) -> float:
    y = frame["target"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return macro_f1(y, frame[classes].to_numpy().argmax(1), len(classes))


def test_train_evaluate_cv_and_ensemble_agree(tmp_path, image_folder, monkeypatch):
    """Uneven folds of a 3-class set, one class rare: the same predictions give one F1 everywhere."""
    import podium
    import podium.model.training as training

    monkeypatch.setattr(training, "write_report", lambda *a, **k: None)
    from podium.api import config as make_config  # podium.config: see the rename note in the API

    cfg = make_config(None, *fast_overrides(tmp_path, **{"data.train": str(image_folder), "train.epochs": 2}))
    run = podium.train(cfg, log=lambda *a: None)
    val = run.val_predictions
    f1 = _oof_f1(val, run.classes)
    assert run.summary["val_metrics"]["f1"] == pytest.approx(f1)
    logged = run.metrics.set_index("epoch").loc[run.summary["best_epoch"], "val_f1"]
    assert float(logged) == pytest.approx(f1, abs=1e-6)  # torchmetrics during training, same weights

    split = pd.read_csv(run.dir / "split.csv")
    val_csv = tmp_path / "val.csv"
    split[split["split"] == "val"][["path", "label"]].to_csv(val_csv, index=False)
    scores = run.evaluate(val_csv)
    assert scores.metrics["f1"] == pytest.approx(f1)

    cv = podium.cross_validate(cfg.model_copy(update={"output": cfg.output.model_copy(update={"name": "cv"})}),
                               folds=3, log=lambda *a: None)
    summary = cv.summary
    assert summary["cv_macro_f1"] == pytest.approx(summary["oof_metrics"]["f1"])
    assert summary["cv_macro_f1"] == pytest.approx(_oof_f1(cv.oof, summary["classes"]))
    for row, fold in zip(summary["folds"], cv.folds):
        assert row["macro_f1"] == pytest.approx(fold.summary["val_metrics"]["f1"])

    ens = podium.ensemble([cv], method="soft", out=tmp_path / "ens")
    member = ens.scores.set_index("kind").loc["member", "macro_f1"]
    assert float(np.atleast_1d(member)[0]) == pytest.approx(summary["cv_macro_f1"])
    saved = json.loads((ens.dir / "ensemble.json").read_text())
    assert saved.get("oof_macro_f1", summary["cv_macro_f1"]) == pytest.approx(summary["cv_macro_f1"])
