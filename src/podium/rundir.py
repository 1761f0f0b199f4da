"""Run folders: created once, never overwritten, self-describing.

A run folder holds everything needed to reproduce, resume, predict with and
report on a run: the resolved config, the class map, the normalization, the
seed, library versions and the git commit, next to the checkpoints.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from podium.schema import PodiumConfig, config_to_yaml, load_config
from podium.errors import PodiumError
from podium.fileio import write_json, write_text

RUN_DIR_ENV = "PODIUM_RUN_DIR"  # lets DDP worker processes reuse rank 0's run folder


def create_run_dir(parent: str | Path, name: str) -> Path:
    """``parent/name``, or ``name-2``, ``name-3``... when taken (atomic mkdir, no races)."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
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
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    meta: dict

    def checkpoint(self, which: str = "best") -> Path:
        path = Path(which) if which not in ("best", "last") else self.dir / f"{which}.ckpt"
        if not path.is_file():
            others = sorted(p.name for p in self.dir.glob("*.ckpt"))
            raise PodiumError(
                f"checkpoint {path} not found; {self.dir} has {others or 'no checkpoints'}. "
                f"Was training interrupted before the first epoch ended?")
        return path


def save_run_files(run_dir: Path, cfg: PodiumConfig, classes: list[str], mean, std, extra: dict) -> None:
    write_text(run_dir / "config.yaml", config_to_yaml(cfg))
    write_json(run_dir / "classes.json", {
        "classes": list(classes),
        "normalization": {"mean": list(mean), "std": list(std)},
        **extra,
    })


def load_run(run_dir: str | Path) -> RunInfo:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise PodiumError(f"run folder not found: {run_dir}")
    for needed in ("config.yaml", "classes.json"):
        if not (run_dir / needed).is_file():
            raise PodiumError(f"{run_dir} is not a podium run folder: {needed} is missing")
    cfg = load_config(run_dir / "config.yaml")
    meta = json.loads((run_dir / "classes.json").read_text())
    norm = meta.get("normalization", {})
    return RunInfo(run_dir, cfg, list(meta["classes"]), tuple(norm.get("mean", (0.485, 0.456, 0.406))),
                   tuple(norm.get("std", (0.229, 0.224, 0.225))), meta)


def next_free_dir(parent: Path, name: str) -> Path:
    """Same rule as run folders, for predictions and evaluations inside a run."""
    parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        candidate = parent / (name if k == 1 else f"{name}-{k}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise PodiumError(f"too many outputs named {name!r} in {parent}")


# ---------------------------------------------------------------- status

STATUS_FILE = "status.json"
STATUSES = ("running", "finished", "interrupted", "failed")


def write_status(run_dir: str | Path, status: str, **info) -> Path:
    """Record how a run stands (running / finished / interrupted / failed) in ``status.json``,
    with details such as ``epoch``, ``error`` or ``signal``; rewritten atomically at each change."""
    import datetime as _dt

    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}; expected one of {STATUSES}")
    record = {"status": status, "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **info}
    return write_json(Path(run_dir) / STATUS_FILE, record)


def read_status(run_dir: str | Path) -> dict:
    """The run's status record; folders from before status.json are inferred:
    summary.json -> finished, a checkpoint -> interrupted, else failed."""
    run_dir = Path(run_dir)
    path = run_dir / STATUS_FILE
    if path.is_file():
        try:
            record = json.loads(path.read_text())
            if isinstance(record, dict) and record.get("status") in STATUSES:
                return record
        except (OSError, ValueError):
            pass
    if (run_dir / "summary.json").is_file():
        return {"status": "finished", "inferred": True}
    if any(run_dir.glob("*.ckpt")):
        return {"status": "interrupted", "inferred": True}
    return {"status": "failed", "inferred": True}
