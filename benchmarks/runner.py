"""Speed benchmarks: does the data pipeline keep the model fed, and what do podium's layers cost?

Every benchmark compares two ways of doing the same work *in the same run*
(interleaved repeats, medians), so a shared or loaded machine shifts both
sides alike and the ratio stays meaningful even when absolute numbers move.

B1 loader throughput (podium vs the usual torchvision loop), B2 epoch time /
pure compute, B3 Lightning loop / raw loop per step, B4 batched TTA / k
passes, B5 k-fold / k x one fold, B6 single techniques (draft decode, uint8
batches, persistent workers, channels_last, bf16 autocast, torch.compile).

`run_benchmarks` is the library entry point; `podium bench` and
``python -m benchmarks`` both call it.
"""
from __future__ import annotations

import os
import platform
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from benchmarks.speed import (
    TARGETS,
    Context,
    Result,
    Sizes,
    bench_epoch_vs_compute,
    bench_kfold,
    bench_loader,
    bench_loop_overhead,
    bench_tta,
)
from benchmarks.techniques import bench_techniques

BENCHMARKS: dict[str, Callable[[Context], Result]] = {
    "B1": bench_loader, "B2": bench_epoch_vs_compute, "B3": bench_loop_overhead,
    "B4": bench_tta, "B5": bench_kfold, "B6": bench_techniques,
}
from podium.errors import PodiumError

__all__ = ["BENCHMARKS", "TARGETS", "Context", "Result", "Sizes", "machine_info", "benchmark_images",
           "parse_only", "run_benchmarks", "to_markdown", "format_result", "main", "add_arguments", "run_from_args"]

PORTRAITS_TAR = "portraits_mask2.tar"
DATA_DIR_ENV = "PODIUM_DATA_DIR"


# ------------------------------------------------------------------ machine & timing

def machine_info() -> dict:
    """What the numbers depend on: CPU, usable cores, torch threads, load, accelerator."""
    from podium.data.cache import available_cpus, default_num_workers

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": available_cpus(),
        "torch_threads": torch.get_num_threads(), "default_workers": default_num_workers(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
        "platform": platform.platform(),
    }


# ------------------------------------------------------------------ data

def default_data_dir() -> Path:
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path("~/.cache/podium-data").expanduser()


def find_portraits_tar() -> Path | None:
    """The shared portrait tar beside the repository (clean clone or editable install), or under cwd."""
    for base in (Path(__file__).resolve().parents[3], Path.cwd().parent, Path.cwd()):
        candidate = base / "shared" / "data" / PORTRAITS_TAR
        if candidate.is_file():
            return candidate
    return None


def extract_once(tar_path: Path, dest_root: Path) -> Path:
    """Extract ``tar_path`` under ``dest_root`` once; a marker file says the extraction finished."""
    dest = dest_root / tar_path.name.split(".")[0]
    marker = dest / ".complete"
    if not marker.exists():
        if not tarfile.is_tarfile(tar_path):
            raise PodiumError(f"benchmark data {tar_path} is a file but not a tar archive; pass a folder of "
                              f"class sub-folders or a .tar of one")
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar_path) as tar:
            tar.extractall(dest, filter="data")
        marker.write_text("ok\n")
    while True:  # a tar of one top folder (name/<class>/...): the class folders are inside it
        entries = [e for e in dest.iterdir() if not e.name.startswith(".")]
        if len(entries) != 1 or not entries[0].is_dir():
            return dest
        dest = entries[0]


def generate_jpegs(root: Path, n: int, size_wh: tuple[int, int] = (320, 428), seed: int = 0) -> Path:
    """``n`` JPEGs in two class folders: smooth random fields plus noise, which compress like photos."""
    from PIL import Image

    from podium.fileio import atomic_path

    w, h = size_wh
    root = root / f"synthetic-{n}-{w}x{h}"
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = root / ("a" if i % 2 else "b") / f"{i:05d}.jpg"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        field_ = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        noisy = np.clip(field_ + rng.normal(0, 8, field_.shape), 0, 255).astype(np.uint8)
        with atomic_path(path) as tmp:
            Image.fromarray(noisy).save(tmp, format="JPEG", quality=90)
    return root


