"""Running a `podium auto` plan: members as normal cv runs, then the measured extras.

Every step writes its result into ``auto_state.json`` (atomically) as soon as it is
done, so a killed run started again with the same arguments reuses finished folds,
gathered members and measured steps, and the time already spent counts against the
budget. TTA, the ensemble and per-class biases are each kept only where a held-out
measurement says they pay: TTA on OOF images, the ensemble and the biases on nested
splits of the OOF rows.
"""
from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from podium.autopilot.plan import (
    FINAL_OVERHEAD_S,
    FOLD_OVERHEAD_S,
    MEMBER_OVERHEAD_S,
    PRESETS,
    TTA_VIEWS,
    Candidate,
    Plan,
    Preset,
    Timings,
    decode_seconds,
    extras_s,
    grow_plan,
    make_plan,
    refit_epoch_s,
    speed_ratio,
)
from podium.errors import PodiumError
from podium.fileio import write_json, write_parquet
from podium.rundir import (
    AUTO_FILE,
    AUTO_STATE_FILE,
    CONFIG_FILE,
    CV_SUMMARY_FILE,
    OOF_FILE,
    TEST_PROBABILITIES_FILE,
    VAL_PREDICTIONS_FILE,
    fold_dir,
    is_finished_run,
    read_cv_meta,
    read_json_file,
    read_table,
    read_val_predictions,
)

#: auto's own defaults, under the user's config file and overrides (which win). Fold models keep
#: their last epoch (``train.monitor=epoch``; the cosine schedule is at its floor there): averaged
#: over the folds, last.ckpt beat the best-validation-F1 checkpoint on the held-back test part of
#: faces_mask3 by +4.4 and +3.2 points (2 seeds, 20m cells) while the out-of-fold score said the
#: opposite, since each fold chose its epoch on those same ~520 images (benchmarks/auto/RESULTS.md,
#: checkpoint_choice.py). Keeping the last epoch also makes the OOF rows that decide TTA, biases
#: and ensemble weights honest.
AUTO_DEFAULTS: dict[str, Any] = {"train": {"monitor": "epoch"}}


@dataclass
class AutoResult:
    """What `podium.auto` made: the folder, the plan, the kept steps and the final scores."""
    dir: Path
    plan: Plan
    summary: dict

    @property
    def submission(self) -> str | None:
        return self.summary.get("submission")

    @property
    def oof(self) -> pd.DataFrame:
        return read_table(self.dir / OOF_FILE, "auto's out-of-fold predictions")


def _signature(data, test, budget_s, preset, models, sizes, overrides, config) -> dict:
    return {"data": str(Path(data).resolve()), "test": str(Path(test).resolve()) if test else None,
            "budget_s": budget_s, "preset": preset, "models": list(models or []), "sizes": list(sizes or []),
            "overrides": list(overrides), "config": str(Path(config).resolve()) if config else None}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


class _State:
    """auto_state.json: the plan, what is done, and the seconds spent by earlier attempts."""

    def __init__(self, folder: Path, record: dict, clock: Callable[[], float]):
        self.folder, self.record, self.clock, self.t0 = folder, record, clock, clock()
        self.before = float(record.get("spent_s", 0.0))

    @property
    def spent(self) -> float:
        return self.before + (self.clock() - self.t0)

    def save(self) -> None:
        self.record["spent_s"] = self.spent
        write_json(self.folder / AUTO_STATE_FILE, self.record)

    def step(self, key: str) -> dict | None:
        return self.record.setdefault("steps", {}).get(key)

    def done(self, key: str, value: dict) -> dict:
        self.record.setdefault("steps", {})[key] = value
        self.save()
        return value


