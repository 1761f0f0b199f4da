"""Run folders: created once, never overwritten, self-describing.

A run folder holds everything needed to reproduce, resume, predict with and
report on a run: the resolved config, the class map, the normalization, the
seed, library versions and the git commit, next to the checkpoints. A
cross-validation folder holds k run folders (``fold<k>``) and their
out-of-fold table; an ensemble folder names its members and their weights.

This module is the one owner of those layouts: every file name of the
contract is a constant here, and the typed readers below are how every other
module reads a run, a cv run or an ensemble folder. A damaged file is a
`PodiumError` naming it, never a traceback.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from podium.errors import PodiumError
from podium.fileio import write_json, write_text
from podium.schema import PodiumConfig, config_to_yaml, load_config

if TYPE_CHECKING:
    import pandas as pd

# ---------------------------------------------------------------- the contract: file names

CONFIG_FILE = "config.yaml"          # the resolved config
CLASSES_FILE = "classes.json"        # class map, normalization, seed
SUMMARY_FILE = "summary.json"        # best metric and epoch, wall time, versions (finished runs)
STATUS_FILE = "status.json"          # running / finished / interrupted / failed
LOCK_FILE = "run.lock"               # held (fcntl lock) by the one process writing the run; PID, host, start
SPLIT_FILE = "split.csv"             # the exact train/validation split
METRICS_FILE = "metrics.csv"         # one row per epoch
VAL_PREDICTIONS_FILE = "val_predictions.parquet"  # the best checkpoint's validation prediction table
PER_CLASS_FILE = "per_class.csv"
CONFUSION_FILE = "confusion_matrix.csv"
METRICS_JSON_FILE = "metrics.json"        # the headline metrics of validation or an evaluation
BEST_CHECKPOINT = "best.ckpt"
LAST_CHECKPOINT = "last.ckpt"
EPOCHS_DIR = "epochs"                # per-epoch checkpoints (train.save_epoch_checkpoints)
BIASES_FILE = "logit_biases.json"    # per-class macro-F1 logit biases (cv-biases)
ORDINAL_CUTS_FILE = "ordinal_cuts.json"
SOFT_TARGETS_FILE = "soft_targets.parquet"  # training rows' soft targets (distillation, pseudo-labels)
CV_FILE = "cv.json"                  # a cv folder: k, seed, classes, data, grouped
FOLDS_FILE = "folds.csv"             # the fold of every image
OOF_FILE = "oof_predictions.parquet"  # every image once, predicted by the fold that never trained on it
CV_SUMMARY_FILE = "cv_summary.json"
FOLD_TEST_FILE = "test_predictions.parquet"   # one fold's probabilities on the --test images
TEST_PROBABILITIES_FILE = "test_probabilities.parquet"  # fold- or member-averaged test probabilities
SUBMISSION_FILE = "submission.csv"
PROBABILITIES_FILE = "probabilities.parquet"
ENSEMBLE_FILE = "ensemble.json"      # an ensemble folder: members, method, weights, classes
SCORES_FILE = "scores.csv"
AUTO_FILE = "auto.json"             # an auto folder's result: plan, kept steps, scores, time spent
AUTO_STATE_FILE = "auto_state.json"  # an auto folder's progress (resume): plan, finished steps, seconds spent
PREDICTIONS_DIR = "predictions"
EVALUATIONS_DIR = "evaluations"
EXPORTS_DIR = "exports"

FolderKind = Literal["run", "cv", "ensemble"]


def create_run_dir(parent: str | Path, name: str) -> Path:
    """``parent/name``, or ``name-2``, ``name-3``... when taken (atomic mkdir, no races).
    Under DDP only rank 0 calls it (`podium.model.distributed`)."""
    return next_free_dir(Path(parent), name)


def git_commit(cwd: str | Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("podium", "torch", "torchvision", "timm", "lightning", "torchmetrics", "albumentations",
                "numpy", "pandas", "scikit-learn", "pillow", "opencv-python-headless"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


@dataclass
class RunInfo:
    """What a finished (or interrupted) run folder says about itself."""

    dir: Path
    config: PodiumConfig
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    meta: dict

    def checkpoint(self, which: str = "best") -> Path:
        """``best`` (`best_checkpoint`), ``last``, or a path to another checkpoint file."""
        if which == "best":
            return best_checkpoint(self.dir)
        path = self.dir / LAST_CHECKPOINT if which == "last" else Path(which)
        if not path.is_file():
            raise PodiumError(_missing_checkpoint(self.dir, path))
        return path


def _missing_checkpoint(run_dir: Path, path: Path) -> str:
    others = sorted(p.name for p in run_dir.glob("*.ckpt"))
    return (f"checkpoint {path} not found; {run_dir} has {others or 'no checkpoints'}. "
            "Was training interrupted before the first epoch ended?")


def save_run_files(run_dir: Path, cfg: PodiumConfig, classes: list[str], mean, std, extra: dict) -> None:
    write_text(run_dir / CONFIG_FILE, config_to_yaml(cfg))
    write_json(run_dir / CLASSES_FILE, {
        "classes": list(classes),
        "normalization": {"mean": list(mean), "std": list(std)},
        **extra,
    })


def load_run(run_dir: str | Path) -> RunInfo:
    """A single run folder (config.yaml and classes.json checked), read once."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PodiumError(f"run folder not found: {run_dir}")
    for needed in (CONFIG_FILE, CLASSES_FILE):
        if not (run_dir / needed).is_file():
            raise PodiumError(f"{run_dir} is not a podium run folder: {needed} is missing")
    meta = _classes_record(run_dir)
    norm = meta.get("normalization") or {}
    return RunInfo(run_dir, read_config(run_dir), list(meta["classes"]),
                   tuple(norm.get("mean", (0.485, 0.456, 0.406))), tuple(norm.get("std", (0.229, 0.224, 0.225))),
                   meta)