def benchmark_images(quick: bool, n: int, data: str | Path | None = None,
                     data_root: Path | None = None) -> tuple[list[str], np.ndarray, str]:
    """(paths, targets, description): ``data``, else the real portraits, else generated JPEGs.

    Quick runs always use a few generated JPEGs so smoke tests are hermetic.
    Fewer real images than ``n`` are cycled (same files read again).
    """
    from podium.data.dataset import build_class_map, encode_labels, load_samples
    from podium.schema import DataConfig

    root = data_root or default_data_dir()
    folder: Path | None = None
    if data is not None:
        data = Path(data).expanduser()
        folder = extract_once(data, root) if data.is_file() else data
        source = f"{data}"
    elif not quick and (tar := find_portraits_tar()) is not None:
        folder, source = extract_once(tar, root), f"real portraits ({tar.name}, about 320x428 JPEGs)"
    if folder is None:
        wh = (80, 107) if quick else (320, 428)
        folder = generate_jpegs(root, n, wh)
        source = f"generated JPEGs {wh[0]}x{wh[1]} (quality 90)"
    frame = load_samples(folder, DataConfig())
    if len(frame) < 2:
        raise PodiumError(f"benchmark data {folder} holds {len(frame)} image(s); need at least 2")
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)
    reps = int(np.ceil(n / len(frame)))
    paths = (list(frame["path"]) * reps)[:n]
    labels = (list(frame["label"]) * reps)[:n]
    targets = encode_labels(labels, build_class_map(frame["label"]), "benchmark data")
    return paths, targets, f"{source}: {len(frame)} files, {n} used"


# ------------------------------------------------------------------ runner & report

