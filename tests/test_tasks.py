"""Multi-attribute tasks end to end on the synthetic mask-competition layout."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import fast_overrides

from podium.cli import main
from podium.data.competition import check_submission
from podium.data.synth import synth_mask_dataset
from podium.errors import PodiumError
from podium.model.engine import combine_log_probs, split_heads
from podium.schema import load_config
from podium.tasks.spec import resolve_task


@pytest.fixture(scope="module")
def mask_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mask data")
    synth_mask_dataset(root, people=12, seed=1, image_size=(48, 64))
    return root


def _mask_overrides(tmp_path, mask_root, *extra):
    return fast_overrides(tmp_path) + [f"data.train={mask_root}", "data.format=mask_competition",
                                       "task.preset=mask", "data.val_fraction=0.25", *extra]


@pytest.mark.parametrize("mode", ["single", "multihead"])
def test_composite_modes_train_and_submit(tmp_path, mask_root, mode):
    assert main(["train", *_mask_overrides(tmp_path, mask_root, f"task.mode={mode}"), "--quiet"]) == 0
    run = tmp_path / "runs dir" / "exp"
    classes = json.loads((run / "classes.json").read_text())["classes"]
    assert len(classes) == 18 and classes[0] == "wear/male/young" and classes[17] == "not_wear/female/old"
    split = pd.read_csv(run / "split.csv", dtype=str)
    assert (split.groupby("group")["split"].nunique() == 1).all()  # no person on both sides
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["val_metrics"]["attributes"]) == {"mask", "gender", "age"}
    assert main(["predict", str(run), "--data", str(mask_root), "--out", str(tmp_path / "sub"), "--quiet"]) == 0
    info = mask_root / "eval" / "info.csv"
    assert check_submission(tmp_path / "sub" / "submission.csv", info) == []
    sub = pd.read_csv(tmp_path / "sub" / "submission.csv")
    assert list(sub["ImageID"]) == list(pd.read_csv(info)["ImageID"])
    assert main(["submission", "check", str(tmp_path / "sub" / "submission.csv"), "--info", str(info)]) == 0


def test_per_attribute_mode(tmp_path, mask_root):
    assert main(["train", *_mask_overrides(tmp_path, mask_root, "task.mode=per_attribute", "task.target=age"),
                 "--quiet"]) == 0
    classes = json.loads((tmp_path / "runs dir" / "exp" / "classes.json").read_text())["classes"]
    assert classes == ["young", "middle", "old"]


def test_label_fixes_and_ambiguous_ages_only_in_training(tmp_path, mask_root, capsys):
    from podium.data.competition import read_mask_train

    frame, _ = read_mask_train(mask_root)
    person = frame["group"].iloc[0]
    fixes = tmp_path / "fixes.csv"
    new_gender = "female" if frame["gender"].iloc[0] == "male" else "male"
    pd.DataFrame({"id": [person], "attribute": ["gender"], "new_value": [new_gender]}).to_csv(fixes, index=False)
    ages = sorted(frame["age"].unique())
    band = f"[[{ages[0]}, {ages[0]}]]"
    assert main(["train", *_mask_overrides(tmp_path, mask_root, f"task.label_fixes={fixes}",
                                           f"task.drop_ambiguous_ages={band}")]) == 0
    out = capsys.readouterr().out
    assert "7 label(s) changed" in out and "dropped" in out
    split = pd.read_csv(tmp_path / "runs dir" / "exp" / "split.csv", dtype=str)
    fixed = split[split["group"] == person]
    assert (fixed["gender"] == new_gender).all()
    young = split[split["age"].astype(int) == ages[0]]
    assert (young["split"] == "val").all()  # dropped from training, kept in validation


def test_heads_compose_to_a_distribution():
    heads = [3, 2, 3]
    raw = torch.randn(5, sum(heads))
    logp = combine_log_probs([chunk.log_softmax(1) for chunk in torch.split(raw, heads, dim=1)])
    assert logp.shape == (5, 18) and torch.allclose(logp.exp().sum(1), torch.ones(5), atol=1e-5)
    target = torch.tensor([0, 7, 17, 9, 4])
    parts = split_heads(raw, target, heads)
    assert [int(d[2]) for _, d in parts] == [2, 1, 2]  # 17 = 2*6 + 1*3 + 2
    expected = sum(logits.log_softmax(1)[torch.arange(5), d] for logits, d in parts)
    assert torch.allclose(logp[torch.arange(5), target], expected, atol=1e-5)


def test_task_config_errors():
    with pytest.raises(PodiumError, match="task.target must name an attribute"):
        resolve_task(load_config(None, ["task.preset=mask", "task.mode=per_attribute", "task.target=hair"]).task)
    with pytest.raises(PodiumError, match="needs attributes"):
        resolve_task(load_config(None, ["task.mode=multihead"]).task)


def test_per_attribute_runs_compose_into_a_submission(tmp_path, mask_root):
    for target in ("mask", "gender", "age"):
        assert main(["train", *_mask_overrides(tmp_path, mask_root, "task.mode=per_attribute", f"task.target={target}",
                                              f"output.name={target}", "output.report=false"), "--quiet"]) == 0
    runs = [str(tmp_path / "runs dir" / t) for t in ("age", "mask", "gender")]  # any order
    assert main(["compose", *runs, "--data", str(mask_root), "--out", str(tmp_path / "composed"), "--quiet"]) == 0
    info = mask_root / "eval" / "info.csv"
    assert check_submission(tmp_path / "composed" / "submission.csv", info) == []
    probs = pd.read_parquet(tmp_path / "composed" / "probabilities.parquet")
    assert probs.shape[1] == 19 and np.allclose(probs.iloc[:, 1:].sum(axis=1), 1.0)
    assert main(["compose", *runs[:2], "--data", str(mask_root), "--quiet"]) == 2


def test_report_has_per_attribute_section(tmp_path, mask_root):
    assert main(["train", *_mask_overrides(tmp_path, mask_root), "--quiet"]) == 0
    html = (tmp_path / "runs dir" / "exp" / "report.html").read_text()
    assert "Per attribute (composite classes)" in html and "wear/incorrect/not_wear" in html
