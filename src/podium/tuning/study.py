"""`podium tune`: an Optuna study whose trials are normal podium runs.

Study folder ``<root>/<study>/``::

    study.db                SQLite storage (default; --storage points elsewhere)
    trial_<n>/              each trial a normal run folder (or a cv folder with --folds)
    tune.log                what the trials' training printed, prefixed by trial number
    trials.csv              number, state, value, params, duration, epochs run, run folder, error
    best_config.yaml        the best trial's full config: `podium train best_config.yaml` retrains it
    study.json              best trial, value, counts, storage, sampler, pruner
    report.html             Optuna's plots (history, importances, parallel coordinates, intermediate
                            values) in one offline page

Everything distributed is Optuna's own: any storage URL (``postgresql://``), a
journal file for shared file systems, RDB heartbeats with
``RetryFailedTrialCallback`` so a killed worker's trial is failed and re-queued
(a journal file, which has no heartbeats, by the trial's recorded worker PID and host),
and ``MaxTrialsCallback`` for the study-wide total. ``--trials N`` is the
study's total of finished (complete or pruned) trials across every process:
a process only starts a trial while finished + running trials are below N,
and waits for the others' running trials (re-queuing them if their worker
died) before it leaves.
"""
from __future__ import annotations

import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from podium.errors import PodiumError, lookup
from podium.schema import deep_merge, parse_overrides, read_yaml, validate_config
from podium.tuning.results import TuneResult, retry_callback_class  # noqa: F401 (re-exported)
from podium.tuning.results import redact as _redact
from podium.tuning.space import SearchParam, apply_values, parse_search, split_search

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")
DB_FILE = "study.db"
LOG_FILE = "tune.log"


class TrialFailed(Exception):
    """A trial raised (divergence, out of memory...): recorded as FAILED, the study goes on."""


class SurplusTrial(Exception):
    """Another worker started the study's last trial at the same moment; this one does not run."""


@dataclass
class TuneSettings:
    """Everything a worker process needs to join the study (picklable for --jobs)."""

    study_name: str
    study_dir: Path
    storage: str | None
    base: dict
    params: list[SearchParam]
    trials: int
    direction: str
    monitor: str
    folds: int | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    seed: int = 42
    timeout: float | None = None
    heartbeat: int = 60
    prune_startup: int = 5
    max_epochs: int = 1
    worker: int = 0
    keep_best: int = 1

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.study_dir / DB_FILE).resolve()}"

    @property
    def uses_heartbeat(self) -> bool:
        return "://" in self.storage_url and self.heartbeat > 0


# ---------------------------------------------------------------- public entry point


def tune(config: str | Path | dict, *, trials: int, overrides: list[str] | None = None, study: str | None = None,
         root: str | Path = "studies", storage: str | None = None, folds: int | None = None,
         sampler: str = "tpe", pruner: str = "median", seed: int | None = None, timeout: float | None = None,
         jobs: int = 1, heartbeat: int = 60, prune_startup: int = 5, live: bool = False,
         log: Callable[[str], None] = print) -> TuneResult:
    """Run (or join, or resume) the study ``study`` until it holds ``trials`` finished trials.

    ``config`` is a tune YAML (a podium config plus ``search:``) or the same as a dict.
    Every search key and range is validated before the first trial starts.
    """
    settings = prepare_settings(config, trials=trials, overrides=overrides, study=study, root=root, storage=storage,
                                folds=folds, sampler=sampler, pruner=pruner, seed=seed, timeout=timeout,
                                heartbeat=heartbeat, prune_startup=prune_startup)
    if jobs < 1:
        raise PodiumError(f"jobs must be >= 1, found {jobs}")
    _quiet_optuna()
    optuna_study = open_study(settings)  # creates the study (and fails on a mismatch) before any worker starts
    log(f"study {settings.study_name!r}: {settings.study_dir} (storage {_redact(settings.storage_url)}), "
        f"{settings.trials} trials in total, {len(settings.params)} searched key(s), "
        f"sampler {settings.sampler}, pruner {settings.pruner}")
    display = LiveTrials(optuna_study, settings) if live else None
    from podium.tuning.outputs import write_outputs

    finished = False
    try:
        if display:
            display.start()
        if jobs == 1:
            run_worker(settings)
        else:
            run_worker_processes(settings, jobs)
        finished = True
    finally:
        if display:
            display.stop()
        try:  # also after an error or Ctrl-C: the table and plots of what ran so far
            result = write_outputs(optuna_study, settings)
        except Exception:
            if finished:
                raise
    log(_describe(result))
    return result