def run_auto(data: str | Path, *, time_budget: str | float, preset: str | Preset = "medium", test: str | Path | None = None,
             out: str | Path | None = None, config: str | Path | None = None, overrides: Sequence[str] = (),
             models: Sequence[str] | None = None, sizes: Sequence[int] | None = None, export: bool = True,
             progress: bool = False, log: Callable = print, clock: Callable[[], float] = time.monotonic,
             measure: Callable | None = None) -> AutoResult:
    """Plan, train and assemble the best submission ``time_budget`` buys (see the module doc).

    ``measure(cfg, names, sizes, n_images, n_classes) -> [Candidate]`` replaces the timing on
    this machine (tests); ``clock`` is the wall clock the budget is counted on.
    """
    from podium.durations import parse_duration

    if isinstance(preset, str) and preset not in PRESETS:
        raise PodiumError(f"--preset {preset!r} is not known: use one of {', '.join(PRESETS)}")
    budget_s = parse_duration(time_budget, "--time")
    cfg, frame, classes, n_test = _load_inputs(data, test, config, overrides)
    p = PRESETS[preset] if isinstance(preset, str) else preset
    folder = Path(out) if out is not None else Path(cfg.output.dir) / f"auto-{_slug(Path(data).stem)}"
    sig = _signature(data, test, budget_s, p.name, models, sizes, overrides, config)
    if (folder / AUTO_STATE_FILE).is_file():
        plan, state = _resume(folder, sig, budget_s, clock, log)
    else:
        if folder.exists() and any(folder.iterdir()):
            raise PodiumError(f"{folder} exists and is not an auto folder (no {AUTO_STATE_FILE}): give --out NEW_FOLDER")
        plan, state = _start(folder, sig, cfg, frame, classes, n_test, budget_s, p, models, sizes, measure, clock, log)
    log(f"plan: {plan.describe()}")
    log(f"why: {plan.why}")
    for note in plan.notes:
        log(f"not tuned: {note}")
    for stage in plan.stages:
        log(stage)
    return _execute(folder, cfg, plan, p, state, classes, test=test, overrides=overrides, config=config,
                    export=export, progress=progress, log=log)


def _load_inputs(data, test, config, overrides: Sequence[str]) -> tuple[Any, pd.DataFrame, list[str], int]:
    """The config, the labelled pool and the number of test images, refusing bad input before any
    folder is made."""
    from podium.data.samples import load_pool
    from podium.evaluation.cv import load_test
    from podium.schema import load_config

    if not Path(data).exists():
        raise PodiumError(f"data {data} does not exist: give a folder of class folders or a CSV (path,label)")
    if test is not None and not Path(test).exists():
        raise PodiumError(f"--test {test} does not exist: give a folder or CSV of unlabelled images")
    cfg = load_config(config, [f"data.train={data}", *overrides], base=AUTO_DEFAULTS)
    frame, classes, _ = load_pool(cfg, lambda *a: None)
    if len(classes) < 2:
        raise PodiumError(f"data {data} has {len(classes)} class(es): auto needs at least 2")
    n_test = len(load_test(cfg, test)) if test is not None else 0
    return cfg, frame, classes, n_test


def _resume(folder: Path, sig: dict, budget_s: float, clock: Callable[[], float], log) -> tuple[Plan, _State]:
    """The plan (with the stages it grew by) and the time spent, from an earlier attempt's state."""
    record = read_json_file(folder / AUTO_STATE_FILE, "auto's state")
    if record.get("signature") != sig:
        changed = [k for k in sig if record.get("signature", {}).get(k) != sig[k]]
        raise PodiumError(f"{folder} holds an auto run started with other arguments ({', '.join(changed)} "
                          f"differ): run again with the same arguments to resume it, or give --out NEW_FOLDER")
    state = _State(folder, record, clock)
    log(f"resuming {folder}: {state.before:.0f}s of {budget_s:.0f}s already spent")
    return Plan.from_dict(record["plan"]), state


def _start(folder: Path, sig: dict, cfg, frame: pd.DataFrame, classes: list[str], n_test: int, budget_s: float, p: Preset,
           models, sizes, measure: Callable | None, clock: Callable[[], float], log) -> tuple[Plan, _State]:
    """Measure the candidates, make the first plan and write the state; the measuring counts."""
    t_plan = clock()
    names = list(models) if models else list(dict.fromkeys([cfg.model.name, *p.backbones]))
    cand_sizes = [int(s) for s in sizes] if sizes else list(p.sizes)
    plan_args: dict[str, Any] = dict(default_epochs=cfg.train.epochs, val_fraction=cfg.data.val_fraction,
                                     default=_default_candidate(cfg, names, cand_sizes),
                                     test_ratio=n_test / max(len(frame), 1))
    candidates = _measure(cfg, names, cand_sizes, frame, len(classes), budget_s, p, plan_args, measure,
                          lambda: clock() - t_plan, log)
    if not candidates:
        raise PodiumError(f"none of {', '.join(names)} has pretrained weights on this machine: set "
                          "model.pretrained_path, give --models with cached weights, or model.pretrained=false")
    measured_s = clock() - t_plan
    plan = make_plan(candidates, budget_s, p, spent_s=measured_s, **plan_args)
    folder.mkdir(parents=True, exist_ok=True)
    state = _State(folder, {"signature": sig, "plan": plan.to_dict(), "spent_s": 0.0, "steps": {}}, clock)
    state.t0 -= measured_s  # the measuring counts against the budget
    state.save()
    return plan, state


