"""One epoch with strategy=ddp on 2 CPU processes, through the real console entry point."""
import json
import os
import subprocess
import sys

from conftest import fast_overrides


def test_ddp_two_cpu_processes(tmp_path, image_folder):
    cmd = [sys.executable, "-m", "podium", "train", *fast_overrides(tmp_path), f"data.train={image_folder}",
           "train.strategy=ddp", "train.devices=2", "train.accelerator=cpu", "output.name=ddp", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(p) for p in sys.path if p])}
    env.pop("PODIUM_RUN_DIR", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=540, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted(p.name for p in (tmp_path / "runs dir").iterdir())
    assert runs == ["ddp"]  # both ranks wrote into one run folder
    summary = json.loads((tmp_path / "runs dir" / "ddp" / "summary.json").read_text())
    assert summary["epochs_trained"] == 1 and 0 <= summary["val_metrics"]["f1"] <= 1
