"""The bad-input suite: what a hostile or unlucky user can feed podium, and what must happen.

Each case ends in one clear message (exit 2), a recorded run status, or a warning
that names what it found; nothing is half-written and no planted code ever runs.
The signal and kill -9 cases run `python -m podium train` as a real subprocess.
"""
from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import fast_overrides, make_folder, make_image
from PIL import Image

from podium.cli import main
from podium.errors import PodiumError
from podium.model.training import train
from podium.rundir import read_status
from podium.schema import load_config

SRC = Path(__file__).resolve().parents[1] / "src"


# ---------------------------------------------------------------- helpers

class _Planted:
    """Unpickling this creates ``marker``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def plant(ckpt: Path, marker: Path, source: Path | None = None) -> Path:
    """Overwrite ``ckpt`` with a real checkpoint's contents plus a code-running object."""
    content = torch.load(source or ckpt, map_location="cpu", weights_only=True) if (source or ckpt).exists() else {}
    content["state_dict"] = content.get("state_dict", {})
    content["payload"] = _Planted(marker)
    torch.save(content, ckpt)
    return ckpt


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def podium_subprocess(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "podium", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(run: Path, epochs: int, proc: subprocess.Popen, timeout: float = 90) -> None:
    """Block until ``epochs`` epochs are complete: their metrics.csv rows and last.ckpt
    (written just after the row) exist, so the next epoch is the one running."""
    metrics, last = run / "metrics.csv", run / "last.ckpt"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().strip().splitlines()) - 1 >= epochs and last.is_file():
            return
        if proc.poll() is not None:
            pytest.fail(f"training ended early (exit {proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"{run} never completed {epochs} epoch(s)")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny run with per-epoch checkpoints (copied by each test that damages it)."""
    tmp = tmp_path_factory.mktemp("trained")
    data = make_folder(tmp / "train")
    cfg = load_config(None, fast_overrides(tmp, **{"train.epochs": 2, "train.save_epoch_checkpoints": "true",
                                                   "output.report": "false"}) + [f"data.train={data}"])
    result = train(cfg, progress=False, log=lambda *a: None)
    return result.run_dir, data


@pytest.fixture
def run_copy(trained, tmp_path):
    run_dir, data = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    return copy, data


# ---------------------------------------------------------------- untrusted checkpoints

@pytest.mark.parametrize("entry", ["predict --checkpoint", "predict best.ckpt", "evaluate", "report --gradcam",
                                   "average-checkpoints", "resume"])
def test_planted_checkpoint_never_runs(run_copy, tmp_path, capsys, entry):
    run, data = run_copy
    marker = tmp_path / "pwned"
    if entry == "predict --checkpoint":
        evil = plant(tmp_path / "shared.ckpt", marker, source=run / "best.ckpt")
        args = ["predict", run, "--data", data, "--checkpoint", evil, "--quiet"]
    elif entry == "predict best.ckpt":
        evil = plant(run / "best.ckpt", marker)
        args = ["predict", run, "--data", data, "--quiet"]
    elif entry == "evaluate":
        evil = plant(run / "best.ckpt", marker)
        args = ["evaluate", run, "--data", data, "--quiet"]
    elif entry == "report --gradcam":
        evil = plant(run / "best.ckpt", marker)
        args = ["report", run, "--gradcam"]
    elif entry == "average-checkpoints":
        evil = plant(sorted((run / "epochs").glob("*.ckpt"))[-1], marker)
        args = ["average-checkpoints", run, "--last", 2]
    else:
        evil = plant(run / "last.ckpt", marker)
        args = ["train", "--resume", run, "--quiet"]
    code, err = run_cli(args, capsys)
    assert code == 2, err
    assert not marker.exists()
    assert "refused to load checkpoint" in err and str(evil) in err


def test_planted_checkpoint_in_compose(run_copy, tmp_path, capsys):
    """compose reads one checkpoint per attribute run: the same refusal."""
    import yaml

    run, data = run_copy
    marker = tmp_path / "pwned"
    attrs = {"animal": ["cat", "dog", "fox"], "size": ["small", "big"]}
    runs = []
    for target in attrs:
        folder = tmp_path / f"run-{target}"
        shutil.copytree(run, folder)
        cfg = yaml.safe_load((folder / "config.yaml").read_text())
        cfg["task"].update({"attributes": attrs, "mode": "per_attribute", "target": target})
        (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
        meta = json.loads((folder / "classes.json").read_text())
        (folder / "classes.json").write_text(json.dumps({**meta, "classes": attrs[target]}))
        plant(folder / "best.ckpt", marker)
        runs.append(folder)
    code, err = run_cli(["compose", *runs, "--data", data, "--quiet"], capsys)
    assert code == 2 and not marker.exists()
    assert "refused to load checkpoint" in err


def test_planted_pretrained_weights_never_run(tmp_path, capsys, image_folder):
    """model.pretrained_path reads a weights file too: weights_only=True, refused naming it."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "weights.pth"
    torch.save({"conv.weight": torch.zeros(1), "payload": _Planted(marker)}, evil)
    code, err = run_cli(["train", *fast_overrides(tmp_path), f"data.train={image_folder}",
                         f"model.pretrained_path={evil}"], capsys)
    assert code == 2 and str(evil) in err and not marker.exists()
    assert not (tmp_path / "runs dir").exists()


# ---------------------------------------------------------------- resume

def test_resume_refuses_corrupt_or_foreign_last_ckpt(run_copy, tmp_path, capsys):
    run, _ = run_copy
    good = (run / "last.ckpt").read_bytes()
    (run / "last.ckpt").write_bytes(good[: len(good) // 2])
    code, err = run_cli(["train", "--resume", run, "--quiet"], capsys)
    assert code == 2 and "cannot read checkpoint" in err and "last.ckpt" in err
    ckpt = torch.load(io_bytes(good), weights_only=True)
    ckpt["hyper_parameters"]["classes"] = ["a", "b"]
    torch.save(ckpt, run / "last.ckpt")
    code, err = run_cli(["train", "--resume", run, "--quiet"], capsys)
    assert code == 2 and "2 classes" in err and "3" in err


def test_resume_with_a_last_ckpt_of_another_architecture_is_one_message(run_copy, capsys):
    """Before: torch's 'Error(s) in loading state_dict' listing every weight of both models."""
    run, _ = run_copy
    config = (run / "config.yaml").read_text()
    good = torch.load(run / "last.ckpt", weights_only=True)
    foreign = {**good, "hyper_parameters": {**good["hyper_parameters"],
                                            "model_cfg": {**good["hyper_parameters"]["model_cfg"], "name": "test_resnet"}}}
    torch.save(foreign, run / "last.ckpt")
    code, err = run_cli(["train", "--resume", run, "train.epochs=3", "--quiet"], capsys)
    assert code == 2 and "holds a test_resnet model" in err and "model.name=test_efficientnet" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    name = next(k for k, v in good["state_dict"].items() if v.ndim == 4)  # same name, other weights
    reshaped = {**good, "state_dict": {**good["state_dict"], name: torch.zeros(1, 1, 1, 1)}}
    torch.save(reshaped, run / "last.ckpt")
    code, err = run_cli(["train", "--resume", run, "train.epochs=3", "--quiet"], capsys)
    assert code == 2 and "does not fit the test_efficientnet model" in err and f"{name} [1, 1, 1, 1]" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert json.loads((run / "status.json").read_text())["status"] != "running"
    assert (run / "config.yaml").read_text() == config  # train.epochs=3 is not recorded by a refused resume


def io_bytes(data: bytes):
    import io

    return io.BytesIO(data)


def test_resume_of_finished_run_refuses_then_extends(run_copy, capsys):
    run, _ = run_copy
    summary = (run / "summary.json").read_text()
    code, err = run_cli(["train", "--resume", run, "--quiet"], capsys)
    assert code == 2 and "already finished at epoch 2" in err and "train.epochs=M" in err
    assert (run / "summary.json").read_text() == summary  # untouched
    code, err = run_cli(["train", "--resume", run, "model.name=resnet18"], capsys)
    assert code == 2 and "only train.epochs=M" in err
    code, err = run_cli(["train", "--resume", run, "--quiet", "train.epochs=4"], capsys)
    assert code == 0, err
    extended = json.loads((run / "summary.json").read_text())
    assert extended["epochs_trained"] == 4 and extended["best_metric"] is not None
    metrics = pd.read_csv(run / "metrics.csv")
    assert len(metrics) == 4
    # the cosine schedule is stretched to 4 epochs, not left at its 2-epoch floor (min_lr 1e-6)
    assert metrics["lr"].iloc[2] > 1e-3
    assert read_status(run)["status"] == "finished"
    assert load_config(run / "config.yaml").train.epochs == 4


HOLDER = """
import sys, time
from podium.rundir import run_lock, write_status
with run_lock(sys.argv[1]):
    write_status(sys.argv[1], "running", epoch=2)
    print("held", flush=True)
    time.sleep(120)
"""


def test_second_writer_is_refused_and_a_killed_writer_reads_as_interrupted(run_copy, capsys):
    """`train --resume RUN` while another process writes RUN is refused naming that PID; after
    kill -9 of the writer, status readers and `podium runs` say interrupted (process gone), and
    --resume takes the run over."""
    run, _ = run_copy
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONWARNINGS": "ignore"}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert read_status(run)["status"] == "running"
        config = (run / "config.yaml").read_text()
        code, err = run_cli(["train", "--resume", run, "--quiet", "train.epochs=3"], capsys)
        assert code == 2 and f"PID {holder.pid}" in err and "one writer per run" in err, err
        assert (run / "config.yaml").read_text() == config  # the refused resume touched nothing
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    status = read_status(run)
    assert status["status"] == "interrupted" and status["reason"] == "process gone"
    assert main(["runs", str(run.parent), "--format", "json"]) == 0
    assert [r["status"] for r in json.loads(capsys.readouterr().out)] == ["interrupted"]
    code, err = run_cli(["train", "--resume", run, "--quiet", "train.epochs=3"], capsys)
    assert code == 0, err
    assert read_status(run)["status"] == "finished"


def test_report_export_and_average_are_refused_while_the_run_trains(run_copy, tmp_path, capsys):
    """Commands that write into a run take its writer lock too: no report from half a metrics.csv,
    no export or average of a best.ckpt being replaced. Once the writer is gone they run."""
    run, _ = run_copy
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONWARNINGS": "ignore"}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(p.name for p in run.iterdir())
        for command in (["report", run], ["export", run], ["average-checkpoints", run, "--last", "2"]):
            code, err = run_cli(command, capsys)
            assert code == 2 and f"PID {holder.pid}" in err and "one writer per run" in err, (command, err)
        assert sorted(p.name for p in run.iterdir()) == before
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        holder.stdout.close()
    (run / "report.html").unlink(missing_ok=True)
    code, err = run_cli(["report", run], capsys)
    assert code == 0 and (run / "report.html").is_file(), err


def test_kill_9_mid_epoch_then_resume_is_exact(tmp_path, capsys):
    """SIGKILL in epoch 2 of 3 with a DataLoader worker, then --resume: every tensor of
    last.ckpt and the optimizer state equal an uninterrupted run's."""
    data = make_folder(tmp_path / "train", {c: 25 for c in ("cat", "dog", "fox")})
    overrides = fast_overrides(tmp_path, **{"train.epochs": 3, "data.num_workers": 1, "augment.preset": "default",
                                            "output.report": "false"}) + [f"data.train={data}"]
    proc = podium_subprocess(["train", "--quiet", *overrides, "output.name=killed"], tmp_path)
    uninterrupted = podium_subprocess(["train", "--quiet", *overrides, "output.name=full"], tmp_path)
    killed = tmp_path / "runs dir" / "killed"
    wait_for_epochs(killed, 1, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert len(pd.read_csv(killed / "metrics.csv")) == 1, "the kill did not land in epoch 2"
    # SIGKILL cannot be recorded, but the run's lock died with its process: readers see that
    assert read_status(killed)["status"] == "interrupted" and read_status(killed)["reason"] == "process gone"
    code, err = run_cli(["train", "--resume", killed, "--quiet"], capsys)
    assert code == 0, err
    assert uninterrupted.wait(timeout=120) == 0, uninterrupted.stderr.read()[-2000:]
    uninterrupted.stderr.close()
    a = torch.load(tmp_path / "runs dir" / "full" / "last.ckpt", weights_only=True)
    b = torch.load(killed / "last.ckpt", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        for pid, state in sa["state"].items():
            for name, tensor in state.items():
                assert torch.equal(tensor, sb["state"][pid][name]), (pid, name)
        assert sa["param_groups"] == sb["param_groups"]


def test_sigterm_exits_143_marks_run_interrupted_and_leaves_it_resumable(tmp_path, capsys):
    """What schedulers, `timeout` and Kubernetes send: a real SIGTERM to `podium train`."""
    data = make_folder(tmp_path / "train", {c: 20 for c in ("cat", "dog", "fox")})
    overrides = fast_overrides(tmp_path, **{"train.epochs": 2, "output.report": "false"}) + [f"data.train={data}"]
    proc = podium_subprocess(["train", "--quiet", *overrides], tmp_path)
    run = tmp_path / "runs dir" / "exp"
    wait_for_epochs(run, 1, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    err = proc.stderr.read()
    proc.stderr.close()
    status = read_status(run)
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM", status
    assert "--resume" in err and not (run / "summary.json").exists()
    from podium.model.lifecycle import resume_point
    from podium.rundir import load_run

    assert resume_point(load_run(run)).start_epoch >= 1  # resumable (the kill -9 test resumes for real)


def test_sigint_exits_130_and_marks_run_interrupted(tmp_path, capsys, image_folder, monkeypatch):
    """Ctrl+C during the second epoch: a real SIGINT to this process (Lightning turns it into exit 1)."""
    from lightning.pytorch.callbacks import Callback

    import podium

    class CtrlC(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1:
                os.kill(os.getpid(), signal.SIGINT)

    original = podium.train
    monkeypatch.setattr(podium, "train", lambda *a, **k: original(*a, **{**k, "callbacks": [CtrlC()]}))
    handler = signal.getsignal(signal.SIGINT)
    # a terminal's Ctrl+C, even where this process started with SIGINT ignored (a background job)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, err = run_cli(["train", *fast_overrides(tmp_path, **{"train.epochs": 2}), f"data.train={image_folder}",
                             "--quiet"], capsys)
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores SIGINT once it has seen one
    assert code == 130, err
    status = read_status(tmp_path / "runs dir" / "exp")
    assert status == {**status, "status": "interrupted", "signal": "SIGINT", "epoch": 1}


def test_run_that_fails_after_its_folder_exists_is_marked_failed(tmp_path, capsys):
    data = make_folder(tmp_path / "train")
    broken = data / "cat" / "broken.jpg"
    make_image((200, 30, 30), size=256).save(broken, quality=95)
    broken.write_bytes(broken.read_bytes()[:2500])  # the header reads; decoding fails in the first epoch
    code, err = run_cli(["train", *fast_overrides(tmp_path), f"data.train={data}", "--quiet"], capsys)
    assert code == 2 and "broken.jpg" in err
    run = tmp_path / "runs dir" / "exp"
    status = read_status(run)
    assert status["status"] == "failed" and "broken.jpg" in status["error"] and not (run / "summary.json").exists()


def test_crash_after_the_folder_exists_is_marked_failed_and_reraised(tmp_path, image_folder):
    from lightning.pytorch.callbacks import Callback

    class Crash(Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            raise RuntimeError("simulated crash")

    cfg = load_config(None, fast_overrides(tmp_path) + [f"data.train={image_folder}"])
    with pytest.raises(RuntimeError, match="simulated crash"):
        train(cfg, progress=False, log=lambda *a: None, callbacks=[Crash()])
    status = read_status(tmp_path / "runs dir" / "exp")
    assert status["status"] == "failed" and status["error"] == "RuntimeError: simulated crash"


def test_checkpoint_of_another_architecture_is_refused_not_silently_used(run_copy, tmp_path, capsys):
    """Before: `predict RUN --checkpoint OTHER.ckpt` built the checkpoint's model, not the run's."""
    run, data = run_copy
    ckpt = torch.load(run / "best.ckpt", map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["model_cfg"]["name"] = "test_resnet"
    torch.save(ckpt, tmp_path / "other.ckpt")
    code, err = run_cli(["predict", run, "--data", data, "--checkpoint", tmp_path / "other.ckpt", "--quiet"], capsys)
    assert code == 2 and "holds a test_resnet model" in err and "model.name=test_efficientnet" in err, err


# ---------------------------------------------------------------- nothing is overwritten

def test_average_checkpoints_never_overwrites_a_checkpoint(run_copy, capsys):
    """Before: `--out RUN/best.ckpt` replaced the run's best checkpoint with the average."""
    run, _ = run_copy
    best = (run / "best.ckpt").read_bytes()
    code, err = run_cli(["average-checkpoints", run, "--last", 2, "--out", run / "best.ckpt", "--no-eval"], capsys)
    assert code == 0, err
    assert (run / "best.ckpt").read_bytes() == best
    assert (run / "best-2.ckpt").is_file()  # the next free name, as every output folder gets


def test_eda_output_goes_to_the_next_free_folder(run_copy, tmp_path, capsys):
    _, data = run_copy
    out = tmp_path / "reports"
    for _ in range(2):
        assert main(["eda", str(data), "--out", str(out)]) == 0
    assert (out / "eda.html").is_file() and (tmp_path / "reports-2" / "eda.html").is_file()


# ---------------------------------------------------------------- numbers

@pytest.mark.parametrize("override", ["train.lr=inf", "train.lr=nan", "train.weight_decay=.inf",
                                      "crop.options={box: [0.1, .nan]}"])
def test_non_finite_config_numbers_are_refused(tmp_path, capsys, override):
    code, err = run_cli(["train", f"data.train={tmp_path}", override], capsys)
    assert code == 2 and override.partition("=")[0] in err and "finite" in err


def test_loss_that_turns_nan_stops_the_run_without_nan_checkpoints(tmp_path, capsys, image_folder):
    overrides = fast_overrides(tmp_path, **{"train.lr": "1e30", "train.epochs": 2, "train.scheduler": "none"})
    code, err = run_cli(["train", *overrides, f"data.train={image_folder}", "--quiet"], capsys)
    assert code == 2, err
    assert "training stopped" in err and "epoch 0" in err and "train.lr=1e+30" in err and "precision" in err
    run = tmp_path / "runs dir" / "exp"
    assert not (run / "best.ckpt").exists() and not (run / "last.ckpt").exists()
    assert read_status(run)["status"] == "failed"


def test_best_checkpoint_never_comes_from_a_nan_metric(tmp_path):
    """Lightning saves a first epoch's best checkpoint whatever its value (nan as -inf) and takes +inf
    as the best score; podium's best checkpoint comes only from finite scores."""
    import lightning.pytorch as pl

    from podium.model.guards import FiniteCheckpoint

    class Scores(pl.LightningModule):  # val_f1: nan in epoch 0, then 0.5, inf
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, _):
            return (self.w - batch[0]).pow(2).sum()

        def validation_step(self, batch, _):
            self.log("val_f1", [float("nan"), 0.5, float("inf")][self.current_epoch])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(2, 1)), batch_size=2)
    cb = FiniteCheckpoint(dirpath=tmp_path, filename="best", monitor="val_f1", mode="max", save_top_k=1)
    pl.Trainer(max_epochs=3, callbacks=[cb], logger=False, enable_progress_bar=False, enable_model_summary=False,
               num_sanity_val_steps=0, accelerator="cpu").fit(Scores(), data, data)
    assert float(cb.best_model_score) == 0.5
    assert torch.load(tmp_path / "best.ckpt", weights_only=True)["epoch"] == 1
    assert cb.state_key.startswith("ModelCheckpoint{")  # older runs resume their best score


def test_batch_size_one_with_batchnorm_is_explained(tmp_path, capsys, image_folder):
    code, err = run_cli(["train", *fast_overrides(tmp_path, **{"train.batch_size": 1}),
                         f"data.train={image_folder}"], capsys)
    assert code == 2 and "BatchNorm" in err and "train.batch_size=2" in err
    assert not (tmp_path / "runs dir").exists()


@pytest.mark.parametrize("override, allowed", [
    ("train.seed=-1", "greater than or equal to 0"), (f"train.seed={2**40}", "less than or equal to 4294967295"),
    ("data.split_seed=-1", "greater than or equal to 0"), ("cv.seed=-5", "greater than or equal to 0"),
    ("train.strategy=bogus", "ddp"), ("train.accelerator=gpux", "cuda"),
    ("data.image_size=60000", "at most 4096")])
def test_out_of_range_config_values_are_one_message_naming_the_key(tmp_path, capsys, override, allowed):
    """Before: seeds reached numpy/sklearn, strategy reached Lightning, 60000 px reached OpenCV (tracebacks)."""
    code, err = run_cli(["train", f"data.train={tmp_path}", override], capsys)
    assert code == 2 and override.partition("=")[0] in err and allowed in err, err
    assert "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_gpu_accelerator_on_a_cpu_only_machine_is_one_message(tmp_path, capsys, image_folder):
    code, err = run_cli(["train", *fast_overrides(tmp_path, **{"train.accelerator": "gpu"}),
                         f"data.train={image_folder}"], capsys)
    assert code == 2 and "train.accelerator=gpu" in err and "available: cpu" in err, err
    assert not (tmp_path / "runs dir").exists()


def test_serve_port_out_of_range_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["serve", str(tmp_path), "--port", "70000"])
    assert exc.value.code == 2 and "1 to 65535" in capsys.readouterr().err


def test_serve_on_a_busy_port_is_one_message_and_never_says_serving(run_copy, capsys):
    import socket

    run, _ = run_copy
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        code = main(["serve", str(run), "--port", str(busy.getsockname()[1])])
    finally:
        busy.close()
    captured = capsys.readouterr()
    assert code == 2 and "cannot serve on 127.0.0.1" in captured.err and "another program" in captured.err
    assert "serving" not in captured.out


def test_serve_closes_connections_whose_headers_never_complete(trained):
    """Slowloris: half a request head, then silence, held a connection open for good (uvicorn
    times out only idle keep-alive). First request, and the next one on a kept-alive connection."""
    import socket
    import threading

    import uvicorn

    from podium.deploy.serve import ServeSettings, create_app, server_config
    from podium.inference.predictor import load_predictor

    pytest.importorskip("fastapi")
    settings = ServeSettings(header_timeout_s=1.0)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    app = create_app(load_predictor(trained[0]), settings)
    server = uvicorn.Server(server_config(app, settings, port=port, log_level="critical"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()

    def closed_after(conn: socket.socket) -> tuple[bytes, float]:
        """Everything the server sends until it closes, and how long that took."""
        start, data = time.monotonic(), b""
        while chunk := conn.recv(4096):
            data += chunk
        return data, time.monotonic() - start

    try:
        deadline = time.monotonic() + 30
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=8) as slow:
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # no blank line: the head never ends
            data, waited = closed_after(slow)
            assert data == b"" and 0.9 < waited < 4
        with socket.create_connection(("127.0.0.1", port), timeout=8) as kept:
            kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            head = kept.recv(4096)
            assert head.startswith(b"HTTP/1.1 200")
            kept.sendall(b"GET /health HTTP/1.1\r\n")  # the next request, cut off
            _, waited = closed_after(kept)
            assert waited < 4  # the header timeout (1 s), not uvicorn's 5 s keep-alive, and not never
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()


@pytest.mark.parametrize("value", ["-3", "0", "two"])
def test_cli_numbers_are_validated(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(tmp_path), "--data", str(tmp_path), "--batch-size", value])
    assert exc.value.code == 2
    assert "--batch-size" in capsys.readouterr().err


# ---------------------------------------------------------------- paths and files

@pytest.mark.parametrize("name", ["../outside", "/tmp/abs-run", "a/b", ".."])
def test_run_name_is_a_single_folder_name(tmp_path, capsys, name):
    code, err = run_cli(["train", f"data.train={tmp_path}", f"output.dir={tmp_path / 'runs'}",
                         f"output.name={name}"], capsys)
    assert code == 2 and "output.name" in err and "single folder name" in err
    assert not (tmp_path / "outside").exists()


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_out_that_is_a_file_is_refused_before_predicting(run_copy, tmp_path, capsys, monkeypatch, command):
    import podium.inference.predict as predict_module

    def never(*args, **kwargs):
        raise AssertionError("predicted before refusing --out")

    monkeypatch.setattr(predict_module, "predict_frame", never)
    run, data = run_copy
    taken = tmp_path / "taken.txt"
    taken.write_text("mine")
    code, err = run_cli([command, run, "--data", data, "--out", taken / "sub", "--quiet"], capsys)
    assert code == 2 and f"{taken} is a file" in err, err
    assert taken.read_text() == "mine"


def test_run_files_follow_the_umask(tmp_path):
    from podium.fileio import write_json

    old = os.umask(0o022)
    try:
        mode = write_json(tmp_path / "a.json", {}).stat().st_mode & 0o777
        os.umask(0o077)
        private = write_json(tmp_path / "b.json", {}).stat().st_mode & 0o777
    finally:
        os.umask(old)
    assert (mode, private) == (0o644, 0o600)


# ---------------------------------------------------------------- damaged files

def _one_message(code: int, err: str) -> str:
    """The CLI's answer to a user mistake: exit 2 and one 'error:' message, no traceback."""
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_sidecar_whose_class_count_differs_from_the_model_outputs_is_refused(run_copy, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    run, data = run_copy
    code, err = run_cli(["export", run, "--out", tmp_path / "exp" / "model.onnx", "--parity-images", "4"], capsys)
    assert code == 0, err
    sidecar_path = tmp_path / "exp" / "model.json"
    sidecar = json.loads(sidecar_path.read_text())
    sidecar_path.write_text(json.dumps({**sidecar, "classes": sidecar["classes"] + ["extra"]}))
    err = _one_message(*run_cli(["predict", "--model", tmp_path / "exp" / "model.onnx", "--data", data,
                                 "--out", tmp_path / "pred", "--quiet"], capsys))
    assert "outputs 3 scores, the sidecar lists 4 classes" in err and not (tmp_path / "pred").exists()


def test_ensemble_member_that_is_a_corrupt_parquet_is_named(run_copy, tmp_path, capsys):
    run, _ = run_copy
    bad = tmp_path / "member.parquet"
    bad.write_bytes(os.urandom(600))
    err = _one_message(*run_cli(["ensemble", run, bad, "--out", tmp_path / "ens"], capsys))
    assert f"{bad} is damaged" in err and "parquet" in err


def test_submission_check_on_binary_garbage_is_one_message(tmp_path, capsys):
    garbage, info = tmp_path / "submission.csv", tmp_path / "info.csv"
    garbage.write_bytes(b"\xc8\xff" + os.urandom(2000))
    info.write_text("ImageID,ans\na.jpg,0\n")
    err = _one_message(*run_cli(["submission", "check", garbage, "--info", info], capsys))
    assert "not a text CSV" in err and "ImageID,ans" in err
    err = _one_message(*run_cli(["submission", "check", info, "--info", garbage], capsys))
    assert f"cannot read info.csv {garbage}" in err


def test_config_file_of_random_bytes_is_one_message(tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_bytes(b"\xb6\xff" + os.urandom(3000))
    for command in (["config", "show", config], ["train", config]):
        err = _one_message(*run_cli(command, capsys))
        assert f"config file {config} is not text" in err


@pytest.mark.parametrize("content", [b"not json {", b"[0.1, -0.2, 0.3]", b"\xff\xfe\x00garbage"])
def test_predict_biases_that_are_not_a_json_object_are_one_message(run_copy, tmp_path, capsys, content):
    run, data = run_copy
    biases = tmp_path / "biases.json"
    biases.write_bytes(content)
    err = _one_message(*run_cli(["predict", run, "--data", data, "--biases", biases, "--out", tmp_path / "pred",
                                 "--quiet"], capsys))
    assert f"{biases} is damaged" in err and not (tmp_path / "pred").exists()


@pytest.mark.parametrize("op", ["{name: Lambda, image: print}", "{name: FDA, reference_images: [], read_fn: open}"])
def test_augment_op_that_takes_a_function_is_refused(tmp_path, capsys, image_folder, op):
    """A string where a function goes only failed mid-epoch, in a loader worker, as a TypeError."""
    err = _one_message(*run_cli(["train", *fast_overrides(tmp_path), f"data.train={image_folder}",
                                 f"augment.train_ops=[{op}]", "--quiet"], capsys))
    assert "augment.train_ops[0]" in err and "takes a Python function" in err
    assert not (tmp_path / "runs dir").exists()


def test_augment_op_given_null_where_it_takes_an_optional_function_builds():
    """null is no function, which these parameters allow (Equalize without a mask); only code is refused."""
    import numpy as np

    from podium.data.transforms import build_train_pipeline
    from podium.schema import AugmentConfig

    cfg = AugmentConfig(train_ops=[{"name": "Equalize", "mask": None, "p": 1.0}])
    image = np.tile(np.arange(0, 64, dtype=np.uint8).reshape(8, 8, 1), (4, 4, 3))  # a dim ramp
    out = build_train_pipeline(cfg, (32, 32))(image, seed=0)
    assert out.shape[-2:] == (32, 32) and int(out.max()) > 200  # equalized: the ramp spans the range


# ---------------------------------------------------------------- images

def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims width x height (a decompression bomb's header) with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_decompression_bomb_is_a_bad_image(tmp_path, capsys, image_folder, policy):
    bomb = _png_header_only(image_folder / "cat" / "bomb.png", 15000, 15000)
    code, err = run_cli(["train", *fast_overrides(tmp_path), f"data.train={image_folder}",
                         f"data.on_bad_image={policy}", "--quiet"], capsys)
    if policy == "error":
        assert code == 2 and "bomb.png" in err and "data.max_image_pixels" in err
    else:
        assert code == 0, err
        summary = json.loads((tmp_path / "runs dir" / "exp" / "summary.json").read_text())
        assert summary["skipped_images"] == 1
        split = pd.read_csv(tmp_path / "runs dir" / "exp" / "split.csv")
        assert str(bomb.resolve()) not in set(split["path"])


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_truncated_jpeg_in_a_loader_worker_is_named_or_skipped(tmp_path, capsys, policy):
    """The header reads fine, so only decoding (in a DataLoader worker) finds the damage: the
    message names the file and the fix, not 'worker process 0'; skip leaves it out and names it."""
    data = make_folder(tmp_path / "train", {"cat": 6, "dog": 6}, ext="jpg")
    bad = data / "cat" / "cat_003.jpg"
    bad.write_bytes(bad.read_bytes()[:-200])
    code = main(["train", *fast_overrides(tmp_path, **{"data.num_workers": 1}), f"data.train={data}",
                 f"data.on_bad_image={policy}"])
    out, err = capsys.readouterr()
    if policy == "error":
        assert code == 2 and "worker" not in err and "Traceback" not in err, err
        assert f"cannot decode image {bad}" in err and "data.on_bad_image=skip" in err
    else:
        assert code == 0, err
        assert "skipped 1 unreadable image(s)" in out + err and "cat_003.jpg" in out + err
        summary = json.loads((tmp_path / "runs dir" / "exp" / "summary.json").read_text())
        assert summary["skipped_images"] == 1


def test_max_image_pixels_is_configurable(tmp_path):
    from podium.data.images import BadImageError, load_rgb, set_max_image_pixels

    make_image((1, 2, 3), size=40).save(tmp_path / "a.png")
    try:
        set_max_image_pixels(1000)
        with pytest.raises(BadImageError, match="1,600 pixels, above data.max_image_pixels=1,000"):
            load_rgb(tmp_path / "a.png")
        set_max_image_pixels(None)
        assert load_rgb(tmp_path / "a.png").shape == (40, 40, 3)
    finally:
        set_max_image_pixels(load_config(None).data.max_image_pixels)



def test_pillow_limit_is_left_as_the_caller_has_it(tmp_path, monkeypatch):
    """data.max_image_pixels is podium's: loading data never rewrites Pillow's process-wide limit,
    and a podium limit above Pillow's still lets such an image through (and one above podium's not)."""
    from PIL import Image

    from podium.data.dataset import load_samples
    from podium.data.images import BadImageError, load_rgb, set_max_image_pixels

    make_folder(tmp_path / "data", {"cat": 1})
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses above 200 pixels
    try:
        load_samples(tmp_path / "data", load_config(None, ["data.max_image_pixels=5000"]).data)
        assert Image.MAX_IMAGE_PIXELS == 100
        make_image((1, 2, 3), size=40).save(tmp_path / "b.png")  # 1,600 pixels
        assert load_rgb(tmp_path / "b.png").shape == (40, 40, 3)
        assert Image.MAX_IMAGE_PIXELS == 100
        set_max_image_pixels(1000)
        with pytest.raises(BadImageError, match="1,600 pixels, above data.max_image_pixels=1,000"):
            load_rgb(tmp_path / "b.png")
    finally:
        set_max_image_pixels(load_config(None).data.max_image_pixels)


# ---------------------------------------------------------------- silent data surprises

def _load(spec, log, **data):
    from podium.data.dataset import load_samples

    cfg = load_config(None, [f"data.{k}={v}" for k, v in data.items()])
    return load_samples(spec, cfg.data, log=log)


def test_palette_gifs_decode_and_dangling_links_are_reported(tmp_path):
    root = make_folder(tmp_path / "data", {"cat": 3, "dog": 3})
    make_image((200, 30, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(root / "cat" / "palette.gif")
    for i in range(2):
        (root / "dog" / f"gone{i}.jpg").symlink_to(tmp_path / f"missing{i}.jpg")
    messages = []
    frame = _load(root, messages.append)
    assert "cat/palette.gif" in set(frame["id"])
    from podium.data.images import load_rgb

    gif = load_rgb(root / "cat" / "palette.gif")
    assert gif.shape == (32, 32, 3) and gif[16, 16, 0] > 150  # the red square survives the palette
    warning = " ".join(messages)
    assert "2 image link(s)" in warning and "dog/gone0.jpg" in warning and "dog/gone1.jpg" in warning


def test_empty_group_values_are_reported(tmp_path):
    make_folder(tmp_path, {"cat": 4, "dog": 4})
    rows = [(f"{c}/{c}_{i:03d}.png", c, "" if i < 2 else f"p{i}") for c in ("cat", "dog") for i in range(4)]
    pd.DataFrame(rows, columns=["path", "label", "person"]).to_csv(tmp_path / "labels.csv", index=False)
    messages = []
    _load(tmp_path / "labels.csv", messages.append, group_column="person")
    assert any("4 of 8 image(s)" in m and "empty group" in m and "cat/cat_000.png" in m for m in messages), messages


@pytest.mark.parametrize("label_case", ["error", "merge", "keep"])
def test_label_variants_by_case_or_spaces_are_refused_merged_or_kept(tmp_path, label_case):
    make_folder(tmp_path, {"cat": 5})
    labels = ["Ants", "ants ", "ants", "ants", "Bees"]
    pd.DataFrame({"path": [f"cat/cat_{i:03d}.png" for i in range(5)], "label": labels}).to_csv(
        tmp_path / "labels.csv", index=False)
    messages = []
    if label_case == "error":
        with pytest.raises(PodiumError) as refused:
            _load(tmp_path / "labels.csv", messages.append)
        message = str(refused.value)
        assert "3 labels" in message and "'Ants' (1) / 'ants' (2) / 'ants ' (1)" in message
        assert "data.label_case=merge" in message and "Bees" not in message
        return
    frame = _load(tmp_path / "labels.csv", messages.append, label_case=label_case)
    said = " ".join(messages)
    assert "'Ants' (1) / 'ants' (2) / 'ants ' (1)" in said
    if label_case == "merge":
        assert frame["label"].tolist() == ["ants", "ants", "ants", "ants", "bees"]
    else:
        assert frame["label"].tolist() == labels and said.startswith("warning")


def test_cv_folds_that_would_lack_a_class_are_named_in_one_warning(tmp_path, capsys):
    """3 people per class and --folds 5: some folds cannot validate every class. One line names
    the folds, the classes and their group counts, and the fold count that avoids it."""
    make_folder(tmp_path, {"cat": 6, "dog": 6, "fox": 6})
    rows = [(f"{c}/{c}_{i:03d}.png", c, f"{c}-person{i % 3}") for c in ("cat", "dog", "fox") for i in range(6)]
    pd.DataFrame(rows, columns=["path", "label", "person"]).to_csv(tmp_path / "labels.csv", index=False)
    code = main(["cv", *fast_overrides(tmp_path), f"data.train={tmp_path / 'labels.csv'}", "data.group_column=person",
                 "output.name=cv5", "output.report=false", "--folds", "5", "--fold", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = [line for line in (out + err).splitlines() if "validate without" in line]
    assert len(lines) == 1, out + err
    assert "'cat' (3 groups)" in lines[0] and "fold 0: " in lines[0] and "--folds 3" in lines[0]
    folds = pd.read_csv(tmp_path / "runs dir" / "cv5" / "folds.csv")
    named = {int(f) for f in re.findall(r"fold (\d+): ", lines[0])}
    assert named == {f for f, part in folds.groupby("fold") if part["label"].nunique() < 3}


def test_class_with_a_single_image_is_reported(tmp_path):
    from podium.data.samples import prepare_data

    root = make_folder(tmp_path / "data", {"cat": 6, "dog": 6, "fox": 1})
    messages = []
    prepared = prepare_data(load_config(None, [f"data.train={root}"]), log=messages.append)
    assert "fox" not in set(prepared.val["label"])
    assert any("1 class(es) have no validation images" in m and "'fox' (1 image)" in m for m in messages), messages


def test_more_processes_than_the_split_can_feed_is_one_message_from_rank_zero(tmp_path):
    """`train.devices=3` on 4 training images: every rank refuses alike (no rank crashes in a
    collective, no "last.ckpt does not exist"), the message prints once, the run says failed."""
    data = make_folder(tmp_path / "few", {"cat": 3, "dog": 3})
    overrides = [*fast_overrides(tmp_path), f"data.train={data}", "data.val_fraction=0.34", "train.devices=3",
                 "train.strategy=ddp", "output.name=three", "output.report=false"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "podium", "train", *overrides, "--quiet"], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.count("error:") == 1 and "Traceback" not in done.stderr
    assert "3 processes" in done.stderr and "4 training and 2 validation" in done.stderr
    status = json.loads((tmp_path / "runs dir" / "three" / "status.json").read_text())
    assert status["status"] == "failed" and "3 processes" in status["error"]


def test_rank_shares_need_two_training_images_and_one_validation_image_each():
    from podium.data.datamodule import check_rank_shares
    from podium.errors import EveryRankError
    check_rank_shares(1, 0, 1)  # a single process: nothing to share
    check_rank_shares(6, 3, 3)
    for n_train, n_val in [(5, 3), (6, 2)]:
        with pytest.raises(EveryRankError, match="at least 2 and 1"):
            check_rank_shares(n_train, n_val, 3)