def _default_candidate(cfg, names: Sequence[str], sizes: Sequence[int]) -> tuple[str, int]:
    """The (model, size) the single default run would train: the config's, where auto measures it."""
    size = cfg.data.image_size if isinstance(cfg.data.image_size, int) else None
    return (cfg.model.name if cfg.model.name in names else names[0],
            size if size is not None and size in sizes else int(sizes[0]))


def _measure(cfg, names: Sequence[str], sizes: Sequence[int], frame: pd.DataFrame, n_classes: int, budget_s: float,
             p: Preset, plan_args: dict, measure: Callable | None, elapsed: Callable[[], float], log) -> list[Candidate]:
    """Measure the single default run's candidate first; measure the others only when the budget
    buys more than that one run with it (on a small budget measuring was most of the time spent:
    78 s of 6 minutes for two sizes on a loaded CPU, benchmarks/auto/RESULTS.md)."""
    timings = Timings(log=log)  # one session: the first candidate timed is the probe of the cached times

    def timed(nm: str, szs: Sequence[int]) -> list[Candidate]:
        if measure is not None:
            return list(measure(cfg, [nm], list(szs), len(frame), n_classes))
        found = timings.measure(cfg, [nm], list(szs), len(frame), n_classes)
        paths = frame["path"].astype(str).tolist()
        per_image = {s: decode_seconds(paths, s) for s in szs}
        return [Candidate(c.model, c.size, c.train_s + per_image[c.size] * len(frame),
                          c.val_s + per_image[c.size] * len(frame), c.pretrained_path) for c in found]

    first_name, first_size = plan_args["default"]
    rest = [(nm, [s for s in sizes if (nm, s) != (first_name, first_size)]) for nm in names]
    rest = [(nm, szs) for nm, szs in rest if szs]
    log(f"measuring {first_name}@{first_size} (the single default run's) on this machine ({len(frame)} images)")
    candidates = timed(first_name, [first_size])
    if candidates and rest:
        # the others guessed at this one's cost per pixel: if even then the budget buys one run, it is this one
        c0 = candidates[0]
        guessed = [Candidate(nm, s, c0.train_s * (s / c0.size) ** 2, c0.val_s * (s / c0.size) ** 2)
                   for nm, szs in rest for s in szs]
        trial = make_plan(candidates + guessed, budget_s, p, spent_s=elapsed(), **plan_args)  # too small: refused
        if trial.mode == "holdout":
            log(f"the budget buys about one run of {first_name}@{first_size}: the other "
                f"{sum(len(szs) for _, szs in rest)} candidate(s) are not measured")
            return candidates
    if rest:
        log(f"measuring {len(rest)} backbone(s) x up to {len(sizes)} size(s) more")
    for nm, szs in rest:
        candidates += timed(nm, szs)
    return candidates


def _member_name(i: int, c: Candidate) -> str:
    return f"m{i}-{_slug(c.model)}-{c.size}" + (f"-seed{c.seed_offset}" if c.seed_offset else "")


def _member_overrides(folder: Path, plan: Plan, c: Candidate, name: str, max_time_s: float, seed: int) -> list[str]:
    """A member's config: the plan's choices, visible in each fold's resolved config.yaml. A run
    may train up to ``epochs_upper`` epochs: train.max_time re-plans its length from its own
    measured epochs, so time the short measurement overestimated is not left unused (a step time
    reused from a loaded hour planned 11 epochs of 34 s; on the idle machine they took 2 s; on an
    idle machine 20m cv plans ended at 55-86% of their budget with fixed epochs). A repeated
    candidate trains with another seed (``seed`` + its offset): another model, not a copy."""
    from podium.schema import SEED_MAX

    epochs = max(plan.epochs, plan.epochs_upper)
    items = [f"model.name={c.model}", f"data.image_size={c.size}", f"train.epochs={epochs}",
             f"train.max_time={max(int(max_time_s), 1)}s", f"output.dir={folder / 'members'}", f"output.name={name}"]
    if c.pretrained_path:
        items.append(f"model.pretrained_path={c.pretrained_path}")
    if c.seed_offset:
        items.append(f"train.seed={(seed + c.seed_offset) % (SEED_MAX + 1)}")
    return items


