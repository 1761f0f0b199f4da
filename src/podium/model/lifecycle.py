"""A run's life in its folder: where a resume continues, and what status.json says.

`resume_point` checks a run folder before `--resume` touches it: last.ckpt is read
with the one safe checkpoint reader (a corrupt file, one with pickled objects or
one of another class count is refused with a clear message), a finished run is
refused unless more epochs are asked for, and the epoch to continue with is
taken from the checkpoint (the DataLoader needs it before Lightning restores it).

`recorded_run` brackets training: ``running`` at the start, ``interrupted``
(SIGINT/SIGTERM: `RunInterrupted`, exit 130/143, resumable), ``failed`` with the
error for any other exception (then re-raised); the caller writes ``finished``.
"""
from __future__ import annotations

import csv
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from podium.errors import PodiumError, RunInterrupted
from podium.fileio import write_text
from podium.rundir import CONFIG_FILE, METRICS_FILE, RunInfo, read_status, write_status
from podium.schema import PodiumConfig, config_to_yaml

SIGNAL_EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}


@dataclass
class ResumePoint:
    cfg: PodiumConfig
    checkpoint: Path
    start_epoch: int  # the first epoch the resumed run trains (= epochs completed)
    extended: bool = False  # train.epochs was raised: the schedule is stretched to the new length
    shapes: dict = field(default_factory=dict)  # last.ckpt's weight shapes: checked against the model built


def resume_point(info: RunInfo, epochs: int | None = None) -> ResumePoint:
    """Validate ``info``'s last.ckpt and decide where training continues.

    ``epochs`` (``train.epochs=M`` on the command line) extends a run; a finished run
    is only resumed with more epochs than it has, so its summary is never replaced
    by a shorter one.
    """
    from podium.model.checkpoints import checkpoint_model_name, read_checkpoint
    from podium.model.serialization import state_shapes

    path = info.checkpoint("last")
    ckpt = read_checkpoint(path)
    classes = list((ckpt.get("hyper_parameters") or {}).get("classes", []))
    if classes != list(info.classes):
        raise PodiumError(
            f"cannot resume {info.dir}: {path} was trained on {len(classes)} classes {classes[:10]}, but the "
            f"run's classes.json lists {len(info.classes)}: {info.classes[:10]}. The checkpoint belongs to "
            "another run; restore this run's last.ckpt or start a new run")
    done = completed_epochs(ckpt)
    cfg = info.config
    found = checkpoint_model_name(ckpt)
    if found is not None and found != cfg.model.name:
        raise PodiumError(
            f"cannot resume {info.dir}: {path} holds a {found} model, but the run's config.yaml names "
            f"model.name={cfg.model.name}. The checkpoint belongs to another run; restore this run's last.ckpt "
            "or start a new run")
    if epochs is not None and epochs <= done:
        raise PodiumError(f"cannot resume {info.dir} with train.epochs={epochs}: it has already trained {done} "
                          f"epoch(s); ask for more, e.g. train.epochs={done + max(1, cfg.train.epochs // 2)}")
    if epochs is None and done >= cfg.train.epochs:
        # Resuming would train nothing and rewrite summary.json without a best metric.
        state = read_status(info.dir)["status"]
        raise PodiumError(
            f"{info.dir} already finished at epoch {done} (train.epochs={cfg.train.epochs}, status {state}); "
            f"nothing to resume. Use `podium train --resume {info.dir} train.epochs=M` with M > {done} to extend it")
    extended = epochs is not None and epochs != cfg.train.epochs
    if extended:  # config.yaml says so once every check has passed (`record_extension`)
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": epochs})})
    return ResumePoint(cfg, path, done, extended, shapes=state_shapes(ckpt["state_dict"]))


def record_extension(run_dir: Path, cfg: PodiumConfig) -> None:
    """An extended run's config.yaml names the epochs it now trains to; written when training
    starts, so a resume refused after `resume_point` (a checkpoint that does not fit the model)
    leaves the run as it was."""
    write_text(Path(run_dir) / CONFIG_FILE, config_to_yaml(cfg))


#: scheduler state that is a position in the run (kept on extension), not the schedule's shape
_POSITION_KEYS = {"last_epoch", "_step_count", "last_step", "scale", "best", "bad_epochs"}


class ExtendSchedule(Callback):
    """An extended run (``train.epochs`` raised on resume) follows the schedule of its new length
    from where it is, instead of the restored one that ended at the old last epoch (a cosine
    schedule would otherwise train every extra epoch at ``train.min_lr``)."""

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        # Runs before Lightning loads the states into the schedulers built for the new length.
        checkpoint["lr_schedulers"] = [{k: v for k, v in state.items() if k in _POSITION_KEYS}
                                       for state in checkpoint.get("lr_schedulers", [])]

    def on_train_start(self, trainer, pl_module) -> None:
        for config in trainer.lr_scheduler_configs:
            if hasattr(config.scheduler, "step_update"):  # per-update schedules: set this step's lr now
                config.scheduler.step_update(trainer.global_step)


def completed_epochs(ckpt: dict) -> int:
    """Epochs a Lightning checkpoint has completed: the epoch its fit continues with."""
    try:
        return int(ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except (KeyError, TypeError, ValueError):
        return int(ckpt.get("epoch", -1)) + 1


def epochs_in_metrics(run_dir: Path) -> int:
    """Completed epochs as metrics.csv records them (one row each)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return 0
    with path.open() as f:
        return sum(1 for _ in csv.DictReader(f))


class _Terminated(BaseException):
    """SIGTERM outside ``trainer.fit`` (data preparation, final report)."""


class RunRecorder:
    """State shared between `recorded_run` and the training code."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.run_dir, self.enabled = Path(run_dir), enabled
        self.fitting = False  # Lightning handles SIGTERM itself inside fit (stops at a batch boundary)
        self.outcome = None   # guards.RunOutcome: the exception Lightning saw

    def status(self, status: str, **info) -> None:
        if self.enabled:
            write_status(self.run_dir, status, **info)


def _signal_name(exc: BaseException, seen: BaseException | None) -> str | None:
    """SIGINT/SIGTERM if ``exc`` (or what Lightning saw before it exited) came from one."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    for candidate in (exc, seen):
        if isinstance(candidate, (SIGTERMException, _Terminated)):
            return "SIGTERM"
        if isinstance(candidate, KeyboardInterrupt):
            return "SIGINT"
    return None


@contextmanager
def recorded_run(run_dir: Path, enabled: bool = True):
    """Bracket a run with status.json records; turn signals into `RunInterrupted`."""
    recorder = RunRecorder(run_dir, enabled)
    recorder.status("running", pid=os.getpid(), epoch=epochs_in_metrics(run_dir))
    previous = None
    if enabled and threading.current_thread() is threading.main_thread():
        def on_sigterm(signum, frame):
            if not recorder.fitting:
                raise _Terminated()

        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield recorder
    except BaseException as exc:
        name = _signal_name(exc, getattr(recorder.outcome, "exception", None))
        epoch = epochs_in_metrics(run_dir)
        if name is not None:
            recorder.status("interrupted", signal=name, epoch=epoch)
            raise RunInterrupted(
                f"training stopped by {name} after {epoch} completed epoch(s); {run_dir} is recorded as "
                f"interrupted and resumable: podium train --resume {run_dir} (it continues from the last "
                "completed epoch; progress within the current epoch is discarded)",
                SIGNAL_EXIT_CODES[name]) from None
        recorder.status("failed", error=f"{type(exc).__name__}: {exc}"[:2000], epoch=epoch)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
