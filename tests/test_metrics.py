import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from podium.evaluation.metrics import create_metrics, per_class_table, save_classification_report, summary_metrics


def test_summary_matches_sklearn_and_torchmetrics():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet(np.ones(4), 60)  # class 3 never occurs in y
    out = summary_metrics(y, probs)
    assert out["f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"))
    tm = create_metrics(4)
    tm.update(torch.tensor(probs, dtype=torch.float32), torch.tensor(y))
    assert float(tm.compute()["val_f1"]) == pytest.approx(out["f1"], abs=1e-6)
    assert out["acc"] == pytest.approx((probs.argmax(1) == y).mean())


def test_absent_class_does_not_drag_macro_f1_down():
    y = np.array([0, 0, 1, 1])
    probs = np.eye(3)[[0, 0, 1, 1]]
    assert summary_metrics(y, probs)["f1"] == 1.0


def test_report_files(tmp_path):
    y = np.array([0, 1, 2, 2])
    probs = np.eye(3)[[0, 2, 2, 2]]
    save_classification_report(tmp_path, y, probs, ["a", "b", "c"])
    for name in ("per_class.csv", "confusion_matrix.csv", "confusion_matrix.png", "metrics.json"):
        assert (tmp_path / name).exists()
    table = per_class_table(y, probs, ["a", "b", "c"])
    assert table.set_index("class").loc["b", "recall"] == 0 and table["support"].tolist() == [1, 1, 2]