#: the predictions after training (TTA, test) are reserved at this multiple of their measured estimate
EXTRAS_SAFETY = 1.25


@dataclass
class _Run:
    """What every step of one auto run needs: where it writes, its config and state, its inputs."""
    folder: Path
    cfg: Any
    state: _State
    classes: list[str]
    test: Any
    overrides: Sequence[str]
    config: Any
    progress: bool
    log: Callable

    def member_config(self, plan: Plan, c: Candidate, name: str, max_time_s: float, *extra: str):
        from podium.schema import load_config

        return load_config(self.config, [f"data.train={self.cfg.data.train}", *self.overrides,
                                         *_member_overrides(self.folder, plan, c, name, max_time_s, self.cfg.train.seed),
                                         *extra],
                           base=AUTO_DEFAULTS)


def _execute(folder: Path, cfg, plan: Plan, preset: Preset, state: _State, classes: list[str], *, test, overrides,
             config, export: bool, progress: bool, log) -> AutoResult:
    """Train the plan's members, grow it by the stages the time left buys, then the measured extras."""
    run = _Run(folder, cfg, state, classes, test, overrides, config, progress, log)
    while True:
        member_dirs = [_train_member(run, plan, i) for i in range(len(plan.members))]
        grown = _next_stage(run, plan, preset, member_dirs)
        if grown is None:
            break
        plan = grown
    members = _extras(run, plan, member_dirs)
    final = _choose_final(folder, members, state, test, log)
    return _finish(folder, cfg, plan, state, classes, final, members, test, export, log)


def _member_dir(folder: Path, i: int, c: Candidate) -> Path:
    return folder / "members" / _member_name(i, c)


def _train_member(run: _Run, plan: Plan, i: int) -> Path:
    """Member ``i``'s folds (those not finished earlier), then its record: the holdout run's
    held-out score, or the gathered cv summary."""
    c = plan.members[i]
    mdir = _member_dir(run.folder, i, c)
    key = f"member:{mdir.name}"
    if run.state.step(key) is None:
        for f in plan.trained_folds:
            _train_fold(run, plan, i, f)
        run.state.done(key, _member_record(run, plan, mdir))
    return mdir


def _folds_left(run: _Run, plan: Plan, i: int) -> list[Candidate]:
    """The member of each fold model still to train from member ``i`` on (this one included)."""
    return [m for j, m in enumerate(plan.members) if j >= i for f in plan.trained_folds
            if not is_finished_run(fold_dir(_member_dir(run.folder, j, m), f))]


def _fold_share(run: _Run, plan: Plan, i: int) -> float:
    """Seconds member ``i``'s next fold may train (its train.max_time): the time left after the
    predictions still ahead (every member's: they all run after the training), split over the
    fold models left by their measured epoch cost, so each trains as many epochs as its part of
    the budget holds, up to the plan's upper bound (a refit plan's holdout gets its part by the
    two runs' epoch costs)."""
    c, k, holdout = plan.members[i], plan.folds, plan.mode == "holdout"
    left = _folds_left(run, plan, i)
    reserve = (sum(MEMBER_OVERHEAD_S + EXTRAS_SAFETY * extras_s(m, k, holdout, plan.test_ratio)
                   for m in plan.members) + FINAL_OVERHEAD_S + FOLD_OVERHEAD_S * len(left))
    weights = sum(m.fold_epoch_s(k) for m in left)
    share = (plan.budget_s - run.state.spent - reserve) * (c.fold_epoch_s(k) / weights if weights > 0 else 1.0)
    if plan.refit:  # the holdout's part of what is left; the refit gets the rest
        part = c.fold_epoch_s(k) / (c.fold_epoch_s(k) + refit_epoch_s(c, k))
        share = (plan.budget_s - run.state.spent - reserve - FOLD_OVERHEAD_S) * part
    return max(share, c.fold_epoch_s(k) * 1.5 + 5)


