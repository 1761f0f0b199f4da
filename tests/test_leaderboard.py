"""`podium runs`: the leaderboard of run folders, `compare`, and the report headline."""
from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest
import yaml
from conftest import fast_overrides, make_folder

import podium
from podium.cli import main
from podium.errors import PodiumError
from podium.rundir import write_status
from podium.schema import load_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny finished run (trained once for the module)."""
    from podium.model.training import train

    tmp = tmp_path_factory.mktemp("leaderboard")
    cfg = load_config(None, fast_overrides(tmp, **{"data.train": make_folder(tmp / "train"),
                                                   "output.report": "false"}))
    return train(cfg, progress=False, log=lambda *a: None)


@pytest.fixture
def runs_dir(trained, tmp_path):
    """A runs/ folder: the finished run, a copy with another lr and worse per-class F1, an
    interrupted and a failed run, a gathered cv folder and an ensemble."""
    root = tmp_path / "runs"
    shutil.copytree(trained.run_dir, root / "base")
    other = shutil.copytree(trained.run_dir, root / "lr-0.2")
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["train"]["lr"] = 0.2
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    per_class = pd.read_csv(other / "per_class.csv")
    per_class.loc[0, "f1"] = per_class.loc[0, "f1"] - 0.25
    per_class.to_csv(other / "per_class.csv", index=False)
    stopped = shutil.copytree(trained.run_dir, root / "stopped")
    (stopped / "summary.json").unlink()
    write_status(stopped, "interrupted", epoch=0, signal="SIGINT")
    broken = root / "broken"
    broken.mkdir()
    for name in ("config.yaml", "classes.json"):
        shutil.copy(trained.run_dir / name, broken / name)
    write_status(broken, "failed", error="CUDA out of memory")
    cv = root / "cv"
    cv.mkdir()
    shutil.copy(trained.run_dir / "config.yaml", cv / "config.yaml")
    (cv / "cv.json").write_text(json.dumps({"k": 2, "classes": ["cat", "dog", "fox"]}))
    (cv / "cv_summary.json").write_text(json.dumps({"cv_macro_f1": 0.91, "cv_accuracy": 0.9,
                                                    "fold_macro_f1_mean": 0.905, "total_fold_time_s": 75.5}))
    ens = root / "ensemble"
    ens.mkdir()
    (ens / "ensemble.json").write_text(json.dumps({"method": "soft", "members": ["cv", "base"],
                                                   "classes": ["cat", "dog", "fox"], "oof_macro_f1": 0.95}))
    study = root / "lr-study"  # a `podium tune` study: its trials' folders are not listed, the study is
    shutil.copytree(trained.run_dir, study / "trial_0")
    (study / "study.json").write_text(json.dumps({"objective": "val_f1", "trials_target": 2, "best_value": 0.99,
                                                  "counts": {"COMPLETE": 1}}))
    return root


def test_runs_lists_every_kind_with_its_status(runs_dir, trained):
    table = podium.runs(runs_dir)
    status = dict(zip(table["name"], table["status"]))
    assert status == {"base": "finished", "lr-0.2": "finished", "stopped": "interrupted", "broken": "failed",
                      "cv": "finished", "ensemble": "finished", "lr-study": "incomplete"}
    # ranked within each score kind, never across kinds: the study's 0.99 (best of its trials) is last
    kinds = dict(zip(table["name"], table["score_kind"]))
    assert kinds == {"ensemble": "ensemble OOF", "cv": "OOF", "base": "holdout", "lr-0.2": "holdout",
                     "stopped": "holdout", "broken": "holdout", "lr-study": "tune"}
    assert list(table["name"][:2]) == ["ensemble", "cv"] and table["name"].iloc[-1] == "lr-study"
    holdout = table[table["score_kind"] == "holdout"]["score"]
    assert list(holdout.dropna()) == sorted(holdout.dropna(), reverse=True)
    base = table.set_index("name").loc["base"]
    assert base["val_f1"] == pytest.approx(trained.summary["val_metrics"]["f1"])
    assert (base["model"], base["image_size"], base["epochs"]) == ("test_efficientnet", "32", 1)
    assert base["wall_time_s"] == pytest.approx(trained.summary["wall_time_s"])
    stopped = table.set_index("name").loc["stopped"]
    assert stopped["best_epoch"] == 0 and stopped["val_f1"] is not None, "read from metrics.csv"
    assert set(podium.runs(runs_dir, where="train.lr=0.2")["name"]) == {"lr-0.2"}
    assert set(podium.runs(runs_dir, where=["status=failed"])["name"]) == {"broken"}
    with pytest.raises(PodiumError, match="Did you mean 'model.name'"):
        podium.runs(runs_dir, where="model.nme=x")


def test_cli_runs_says_the_score_kinds_are_not_comparable(runs_dir, capsys):
    assert main(["runs", str(runs_dir)]) == 0
    out = capsys.readouterr().out
    assert "score kind" in out and "not comparable" in out
    assert all(kind in out for kind in ("ensemble OOF", "holdout", "tune"))


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"podium {podium.__version__}"


def test_cli_runs_json_and_compare_show_the_changed_key(runs_dir, capsys):
    assert main(["runs", str(runs_dir), "--format", "json", "--where", "model.name=test_efficientnet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["name"] for r in rows} == {"base", "lr-0.2", "stopped", "broken", "cv"}
    assert main(["runs", "compare", str(runs_dir / "base"), str(runs_dir / "lr-0.2"), "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"] == [{"key": "train.lr", "base": "0.05", "lr-0.2": "0.2"}]
    deltas = [r["delta lr-0.2 - base"] for r in result["per_class"]]
    assert deltas[0] == pytest.approx(-0.25) and deltas[1:] == [0.0, 0.0]
    assert main(["runs", "compare", str(runs_dir / "base"), str(runs_dir / "lr-0.2")]) == 0
    out = capsys.readouterr().out
    assert "train.lr" in out and "-0.250" in out
    assert main(["runs", "compare", str(runs_dir / "base")]) == 2


def test_report_opens_with_the_rounded_headline(trained):
    from podium.reports.report import build_run_report

    html = build_run_report(trained.run_dir).read_text()
    summary = html[html.index("Summary</h2>"):html.index("Training curves</h2>")]
    f1 = trained.summary["val_metrics"]["f1"]
    # counted from 1 beside "1 of 1" epochs (summary.json keeps Lightning's 0-based index)
    assert f"{f1:.3f} (epoch {trained.summary['best_epoch'] + 1})" in summary
    assert "test_efficientnet" in summary and "1 of 1" in summary and " s<" in summary
    assert repr(trained.summary["val_metrics"]["acc"]) not in summary, "no 16-digit floats"
    assert "{" not in summary.split("Resolved config")[0], "no dicts dumped as JSON"
