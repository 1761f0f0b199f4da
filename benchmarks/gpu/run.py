"""podium's GPU path, measured in one go: ``python -m benchmarks.gpu [--dry-run] --out DIR``.

A GPU machine is lent for minutes at a time, so everything is prepared here and
runs as one command there, each stage time-boxed inside ``--budget`` seconds, its
results written to DIR/results.json as soon as it ends (a later failure or the
machine's time limit loses nothing already measured):

machine     GPU, driver, library versions, CPU cores.
prepare     extract the CIFAR-10 JPEG tarball (``cifar10_png/{train,test}/<class>/*.jpg``).
loader      does CPU decoding starve the GPU? Images/s of the training loader alone
            (JPEG decoding in workers, the RAM cache in workers, the device cache) against
            images/s of the training step alone (synthetic uint8 batch already on the GPU,
            cudnn autotuning off and on), at the podium config's size and batch.
podium      ``podium train benchmarks/gpu/cifar10.yaml`` on the 50,000 training images with
            the 10,000 test images as validation: per-epoch test accuracy and time,
            time to 94 %, training images/s, end-to-end wall time.
airbench    airbench94 (vendored, MIT; benchmarks/gpu/airbench94.py) on the same JPEG
            copy: its accuracy and its timed seconds (published: 94.01 % in 3.83 s on an A100).
cuda_tests  ``pytest -m cuda tests/test_cuda.py``: bf16, channels-last, compile, device
            normalization, the device cache, ONNX parity on CUDA.

``--dry-run`` runs the same code on the CPU with a few hundred images, one epoch
and 32 px, so the script is known to work before a GPU is spent on it.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
CONFIG = Path(__file__).with_name("cifar10.yaml")
AIRBENCH = Path(__file__).with_name("airbench94.py")
TARGET_ACC = 0.94
AIRBENCH_PUBLISHED = {"script": "airbench94.py (legacy)", "accuracy": 0.9401, "seconds": 3.83,
                      "gpu": "NVIDIA A100-SXM4-80GB", "source": "github.com/KellerJordan/cifar10-airbench README"}
STAGES = ("machine", "prepare", "loader", "podium", "airbench", "cuda_tests", "podium_large")
#: podium_large: the config at a larger size (more of the ImageNet features' resolution), run only
#: when the first podium run missed the target and time is left
LARGE = ("data.image_size=192", "train.epochs=6")
DRY_OVERRIDES = ["data.image_size=32", "train.epochs=1", "train.batch_size=32", "train.accelerator=cpu",
                 "train.warmup_epochs=0.2"]


# ------------------------------------------------------------------ the run

class Bench:
    """Stages, their time box and the results file."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work)
        self.started = time.perf_counter()
        self.results: dict = {"command": " ".join([Path(sys.executable).name, "-m", "benchmarks.gpu", *sys.argv[1:]]),
                              "commit": args.commit, "dry_run": args.dry_run, "budget_s": args.budget,
                              "target_accuracy": TARGET_ACC, "airbench_published": AIRBENCH_PUBLISHED, "stages": {}}
        self.data_root: Path | None = None

    def left(self) -> float:
        return self.args.budget - (time.perf_counter() - self.started)

    def run(self, name: str, stage: Callable[[Bench], dict], needs: float) -> None:
        """Run one stage if ``needs`` seconds are left; record its result, error or skip."""
        record: dict = {}
        if self.left() < needs:
            record = {"status": "skipped", "reason": f"{self.left():.0f} s of the budget left, the stage needs ~{needs:.0f}"}
        else:
            t = time.perf_counter()
            try:
                record = {"status": "ok", **stage(self)}
            except Exception as exc:  # noqa: BLE001 - a broken stage must not cost the stages after it
                record = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:2000],
                          "traceback": traceback.format_exc()[-4000:]}
            record["seconds"] = round(time.perf_counter() - t, 2)
        self.results["stages"][name] = record
        self.save()
        log(f"[{name}] {record['status']} ({record.get('seconds', 0)} s) {record.get('error', record.get('reason', ''))}")

    def save(self) -> None:
        self.results["elapsed_s"] = round(time.perf_counter() - self.started, 2)
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        tmp.replace(self.out / "results.json")

    def config(self, *extra: str):
        """The podium CIFAR-10 config with this machine's paths (and the dry run's sizes)."""
        from podium.schema import load_config

        assert self.data_root is not None, "prepare runs first"
        overrides = [f"data.train={self.data_root / 'train'}", f"data.val={self.data_root / 'test'}",
                     f"output.dir={self.work / 'runs'}"]
        if self.args.weights:
            overrides.append(f"model.pretrained_path={self.args.weights}")
        overrides += list(extra) + list(self.args.set)
        return load_config(CONFIG, overrides + (DRY_OVERRIDES if self.args.dry_run else []))