def _train_fold(run: _Run, plan: Plan, i: int, f: int) -> None:
    """One fold model of member ``i``: reused when finished, continued when interrupted."""
    from podium.evaluation.cv import run_cv

    c = plan.members[i]
    mdir = _member_dir(run.folder, i, c)
    fd = fold_dir(mdir, f)
    if is_finished_run(fd):
        run.log(f"{mdir.name} fold {f}: finished earlier, reused")
        return
    share = _fold_share(run, plan, i)
    if fd.is_dir() and any(fd.iterdir()):
        from podium.model.training import train

        run.log(f"{mdir.name} fold {f}: interrupted earlier, continued")
        train(None, resume=fd, progress=run.progress, log=run.log)
    else:
        what = f"holdout run (fold {f} of {plan.folds} held out)" if plan.mode == "holdout" else f"fold {f}/{plan.folds}"
        run.log(f"{mdir.name} {what}: training (max {share:.0f}s)")
        # no test_data: the test images are predicted once per member, with TTA where it paid
        run_cv(run.member_config(plan, c, mdir.name, share), folds=plan.folds, only_fold=f, progress=run.progress,
               log=run.log)
    run.state.record.setdefault("folds_done", {}).setdefault(mdir.name, []).append(f)
    run.state.save()


def _member_record(run: _Run, plan: Plan, mdir: Path) -> dict:
    from podium.evaluation.cv import gather_cv
    from podium.rundir import read_summary

    if plan.mode == "holdout":
        fold0 = fold_dir(mdir, 0)
        return {"holdout_macro_f1": _macro_f1(read_val_predictions(fold0), run.classes), "dir": str(mdir),
                "run": str(fold0), "epochs_trained": read_summary(fold0).get("epochs_trained")}
    if not (mdir / CV_SUMMARY_FILE).is_file():
        gather_cv(mdir, progress=run.progress, log=run.log)
    summary = read_json_file(mdir / CV_SUMMARY_FILE, "a member's cv summary")
    return {"cv_macro_f1": summary["cv_macro_f1"], "dir": str(mdir)}


def _next_stage(run: _Run, plan: Plan, preset: Preset, member_dirs: list[Path]) -> Plan | None:
    """The plan grown by what the time left buys (`grow_plan`), re-planned on the epochs the last
    trained run actually took; saved in the state so that a resumed run continues it."""
    from podium.rundir import read_summary

    last = read_summary(fold_dir(member_dirs[-1], plan.trained_folds[-1]))
    ratio = speed_ratio(last.get("epoch_times_s") or [], plan.members[-1].fold_epoch_s(plan.folds))
    if ratio is None:
        return None
    first = read_summary(fold_dir(member_dirs[0], 0))
    grown = grow_plan(plan, preset, spent_s=run.state.spent, ratio=ratio,
                      epochs_done=int(first.get("epochs_trained") or plan.epochs))
    if grown is None:
        return None
    run.log(grown.stages[-1])
    run.log(f"plan: {grown.describe()}")
    if grown.mode != plan.mode:  # the holdout member is now a cv member: recorded again once its folds are done
        for d in member_dirs:
            run.state.record.get("steps", {}).pop(f"member:{d.name}", None)
    run.state.record["plan"] = grown.to_dict()
    run.state.save()
    return grown


def _extras(run: _Run, plan: Plan, member_dirs: list[Path]) -> list[dict]:
    """Each member's measured extras: TTA on its held-out or OOF rows, its test predictions, and
    for a holdout + refit plan the refit on every image."""
    if plan.mode != "holdout":
        return [_member_extras(mdir, run.state, run.classes, run.test, run.progress, run.log) for mdir in member_dirs]
    members = [_holdout_extras(mdir, run.state, run.classes, None if plan.refit else run.test, run.progress, run.log)
               for mdir in member_dirs]
    if plan.refit:
        members = [_refit(run, plan, m) for m in members]
    return members


def _refit(run: _Run, plan: Plan, member: dict) -> dict:
    """The holdout member refit on every image for the epochs its holdout run trained (AutoGluon's
    refit_full), with ``train.monitor=epoch`` (its validation part is in its training data, so the
    last epoch is its model); the test set is predicted by it, with TTA where the holdout's
    held-out images said it pays. The member's held-out predictions stay the holdout run's."""
    mdir = Path(member["dir"])
    key = f"refit:{mdir.name}"
    rec = run.state.step(key)
    if rec is None:
        rec = _train_refit(run, plan, mdir)
        if run.test is not None:
            rec["test"] = _member_test(Path(rec["dir"]), run.test, TTA_VIEWS if member["kept"] else None,
                                       mdir / "refit-test", run.progress)
        run.state.done(key, rec)
    out = {**member, "model": rec["dir"], "refit": rec}
    if "test" in rec:
        out["test"] = rec["test"]
    return out