def prepare_settings(config: str | Path | dict, *, trials: int, overrides: list[str] | None = None,
                     study: str | None = None, root: str | Path = "studies", storage: str | None = None,
                     folds: int | None = None, sampler: str = "tpe", pruner: str = "median",
                     seed: int | None = None, timeout: float | None = None, heartbeat: int = 60,
                     prune_startup: int = 5) -> TuneSettings:
    """Read and validate the tune config and options; nothing is trained or written."""
    raw = dict(config) if isinstance(config, dict) else read_yaml(config)
    if overrides:
        raw = deep_merge(raw, parse_overrides(overrides))
    base, search = split_search(raw)
    cfg = validate_config(base)  # the config itself first, so search errors are about the search
    params = parse_search(search, base)
    lookup({s: s for s in SAMPLERS}, sampler, "sampler")
    lookup({p: p for p in PRUNERS}, pruner, "pruner")
    if trials < 1:
        raise PodiumError(f"trials must be >= 1, found {trials}")
    if folds is not None and folds < 2:
        raise PodiumError(f"--folds needs at least 2 folds, found {folds}")
    if sampler == "grid":
        for p in params:
            p.grid_values()  # fails early on a continuous range
    name = study or cfg.output.name
    if not name or "/" in name or name.startswith("."):
        raise PodiumError(f"study name {name!r} must be a plain folder name, e.g. --study lr-search")
    epochs = [p.high for p in params if p.key == "train.epochs" and p.kind == "int"]
    epochs += [max(p.choices) for p in params if p.key == "train.epochs" and p.kind == "categorical"]
    return TuneSettings(
        study_name=name, study_dir=Path(root) / name, storage=_storage_spec(storage), base=base, params=params,
        trials=trials, direction="maximize" if folds or cfg.train.monitor_mode == "max" else "minimize",
        monitor="cv_macro_f1" if folds else cfg.train.monitor, folds=folds, sampler=sampler, pruner=pruner,
        seed=cfg.train.seed if seed is None else seed, timeout=timeout, heartbeat=heartbeat,
        prune_startup=prune_startup, max_epochs=int(max(epochs or [cfg.train.epochs])), keep_best=cfg.tune.keep_best)


def _storage_spec(storage: str | None) -> str | None:
    """A storage URL stays as given; anything else is a journal file path (made absolute)."""
    if storage is None or "://" in storage:
        return storage
    return str(Path(storage).resolve())


# ---------------------------------------------------------------- storage, sampler, pruner


def open_storage(settings: TuneSettings):
    """RDB storage with heartbeats and stale-trial retry, or a journal file."""
    import optuna

    url = settings.storage_url
    if "://" not in url:
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(url))
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        engine_kwargs = {"pool_pre_ping": True}
    kwargs: dict = {}
    if settings.uses_heartbeat:
        import inspect

        retry = retry_callback_class()(max_retry=3)
        names = inspect.signature(optuna.storages.RDBStorage).parameters
        callback_arg = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names else "failed_trial_callback"
        kwargs = {"heartbeat_interval": settings.heartbeat, "grace_period": 2 * settings.heartbeat, callback_arg: retry}
    try:
        return _rdb_storage(url, engine_kwargs, kwargs)
    except Exception as exc:  # bad URL, server down, missing driver
        raise PodiumError(f"cannot open the study storage {_redact(url)}: {type(exc).__name__}: {exc}. "
                          "Check the URL (e.g. postgresql://user:password@host:5432/db) and that the server runs; "
                          "PostgreSQL needs the psycopg2-binary package") from None


def _rdb_storage(url: str, engine_kwargs: dict, kwargs: dict, attempts: int = 5):
    """RDBStorage, retried when workers starting together race to create Optuna's tables
    in an empty database (the loser gets an IntegrityError; the tables then exist)."""
    import optuna
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 * (attempt + 1))


def build_sampler(settings: TuneSettings, existing_trials: int = 0):
    """TPE (default), random or grid, seeded. A process that joins a study with trials, or one of
    several workers, gets a derived seed so that it does not replay the same parameters."""
    import optuna

    seed = settings.seed + 7919 * existing_trials + settings.worker
    if settings.storage and "://" in settings.storage and not settings.storage.startswith("sqlite"):
        seed += os.getpid()  # processes on other machines joining a server study
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if settings.sampler == "grid":
        return optuna.samplers.GridSampler({p.key: p.grid_values() for p in settings.params}, seed=settings.seed)
    return optuna.samplers.TPESampler(seed=seed)