def log(message: str) -> None:
    print(message, flush=True)


def cuda_device():
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ------------------------------------------------------------------ machine, data

def stage_machine(bench: Bench) -> dict:
    import torch

    from benchmarks.runner import machine_info
    from podium.rundir import library_versions

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "libraries": library_versions(), **machine_info()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, capability=f"{props.major}.{props.minor}",
                    bf16=torch.cuda.is_bf16_supported())
        info["nvidia_smi"] = _nvidia_smi()
    try:
        import onnxruntime

        info["onnxruntime_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        info["onnxruntime_providers"] = None
    return info


def _nvidia_smi() -> str:
    query = "name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.limit,temperature.gpu,utilization.gpu"
    try:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True,
                              text=True, timeout=20, check=False)
        return done.stdout.strip() or done.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"


def stage_prepare(bench: Bench) -> dict:
    """Extract the tarball (timed); the dry run extracts only the first images of each class."""
    tar_path = Path(bench.args.data)
    n = bench.args.subset if bench.args.dry_run else None
    dest = bench.work / ("cifar10" if n is None else f"cifar10-subset{n}")
    t = time.perf_counter()
    if not (dest / ".complete").is_file():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar_path) as tar:
            tar.extractall(dest, members=_first_per_class(tar, n, max(1, (n or 0) // 3)) if n else None,
                           filter="data")
        (dest / ".complete").write_text("ok\n")
    extract_s = time.perf_counter() - t
    root = dest / "cifar10_png"
    bench.data_root = root
    counts = {split: sum(1 for _ in (root / split).glob("*/*.jpg")) for split in ("train", "test")}
    return {"tarball": str(tar_path), "extract_s": round(extract_s, 2), "images": counts,
            "classes": sorted(p.name for p in (root / "train").iterdir() if p.is_dir())}


def _first_per_class(tar: tarfile.TarFile, train: int, test: int):
    """Members ``cifar10_png/<split>/<class>/<image>``: the first ``train``/``test`` of each class."""
    taken: dict[tuple[str, str], int] = {}
    for member in tar:
        parts = member.name.split("/")
        if not member.isfile() or len(parts) != 4:
            continue
        key = (parts[1], parts[2])
        if taken.get(key, 0) < (train if parts[1] == "train" else test):
            taken[key] = taken.get(key, 0) + 1
            yield member


# ------------------------------------------------------------------ (c) loader against step

def stage_loader(bench: Bench) -> dict:
    """Training-loader images/s per data path, and the training step's images/s without a loader."""
    from podium.data.samples import prepare_data

    cfg = bench.config()
    prepared = prepare_data(cfg, log=lambda *a: None)
    batches = 8 if bench.args.dry_run else 60
    cores = os.cpu_count() or 1
    variants = {  # name -> overrides of the podium config
        "jpeg, default workers": ["data.cache=none"],
        f"jpeg, {max(1, cores - 1)} workers": ["data.cache=none", f"data.num_workers={max(1, cores - 1)}"],
        "RAM cache, default workers": ["data.cache=memory"],
        "device cache (GPU-side crops/flips)": ["data.cache=device"],
    }
    loaders = {}
    for name, overrides in variants.items():
        loaders[name] = _loader_throughput(bench.config(*overrides), prepared, batches)
        log(f"  loader {name}: {loaders[name]['images_per_s']:.0f} img/s")
    step = _step_throughput(cfg, prepared, steps=3 if bench.args.dry_run else 25)
    best_step = max(v["images_per_s"] for v in step.values())
    for row in loaders.values():
        row["loader_over_step"] = round(row["images_per_s"] / best_step, 3)
        row["starves_gpu"] = row["images_per_s"] < best_step
    return {"image_size": list(cfg.data.size_hw), "batch_size": cfg.train.batch_size, "model": cfg.model.name,
            "augment": cfg.augment.preset, "cpu_cores": cores, "batches_timed": batches, "loaders": loaders,
            "step": step}


def _loader_throughput(cfg, prepared, batches: int) -> dict:
    """Build the run's data module, then time ``batches`` training batches (after the first,
    which pays for worker start-up) delivered on the GPU, as Lightning would move them."""
    import torch

    from podium.data.device import DeviceBatches
    from podium.model.training import build_datamodule

    device = cuda_device()
    t = time.perf_counter()
    datamodule = build_datamodule(cfg, prepared)
    loader = datamodule.train_dataloader()
    if isinstance(loader, DeviceBatches):
        loader.images.to(device)
    build_s = time.perf_counter() - t
    iterator = iter(loader)
    t = time.perf_counter()
    first = next(iterator)
    first_s = time.perf_counter() - t
    n, t = 0, time.perf_counter()
    for _ in range(min(batches, len(loader) - 1)):
        images = next(iterator)[0].to(device, non_blocking=True)
        n += len(images)
    sync()
    seconds = time.perf_counter() - t
    result = {"build_s": round(build_s, 2), "first_batch_s": round(first_s, 2), "images": n,
              "images_per_s": n / seconds if seconds > 0 else float("nan"), "workers": datamodule.num_workers,
              "batch_dtype": str(first[0].dtype)}
    workers = getattr(loader, "_iterator", None)  # persistent DataLoader workers: end them now
    if workers is not None:
        workers._shutdown_workers()
    del iterator, loader, datamodule, first, workers
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def _step_throughput(cfg, prepared, steps: int) -> dict:
    """Forward + backward + SGD step of the run's module on one uint8 batch already on the device,
    in the run's precision, with cudnn autotuning off (Lightning's default) and on."""
    import torch

    from podium.data.transforms import resolve_normalization
    from podium.model.engine import resolve_precision
    from podium.model.training import build_module

    device = cuda_device()
    mean, std = resolve_normalization(cfg.augment)
    module = build_module(cfg, prepared, mean, std).to(device).train()
    optimizer = torch.optim.SGD(module.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    precision = resolve_precision(cfg.train.precision, cfg.train.accelerator)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    h, w = cfg.data.size_hw
    images = torch.randint(0, 256, (cfg.train.batch_size, 3, h, w), dtype=torch.uint8, device=device)
    targets = torch.randint(0, len(prepared.classes), (cfg.train.batch_size,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = module.loss(images, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rows = {}
    before = torch.backends.cudnn.benchmark
    for benchmark in ((False, True) if device.type == "cuda" else (False,)):
        torch.backends.cudnn.benchmark = benchmark
        for _ in range(3):
            step()
        sync()
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync()
        seconds = time.perf_counter() - t
        rows[f"cudnn.benchmark={benchmark}"] = {"precision": precision, "images_per_s": steps * len(images) / seconds,
                                                "ms_per_step": 1000 * seconds / steps}
        log(f"  step cudnn.benchmark={benchmark}: {rows[f'cudnn.benchmark={benchmark}']['images_per_s']:.0f} img/s")
    torch.backends.cudnn.benchmark = before
    return rows


# ------------------------------------------------------------------ (b) podium on CIFAR-10

def stage_podium(bench: Bench, extra: tuple[str, ...] = ()) -> dict:
    import torch

    import podium

    cfg = bench.config(*extra)
    reserve = bench.args.reserve if not extra else 10.0  # the large run is the last stage
    clock = _epoch_clock()(box=lambda: max(30.0, min(bench.args.podium_timeout, bench.left() - reserve)))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    run = podium.train(cfg, callbacks=[clock], progress=False, log=lambda *a: None)
    wall = time.perf_counter() - t
    summary = run.summary
    train_images = summary["train_images"]
    epochs = clock.epochs
    train_s = sum(e["train_s"] for e in epochs)
    reached = next((e for e in epochs if e["val_acc"] >= TARGET_ACC), None)
    result = {
        "config_file": str(CONFIG.relative_to(REPO)), "overrides": list(extra), "config": cfg.model_dump(mode="json"),
        "train_images": train_images, "val_images": summary["val_images"], "epochs_done": len(epochs),
        "stopped_at_budget": clock.stopped, "epochs": epochs,
        "best_val_acc": max((e["val_acc"] for e in epochs), default=None),
        "final_val_acc_best_ckpt": summary["val_metrics"].get("acc"),
        "train_s": round(train_s, 2), "train_images_per_s": train_images * len(epochs) / train_s if train_s else None,
        "setup_s": round(clock.setup_s, 2), "end_to_end_wall_s": round(wall, 2),
        "time_to_target_s": reached["elapsed_s"] if reached else None,
        "train_time_to_target_s": reached["train_elapsed_s"] if reached else None,
        "epoch_reaching_target": reached["epoch"] if reached else None,
        "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None,
        "device": summary.get("device"), "run_dir": str(run.dir),
    }
    from podium.rundir import METRICS_FILE

    _copy(run.dir / METRICS_FILE, bench.out / f"podium{'_large' if extra else ''}_metrics.csv")
    return result


def stage_podium_large(bench: Bench) -> dict:
    """The same config at a larger image size, only when the first run missed the target."""
    first = bench.results["stages"].get("podium", {})
    if first.get("status") == "ok" and first.get("time_to_target_s") is not None:
        return {"not_needed": f"podium reached {TARGET_ACC:.0%} at {CONFIG.name}'s own size"}
    return stage_podium(bench, LARGE)


def _copy(src: Path, dest: Path) -> None:
    if src.is_file():
        dest.write_bytes(src.read_bytes())


def _epoch_clock():
    """The callback class, built on first use (Lightning is imported only by the stages that train)."""
    from lightning.pytorch.callbacks import Callback

    class _EpochClock(Callback):
        """Per-epoch training and validation seconds (device-synchronized), test accuracy after each
        epoch, and a stop once the time box (``box()`` seconds from the first step, decided then)
        is spent (recorded, never silent)."""

        def __init__(self, box: Callable[[], float]):
            self.box, self.created = box, time.perf_counter()
            self.deadline = float("inf")
            self.epochs: list[dict] = []
            self.stopped = False
            self.setup_s = 0.0
            self._t0 = self._epoch = self._val = 0.0
            self._train_total = 0.0

        def on_train_start(self, trainer, pl_module):
            sync()
            self._t0 = time.perf_counter()
            self.setup_s = self._t0 - self.created
            self.deadline = self._t0 + self.box()

        def on_train_epoch_start(self, trainer, pl_module):
            sync()
            self._epoch = time.perf_counter()

        def on_validation_start(self, trainer, pl_module):
            sync()
            self._val = time.perf_counter()

        def on_validation_end(self, trainer, pl_module):
            if trainer.sanity_checking:
                return
            sync()
            now = time.perf_counter()
            train_s = self._val - self._epoch
            self._train_total += train_s
            acc = float(trainer.callback_metrics.get("val_acc", float("nan")))
            self.epochs.append({"epoch": trainer.current_epoch, "val_acc": acc, "train_s": round(train_s, 3),
                                "val_s": round(now - self._val, 3), "elapsed_s": round(now - self._t0, 3),
                                "train_elapsed_s": round(self._train_total, 3)})
            log(f"  epoch {trainer.current_epoch}: val_acc {acc:.4f}, train {train_s:.1f} s, "
                f"elapsed {now - self._t0:.1f} s")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if time.perf_counter() > self.deadline and not trainer.should_stop:
                self.stopped = trainer.should_stop = True

    return _EpochClock


# ------------------------------------------------------------------ airbench on the same data

def stage_airbench(bench: Bench) -> dict:
    """Write airbench's train.pt/test.pt from the JPEGs (podium's decoder), then run it."""
    import torch

    folder = bench.work / "airbench"
    convert_s = _airbench_data(bench.data_root, folder)
    if not torch.cuda.is_available():
        import py_compile

        py_compile.compile(str(AIRBENCH), doraise=True)
        data = torch.load(folder / "train.pt", weights_only=True)
        return {"status_note": "airbench needs CUDA: data written and script compiled, not run",
                "convert_s": round(convert_s, 2), "train_shape": list(data["images"].shape)}
    out = bench.out / "airbench.json"
    timeout = max(20.0, min(bench.args.airbench_timeout, bench.left() - bench.args.reserve))
    done = subprocess.run([sys.executable, str(AIRBENCH), "--data", str(folder), "--runs", str(bench.args.airbench_runs),
                           "--out", str(out)], capture_output=True, text=True, timeout=timeout, cwd=bench.work,
                          check=False)
    (bench.out / "airbench.log").write_text(done.stdout[-20000:] + "\n--- stderr ---\n" + done.stderr[-20000:])
    if done.returncode != 0:
        raise RuntimeError(f"airbench94 exited {done.returncode}: {done.stderr[-1500:]}")
    found = json.loads(out.read_text())
    accs, times = found["accs"], found["times_s"]
    return {"convert_s": round(convert_s, 2), "runs": len(accs), "accs": accs, "times_s": times,
            "mean_acc": sum(accs) / len(accs), "mean_s": sum(times) / len(times),
            "warmup_wall_s": found["warmup_wall_s"], "device": found["device"]}


def _airbench_data(root: Path, folder: Path) -> float:
    """{train,test}.pt as airbench's CifarLoader reads them: uint8 (N, 32, 32, 3), labels, classes."""
    import numpy as np
    import torch

    from podium.data.cache import ImageCache

    t = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    for split in ("train", "test"):
        paths = [p for c in classes for p in sorted((root / split / c).glob("*.jpg"))]
        labels = [classes.index(p.parent.name) for p in paths]
        cache = ImageCache.build([str(p) for p in paths], (32, 32), mode="memory", draft=False)
        torch.save({"images": torch.from_numpy(np.array(cache.array())), "labels": torch.tensor(labels),
                    "classes": classes}, folder / f"{split}.pt")
    return time.perf_counter() - t


# ------------------------------------------------------------------ (a) the CUDA-marked tests

def stage_cuda_tests(bench: Bench) -> dict:
    xml = bench.out / "cuda_tests.xml"
    timeout = max(30.0, min(bench.args.tests_timeout, bench.left() - 5))
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "tests/test_cuda.py", "-q", "-rA", "-p", "no:cacheprovider",
           f"--junitxml={xml}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)
        output, code = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        text = "".join(part.decode(errors="replace") if isinstance(part, bytes) else (part or "")
                       for part in (exc.stdout, exc.stderr))
        output, code = f"{text}\n(timed out after {timeout:.0f} s)", "timeout"
    tests = _junit_cases(xml) if xml.is_file() else []
    return {"command": " ".join(["python", *cmd[1:-1]]), "exit_code": code, "tests": tests,
            "summary": output.strip().splitlines()[-1] if output.strip() else "", "output_tail": output[-3000:]}


def _junit_cases(xml: Path) -> list[dict]:
    import xml.etree.ElementTree as ET

    cases = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome, message = kind, (found.get("message") or "")[:500]
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        cases.append({"test": case.get("name"), "outcome": outcome, "seconds": float(case.get("time", 0)),
                      "message": message, **props})
    return cases


# ------------------------------------------------------------------ report

def summary_lines(results: dict) -> list[str]:
    """A short table of the headline numbers (the last thing printed)."""
    s = results["stages"]
    lines = [(f"GPU run{' (dry run, CPU)' if results['dry_run'] else ''}: {results.get('elapsed_s')} s, "
              f"commit {results.get('commit') or '?'}")]
    m = s.get("machine", {})
    lines.append(f"machine: {m.get('gpu') or 'no GPU'}, torch {m.get('torch')}, cuda {m.get('cuda')}, "
                 f"{m.get('usable_cpus', '?')} CPUs")
    p = s.get("podium", {})
    if p.get("status") == "ok":
        lines.append(f"podium: best test acc {p['best_val_acc']:.4f} in {p['epochs_done']} epochs; time to "
                     f"{TARGET_ACC:.0%}: {p['time_to_target_s']} s (training only {p['train_time_to_target_s']} s); "
                     f"train {p['train_s']} s = {p['train_images_per_s'] or 0:.0f} img/s; end to end {p['end_to_end_wall_s']} s")
    q = s.get("podium_large", {})
    if q.get("status") == "ok" and "best_val_acc" in q:
        lines.append(f"podium {' '.join(q['overrides'])}: best test acc {q['best_val_acc']:.4f}; time to "
                     f"{TARGET_ACC:.0%}: {q['time_to_target_s']} s; train {q['train_images_per_s'] or 0:.0f} img/s")
    a = s.get("airbench", {})
    if a.get("status") == "ok" and "mean_acc" in a:
        lines.append(f"airbench94 here: {a['mean_acc']:.4f} in {a['mean_s']:.2f} s (mean of {a['runs']}); "
                     f"published {AIRBENCH_PUBLISHED['accuracy']} in {AIRBENCH_PUBLISHED['seconds']} s on an A100")
    lo = s.get("loader", {})
    if lo.get("status") == "ok":
        for name, row in lo["loaders"].items():
            lines.append(f"loader {name}: {row['images_per_s']:.0f} img/s ({row['loader_over_step']}x the step)")
        for name, row in lo["step"].items():
            lines.append(f"step alone {name}: {row['images_per_s']:.0f} img/s")
    c = s.get("cuda_tests", {})
    if c.get("status") == "ok":
        outcomes = [f"{t['test']}: {t['outcome']}" for t in c["tests"]]
        lines.append(f"cuda tests ({c['exit_code']}): " + "; ".join(outcomes))
    for name, record in s.items():
        if record.get("status") != "ok":
            lines.append(f"{name}: {record.get('status')} {record.get('error', record.get('reason', ''))[:300]}")
    return lines


def to_markdown(results: dict) -> str:
    """The measured tables (RESULTS.md quotes them): podium's epochs, airbench, loader vs step, tests."""
    s, out = results["stages"], []
    out += ["```", *summary_lines(results), "```", ""]
    for name in ("podium", "podium_large"):
        p = s.get(name, {})
        if p.get("status") != "ok" or "epochs" not in p:
            continue
        out += [f"### {name} ({' '.join(p.get('overrides', [])) or CONFIG.name})", "",
                "| epoch | test acc | train s | val s | elapsed s (train + val) | train-only elapsed s |",
                "|---|---|---|---|---|---|"]
        out += [(f"| {e['epoch']} | {e['val_acc']:.4f} | {e['train_s']:.2f} | {e['val_s']:.2f} | "
                 f"{e['elapsed_s']:.2f} | {e['train_elapsed_s']:.2f} |") for e in p["epochs"]]
        out += ["", (f"setup before the first step {p['setup_s']} s, end to end {p['end_to_end_wall_s']} s, "
                     f"peak GPU memory {p['peak_gpu_memory_gib']} GiB, stopped at the time box: "
                     f"{p['stopped_at_budget']}"), ""]
    a = s.get("airbench", {})
    if a.get("status") == "ok" and "accs" in a:
        out += ["### airbench94 on the same JPEGs", "", "| run | test acc (TTA) | timed s |", "|---|---|---|"]
        out += [f"| {i} | {acc:.4f} | {sec:.3f} |" for i, (acc, sec) in enumerate(zip(a["accs"], a["times_s"]))]
        out += ["", (f"warmup run (upstream's, random labels) {a['warmup_wall_s']:.1f} s wall; data conversion "
                     f"{a['convert_s']} s"), ""]
    lo = s.get("loader", {})
    if lo.get("status") == "ok":
        out += [(f"### loader against step ({lo['model']}, {lo['image_size'][0]} px, batch {lo['batch_size']}, "
                 f"augment {lo['augment']}, {lo['cpu_cores']} CPU cores)"), "",
                "| training loader | workers | build s | first batch s | img/s | loader / step | starves the GPU |",
                "|---|---|---|---|---|---|---|"]
        out += [f"| {n} | {r['workers']} | {r['build_s']} | {r['first_batch_s']} | {r['images_per_s']:.0f} | "
                f"{r['loader_over_step']} | {'yes' if r['starves_gpu'] else 'no'} |" for n, r in lo["loaders"].items()]
        out += ["", "| training step alone (uint8 batch on the GPU) | precision | img/s | ms/step |", "|---|---|---|---|"]
        out += [f"| {n} | {r['precision']} | {r['images_per_s']:.0f} | {r['ms_per_step']:.1f} |"
                for n, r in lo["step"].items()]
        out += [""]
    c = s.get("cuda_tests", {})
    if c.get("status") == "ok":
        out += [f"### CUDA-marked tests (`{c['command']}`, exit {c['exit_code']})", "",
                "| test | outcome | s | note |", "|---|---|---|---|"]
        out += [f"| {t['test']} | {t['outcome']} | {t['seconds']:.1f} | "
                f"{t.get('onnx_providers', '') or t['message'][:120]} |" for t in c["tests"]]
        out += [""]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu-bench-out", help="results folder (results.json, logs)")
    p.add_argument("--work", default=None, help="scratch folder for the extracted images and runs "
                                                "(default: /tmp/podium-gpu-bench, or -dry for --dry-run)")
    p.add_argument("--data", default=str(SHARED / "data" / "cifar10.tar.gz"), help="the CIFAR-10 JPEG tarball")
    p.add_argument("--weights", default=str(SHARED / "weights" / "mobilenet_v2-b0353104.pth"),
                   help="local ImageNet weights for the config's model ('' = download them)")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for every stage together")
    p.add_argument("--reserve", type=float, default=60.0,
                   help="seconds a time-boxed stage leaves to the stages after it")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra podium config override")
    p.add_argument("--tests-timeout", type=float, default=240.0, help="seconds for the CUDA-marked tests")
    p.add_argument("--podium-timeout", type=float, default=200.0,
                   help="seconds of training after which a podium run stops (recorded as stopped_at_budget)")
    p.add_argument("--airbench-runs", type=int, default=5)
    p.add_argument("--airbench-timeout", type=float, default=120.0)
    p.add_argument("--commit", default=os.environ.get("PODIUM_COMMIT", ""), help="the commit measured (recorded)")
    p.add_argument("--dry-run", action="store_true", help="CPU, a few hundred images, one epoch, 32 px")
    p.add_argument("--subset", type=int, default=30, help="--dry-run: training images per class (test: a third)")
    args = p.parse_args(argv)
    args.work = args.work or ("/tmp/podium-gpu-bench" + ("-dry" if args.dry_run else ""))
    unknown = sorted(set(args.stages.split(",")) - set(STAGES))
    if unknown:
        p.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    return args


#: stage -> (function, seconds it needs to be worth starting)
STAGE_FUNCTIONS: dict[str, tuple[Callable[[Bench], dict], float]] = {
    "machine": (stage_machine, 1), "prepare": (stage_prepare, 5), "loader": (stage_loader, 40),
    "podium": (stage_podium, 60), "airbench": (stage_airbench, 30), "cuda_tests": (stage_cuda_tests, 30),
    "podium_large": (stage_podium_large, 150),  # decoding 60k images at 192 px took 66 s on the H200 machine
}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = args.stages.split(",")
    if {"loader", "podium", "airbench", "podium_large"} & set(wanted):
        wanted.append("prepare")  # they read the extracted images
    if args.dry_run:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU path, also on a GPU machine
    bench = Bench(args)
    for name in STAGES:
        if name in wanted:
            function, needs = STAGE_FUNCTIONS[name]
            bench.run(name, function, 0 if args.dry_run else needs)
    (bench.out / "results.md").write_text(to_markdown(bench.results))
    print("\n".join(summary_lines(bench.results)), flush=True)
    failed = [n for n, r in bench.results["stages"].items() if r["status"] == "error"]
    return 1 if failed else 0