def _train_refit(run: _Run, plan: Plan, mdir: Path) -> dict:
    """The refit run itself: reused when finished, continued when interrupted."""
    from podium.evaluation.cv import train_refit
    from podium.model.training import train
    from podium.rundir import read_summary

    c, rdir = plan.members[0], mdir / "refit"
    epochs = int(read_summary(fold_dir(mdir, 0)).get("epochs_trained") or plan.epochs)
    reserve = MEMBER_OVERHEAD_S + EXTRAS_SAFETY * extras_s(c, plan.folds, True, plan.test_ratio) + FINAL_OVERHEAD_S
    max_s = max(plan.budget_s - run.state.spent - reserve, refit_epoch_s(c, plan.folds) * 1.5 + 5)
    if is_finished_run(rdir):
        run.log(f"{mdir.name} refit: finished earlier, reused")
    elif rdir.is_dir() and any(rdir.iterdir()):
        run.log(f"{mdir.name} refit: interrupted earlier, continued")
        train(None, resume=rdir, progress=run.progress, log=run.log)
    else:
        rcfg = run.member_config(plan, c, mdir.name, max_s, f"train.epochs={epochs}", "train.monitor=epoch")
        run.log(f"{mdir.name} refit on every image: {epochs} epochs, the holdout run's (max {max_s:.0f}s)")
        train_refit(rcfg, mdir, name="refit", progress=run.progress, log=run.log)
    return {"dir": str(rdir), "epochs": epochs, "epochs_trained": read_summary(rdir).get("epochs_trained")}


def _macro_f1(table: pd.DataFrame, classes: list[str]) -> float:
    from podium.data.dataset import encode_labels
    from podium.evaluation.scores import macro_f1

    y = encode_labels(table["target"], classes, "held-out predictions")
    return macro_f1(y, table[classes].to_numpy().argmax(1), len(classes))


def _member_extras(mdir: Path, state: _State, classes: list[str], test, progress: bool, log) -> dict:
    """The member's OOF score, TTA measured on its OOF images (kept when the gain is > 0), and
    its test probabilities (with TTA where kept)."""
    from podium.evaluation.cv import oof_tta

    key = f"tta:{mdir.name}"
    rec = state.step(key)
    if rec is None:
        r = oof_tta(mdir, TTA_VIEWS, progress=progress)
        kept = bool(r["gain"] > 0)
        rec = {"views": TTA_VIEWS, "macro_f1_plain": r["macro_f1_plain"], "macro_f1_tta": r["macro_f1_tta"],
               "gain": r["gain"], "kept": kept, "oof": str(Path(r["out_dir"]) / OOF_FILE) if kept else str(mdir / OOF_FILE)}
        if test is not None:
            rec["test"] = _member_test(mdir, test, TTA_VIEWS if kept else None,
                                       Path(r["out_dir"]) if kept else mdir / "plain", progress)
        log(f"{mdir.name}: TTA {'+'.join(TTA_VIEWS)} OOF macro F1 {r['macro_f1_plain']:.4f} -> {r['macro_f1_tta']:.4f} "
            f"({'kept' if kept else 'dropped'})")
        state.done(key, rec)
    return {"name": mdir.name, "dir": str(mdir), **rec,
            "macro_f1": rec["macro_f1_tta"] if rec["kept"] else rec["macro_f1_plain"]}