def build_pruner(settings: TuneSettings):
    """Median (default), Hyperband over epochs (folds with --folds), or none."""
    import optuna

    if settings.pruner == "none":
        return optuna.pruners.NopPruner()
    if settings.pruner == "hyperband":
        steps = settings.folds or settings.max_epochs
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, steps), reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=settings.prune_startup, n_warmup_steps=0)


def open_study(settings: TuneSettings):
    """Create the study or join the existing one of that name (resuming continues its numbering)."""
    import optuna

    storage = open_storage(settings)
    try:
        existing = optuna.load_study(study_name=settings.study_name, storage=storage)
        n_existing = len(existing.trials)
    except KeyError:
        n_existing = 0
    study = optuna.create_study(storage=storage, study_name=settings.study_name, direction=settings.direction,
                                sampler=build_sampler(settings, n_existing), pruner=build_pruner(settings),
                                load_if_exists=True)
    found = study.direction.name.lower()
    if found != settings.direction:
        raise PodiumError(f"study {settings.study_name!r} in {_redact(settings.storage_url)} was created to {found} "
                          f"its objective, but {settings.monitor} should be {settings.direction}d; use another --study "
                          "name, or the train.monitor the study was made with")
    return study


# ---------------------------------------------------------------- the worker loop


def run_worker(settings: TuneSettings) -> None:
    """Run trials in this process until the study holds ``settings.trials`` finished trials."""
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    _quiet_optuna()
    study = open_study(settings)
    settings.study_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.time() + settings.timeout if settings.timeout else None
    if not wait_for_slot(study, settings, deadline):
        return
    study.optimize(
        Objective(settings), n_trials=2 * settings.trials, timeout=settings.timeout, catch=(TrialFailed, SurplusTrial),
        callbacks=[MaxTrialsCallback(settings.trials, states=(TrialState.COMPLETE, TrialState.PRUNED)),
                   SlotGate(settings, deadline), KeepBest(settings)])


def finished_and_running(study) -> tuple[int, list[int]]:
    """How many trials are finished (complete or pruned), and the numbers of the running ones."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    done = sum(t.state != TrialState.RUNNING for t in trials)
    return done, [t.number for t in trials if t.state == TrialState.RUNNING]


def wait_for_slot(study, settings: TuneSettings, deadline: float | None) -> bool:
    """True when this process may start a trial; False once the study is full.

    While the other workers' running trials would fill the study, wait for them:
    if one of their workers died, its heartbeat goes stale, the trial is failed
    and re-queued, and this process runs it.
    """
    import optuna

    while True:
        if settings.uses_heartbeat:
            optuna.storages.fail_stale_trials(study)
        else:
            fail_dead_worker_trials(study)
        done, running = finished_and_running(study)
        if done >= settings.trials:
            return False
        if done + len(running) < settings.trials:
            return True
        if deadline is not None and time.time() > deadline:
            return False
        # RDB: wait for heartbeats to go stale; journal: re-check the running trials' worker processes
        time.sleep(max(0.5, settings.heartbeat / 2) if settings.uses_heartbeat else 1.0)


#: user attributes naming the process that runs a trial (how a journal study tells a dead worker)
WORKER_ATTRS = ("worker_pid", "worker_host")


def fail_dead_worker_trials(study, max_retry: int = 3) -> list[int]:
    """A journal file has no heartbeats (Optuna's JournalStorage does not implement them), so a
    RUNNING trial whose worker was killed (kill -9, OOM killer) would stay RUNNING forever and the
    study never reach its count. Each trial records its worker's PID and host: a trial of this host
    whose process is gone is failed here and re-queued with the same parameters (Optuna's
    retry callback), which the next free worker runs. Trials of other hosts cannot be judged
    and are left alone. Returns the failed trials' numbers."""
    import copy
    import socket

    import optuna
    from optuna.trial import TrialState

    from podium.rundir import pid_alive

    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        pid, where = (trial.user_attrs.get(k) for k in WORKER_ATTRS)
        if not isinstance(pid, int) or where != host or pid == os.getpid() or pid_alive(pid):
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "error", f"worker process {pid} on {host} is gone")
            if not study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL):
                continue
        except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
            continue  # another worker failed it first
        frozen = copy.deepcopy(study._storage.get_trial(trial._trial_id))
        for key in WORKER_ATTRS:  # the retry is not the dead process's until a worker takes it
            frozen.user_attrs.pop(key, None)
        retry_callback_class()(max_retry=max_retry)(study, frozen)
        failed.append(trial.number)
    return failed