def parse_only(only: str | Iterable[str] | None) -> list[str]:
    if only is None:
        return list(BENCHMARKS)
    names = [n.strip().upper() for n in (only.split(",") if isinstance(only, str) else only) if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise PodiumError(f"unknown benchmark(s) {unknown or only!r}; choose from {', '.join(BENCHMARKS)} "
                          f"(comma-separated, e.g. --only B1,B3)")
    return names


def run_benchmarks(quick: bool = False, only: str | Iterable[str] | None = None, out: str | Path | None = None,
                   data: str | Path | None = None, workers: int | None = None, threads: int | None = None,
                   data_root: Path | None = None, log: Callable[[str], None] = print) -> dict:
    """Run the chosen benchmarks; write ``speed.json`` and ``speed.md`` into ``out``; return the results.

    A benchmark that fails is recorded with its error and the others still run,
    so one broken stage does not cost the numbers of the rest.
    """
    import logging

    import lightning.pytorch  # noqa: F401  (it sets its loggers to INFO on import: quiet them after)

    names = parse_only(only)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if threads is not None and threads < 1:
        raise PodiumError(f"--threads must be at least 1; got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return _run(names, quick, out, data, workers, data_root, log)
    finally:
        torch.set_num_threads(before)


def _run(names: list[str], quick: bool, out, data, workers: int | None, data_root: Path | None, log) -> dict:
    import warnings

    from podium.data.cache import default_num_workers
    from podium.fileio import write_json, write_text

    sizes = Sizes.for_mode(quick)
    started = time.time()
    machine = machine_info()
    paths, targets, source = benchmark_images(quick, sizes.images, data, data_root)
    workers = default_num_workers() if workers is None else workers
    log(f"machine: {machine['cpu']}, {machine['usable_cpus']} usable cores, torch threads "
        f"{machine['torch_threads']}, load average {machine['load_average']}, gpu {machine['gpu']}")
    log(f"data: {source}; workers {workers}; mode {'quick' if quick else 'full'}")
    results = []
    with tempfile.TemporaryDirectory(prefix="podium-bench-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        ctx = Context(sizes, paths, targets, source, workers, Path(tmp), device, quick, log)
        for name in names:
            t0 = time.time()
            try:
                result = BENCHMARKS[name](ctx)
            except Exception as exc:  # recorded in the report; the remaining benchmarks still run
                import traceback

                result = Result(name, "failed", {}, notes=[f"ERROR {type(exc).__name__}: {exc}"],
                                error=traceback.format_exc())
                log(result.error)
            result.config["seconds"] = round(time.time() - t0, 1)
            log(format_result(result))
            results.append(result)
    report = {"mode": "quick" if quick else "full", "machine": machine,
              "load_average_end": machine_info()["load_average"], "data": source, "workers": workers,
              "wall_time_s": round(time.time() - started, 1),
              "benchmarks": [r.__dict__ for r in results]}
    if out is not None:
        out = Path(out)
        write_json(out / "speed.json", report)
        write_text(out / "speed.md", to_markdown(report))
    return report


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def format_result(r: Result) -> str:
    lines = [f"== {r.name}: {r.title}", "   " + "; ".join(f"{k}={v}" for k, v in r.config.items())]
    lines += [f"   {row['variant']}: {_fmt(row['median'])} {row['unit']}" for row in r.rows]
    for q in r.ratios:
        verdict = "" if q["met"] is None else (" (target met)" if q["met"] else " (TARGET MISSED)")
        lines.append(f"   ratio {q['ratio']}: {q['value']:.3f} {q['target']}{verdict} {q['note']}".rstrip())
    lines += [f"   note: {n}" for n in r.notes]
    return "\n".join(lines)


def to_markdown(report: dict) -> str:
    """Ratio table first (what the targets are about), then each benchmark's measured rows."""
    m = report["machine"]
    out = [f"Mode: {report['mode']}; data: {report['data']}; workers: {report['workers']}; "
           f"wall time {report['wall_time_s']} s.",
           f"Machine: {m['cpu']}; {m['usable_cpus']} usable cores of {m['logical_cpus']}; torch threads "
           f"{m['torch_threads']}; GPU {m['gpu'] or 'none'}; torch {m['torch']}; python {m['python']}; "
           f"load average at start {m['load_average']}, at end {report['load_average_end']}.", "",
           "| ratio | value | target | met | note |", "|---|---|---|---|---|"]
    for b in report["benchmarks"]:
        for q in b["ratios"]:
            met = "" if q["met"] is None else ("yes" if q["met"] else "**no**")
            out.append(f"| {q['ratio']} | {q['value']:.3f} | {q['target']} | {met} | {q['note']} |")
    for b in report["benchmarks"]:
        out += ["", f"### {b['name']}: {b['title']}", "",
                "; ".join(f"{k}: {v}" for k, v in b["config"].items()), "",
                "| variant | median | unit | all repeats |", "|---|---|---|---|"]
        out += [f"| {r['variant']} | {_fmt(r['median'])} | {r['unit']} | {', '.join(_fmt(v) for v in r['values'])} |"
                for r in b["rows"]]
        out += [f"\nNote: {n}" for n in b["notes"]]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks``: the same options as ``podium bench``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="podium speed benchmarks B1-B6")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        report = run_from_args(args)
    except PodiumError as exc:
        print(f"error: {exc}")
        return 2
    return 1 if failed(report) else 0


def failed(report: dict) -> list[str]:
    """Names of the benchmarks that raised (their tracebacks are in the JSON report)."""
    return [b["name"] for b in report["benchmarks"] if b.get("error")]


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat: a smoke test (seconds)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    parser.add_argument("--out", default="bench-results", help="folder for speed.json and speed.md")
    parser.add_argument("--data", help="folder (or .tar) of class sub-folders of images (default: the shared "
                                       "portraits when present, else generated JPEGs)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (default: podium's choice for this machine)")
    parser.add_argument("--threads", type=int, help="torch threads of the main process (default: torch's, "
                                                    "one per core); 1 gives steadier numbers on a shared machine")


def run_from_args(args) -> dict:
    return run_benchmarks(quick=args.quick, only=args.only, out=args.out, data=args.data, workers=args.workers,
                          threads=args.threads)