def _holdout_extras(mdir: Path, state: _State, classes: list[str], test, progress: bool, log) -> dict:
    """A holdout run's score on its held-out part, TTA measured there (kept when the gain is > 0),
    and its test probabilities (with TTA where kept). The run folder (fold 0) is the model."""
    from podium.inference.predict import predict_frame
    from podium.inference.predictor import load_predictor

    run = fold_dir(mdir, 0)
    key = f"tta:{mdir.name}"
    rec = state.step(key)
    if rec is None:
        val = read_val_predictions(run)
        probs = predict_frame(load_predictor(run, tta=["identity", *TTA_VIEWS]), val, progress=progress)
        tta = val.drop(columns=classes).join(pd.DataFrame(probs, columns=classes, index=val.index))
        tta["prediction"] = np.asarray(classes)[probs.argmax(1)]
        plain_f1, tta_f1 = _macro_f1(val, classes), _macro_f1(tta, classes)
        kept = bool(tta_f1 - plain_f1 > 0)
        out = mdir / "tta" / _slug("+".join(["identity", *TTA_VIEWS]) + "_mean")
        write_parquet(out / OOF_FILE, tta)
        rec = {"views": TTA_VIEWS, "macro_f1_plain": plain_f1, "macro_f1_tta": tta_f1, "gain": tta_f1 - plain_f1,
               "kept": kept, "oof": str(out / OOF_FILE) if kept else str(run / VAL_PREDICTIONS_FILE),
               "n_held_out": len(val)}
        if test is not None:
            rec["test"] = _member_test(run, test, TTA_VIEWS if kept else None, out if kept else mdir / "plain", progress)
        log(f"{mdir.name}: TTA {'+'.join(TTA_VIEWS)} macro F1 on the {len(val)} held-out images {plain_f1:.4f} -> "
            f"{tta_f1:.4f} ({'kept' if kept else 'dropped'})")
        state.done(key, rec)
    from podium.rundir import read_summary

    return {"name": mdir.name, "dir": str(mdir), "model": str(run), **rec,
            "epochs_trained": read_summary(run).get("epochs_trained"),
            "macro_f1": rec["macro_f1_tta"] if rec["kept"] else rec["macro_f1_plain"]}


def _member_test(source: Path, test, views, out_dir: Path, progress: bool) -> str:
    """Test probabilities of ``source`` (a cv member's fold models averaged, or one run) with the
    ``views`` (None: the plain image), written to ``out_dir``."""
    from podium.inference.predict import predict_probabilities
    from podium.inference.predictor import load_predictor

    tta = ["identity", *views] if views else []  # [] = the plain image (None would be the run's predict.tta)
    frame, probs, _ = predict_probabilities(load_predictor(source, tta=tta), test, progress=progress)
    predictor_classes = pd.DataFrame(probs, columns=_classes_of(source))
    path = out_dir / TEST_PROBABILITIES_FILE
    write_parquet(path, pd.concat([pd.DataFrame({"id": frame["id"].astype(str).to_numpy()}), predictor_classes], axis=1))
    return str(path)


def _classes_of(source: Path) -> list[str]:
    from podium.rundir import CV_FILE, read_classes

    return read_cv_meta(source)["classes"] if (source / CV_FILE).is_file() else read_classes(source)


def _choose_final(folder: Path, members: list[dict], state: _State, test, log) -> dict:
    """The ensemble (weights fitted on OOF for macro F1) when it beats the best member on the
    nested split, else the best member."""
    best = max(members, key=lambda m: m["macro_f1"])
    pick = {"kind": "member", "name": best["name"], "model": best.get("model", best["dir"]), "oof": best["oof"],
            "test": best.get("test"), "oof_macro_f1": best["macro_f1"]}
    if len(members) < 2:
        return {**pick, "ensemble": "one member: no ensemble"}
    rec = state.step("ensemble")
    if rec is None:
        from podium.evaluation.ensemble_runs import ensemble_members

        final_dir, partial = folder / "ensemble", folder / "ensemble.partial"
        for d in (final_dir, partial):
            if d.exists():
                shutil.rmtree(d)  # a half-written ensemble of an interrupted attempt: made again
        r = ensemble_members([m["dir"] for m in members], "weighted", out=partial,
                             test_probs=[m["test"] for m in members] if test is not None else None)
        partial.rename(final_dir)
        nested = r.get("nested", {})
        rec = {"beats_best_member": bool(r.get("beats_best_member", False)), "nested": nested,
               "weights": r.get("weights"), "oof_macro_f1": r.get("oof_macro_f1"), "dir": str(final_dir)}
        log(f"ensemble: nested macro F1 {nested.get('ensemble_nested_f1', float('nan')):.4f} vs best member "
            f"{nested.get('best_member_nested_f1', float('nan')):.4f}: "
            f"{'kept' if rec['beats_best_member'] else 'refused (does not beat the best member)'}")
        state.done("ensemble", rec)
    if not rec["beats_best_member"]:
        return {**pick, "ensemble": f"refused: nested macro F1 gain {rec['nested'].get('gain', 0):+.4f} <= 0",
                "ensemble_record": rec}
    d = Path(rec["dir"])
    return {"kind": "ensemble", "name": "ensemble", "model": str(d), "oof": str(d / OOF_FILE),
            "test": str(d / TEST_PROBABILITIES_FILE) if test is not None else None,
            "oof_macro_f1": rec["oof_macro_f1"], "ensemble": "kept: beats the best member on the nested split",
            "ensemble_record": rec}