class SlotGate:
    """Optuna callback after each trial: stop this process when the study is (about to be) full."""

    def __init__(self, settings: TuneSettings, deadline: float | None):
        self.settings, self.deadline = settings, deadline

    def __call__(self, study, trial) -> None:
        if not wait_for_slot(study, self.settings, self.deadline):
            study.stop()


class KeepBest:
    """Optuna callback after each trial: checkpoints of the best ``keep_best`` complete trials
    stay, every other finished trial's ``*.ckpt`` files go (a 5-trial study kept ~40 MB per trial).

    Running trials are never touched; the deletion is idempotent, so workers of one study may all
    run it. The pruned trials' metrics, logs and configs stay (a trial is retrained from its config).
    """

    def __init__(self, settings: TuneSettings):
        self.settings = settings

    def __call__(self, study, trial) -> None:
        prune_checkpoints(study, self.settings.keep_best, self.settings.direction)


def prune_checkpoints(study, keep_best: int, direction: str) -> list[Path]:
    """Delete the checkpoints of all finished trials but the ``keep_best`` best; the deleted paths."""
    from optuna.trial import TrialState

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    complete = sorted((t for t in finished if t.state == TrialState.COMPLETE and t.value is not None),
                      key=lambda t: t.value, reverse=direction == "maximize")
    keep = {t.number for t in complete[:keep_best]}
    deleted: list[Path] = []
    for t in finished:
        run_dir = t.user_attrs.get("run_dir")
        if t.number in keep or not run_dir or not Path(run_dir).is_dir():
            continue
        gone = sorted(Path(run_dir).rglob("*.ckpt"))
        for path in gone:
            path.unlink(missing_ok=True)
        deleted += gone
    return deleted


class Objective:
    """One trial = one normal run (or one cv run with --folds) of the sampled config."""

    def __init__(self, settings: TuneSettings):
        self.settings = settings

    def __call__(self, trial) -> float:
        import optuna

        s = self.settings
        done, running = finished_and_running(trial.study)
        if done + sum(n < trial.number for n in running) >= s.trials:
            trial.set_user_attr("error", f"surplus: the study already had {s.trials} trials finished or running")
            trial.study.stop()
            raise SurplusTrial(f"trial {trial.number} not run: the study is full")
        values = {p.key: p.suggest(trial) for p in s.params}
        raw = deep_merge(apply_values(s.base, values),
                         {"output": {"dir": str(s.study_dir), "name": f"trial_{trial.number}"}})
        cfg = validate_config(raw)  # a PodiumError here (an impossible combination) stops the study
        for key, value in {"run_dir": str(s.study_dir / f"trial_{trial.number}"), "error": None,
                           "epochs_run": None, "worker_pid": os.getpid(),
                           "worker_host": socket.gethostname()}.items():
            trial.set_user_attr(key, value)  # a retried trial inherits the failed one's attrs
        log = trial_logger(s.study_dir, trial.number)
        try:
            if s.folds:
                return self._cv_trial(trial, cfg, log)
            return self._train_trial(trial, cfg, log)
        except optuna.TrialPruned:
            raise
        except PodiumError as exc:  # the user's to fix (a monitor never logged, bad data): stops the study
            trial.set_user_attr("error", str(exc)[:1000])
            raise
        except Exception as exc:
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
            log(f"failed: {type(exc).__name__}: {exc}")
            raise TrialFailed(f"trial {trial.number} failed: {type(exc).__name__}: {exc}") from exc

    def _train_trial(self, trial, cfg, log) -> float:
        import optuna

        from podium.model.training import train
        from podium.tuning.pruning import TrialReporter

        reporter = TrialReporter(trial, cfg.train.monitor)
        result = train(cfg, callbacks=[reporter], progress=False, log=log)
        trial.set_user_attr("run_dir", str(result.run_dir))
        trial.set_user_attr("epochs_run", reporter.epochs_run)
        trial.set_user_attr("best_epoch", result.summary.get("best_epoch"))
        if reporter.pruned_epoch is not None:
            log(f"pruned after epoch {reporter.pruned_epoch}")
            raise optuna.TrialPruned(f"pruned after epoch {reporter.pruned_epoch}")
        value = result.summary.get("best_metric")
        if value is None or not math.isfinite(value):
            raise TrialFailed(f"the run ended without a finite {cfg.train.monitor} (found {value})")
        return float(value)

    def _cv_trial(self, trial, cfg, log) -> float:
        """Folds one at a time; the running mean of fold macro F1 is the per-step value for pruning."""
        import optuna

        from podium.evaluation.cv import run_cv
        from podium.rundir import fold_dir, read_summary

        scores, epochs, result = [], 0, None
        for fold in range(self.settings.folds):
            result = run_cv(cfg, folds=self.settings.folds, only_fold=fold, progress=False, log=log)
            summary = read_summary(fold_dir(result.run_dir, fold))
            scores.append(float(summary["val_metrics"]["f1"]))
            epochs += int(summary.get("epochs_trained") or 0)
            trial.set_user_attr("epochs_run", epochs)
            trial.report(sum(scores) / len(scores), step=fold)
            if fold < self.settings.folds - 1 and trial.should_prune():
                log(f"pruned after fold {fold}")
                raise optuna.TrialPruned(f"pruned after fold {fold}")
        trial.set_user_attr("run_dir", str(result.run_dir))
        return float(result.summary["cv_macro_f1"])


