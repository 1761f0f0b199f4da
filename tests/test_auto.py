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
from podium.autopilot.plan import PLAN_SHARE, PRESETS, Candidate, Preset, cost, make_plan
from podium.errors import PodiumError
from tests.conftest import colour_images

CANDIDATES = [Candidate("tv/mobilenet_v2", 64, 20.0, 5.0), Candidate("tv/mobilenet_v2", 96, 45.0, 11.0),
              Candidate("resnet18", 64, 30.0, 8.0), Candidate("resnet18", 96, 70.0, 17.0)]


def _trained_epochs(plan) -> int:
    """Epochs of training the plan buys in all (fold models x members x epochs)."""
    return plan.epochs * len(plan.members) * len(plan.trained_folds)


@pytest.mark.parametrize("preset", ["fast", "medium", "best"])
@pytest.mark.parametrize("budget", [600, 1800, 7200, 36000])
def test_plan_fits_the_budget_and_grows_with_it(preset, budget):
    plan = make_plan(CANDIDATES, budget, preset)
    holdout = plan.mode == "holdout"
    assert plan.planned_s == pytest.approx(cost(plan.members, plan.folds, plan.epochs, holdout=holdout,
                                                refit=plan.refit))
    assert plan.planned_s <= budget * PLAN_SHARE
    bigger = make_plan(CANDIDATES, budget * 4, preset)
    assert _trained_epochs(bigger) >= _trained_epochs(plan)
    assert (f"{plan.folds} folds x {len(plan.members)} member(s)" if not holdout else "1 run of") in plan.describe()


