"""The recipe study runner on tiny generated data: two recipes x one seed, then a resume."""
import json
from pathlib import Path

import pandas as pd
import pytest
from conftest import make_folder

study = pytest.importorskip("benchmarks.recipes.study")

FAST = ["model.name=test_efficientnet", "model.pretrained=false", "model.pretrained_path=null",
        "train.accelerator=cpu", "train.devices=1", "train.precision=32", "data.num_workers=0",
        "train.batch_size=8", "train.lr=0.05"]


def _tiny_task(tmp_path):
    train = make_folder(tmp_path / "tiny" / "train", {"cat": 10, "dog": 10, "fox": 4})
    val = make_folder(tmp_path / "tiny" / "val", {"cat": 3, "dog": 3, "fox": 3}, seed=5)
    return study.Task("tiny", 32, 1, lambda work: (study._folder_table(train), study._folder_table(val)))


def test_recipes_expand_bases_and_placeholders():
    ref = study.recipe_overrides("ref_nesterov", 64, 9)
    assert ref["train.optimizer"] == "sgd" and ref["augment.preset"] == "reference"
    assert study.recipe_overrides("drw", 64, 9)["train.drw_epochs"] == 3
    assert study.recipe_overrides("timm", 48, 9)["augment.train_ops"][0]["size"] == 48
    with pytest.raises(SystemExit, match="unknown recipe"):
        study.recipe_overrides("nope", 64, 9)


def test_every_recipe_is_a_valid_podium_config():
    from podium.schema import load_config

    for name in study.RECIPES:
        overrides = study.recipe_overrides(name, 64, 6)
        task = list(study.UTK_MULTIHEAD) if "task.ordinal" in overrides else []  # multihead-only recipes
        load_config(None, [f"{k}={json.dumps(v)}" for k, v in overrides.items()] + task)


def test_two_recipes_one_seed_then_resume_without_rerunning(tmp_path, monkeypatch):
    monkeypatch.setitem(study.TASKS, "tiny", _tiny_task(tmp_path))
    results_csv = tmp_path / "out" / "results.csv"
    kw = dict(work=tmp_path / "work", results_csv=results_csv, extra=FAST, log=lambda *a: None,
              runner=study.podium_in_process)
    first = study.run_study(["tiny"], ["podium", "course"], [0], **kw)
    assert sorted(first["recipe"]) == ["course", "podium"]
    assert first["macro_f1"].between(0, 1).all() and (first["epochs"] == 1).all()
    assert (first["rare_class"] == "fox").all() and first["last_f1"].between(0, 1).all()
    partial = first.drop(columns=["last_f1"])
    assert study.fill_derived(partial)["last_f1"].tolist() == pytest.approx(first["last_f1"].tolist())
    calls = []
    monkeypatch.setattr(study, "run_cell", lambda *a, **k: calls.append(a) or pytest.fail("re-ran a finished cell"))
    again = study.run_study(["tiny"], ["podium", "course"], [0], **kw)
    assert not calls and len(again) == 2
    out = study.write_report(pd.read_csv(results_csv), tmp_path / "out", baseline="course")
    text = out.read_text()
    assert "### tiny (e1-s32" in text and "**" in text and "(1 seed)" in text
    assert (tmp_path / "out" / "results.png").stat().st_size > 0


def test_paired_difference_interval():
    rows = pd.DataFrame({"recipe": ["a"] * 3 + ["b"] * 3, "seed": [0, 1, 2] * 2,
                         "macro_f1": [0.80, 0.82, 0.84, 0.70, 0.73, 0.73]})
    mean, lo, hi, n = study.paired_difference(rows, "a", "b")
    assert n == 3 and mean == pytest.approx(0.1, abs=1e-9) and lo < mean < hi


def test_reference_loop_cell_is_scored_like_a_podium_run(tmp_path, monkeypatch):
    """tv_loop trains outside podium and still yields a study row (summary, metrics, val predictions)."""
    monkeypatch.setitem(study.TASKS, "tiny", _tiny_task(tmp_path))
    monkeypatch.setattr(study, "WEIGHTS", tmp_path / "absent.pth")  # random init: no download, no shared/
    from benchmarks.recipes import tv_reference

    monkeypatch.setitem(tv_reference.DEFAULTS, "workers", 0)
    monkeypatch.setitem(tv_reference.DEFAULTS, "batch_size", 8)
    rows = study.run_study(["tiny"], ["tv_loop"], [0], work=tmp_path / "work", results_csv=tmp_path / "r.csv",
                           log=lambda *a: None)
    row = rows.iloc[0]
    assert row["recipe"] == "tv_loop" and row["epochs"] == 1 and 0 <= row["macro_f1"] <= 1
    run = Path(row["run_dir"])
    assert json.loads((run / "summary.json").read_text())["classes"] == ["cat", "dog", "fox"]
    assert row["last_f1"] == pytest.approx(row["macro_f1"])  # the loop evaluates its last epoch
