"""podium auto: the plan fits the budget, members are cv runs, resume reuses finished folds,
the ensemble is refused when it does not beat the best member, composite tasks go through."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from podium.autopilot.pipeline import _choose_final, _State
from podium.autopilot.plan import PLAN_SHARE, Candidate, Preset, cost, make_plan
from podium.errors import PodiumError
from tests.conftest import colour_images

CANDIDATES = [Candidate("tv/mobilenet_v2", 64, 20.0, 5.0), Candidate("tv/mobilenet_v2", 96, 45.0, 11.0),
              Candidate("resnet18", 64, 30.0, 8.0), Candidate("resnet18", 96, 70.0, 17.0)]


@pytest.mark.parametrize("preset", ["fast", "medium", "best"])
@pytest.mark.parametrize("budget", [600, 1800, 7200])
def test_plan_fits_the_budget_and_grows_with_it(preset, budget):
    plan = make_plan(CANDIDATES, budget, preset)
    assert plan.planned_s == pytest.approx(cost(plan.members, plan.folds, plan.epochs))
    assert plan.planned_s <= budget * PLAN_SHARE
    bigger = make_plan(CANDIDATES, budget * 4, preset)
    assert (bigger.epochs * len(bigger.members) * bigger.folds) >= plan.epochs * len(plan.members) * plan.folds
    assert f"{plan.folds} folds x {len(plan.members)} member(s)" in plan.describe()


def test_plan_members_are_diverse_and_budget_too_small_names_the_minimum():
    plan = make_plan(CANDIDATES, 7200, "best")
    assert len(plan.members) == 3 and len({m.model for m in plan.members[:2]}) == 2
    with pytest.raises(PodiumError, match=r"too small.*needs \d+s.*--time \d+m"):
        make_plan(CANDIDATES, 30, "medium")
    late = make_plan(CANDIDATES, 1800, "medium", spent_s=600)  # the measuring already took 10 minutes
    full = make_plan(CANDIDATES, 1800, "medium")
    assert late.planned_s <= 600 + 1200 * PLAN_SHARE
    assert late.folds * late.epochs * len(late.members) < full.folds * full.epochs * len(full.members)
    with pytest.raises(PodiumError, match=r"measuring the candidates took 590s.*in all"):
        make_plan(CANDIDATES, 600, "medium", spent_s=590)


def _fake_measure(epoch_s: float):
    def measure(cfg, names, sizes, n_images, n_classes):
        return [Candidate(n, s, epoch_s, epoch_s / 4) for n in names for s in sizes]
    return measure


TINY = Preset("tiny", ((2, 2),), 2, 2, (32,), ("test_resnet", "test_efficientnet"))


def _base(tmp_path: Path) -> list[str]:
    return ["model.pretrained=false", "data.num_workers=0", "train.batch_size=8", "train.precision='32'",
            "train.accelerator=cpu", "train.devices=1", "train.optimizer=adam", "train.lr=0.01",
            "output.tensorboard=false", "output.report=false", f"output.dir={tmp_path / 'runs'}"]


def test_auto_resumes_without_retraining_and_refuses_a_useless_ensemble(tmp_path, monkeypatch):
    import podium
    import podium.evaluation.cv as cv

    colour_images(tmp_path / "train", per_class=6)
    colour_images(tmp_path / "test", per_class=2, seed=5, labeled=False)
    real_run_cv, calls = cv.run_cv, []

    def flaky_run_cv(cfg, **kw):
        calls.append((cfg.output.name, kw["only_fold"]))
        if len(calls) == 3:  # killed during the second member's first fold
            raise KeyboardInterrupt
        return real_run_cv(cfg, **kw)

    monkeypatch.setattr(cv, "run_cv", flaky_run_cv)
    args = dict(time="10m", preset=TINY, test=tmp_path / "test", out=tmp_path / "auto", overrides=_base(tmp_path),
                models=["test_resnet", "test_efficientnet"], sizes=[32], export=False, log=lambda *a: None,
                measure=_fake_measure(2.0))
    with pytest.raises(KeyboardInterrupt):
        podium.auto(tmp_path / "train", **args)
    state = json.loads((tmp_path / "auto" / "auto_state.json").read_text())
    assert state["plan"]["folds"] == 2 and state["plan"]["epochs"] == 2 and len(state["plan"]["members"]) == 2
    first = tmp_path / "auto" / "members" / "m0-test_resnet-32"
    ckpt = next((first / "fold0").rglob("*.ckpt"))
    stamp = ckpt.stat().st_mtime_ns
    calls.clear()
    r = podium.auto(tmp_path / "train", **args)
    assert [f for _, f in calls] == [0, 1] and all(n.startswith("m1-") for n, _ in calls)  # only the unfinished member
    assert ckpt.stat().st_mtime_ns == stamp
    s = r.summary
    assert s["spent_s"] > state["spent_s"] > 0  # the first attempt's time counts
    beats = s["final"]["ensemble_record"]["beats_best_member"]
    assert s["final"]["kind"] == ("ensemble" if beats else "member")  # kept exactly when the nested split says so
    sub = pd.read_csv(s["submission"])
    assert len(sub) == 6
    assert (r.dir / "auto.json").is_file() and len(r.oof) == 18
    cfg0 = (first / "fold0" / "config.yaml").read_text()
    assert "max_time" in cfg0 and "epochs: 2" in cfg0  # the plan's choices are in each member's resolved config
    with pytest.raises(PodiumError, match="other arguments"):
        podium.auto(tmp_path / "train", **{**args, "time": "20m"})

    # a member and its exact copy: the ensemble cannot beat the best member on the nested split -> refused
    copy = tmp_path / "auto" / "members" / "copy"
    shutil.copytree(first, copy)
    m0 = next(m for m in s["members"] if m["name"] == first.name)
    (tmp_path / "other").mkdir()
    final = _choose_final(tmp_path / "other", [m0, {**m0, "name": "copy", "dir": str(copy)}],
                          _State(tmp_path / "other", {}, time.monotonic), tmp_path / "test", lambda *a: None)
    assert final["kind"] == "member" and final["ensemble"].startswith("refused")
    assert final["ensemble_record"]["nested"]["gain"] <= 0


def test_auto_refusals_leave_nothing(tmp_path):
    import podium

    colour_images(tmp_path / "train", per_class=4)
    common = dict(out=tmp_path / "auto", overrides=_base(tmp_path), log=lambda *a: None, export=False)
    with pytest.raises(PodiumError, match="does not exist"):
        podium.auto(tmp_path / "nope", time="10m", **common)
    with pytest.raises(PodiumError, match="preset"):
        podium.auto(tmp_path / "train", time="10m", preset="huge", **common)
    with pytest.raises(PodiumError, match=r"too small.*needs"):
        podium.auto(tmp_path / "train", time="20s", measure=_fake_measure(30.0), **common)
    assert not (tmp_path / "auto").exists()


def test_auto_help_is_torch_free():
    code = ("import sys\nfrom podium.cli import main\ntry:\n    main(['auto', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "--time" in out.stdout and "--preset" in out.stdout


def test_a_composite_task_with_groups_goes_through(tmp_path):
    """Classes composed of attributes (colour x side, read from CSV columns), grouped by person:
    the members are grouped cv runs of the composite task and the submission has its classes."""
    import podium

    paths = colour_images(tmp_path / "data", per_class=8)
    table = pd.DataFrame({"path": [p.relative_to(tmp_path / "data").as_posix() for p in paths],
                          "colour": [p.parent.name for p in paths],
                          "side": ["left" if i % 4 < 2 else "right" for i in range(len(paths))],
                          "person": [f"p{i // 2:02d}" for i in range(len(paths))]})
    table.to_csv(tmp_path / "data" / "labels.csv", index=False)
    table[["path"]].head(6).to_csv(tmp_path / "data" / "test.csv", index=False)
    attributes = json.dumps({"colour": ["cat", "dog", "fox"], "side": ["left", "right"]})
    r = podium.auto(tmp_path / "data" / "labels.csv", time="10m", preset=Preset("one", ((2, 1),), 1, 1, (32,), ()),
                    test=tmp_path / "data" / "test.csv", out=tmp_path / "auto", models=["test_resnet"],
                    overrides=[*_base(tmp_path), f"task.attributes={attributes}", "data.group_column=person"],
                    export=False, log=lambda *a: None, measure=_fake_measure(2.0))
    member = Path(r.summary["members"][0]["dir"])
    folds = pd.read_csv(member / "folds.csv")
    assert folds.groupby("group")["fold"].nunique().max() == 1  # a person never straddles two folds
    probs = pd.read_parquet(r.dir / "test_probabilities.parquet")
    assert len(r.summary["classes"]) == 6 and set(r.summary["classes"]) <= set(probs.columns)
    assert len(pd.read_csv(r.summary["submission"])) == 6 and len(r.oof) == 24
