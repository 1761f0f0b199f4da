"""Ordinal heads: exact values in, bins out, edges tuned on validation (model/ordinal.py)."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import fast_overrides

from podium.cli import main
from podium.data.synth import synth_mask_dataset
from podium.errors import PodiumError
from podium.model.ordinal import bin_log_probs, cumulative_probs, fit_cuts, make_spec, nested_cut_gain, ordinal_loss
from podium.schema import load_config
from podium.tasks.attributes import mask_task
from podium.tasks.spec import TaskSpec, ordinal_values, resolve_task


def _logits(probs):
    p = torch.tensor([probs], dtype=torch.float64)
    return torch.log(p / (1 - p))


def test_bins_are_differences_of_cumulative_probabilities():
    # values 0..3: P(v>0)=0.9, P(v>1)=0.6, P(v>2)=0.2
    logits = _logits([0.9, 0.6, 0.2])
    bins = bin_log_probs(logits, 0, torch.tensor([2])).exp()[0]
    assert bins.tolist() == pytest.approx([0.4, 0.6])  # P(v<2), P(v>=2) = P(v>1)
    three = bin_log_probs(logits, 0, torch.tensor([1, 3])).exp()[0]
    assert three.tolist() == pytest.approx([0.1, 0.7, 0.2])
    assert three.sum() == pytest.approx(1.0)
    # edges outside the value range: everything is at least lo, nothing exceeds hi
    assert bin_log_probs(logits, 0, torch.tensor([0])).exp()[0].tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    assert bin_log_probs(logits, 0, torch.tensor([9])).exp()[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-6)


def test_cumulative_probabilities_are_made_monotone():
    q = cumulative_probs(_logits([0.5, 0.8, 0.3]))[0]
    assert q.tolist() == pytest.approx([0.5, 0.5, 0.3])
    bins = bin_log_probs(_logits([0.5, 0.8, 0.3]), 0, torch.tensor([1, 2])).exp()[0]
    assert (bins >= 0).all() and bins.sum() == pytest.approx(1.0, abs=1e-5)


def test_ordinal_loss_asks_value_greater_than_each_step():
    logits = torch.zeros(2, 3)
    values = torch.tensor([0, 2])  # lo = 0: levels [0,0,0] and [1,1,0]
    expected = 3 * torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.tensor([[0.0, 0, 0], [1.0, 1, 0]]))  # summed over the 3 questions, mean over 2 images
    assert ordinal_loss(logits, values, 0) == pytest.approx(float(expected))
    assert ordinal_loss(logits, values, 0, scale=4.0) == pytest.approx(float(expected) / 4)
    good = torch.tensor([[-9.0, -9, -9], [9.0, 9, -9]])
    assert ordinal_loss(good, values, 0) < 1e-3


def test_fit_cuts_finds_the_best_increasing_edges():
    target = (27, 63)
    score = lambda c: -abs(c[0] - target[0]) - abs(c[1] - target[1])  # noqa: E731
    best, value = fit_cuts(score, (30, 60), lo=0, hi=100)
    assert best == target and value == 0
    # edges stay increasing and inside the window
    best, _ = fit_cuts(lambda c: -abs(c[0] - 80) - abs(c[1] - 20), (30, 60), lo=0, hi=100, window=10)
    assert best[0] < best[1] and abs(best[0] - 30) <= 10 and abs(best[1] - 60) <= 10


def test_nested_gain_is_not_positive_when_the_default_is_right():
    rng = np.random.default_rng(0)
    value = rng.integers(0, 100, 400)
    truth = (value >= 50).astype(int)
    score_on = lambda idx, c: float(((value[idx] >= c[0]).astype(int) == truth[idx]).mean())  # noqa: E731
    assert nested_cut_gain(score_on, 400, (50,), 0, 99) <= 1e-9
    shifted = (value >= 60).astype(int)
    score_shift = lambda idx, c: float(((value[idx] >= c[0]).astype(int) == shifted[idx]).mean())  # noqa: E731
    assert nested_cut_gain(score_shift, 400, (50,), 0, 99) > 0.05


def test_exact_values_are_clipped_into_a_fixed_bin():
    spec = TaskSpec(mask_task(), "multihead", None, mask_task().composite_names(), ordinal=("age",))
    frame = pd.DataFrame({"mask": ["wear"] * 3, "gender": ["male"] * 3, "age": [25, 45, 70],
                          "age_bin": [0, 2, 2]})  # a fix moved the 45-year-old to `old`
    assert ordinal_values(frame, spec)[:, 0].tolist() == [25, 60, 70]
    ospec = make_spec(2, np.array([3, 90.4, 20]), (30, 60))
    assert (ospec.lo, ospec.hi, ospec.cuts) == (3, 90, (30, 60)) and len(ospec.priors) == 87
    assert ospec.priors[0] == pytest.approx(2 / 3) and ospec.priors[-1] == pytest.approx(1 / 3)  # > 3, > 89
    assert ospec.scale == pytest.approx(np.std([3, 90, 20]))
    with pytest.raises(PodiumError, match="exact numbers in a column 'age'"):
        ordinal_values(frame.drop(columns="age"), spec)


def test_ordinal_config_is_checked_before_work():
    with pytest.raises(Exception, match="task.ordinal needs task.mode=multihead"):
        load_config(None, ["task.preset=mask", "task.ordinal=[age]"])
    cfg = load_config(None, ["task.preset=mask", "task.mode=multihead", "task.ordinal=[gender]"])
    with pytest.raises(PodiumError, match="not a binned attribute"):
        resolve_task(cfg.task)
    custom = load_config(None, ["task.attributes={gender: [f, m], age: [young, middle, old]}", "task.mode=multihead",
                                "task.bins={age: [30, 60]}", "task.ordinal=[age]"])
    assert resolve_task(custom.task).ordinal == ("age",)


def test_ordinal_head_trains_tunes_and_predicts(tmp_path):
    root = tmp_path / "mask data"
    synth_mask_dataset(root, people=12, seed=1, image_size=(48, 64))
    overrides = fast_overrides(tmp_path) + [f"data.train={root}", "data.format=mask_competition", "task.preset=mask",
                                            "data.val_fraction=0.25", "task.mode=multihead", "task.ordinal=[age]"]
    assert main(["train", *overrides, "--quiet"]) == 0
    run = tmp_path / "runs dir" / "exp"
    cuts = json.loads((run / "ordinal_cuts.json").read_text())["2"]  # age is the third attribute
    assert cuts["default_cuts"] == [30, 60] and len(cuts["tuned_cuts"]) == 2
    assert cuts["val_f1_tuned"] >= cuts["val_f1_default"] and cuts["applied"] == (cuts["nested_gain"] > 0)
    from podium.model.checkpoints import load_module
    from podium.model.engine import Classifier

    module = load_module(run / "best.ckpt")
    fresh = Classifier(**{**module.hparams, "load_pretrained": False})  # a new head starts at the priors
    bias = fresh.model.get_submodule(fresh.model.podium_head).bias
    start = sum(fresh.widths[:2])
    assert torch.allclose(bias[start:start + fresh.widths[2]], fresh.ordinal[2].prior_logits())
    assert module.ordinal[2].lo >= 0 and module.widths[2] == module.ordinal[2].width
    expected = cuts["tuned_cuts"] if cuts["applied"] else [30, 60]
    assert module.ordinal_cuts_2.tolist() == expected
    probs = module(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).exp()
    assert probs.shape == (2, 18) and torch.allclose(probs.sum(1), torch.ones(2), atol=1e-4)
    assert main(["predict", str(run), "--data", str(root), "--out", str(tmp_path / "sub"), "--quiet"]) == 0
    assert len(pd.read_csv(tmp_path / "sub" / "submission.csv")) > 0