def _finish(folder: Path, cfg, plan: Plan, state: _State, classes: list[str], final: dict, members: list[dict],
            test, export: bool, log) -> AutoResult:
    from podium.data.dataset import encode_labels
    from podium.evaluation.biases import apply_logit_biases, nested_bias_gain
    from podium.evaluation.cv import write_test_outputs
    from podium.rundir import read_config

    oof = read_table(final["oof"], "the final OOF predictions")
    y = encode_labels(oof["target"], classes, "OOF predictions")
    probs = oof[classes].to_numpy(dtype=np.float64)
    biases = state.step("biases")
    if biases is None:
        try:
            r = nested_bias_gain(probs, y, len(classes), seed=cfg.train.seed)
            biases = {"biases": [float(b) for b in r["biases"]], "gain": float(r["gain"]), "p_gain": r["p_gain"],
                      "f1_before": float(r["f1_before"]), "f1_after": float(r["f1_after"]), "kept": r["recommended"]}
        except PodiumError as exc:  # too few OOF rows to measure a nested gain: not measured, so not applied
            biases = {"kept": False, "skipped": str(exc)}
        state.done("biases", biases)
    log("per-class biases: " + (f"nested gain {biases['gain']:+.4f}, > 0 in {biases.get('p_gain', float('nan')):.0%} of "
                                 f"bootstrap resamples ({'kept' if biases['kept'] else 'dropped'})"
                                 if "gain" in biases else f"not measured ({biases['skipped']})"))
    summary: dict = {
        "budget_s": plan.budget_s, "preset": plan.preset, "plan": plan.to_dict(), "plan_text": plan.describe(),
        "mode": plan.mode, "single_epochs": plan.single_epochs,
        "oof_kind": ("the holdout run's held-out part" if plan.mode == "holdout" else "out-of-fold"),
        "members": members, "final": final, "tta_views": TTA_VIEWS, "biases": biases,
        "oof_macro_f1": final["oof_macro_f1"], "classes": classes,
        "config": json.loads(cfg.model_dump_json()),
        "member_configs": {m["name"]: str(fold_dir(m["dir"], 0) / CONFIG_FILE) for m in members},
    }
    write_parquet(folder / OOF_FILE, oof)
    if test is not None and final.get("test"):
        table = read_table(final["test"], "the final test probabilities")
        tp = table[classes].to_numpy(dtype=np.float64)
        if biases["kept"]:
            tp = apply_logit_biases(tp, biases["biases"])
        sub_cfg = read_config(fold_dir(members[0]["dir"], 0)).output.submission
        summary.update(write_test_outputs(folder, table["id"].astype(str), tp, classes, sub_cfg))
    if export:
        summary["export"] = _export(folder, final, log)
    else:
        summary["export"] = "not asked (--no-export)"
    summary["spent_s"] = state.spent
    summary["within_budget"] = bool(summary["spent_s"] <= plan.budget_s * 1.10)
    write_json(folder / AUTO_FILE, summary)
    state.save()
    log(f"auto done in {summary['spent_s']:.0f}s of {plan.budget_s:.0f}s: OOF macro F1 {final['oof_macro_f1']:.4f} "
        f"({final['kind']} {final['name']})")
    return AutoResult(folder, plan, summary)


def _export(folder: Path, final: dict, log) -> str:
    """One ONNX file of the final model (an ensemble exports as one graph of its members)."""
    from podium.deploy.export import export

    target = folder / "model.onnx"
    if target.is_file():
        return str(target)
    try:
        export(final["model"], "onnx", out=target, log=lambda *a: None)
    except PodiumError as exc:
        log(f"export skipped: {exc}")
        return f"not exported: {exc}"
    note = " (without TTA and biases: the submission has them where they paid)"
    log(f"exported {target}{note}")
    return str(target) + note