def trial_logger(study_dir: Path, number: int) -> Callable[[str], None]:
    """Training output of every trial goes to one tune.log, each line prefixed by its trial."""
    path = study_dir / LOG_FILE

    def log(message: str) -> None:
        with open(path, "a", encoding="utf-8") as f:
            for line in str(message).splitlines() or [""]:
                f.write(f"[trial {number}] {line}\n")
    return log


# ---------------------------------------------------------------- several workers on one machine


def run_worker_processes(settings: TuneSettings, jobs: int) -> None:
    """``--jobs J``: J worker processes on the same study, one GPU each when there are several."""
    import multiprocessing

    gpus = _cuda_devices()
    ctx = multiprocessing.get_context("spawn")  # fresh interpreters: no forked CUDA or torch threads
    procs = []
    for worker in range(jobs):
        device = str(gpus[worker % len(gpus)]) if len(gpus) > 1 else None
        proc = ctx.Process(target=_worker_main, args=(replace(settings, worker=worker), device),
                           name=f"podium-tune-{worker}")
        proc.start()
        procs.append(proc)
    for proc in procs:
        proc.join()
    failed = [f"{p.name} (exit {p.exitcode})" for p in procs if p.exitcode != 0]
    if failed:
        raise PodiumError(f"tuning worker(s) {', '.join(failed)} stopped with an error; see {settings.study_dir / LOG_FILE}"
                          " and the failed trials in trials.csv")


def _cuda_devices() -> list[int]:
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # no usable CUDA build
        return []


def _worker_main(settings: TuneSettings, device: str | None) -> None:
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    # a worker's output would only interleave with the parent's live table: its trials' own
    # output is in tune.log, their results in the storage
    import logging

    warnings.simplefilter("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        run_worker(settings)
    except PodiumError as exc:
        import sys

        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


# ---------------------------------------------------------------- display


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are in trials.csv and tune.log
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class LiveTrials:
    """A rich table of the study's trials, refreshed from the storage while it runs."""

    def __init__(self, study, settings: TuneSettings, every: float = 2.0):
        self.study, self.settings, self.every = study, settings, every
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = None

    def start(self) -> None:
        from rich.live import Live

        from podium.quiet import plain_output
        from podium.tuning.outputs import trials_table

        if plain_output():  # a file or pipe records every redraw: the table is printed once, at the end
            return
        self._live = Live(trials_table(self.study, self.settings), refresh_per_second=1, transient=False)
        self._live.start()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="podium-tune-table")
        self._thread.start()

    def _loop(self) -> None:
        from podium.tuning.outputs import trials_table

        while not self._stop.wait(self.every):
            try:
                self._live.update(trials_table(self.study, self.settings))
            except Exception:  # a storage hiccup must not kill the display; the next refresh retries
                continue

    def stop(self) -> None:
        from podium.tuning.outputs import trials_table

        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        if self._live:
            try:
                self._live.update(trials_table(self.study, self.settings))
            finally:
                self._live.stop()
        else:
            from podium.cli.common import console

            console().print(trials_table(self.study, self.settings))


def _describe(result: TuneResult) -> str:
    counts = ", ".join(f"{v} {k.lower()}" for k, v in result.counts.items() if v)
    if result.best_trial is None:
        return f"no trial completed ({counts or 'no trials'}); see {result.trials_csv}"
    return (f"best trial {result.best_trial}: {result.best_value:.4f} with {result.best_params}\n"
            f"trials: {counts}\nbest config: {result.best_config} (retrain: podium train {result.best_config})\n"
            f"trials table: {result.trials_csv}\nplots: {result.report}")