def next_free_dir(parent: Path, name: str) -> Path:
    """``parent/name``, else ``name-2``, ``name-3``...: created here (atomic mkdir, no races)."""
    _check_not_a_file(parent)
    parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        candidate = parent / (name if k == 1 else f"{name}-{k}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise PodiumError(f"too many outputs named {name!r} in {parent}")


def output_dir(out: str | Path | None, parent: str | Path, name: str) -> Path:
    """The one rule for every command's output folder: ``out`` when it is new or empty,
    else its next free sibling (``out-2``...); without ``out``, ``parent/name`` or its next
    free sibling. Created here, so nothing is ever overwritten."""
    if out is None:
        return next_free_dir(Path(parent), name or "output")
    out = Path(out)
    _check_not_a_file(out)
    if out.is_dir() and not any(out.iterdir()):
        return out
    return next_free_dir(out.parent, out.name)


def check_output_path(out: str | Path | None) -> None:
    """Refuse an ``--out`` that `output_dir` could never create (it, or a folder above it, is a
    file) before a command does its work, not after minutes of predicting."""
    if out is not None:
        _check_not_a_file(Path(out))


def next_free_file(path: str | Path) -> Path:
    """``path`` when no file is there, else ``stem-2.suffix``, ``stem-3.suffix``...: reserved here
    (created empty, atomically), so a file output never overwrites one (the file twin of `output_dir`)."""
    path = Path(path)
    _check_not_a_file(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        candidate = path if k == 1 else path.with_name(f"{path.stem}-{k}{path.suffix}")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return candidate
        except FileExistsError:
            continue
    raise PodiumError(f"too many files named like {path.name} in {path.parent}")


def _check_not_a_file(path: Path) -> None:
    for folder in (path, *path.parents):
        if folder.exists() and not folder.is_dir():
            raise PodiumError(f"cannot create a folder at {path}: {folder} is a file. Choose another output path")
        if folder.exists():
            return


# ---------------------------------------------------------------- typed readers


def read_json_file(path: str | Path, what: str = "file") -> dict:
    """A JSON object from ``path``; a missing, unreadable or non-object file is a PodiumError naming it."""
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise PodiumError(f"{path} not found ({what})") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise PodiumError(f"{path} is damaged ({what}): not readable JSON ({str(exc)[:120]})") from None
    if not isinstance(record, dict):
        raise PodiumError(f"{path} is damaged ({what}): expected a JSON object, found {type(record).__name__}")
    return record


def read_config(folder: str | Path) -> PodiumConfig:
    """The resolved config a run, cv run or study trial was made with."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise PodiumError(f"{folder} has no {CONFIG_FILE}: it is not a podium run or cv folder")
    return load_config(path)


def _classes_record(run_dir: Path) -> dict:
    record = read_json_file(run_dir / CLASSES_FILE, "the run's class map")
    classes = record.get("classes")
    if not isinstance(classes, list) or not classes:
        raise PodiumError(f"{run_dir / CLASSES_FILE} is damaged (the run's class map): no 'classes' list")
    return record


def read_classes(folder: str | Path) -> list[str]:
    """The class map of a run (classes.json), a cv run (cv.json) or an ensemble (ensemble.json)."""
    folder = Path(folder)
    kind = folder_kind(folder)
    if kind == "run":
        return [str(c) for c in _classes_record(folder)["classes"]]
    if kind == "cv":
        return [str(c) for c in read_cv_meta(folder)["classes"]]
    if kind == "ensemble":
        return [str(c) for c in read_ensemble(folder)["classes"]]
    raise PodiumError(f"{folder} is not a run, cv or ensemble folder (no {CLASSES_FILE}, {CV_FILE} or {ENSEMBLE_FILE})")


def read_summary(folder: str | Path) -> dict:
    """A finished run's summary.json; {} while the run has not finished."""
    path = Path(folder) / SUMMARY_FILE
    return read_json_file(path, "the run's summary") if path.is_file() else {}


def best_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint the run's validation predictions and summary come from: the one
    summary.json records (``best.ckpt``, or ``last.ckpt`` when no epoch produced a finite
    monitored value), else ``best.ckpt``."""
    run_dir = Path(run_dir)
    recorded = read_summary(run_dir).get("best_checkpoint")
    path = run_dir / Path(recorded).name if recorded else run_dir / BEST_CHECKPOINT
    if not path.is_file():
        raise PodiumError(_missing_checkpoint(run_dir, path))
    return path


def read_split(run_dir: str | Path) -> pd.DataFrame:
    """split.csv: id, path, label, [group], split (train/val) as the run was started."""
    import pandas as pd

    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        raise PodiumError(f"{path} is missing: the run's train/validation split is unknown")
    return pd.read_csv(path, dtype={"id": str, "label": str, "group": str, "path": str}, keep_default_na=False)


def read_metrics(run_dir: str | Path) -> pd.DataFrame:
    """metrics.csv (one row per epoch); empty when the run has none yet."""
    import pandas as pd

    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return pd.DataFrame()
    try:
        return pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise PodiumError(f"{path} is damaged (the run's metrics): {str(exc)[:120]}") from None


def read_table(path: str | Path, what: str) -> pd.DataFrame:
    """A prediction table (parquet); a missing or damaged file is a PodiumError naming it."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise PodiumError(f"{path} not found ({what})")
    try:
        return pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises its own types for truncated or foreign files
        raise PodiumError(f"{path} is damaged ({what}): not a readable parquet table ({str(exc)[:120]})") from None


def read_val_predictions(run_dir: str | Path) -> pd.DataFrame:
    """The best checkpoint's validation prediction table (written when the run finished)."""
    return read_table(Path(run_dir) / VAL_PREDICTIONS_FILE, "validation predictions of a finished run")


def folder_kind(folder: str | Path) -> FolderKind | None:
    """What a folder is by its contract files: a run, a cv run, an ensemble, or none of them."""
    folder = Path(folder)
    if (folder / CV_FILE).is_file():
        return "cv"
    if (folder / ENSEMBLE_FILE).is_file():
        return "ensemble"
    if (folder / CLASSES_FILE).is_file() and (folder / CONFIG_FILE).is_file():
        return "run"
    return None


def is_finished_run(run_dir: str | Path) -> bool:
    """A run whose summary and validation predictions are written (what cv folds and ensembles need)."""
    run_dir = Path(run_dir)
    return (run_dir / SUMMARY_FILE).is_file() and (run_dir / VAL_PREDICTIONS_FILE).is_file()


# ---------------------------------------------------------------- cross-validation folders


def fold_dir(cv_dir: str | Path, fold: int) -> Path:
    return Path(cv_dir) / f"fold{fold}"


def read_cv_meta(cv_dir: str | Path) -> dict:
    """cv.json: k, seed, classes, data source, grouped or not."""
    path = Path(cv_dir) / CV_FILE
    if not path.is_file():
        raise PodiumError(f"{cv_dir} is not a cross-validation folder ({CV_FILE} is missing); "
                          "create one with `podium cv CONFIG --folds K`")
    return read_json_file(path, "the cross-validation record")


def read_folds(cv_dir: str | Path) -> pd.DataFrame:
    """folds.csv: id, path, label, [group], fold."""
    import pandas as pd

    path = Path(cv_dir) / FOLDS_FILE
    if not path.is_file():
        raise PodiumError(f"{cv_dir} is not a cross-validation folder: {FOLDS_FILE} is missing")
    return pd.read_csv(path, dtype={"id": str, "label": str, "group": str, "path": str}, keep_default_na=False)


def read_cv_summary(cv_dir: str | Path) -> dict:
    """cv_summary.json once every fold is gathered; {} before."""
    path = Path(cv_dir) / CV_SUMMARY_FILE
    return read_json_file(path, "the cross-validation summary") if path.is_file() else {}


# ---------------------------------------------------------------- ensemble folders


def read_ensemble(folder: str | Path) -> dict:
    """ensemble.json: method, members, classes, weights (and what was measured)."""
    return read_json_file(Path(folder) / ENSEMBLE_FILE, "the ensemble record")


# ---------------------------------------------------------------- status

STATUSES = ("running", "finished", "interrupted", "failed")


def write_status(run_dir: str | Path, status: str, **info) -> Path:
    """Record how a run stands (running / finished / interrupted / failed) in ``status.json``,
    with details such as ``epoch``, ``error`` or ``signal``; rewritten atomically at each change.
    ``running`` also records the writer's PID and host, so readers can tell a dead writer."""
    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}; expected one of {STATUSES}")
    if status == "running":
        info = {"pid": os.getpid(), "host": socket.gethostname(), **info}
    record = {"status": status, "updated": _now(), **info}
    return write_json(Path(run_dir) / STATUS_FILE, record)


def read_status(run_dir: str | Path) -> dict:
    """The run's status record; folders from before status.json are inferred:
    summary.json -> finished, a checkpoint -> interrupted, else failed.

    A ``running`` record whose writer is gone (kill -9, a power cut: nothing could record it)
    reads as ``interrupted`` with ``reason: process gone``: the run's lock is free, or, for
    runs without a lock file, its PID no longer exists on this host. ``--resume`` continues it."""
    run_dir = Path(run_dir)
    path = run_dir / STATUS_FILE
    if path.is_file():
        try:
            record = json.loads(path.read_text())
            if isinstance(record, dict) and record.get("status") in STATUSES:
                if record["status"] == "running" and not _writer_alive(run_dir, record):
                    return {**record, "status": "interrupted", "reason": "process gone"}
                return record
        except (OSError, ValueError):
            pass
    if (run_dir / SUMMARY_FILE).is_file():
        return {"status": "finished", "inferred": True}
    if any(run_dir.glob("*.ckpt")):
        return {"status": "interrupted", "inferred": True}
    return {"status": "failed", "inferred": True}


# ---------------------------------------------------------------- one writer per run

_HELD: dict[str, int] = {}  # lock files this process holds -> their descriptors


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def _lock_free(lock: Path) -> bool:
    """Whether nobody holds ``lock`` (probed with a shared lock taken and dropped at once)."""
    import fcntl

    if str(lock.resolve()) in _HELD:
        return False
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # also drops the probe's lock


def _writer_alive(run_dir: Path, record: dict) -> bool:
    lock = run_dir / LOCK_FILE
    if lock.is_file():
        return not _lock_free(lock)
    pid, host = record.get("pid"), record.get("host")
    if isinstance(pid, int) and host in (None, socket.gethostname()):
        return pid_alive(pid)
    return True  # another machine's run without a lock file: cannot tell


def lock_holder(run_dir: str | Path) -> dict:
    """What the run's lock file says about its writer (PID, host, since); {} when unreadable."""
    lock = Path(run_dir) / LOCK_FILE
    try:
        held = _HELD.get(str(lock.resolve()))
        # never open and close the file while this process holds it: that would drop the fcntl lock
        text = os.pread(held, 4096, 0).decode() if held is not None else lock.read_text()
        record = json.loads(text or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


@contextlib.contextmanager
def run_lock(run_dir: str | Path, command: str = "train", log: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the run's writer lock for the block: a second writer (``train --resume RUN`` while
    RUN trains) is refused with the PID and host holding it. The lock is an fcntl record lock on
    ``run.lock``: the kernel drops it when its process dies however it dies (kill -9 included) and
    forked DataLoader workers do not inherit it, so a dead writer's lock is taken over, with a note."""
    import fcntl

    lock = Path(run_dir) / LOCK_FILE
    key = str(lock.resolve())
    if key in _HELD:
        raise PodiumError(f"{run_dir} is already being written by this process; one writer per run")
    previous = lock_holder(run_dir) if lock.is_file() else {}
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        held = lock_holder(run_dir)
        raise PodiumError(
            f"{run_dir} is being written by another process (PID {held.get('pid', '?')} on host "
            f"{held.get('host', '?')}, {held.get('command', 'train')} since {held.get('since', '?')}); one writer per "
            "run. Wait for it to finish or stop it, then run this again") from None
    if previous and log is not None:
        log(f"note: {run_dir}: its previous writer (PID {previous.get('pid', '?')} on {previous.get('host', '?')}) "
            "is gone; taking the run over")
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                              "since": _now()}).encode(), 0)
    _HELD[key] = fd
    try:
        yield
    finally:
        _HELD.pop(key, None)
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # a free lock with no holder recorded: the run ended cleanly
        os.close(fd)


@contextlib.contextmanager
def writing_into(folder: str | Path, command: str, target: str | Path | None = None,
                 log: Callable[[str], None] | None = None) -> Iterator[None]:
    """`run_lock` for a command other than train that writes into a run folder (report, export,
    average-checkpoints): refused while the run trains, so a report is never drawn from half a
    metrics.csv and no export or average comes from a best.ckpt being replaced. ``target``: where
    the command writes (default: the folder itself); outside the run, nothing is locked. cv runs
    and ensembles have no single writer (a cv run's folds are runs with locks of their own)."""
    folder = Path(folder)
    inside = target is None or Path(target).resolve().is_relative_to(folder.resolve())
    if inside and folder_kind(folder) == "run":
        with run_lock(folder, command, log):
            yield
    else:
        yield