@pytest.mark.parametrize("preset", ["fast", "medium", "best"])
@pytest.mark.parametrize("budget", [300, 600, 1200, 1800, 3600, 7200, 36000])
def test_a_plan_never_gives_a_member_less_than_the_single_default_run(preset, budget):
    """Whatever the budget: a fold model trains on near the single run's share of the images (4 or
    more folds when it holds out 20%) for at least the epochs the single default run would get in
    the same time; else the plan is that one run."""
    plan = make_plan(CANDIDATES, budget, preset, default_epochs=10, default=("tv/mobilenet_v2", 64))
    single = next(c for c in CANDIDATES if (c.model, c.size) == ("tv/mobilenet_v2", 64))
    fits = int((budget * PLAN_SHARE - cost([single], 5, 0, holdout=True)) // single.fold_epoch_s(5))
    assert plan.single_epochs == min(10, fits, PRESETS[preset].max_epochs)
    assert plan.epochs >= plan.single_epochs
    if plan.mode == "cv":
        assert plan.folds >= 4 and plan.epochs >= PRESETS[preset].min_epochs
    else:
        assert plan.members == [single] and plan.folds == 5 and plan.trained_folds == [0]
        if plan.refit:  # the holdout and the refit on every image both get the epochs a cv fold would need
            assert plan.epochs >= PRESETS[preset].min_epochs and plan.epochs_upper == PRESETS[preset].max_epochs
        else:
            assert plan.epochs == min(fits, PRESETS[preset].max_epochs)


def test_a_budget_buying_about_one_run_gets_the_single_run_plan_a_large_one_folds_x_members():
    # the benchmark's lost case (benchmarks/auto/RESULTS.md): measured 79 s per epoch of 596 images at 64 px,
    # 122 s at 96 px; measuring took 78 s of 6 minutes. The old plan was 2 folds x 2 epochs on half the data.
    measured = [Candidate("tv/mobilenet_v2", 64, 79.0, 6.3), Candidate("tv/mobilenet_v2", 96, 121.6, 12.3)]
    small = make_plan(measured, 360, "medium", spent_s=78, default=("tv/mobilenet_v2", 64), test_ratio=649 / 596)
    assert small.mode == "holdout" and small.folds == 5 and small.members == [measured[0]]
    assert small.epochs >= 2 and small.epochs_upper == PRESETS["medium"].max_epochs
    assert small.planned_s <= 78 + (360 - 78) * PLAN_SHARE
    assert "about one run" in small.why and "1 run of tv/mobilenet_v2@64 on 80%" in small.describe()
    assert any(n.startswith("learning rate:") and "lr_find" in n for n in small.notes)  # why the lr is not searched
    assert any(n.startswith("layer decay: off") for n in small.notes)
    large = make_plan(measured, 4 * 3600, "medium", default=("tv/mobilenet_v2", 64), test_ratio=649 / 596)
    assert large.mode == "cv" and large.folds == 5 and len(large.members) == 2
    assert large.epochs >= large.single_epochs == 10
    # between: more epochs for the one run rather than 2-3 folds on half or two thirds of the data
    mid = make_plan(measured, 1200, "medium", default=("tv/mobilenet_v2", 64))
    assert mid.mode == "holdout" and mid.epochs > small.epochs and not mid.refit
    # then the holdout plus a refit on every image, both at the single run's 10 epochs (AutoGluon's refit_full)
    refit = make_plan(measured, 2400, "medium", default=("tv/mobilenet_v2", 64))
    assert refit.mode == "holdout" and refit.refit and refit.epochs >= 10 and "then refit on all" in refit.describe()
    # a config holding out half the images: 2 folds give the fold models the single run's share
    half = make_plan(measured, 4 * 3600, "medium", val_fraction=0.5, default=("tv/mobilenet_v2", 64),
                     default_epochs=5)
    assert half.mode == "cv"


def test_plan_members_are_diverse_and_budget_too_small_names_the_minimum():
    plan = make_plan(CANDIDATES, 36000, "best")
    assert plan.mode == "cv" and len(plan.members) == 3 and len({m.model for m in plan.members[:2]}) == 2
    with pytest.raises(PodiumError, match=r"too small.*needs \d+s.*--time \d+m"):
        make_plan(CANDIDATES, 30, "medium")
    late = make_plan(CANDIDATES, 1800, "medium", spent_s=600)  # the measuring already took 10 minutes
    full = make_plan(CANDIDATES, 1800, "medium")
    assert late.planned_s <= 600 + 1200 * PLAN_SHARE
    assert _trained_epochs(late) < _trained_epochs(full)
    with pytest.raises(PodiumError, match=r"measuring the candidates took 590s.*in all"):
        make_plan(CANDIDATES, 600, "medium", spent_s=590)


def test_cached_step_times_are_hints_a_probe_rescales_so_a_loaded_cache_no_longer_underplans(tmp_path):
    """The benchmark's 18m cells: step times cached while the machine was loaded (x17) planned a
    holdout run that ended after 98 s of 1080 s. The first candidate is always timed afresh (the
    probe); the other cached times are scaled by its ratio, so the plan is the one fresh
    measurements give, and it fills the budget."""
    from podium.autopilot.plan import TIMING_MAX_AGE_S, measure_candidates
    from podium.schema import load_config

    cfg = load_config(None, ["model.pretrained=false", "train.batch_size=10", "train.accelerator=cpu"])
    timed, load, now = [], [17.0], [1e9]
    truth = {32: (0.2, 0.05), 48: (0.45, 0.11)}  # seconds per step and per prediction batch, idle

    def timer(name, size, batch, n_classes, device, steps, clock, channels_last):
        timed.append(size)
        assert channels_last  # timed in the layout the runs train in (train.channels_last)
        return truth[size][0] * load[0], truth[size][1] * load[0]

    kw = dict(log=lambda *a: None, timer=timer, cache=tmp_path / "timings.json", now=lambda: now[0])
    loaded = measure_candidates(cfg, ["test_resnet"], [32, 48], 600, 3, **kw)  # cached under load
    assert timed == [32, 48]
    load[0], now[0] = 1.0, now[0] + 3600  # an hour later the machine is idle
    calibrated = measure_candidates(cfg, ["test_resnet"], [32, 48], 600, 3, **kw)
    assert timed == [32, 48, 32]  # only the probe was timed again
    fresh = measure_candidates(cfg, ["test_resnet"], [32, 48], 600, 3, **{**kw, "cache": False})
    del timed[3:]
    for c, f in zip(calibrated, fresh):
        assert c.train_s == pytest.approx(f.train_s) and c.val_s == pytest.approx(f.val_s)
    default = dict(default=("test_resnet", 32), test_ratio=649 / 596)
    stale, good = make_plan(loaded, 1080, "medium", **default), make_plan(calibrated, 1080, "medium", **default)
    same = make_plan(fresh, 1080, "medium", **default)
    assert (good.mode, good.folds, good.epochs, good.members) == (same.mode, same.folds, same.epochs, same.members)
    assert _trained_epochs(good) >= 4 * _trained_epochs(stale)  # the loaded cache planned a quarter of it
    assert good.mode == "cv" and good.planned_s >= 0.75 * 1080  # the budget is filled, not 9% of it
    now[0] += TIMING_MAX_AGE_S + 1  # too old to be a hint: every candidate timed again
    measure_candidates(cfg, ["test_resnet"], [32, 48], 600, 3, **kw)
    assert timed == [32, 48, 32, 32, 48]
    measure_candidates(cfg, ["test_resnet"], [32], 100, 4, **kw)  # another class count: its own entry
    assert timed[-1] == 32 and len(timed) == 6


def test_the_probe_times_steps_in_the_runs_memory_layout_and_takes_the_median(monkeypatch):
    """Runs train channels-last (1.7x faster steps on this CPU); a probe in the default layout planned
    epochs 1.5-2.5x longer than they took. One slow step (here 10 s among 1 s ones) no longer
    moves the estimate either."""
    import torch

    import podium.model.models as models
    from podium.autopilot.plan import _time_steps

    seen: list[bool] = []
    real = models.create_model

    def spy(*a, **k):
        model = real(*a, **k)
        model.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        return model

    monkeypatch.setattr(models, "create_model", spy)
    for layout in (True, False):
        ticks = iter([0.0, 1.0, 1.0, 2.0, 2.0, 12.0, 12.0, 13.0, 13.0, 14.0])  # warm-up, 3 steps (one slow), predict
        seen.clear()
        step_s, fwd_s = _time_steps("test_resnet", 32, 4, 3, "cpu", 3, lambda t=ticks: next(t), channels_last=layout)
        assert step_s == 1.0 and fwd_s == 1.0
        assert seen and all(s == layout for s in seen)


def test_a_plan_fills_the_budget_when_the_preset_does_not_cap_it():
    """Below the preset's caps the plan uses PLAN_SHARE of the budget to within one epoch."""
    roomy = Preset("roomy", ((5, 2), (5, 1)), 2, 10_000, (64, 96), ("tv/mobilenet_v2", "resnet18"))
    for budget in (600, 1800, 7200, 36000):
        plan = make_plan(CANDIDATES, budget, roomy, default=("tv/mobilenet_v2", 64))
        shape = dict(holdout=plan.mode == "holdout", refit=plan.refit)
        epoch = cost(plan.members, plan.folds, plan.epochs + 1, **shape) - cost(plan.members, plan.folds, plan.epochs,
                                                                                 **shape)
        assert budget * PLAN_SHARE - epoch <= plan.planned_s <= budget * PLAN_SHARE, (budget, plan.describe())


def test_a_plan_capped_by_the_preset_says_where_the_rest_of_the_budget_goes():
    """hymenoptera at 60m planned 9.6 min: the why names the epoch cap, the later stages and --preset best."""
    capped = make_plan(CANDIDATES, 36000, "medium", default=("tv/mobilenet_v2", 64))
    assert capped.mode == "cv" and capped.epochs == PRESETS["medium"].max_epochs
    left = (36000 - capped.planned_s) / 60
    assert f"caps fold models at 20 epochs, so {left:.1f} min are not planned yet" in capped.why
    assert "another seed, up to 2 seeds" in capped.why and "--preset best trains up to 30 epochs" in capped.why
    best = make_plan(CANDIDATES, 360000, "best", default=("tv/mobilenet_v2", 64))
    assert "caps fold models at 30 epochs" in best.why and "--preset best" not in best.why
    for budget in (600, 1800):  # the time binds, not the cap: nothing to explain
        assert "caps fold models" not in make_plan(CANDIDATES, budget, "medium", default=("tv/mobilenet_v2", 64)).why


def test_later_stages_are_replanned_on_the_time_actually_spent():
    """After the first plan's runs, the epochs they actually took and the time left decide a
    second stage: the holdout's other folds (a fold ensemble), a refit, or one more cv member."""
    from dataclasses import replace

    from podium.autopilot.plan import grow_plan, speed_ratio

    medium = PRESETS["medium"]
    # the 18m benchmark cell: a step time cached under load planned 34 s epochs; they took 2 s
    stale = [Candidate("tv/mobilenet_v2", 64, 40.0, 6.3)]
    plan = make_plan(stale, 1080, "medium", default=("tv/mobilenet_v2", 64), test_ratio=649 / 596)
    assert plan.mode == "holdout"
    ratio = speed_ratio([9.0, 2.1, 2.0, 1.9, 2.0], plan.members[0].fold_epoch_s(5))
    assert ratio == pytest.approx(2.0 / plan.members[0].fold_epoch_s(5))  # the median, not the start-up epoch
    grown = grow_plan(plan, medium, spent_s=98, ratio=ratio, epochs_done=20)
    assert grown is not None and grown.mode == "cv" and grown.folds == 5 and grown.epochs == 20
    assert not grown.refit and grown.planned_s <= 1080 and "stage 2" in grown.stages[0]
    assert grown.members[0].train_s == pytest.approx(40.0 * ratio)  # costs as the machine runs them now
    # no other candidate, and time left for 5 more folds: the first member again, with another seed
    again = grow_plan(grown, medium, spent_s=400, ratio=1.0, epochs_done=20)
    assert again is not None and len(again.members) == 2 and again.members[1].seed_offset == 1
    assert again.members[1] == replace(grown.members[0], seed_offset=1) and again.planned_s <= 1080
    assert "again with seed +1" in again.stages[-1] and "seed+1" in again.describe()
    assert grow_plan(again, medium, spent_s=900, ratio=1.0, epochs_done=20) is None  # no time for a third
    assert grow_plan(again, medium, spent_s=400, ratio=1.0, epochs_done=20) is None  # medium: 2 seeds at most
    third = grow_plan(again, replace(medium, seeds=3), spent_s=400, ratio=1.0, epochs_done=20)
    assert third is not None and [m.seed_offset for m in third.members] == [0, 1, 2]
    # the fold models must reach what the single default run gets at the speed now (10 epochs), not the
    # 5 a slower measurement promised: with time left for 4 folds of about 8 epochs, a refit instead
    slow = replace(plan, single_epochs=5, refit=False)
    late = grow_plan(slow, medium, spent_s=1080 - (4 * 7 * grown.members[0].fold_epoch_s(5) + 60) / PLAN_SHARE,
                     ratio=ratio, epochs_done=20)
    assert late is not None and late.mode == "holdout" and late.refit and late.single_epochs == 10
    # the machine stayed slow: no time for another stage
    assert grow_plan(plan, medium, spent_s=1000, ratio=1.0, epochs_done=10) is None
    # time for a refit but not for 4 more folds: the refit (the holdout had none)
    one = replace(plan, refit=False)
    refit = grow_plan(one, medium, spent_s=600, ratio=0.5, epochs_done=10)
    assert refit is not None and refit.mode == "holdout" and refit.refit and "refit" in refit.stages[0]
    # a cv plan that ran fast gets the next candidate as one more member
    cv = make_plan(CANDIDATES, 7200, Preset("two", ((5, 1),), 3, 10, (64,), ("tv/mobilenet_v2", "resnet18")),
                   default=("tv/mobilenet_v2", 64))
    assert cv.mode == "cv" and len(cv.members) == 1
    more = grow_plan(cv, PRESETS["medium"], spent_s=1500, ratio=0.4, epochs_done=cv.epochs)
    assert more is not None and len(more.members) == 2 and more.members[1].model == "resnet18"
    assert more.members[1].train_s == pytest.approx(30.0 * 0.4) and more.planned_s <= 7200


def test_fold_models_share_the_time_left_by_cost_and_train_up_to_the_upper_epochs(tmp_path):
    """Every cv fold runs under train.max_time with the preset's upper epochs, so a machine faster
    than measured fills the budget (20m cells ended at 55-86% with fixed epochs); the time is split
    over the folds left by their epoch cost, after every member's predictions still ahead."""
    from podium.autopilot.pipeline import EXTRAS_SAFETY, _fold_share, _member_overrides, _Run
    from podium.autopilot.plan import FINAL_OVERHEAD_S, FOLD_OVERHEAD_S, MEMBER_OVERHEAD_S, Plan, extras_s

    cheap, dear = Candidate("a", 64, 10.0, 2.0), Candidate("b", 96, 30.0, 6.0)
    plan = Plan("medium", 3600, 5, 10, [cheap, dear], 0.0, "", epochs_upper=20)
    run = _Run(tmp_path, None, _State(tmp_path, {}, lambda: 0.0), [], None, (), None, False, print)
    reserve = sum(MEMBER_OVERHEAD_S + EXTRAS_SAFETY * extras_s(m, 5, False, 0.0) for m in plan.members)
    weights = 5 * (cheap.fold_epoch_s(5) + dear.fold_epoch_s(5))
    assert _fold_share(run, plan, 0) == pytest.approx(
        (3600 - reserve - FINAL_OVERHEAD_S - 10 * FOLD_OVERHEAD_S) * cheap.fold_epoch_s(5) / weights)
    items = _member_overrides(tmp_path, plan, cheap, "m0-a-64", 300.0, 42)
    assert "train.epochs=20" in items and "train.max_time=300s" in items and not any("seed" in i for i in items)
    again = _member_overrides(tmp_path, plan, Candidate("a", 64, 10.0, 2.0, seed_offset=1), "m1-a-64-seed1", 300.0, 42)
    assert "train.seed=43" in again


def _fake_measure(epoch_s: float, calls: list | None = None):
    def measure(cfg, names, sizes, n_images, n_classes):
        if calls is not None:
            calls.extend((n, s) for n in names for s in sizes)
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
    overrides = [*_base(tmp_path), "data.val_fraction=0.5"]  # 2 folds train on the single run's share
    args = dict(time="10m", preset=TINY, test=tmp_path / "test", out=tmp_path / "auto", overrides=overrides,
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
    b = s["biases"]  # kept only when the nested gain survives 80% of bootstrap resamples of the OOF rows
    assert "p_gain" in b and b["kept"] == (b["gain"] > 0 and b["p_gain"] >= 0.8)
    sub = pd.read_csv(s["submission"])
    assert len(sub) == 6
    assert (r.dir / "auto.json").is_file() and len(r.oof) == 18
    cfg0 = (first / "fold0" / "config.yaml").read_text()
    assert "max_time" in cfg0 and "epochs: 2" in cfg0  # the plan's choices are in each member's resolved config
    assert "monitor: epoch" in cfg0  # auto's default: fold models keep their last epoch
    fold0 = json.loads((first / "fold0" / "summary.json").read_text())
    assert fold0["monitor"] == "epoch" and fold0["best_epoch"] == fold0["epochs_trained"] - 1  # 0-based
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
                    overrides=[*_base(tmp_path), f"task.attributes={attributes}", "data.group_column=person",
                               "data.val_fraction=0.5", "train.monitor=val_loss"],
                    export=False, log=lambda *a: None, measure=_fake_measure(2.0))
    member = Path(r.summary["members"][0]["dir"])
    folds = pd.read_csv(member / "folds.csv")
    assert folds.groupby("group")["fold"].nunique().max() == 1  # a person never straddles two folds
    assert "monitor: val_loss" in (member / "fold0" / "config.yaml").read_text()  # the user's choice beats auto's
    probs = pd.read_parquet(r.dir / "test_probabilities.parquet")
    assert len(r.summary["classes"]) == 6 and set(r.summary["classes"]) <= set(probs.columns)
    assert len(pd.read_csv(r.summary["submission"])) == 6 and len(r.oof) == 24


def _first_stage_only(monkeypatch) -> None:
    """The tiny runs take far less than the made-up measurements say: without this the time left
    would buy a later stage (tested in test_a_fast_machine_grows_the_plan_and_resumes_mid_stage)."""
    import podium.autopilot.pipeline as pipeline

    monkeypatch.setattr(pipeline, "grow_plan", lambda *a, **k: None)


def test_a_small_budget_trains_one_holdout_run_measures_tta_on_its_held_out_part(tmp_path, monkeypatch):
    """A budget that buys about one run: only the default candidate is measured, one run trains on
    the single run's share (fold 0 of 5 held out) with up to the preset's epochs under train.max_time,
    TTA is measured on the held-out images, and the submission comes from that run."""
    import podium

    _first_stage_only(monkeypatch)

    colour_images(tmp_path / "train", per_class=5)
    colour_images(tmp_path / "test", per_class=2, seed=5, labeled=False)
    measured: list = []
    preset = Preset("p", ((5, 2),), 2, 3, (32, 48), ("test_resnet", "test_efficientnet"))
    r = podium.auto(tmp_path / "train", time="70s", preset=preset, test=tmp_path / "test", out=tmp_path / "auto",
                    overrides=[*_base(tmp_path), "model.name=test_resnet", "data.image_size=32"], export=False,
                    log=lambda *a: None, measure=_fake_measure(8.0, measured))
    assert measured == [("test_resnet", 32)]  # the others were not measured: the budget buys one run
    s = r.summary
    assert s["mode"] == "holdout" and r.plan.trained_folds == [0] and r.plan.folds == 5 and not r.plan.refit
    member = Path(s["members"][0]["dir"])
    assert (member / "fold0" / "summary.json").is_file() and not (member / "fold1").exists()
    cfg0 = (member / "fold0" / "config.yaml").read_text()
    assert "epochs: 3" in cfg0 and "max_time" in cfg0  # up to the preset's epochs, ended by the clock
    held_out = len(pd.read_parquet(member / "fold0" / "val_predictions.parquet"))
    assert s["members"][0]["n_held_out"] == held_out == len(r.oof) and 0 < held_out < 15
    assert s["final"]["model"] == str(member / "fold0") and s["final"]["kind"] == "member"
    assert s["members"][0]["epochs_trained"] == json.loads((member / "fold0" / "summary.json").read_text())["epochs_trained"]
    assert len(pd.read_csv(s["submission"])) == 6


def test_a_budget_for_two_runs_refits_the_holdout_on_every_image_and_resumes_the_refit(tmp_path, monkeypatch):
    """Between one run and the fold ensembles: the holdout run decides TTA and the epochs, then a
    run on every image (validation part included, last epoch kept) is the final model and predicts
    the test set. Killed during the refit and run again, it reuses the holdout run and its TTA
    measurement and trains only the refit."""
    import podium
    import podium.evaluation.cv as cv

    _first_stage_only(monkeypatch)
    colour_images(tmp_path / "train", per_class=5)
    colour_images(tmp_path / "test", per_class=2, seed=5, labeled=False)
    real_refit, real_run_cv, calls = cv.train_refit, cv.run_cv, []

    def killed_refit(cfg, run_dir, **kw):
        calls.append("refit")
        if calls.count("refit") == 1:
            raise KeyboardInterrupt  # killed as the refit starts
        return real_refit(cfg, run_dir, **kw)

    def counted_run_cv(cfg, **kw):
        calls.append(f"fold{kw['only_fold']}")
        return real_run_cv(cfg, **kw)

    monkeypatch.setattr(cv, "train_refit", killed_refit)
    monkeypatch.setattr(cv, "run_cv", counted_run_cv)
    preset = Preset("p", ((5, 2),), 2, 2, (32,), ("test_resnet", "test_efficientnet"))
    args = dict(time="2m", preset=preset, test=tmp_path / "test", out=tmp_path / "auto",
                overrides=[*_base(tmp_path), "model.name=test_resnet", "data.image_size=32"], export=False,
                log=lambda *a: None, measure=_fake_measure(3.0))
    with pytest.raises(KeyboardInterrupt):
        podium.auto(tmp_path / "train", **args)
    assert calls == ["fold0", "refit"]
    member = tmp_path / "auto" / "members" / "m0-test_resnet-32"
    ckpt = next((member / "fold0").rglob("*.ckpt"))
    stamp = ckpt.stat().st_mtime_ns
    state = json.loads((tmp_path / "auto" / "auto_state.json").read_text())
    assert "tta:m0-test_resnet-32" in state["steps"] and "refit:m0-test_resnet-32" not in state["steps"]
    import podium.autopilot.pipeline as pipeline

    real_test = pipeline._member_test

    def killed_test(source, test, views, out_dir, progress):
        if out_dir.name == "refit-test" and "killed" not in calls:
            calls.append("killed")
            raise KeyboardInterrupt  # killed after the refit trained, while it predicts the test set
        return real_test(source, test, views, out_dir, progress)

    monkeypatch.setattr(pipeline, "_member_test", killed_test)
    with pytest.raises(KeyboardInterrupt):
        podium.auto(tmp_path / "train", **args)
    assert calls == ["fold0", "refit", "refit", "killed"] and ckpt.stat().st_mtime_ns == stamp  # holdout reused
    refit_ckpt = next((member / "refit").rglob("last.ckpt"))
    refit_stamp = refit_ckpt.stat().st_mtime_ns
    r = podium.auto(tmp_path / "train", **args)
    assert calls == ["fold0", "refit", "refit", "killed"]  # neither run trained again
    assert ckpt.stat().st_mtime_ns == stamp and refit_ckpt.stat().st_mtime_ns == refit_stamp
    assert r.plan.mode == "holdout" and r.plan.refit and r.plan.epochs == 2
    assert r.summary["spent_s"] > state["spent_s"]
    member = Path(r.summary["members"][0]["dir"])
    refit = member / "refit"
    summary = json.loads((refit / "summary.json").read_text())
    assert summary["train_images"] == 15  # every image, the 3 held out by fold 0 included
    assert "monitor: epoch" in (refit / "config.yaml").read_text()
    held = json.loads((member / "fold0" / "summary.json").read_text())
    assert f"epochs: {held['epochs_trained']}" in (refit / "config.yaml").read_text()
    assert r.summary["final"]["model"] == str(refit)
    assert r.summary["members"][0]["test"] == r.summary["final"]["test"] and "refit-test" in r.summary["final"]["test"]
    assert len(pd.read_csv(r.summary["submission"])) == 6 and len(r.oof) == held["val_images"]


def test_a_fast_machine_grows_the_plan_and_resumes_mid_stage(tmp_path, monkeypatch):
    """Measured (here: made up) as slow, the budget buys one run; the run's own epochs show the
    machine is fast, so the time left is re-planned: the holdout run becomes fold 0 of a 5-fold
    member. Killed during the second stage, the run resumes it without retraining finished folds."""
    import podium
    import podium.evaluation.cv as cv

    colour_images(tmp_path / "train", per_class=5)
    colour_images(tmp_path / "test", per_class=2, seed=5, labeled=False)
    real_run_cv, calls = cv.run_cv, []

    def flaky_run_cv(cfg, **kw):
        calls.append(kw["only_fold"])
        if calls == [0, 1, 2]:  # killed in the second stage's second fold
            raise KeyboardInterrupt
        return real_run_cv(cfg, **kw)

    monkeypatch.setattr(cv, "run_cv", flaky_run_cv)
    preset = Preset("p", ((5, 1),), 2, 2, (32,), ("test_resnet",))
    args = dict(time="3m", preset=preset, test=tmp_path / "test", out=tmp_path / "auto",
                overrides=[*_base(tmp_path), "model.name=test_resnet", "data.image_size=32", "train.epochs=2"],
                export=False, log=lambda *a: None, measure=_fake_measure(40.0))
    with pytest.raises(KeyboardInterrupt):
        podium.auto(tmp_path / "train", **args)
    state = json.loads((tmp_path / "auto" / "auto_state.json").read_text())
    assert state["plan"]["mode"] == "cv" and len(state["plan"]["stages"]) == 1  # the grown plan is saved
    assert "other 4 folds" in state["plan"]["stages"][0]
    member = tmp_path / "auto" / "members" / "m0-test_resnet-32"
    stamps = {f: next((member / f"fold{f}").rglob("*.ckpt")).stat().st_mtime_ns for f in (0, 1)}
    calls.clear()
    r = podium.auto(tmp_path / "train", **args)
    assert calls == [2, 3, 4]  # folds 0 and 1 reused
    assert all(next((member / f"fold{f}").rglob("*.ckpt")).stat().st_mtime_ns == t for f, t in stamps.items())
    assert r.plan.mode == "cv" and r.summary["mode"] == "cv" and len(r.oof) == 15  # OOF on every image
    assert r.summary["plan"]["stages"] == state["plan"]["stages"]
    assert len(pd.read_csv(r.summary["submission"])) == 6
