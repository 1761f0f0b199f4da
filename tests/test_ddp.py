"""DDP on CPU (gloo): each rank's share of the data, validation over every image once, and
runs launched through the real console entry point."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import fast_overrides, make_folder

from podium.data.dataset import EvalShare, SeededSampler, balanced_weights


def _shares(n, world, **kw):
    return [list(SeededSampler(n, 7, rank=r, world_size=world, **kw)) for r in range(world)]


@pytest.mark.parametrize("n,world", [(12, 2), (11, 2), (10, 3), (5, 4)])
@pytest.mark.parametrize("balanced", [False, True])
def test_rank_shares_are_disjoint_and_together_are_the_epoch(n, world, balanced):
    kw = {}
    if balanced:
        targets = np.array([0] * (n - 2) + [1, 1])
        kw["weights"] = balanced_weights(targets, 2)
    epoch = SeededSampler(n, 7, **kw).epoch_draws()
    shares = _shares(n, world, **kw)
    assert {len(s) for s in shares} == {n // world}  # equal: no rank waits on an all-reduce others skip
    positions = [[epoch.index(pair) for pair in share] for share in shares]
    flat = sorted(p for share in positions for p in share)
    # each draw of the epoch (a balanced epoch repeats images, never a draw) on one rank, once;
    # only the < world leftover draws at the end are dropped, none padded
    assert flat == list(range(world * (n // world)))
    if balanced:  # the option took effect: the rare class is drawn far above its 2/n share
        drawn = [i for share in shares for i, _ in share]
        assert sum(i >= n - 2 for i in drawn) >= len(drawn) // 4


def test_rank_shares_follow_the_epoch_and_batches_match_one_process():
    """Rank r's k-th batch of B/2 draws holds half of one process's k-th batch of B."""
    single = list(SeededSampler(16, 3, epoch=2))
    r0, r1 = _shares_at(16, 3, epoch=2)
    for k in range(2):
        assert sorted(r0[4 * k:4 * k + 4] + r1[4 * k:4 * k + 4]) == sorted(single[8 * k:8 * k + 8])
    assert _shares_at(16, 3, epoch=3) != [r0, r1]  # a new order each epoch


def _shares_at(n, seed, epoch):
    return [list(SeededSampler(n, seed, epoch=epoch, rank=r, world_size=2)) for r in range(2)]


def test_eval_shares_hold_every_image_once():
    shares = [list(EvalShare(11, r, 2)) for r in range(2)]
    assert sorted(shares[0] + shares[1]) == list(range(11)) and [len(s) for s in shares] == [6, 5]


@pytest.mark.parametrize("rank,world", [(2, 2), (-1, 2), (0, 0)])
def test_rank_share_refuses_a_rank_outside_the_world(rank, world):
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        SeededSampler(10, 0, rank=rank, world_size=world)
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        EvalShare(10, rank, world)


def _env():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(p) for p in sys.path if p]), "OMP_NUM_THREADS": "1"}
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, image_folder, nnodes, nproc, name):
    """`torchrun ... -m podium train` as ``nnodes`` local "nodes" of ``nproc`` processes each."""
    port = _free_port()
    overrides = [*fast_overrides(tmp_path), f"data.train={image_folder}", "train.strategy=ddp",
                 f"train.devices={nproc}", f"train.num_nodes={nnodes}", f"output.name={name}", "output.report=false"]
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
                               f"--nproc_per_node={nproc}", f"--node_rank={node}", "--rdzv-backend=c10d",
                               f"--rdzv-endpoint=127.0.0.1:{port}", "-m", "podium", "train", *overrides, "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
                              cwd=tmp_path)
             for node in range(nnodes)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    return outputs


@pytest.mark.parametrize("nnodes,nproc", [(2, 1), (1, 2)])
def test_torchrun_makes_one_run_folder_and_trains(tmp_path, image_folder, nnodes, nproc):
    """Every rank starts `podium train` on its own; only rank 0 makes (and names) the folder."""
    before = sorted(p.name for p in tmp_path.iterdir())
    _torchrun(tmp_path, image_folder, nnodes, nproc, "multi")
    assert sorted(p.name for p in (tmp_path / "runs dir").iterdir()) == ["multi"]
    assert sorted(p.name for p in tmp_path.iterdir()) == before + ["runs dir"]  # nothing else made, in cwd either
    run = tmp_path / "runs dir" / "multi"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_trained"] == 1 and (run / "last.ckpt").is_file()
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


def test_torchrun_process_count_must_match_the_config():
    from podium.errors import PodiumError
    from podium.model.distributed import check_launch, launched_rank
    from podium.schema import load_config

    elastic = {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}
    ok = load_config(None, ["train.strategy=ddp", "train.devices=1", "train.num_nodes=2"]).train
    check_launch(ok, elastic)
    with pytest.raises(PodiumError, match=r"torchrun started 2 process\(es\), 1 on this node.*train.num_nodes=2 train.devices=1"):
        check_launch(load_config(None, ["train.strategy=ddp", "train.devices=1"]).train, elastic)
    with pytest.raises(PodiumError, match="train.strategy=ddp"):
        check_launch(load_config(None, ["train.strategy=fsdp", "train.devices=1", "train.num_nodes=2"]).train, elastic)
    check_launch(load_config(None, ["train.devices=1"]).train, {})  # not under torchrun: nothing to check
    assert [launched_rank(e) for e in ({}, {"RANK": "1"}, {"SLURM_PROCID": "0"}, {"LOCAL_RANK": "1"},
                                        {"LOCAL_RANK": "0", "NODE_RANK": "1"})] == [0, 1, 0, 1, 1]


def test_one_step_on_two_ranks_equals_one_step_on_one_and_validates_every_image_once(tmp_path, image_folder):
    """36 images, one optimisation step: 2 ranks x batch 18 give the weights 1 process x batch 36
    gives (a GroupNorm model: per-image statistics; BatchNorm's global statistics need
    train.sync_batchnorm, which torch runs on CUDA only). 11 validation images on 2 ranks
    (DistributedSampler would pad one repeat): the metrics logged under DDP equal rank 0's
    single-process evaluation of the same weights (with test_efficientnet, this check failed before
    the rank shares: val_f1 0.18 logged against 0.20 evaluated)."""
    import torch

    common = [*fast_overrides(tmp_path, **{"train.lr": "0.5", "model.dropout": "0", "train.optimizer": "sgd",
                                          "train.scheduler": "none", "output.report": "false",
                                          "model.name": "test_efficientnet_gn"}),
              f"data.train={image_folder}", f"data.val={make_folder(tmp_path / 'v', {'cat': 4, 'dog': 4, 'fox': 3}, seed=7)}",
              "train.accelerator=cpu", "--quiet"]
    runs = {"one": ["train.batch_size=36", "train.devices=1"],
            "two": ["train.batch_size=18", "train.devices=2", "train.strategy=ddp"]}
    for name, extra in runs.items():
        proc = subprocess.run([sys.executable, "-m", "podium", "train", *common, *extra, f"output.name={name}"],
                              capture_output=True, text=True, timeout=300, env=_env())
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    states = [torch.load(tmp_path / "runs dir" / n / "last.ckpt", weights_only=True)["state_dict"] for n in runs]
    start = torch.load(tmp_path / "runs dir" / "one" / "last.ckpt", weights_only=True)
    assert start["global_step"] == 1
    compared = 0
    for key, value in states[0].items():
        if value.is_floating_point():
            torch.testing.assert_close(states[1][key], value, rtol=1e-4, atol=1e-5, msg=key)
            compared += 1
    assert compared > 10
    run = tmp_path / "runs dir" / "two"
    assert sorted(p.name for p in (tmp_path / "runs dir").iterdir()) == ["one", "two"]  # one folder per run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_images"] == 11 and len(pd.read_parquet(run / "val_predictions.parquet")) == 11
    logged = pd.read_csv(run / "metrics.csv").iloc[-1]
    assert logged["val_f1"] == pytest.approx(summary["val_metrics"]["f1"], abs=1e-5)
    assert logged["val_acc"] == pytest.approx(summary["val_metrics"]["acc"], abs=1e-5)


def test_sync_batchnorm_without_cuda_is_refused():
    from podium.errors import PodiumError
    from podium.model.distributed import check_sync_batchnorm
    from podium.schema import load_config

    check_sync_batchnorm(load_config(None, ["train.accelerator=cpu"]).train)
    with pytest.raises(PodiumError, match="train.sync_batchnorm=true needs CUDA GPUs"):
        check_sync_batchnorm(load_config(None, ["train.accelerator=cpu", "train.sync_batchnorm=true"]).train)


@pytest.mark.slow  # three DDP runs of 2 processes (about 40 s on 2 cores): too long for the default suite
def test_ddp_kill_9_mid_epoch_then_resume_is_exact(tmp_path):
    """SIGKILL to every process of a 2-rank run in epoch 2 of 3, then --resume (which relaunches
    both ranks from the saved config): last.ckpt's weights and optimizer state equal an
    uninterrupted DDP run's, bit for bit."""
    import signal
    import time

    import torch

    from podium.rundir import read_status

    data = make_folder(tmp_path / "train", {c: 30 for c in ("cat", "dog", "fox")})
    overrides = [*fast_overrides(tmp_path, **{"train.epochs": 3, "train.batch_size": 4, "output.report": "false"}),
                 f"data.train={data}", "train.strategy=ddp", "train.devices=2", "--quiet"]

    def start(name):
        return subprocess.Popen([sys.executable, "-m", "podium", "train", *overrides, f"output.name={name}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
                                cwd=tmp_path, start_new_session=True)  # its own group: kill -9 reaches every rank

    killed_proc, full_proc = start("killed"), start("full")
    killed = tmp_path / "runs dir" / "killed"
    deadline = time.time() + 240
    while not ((killed / "metrics.csv").is_file() and (killed / "last.ckpt").is_file()
               and len((killed / "metrics.csv").read_text().strip().splitlines()) >= 2):
        assert killed_proc.poll() is None and time.time() < deadline, killed_proc.stderr.read()[-2000:]
        time.sleep(0.02)
    os.killpg(killed_proc.pid, signal.SIGKILL)
    killed_proc.wait(timeout=30)
    killed_proc.stderr.close()
    assert len(pd.read_csv(killed / "metrics.csv")) == 1, "the kill did not land in epoch 2"
    assert read_status(killed)["status"] == "interrupted"  # the lock died with rank 0
    resumed = subprocess.run([sys.executable, "-m", "podium", "train", "--resume", str(killed), "--quiet"],
                             capture_output=True, text=True, timeout=300, env=_env(), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert full_proc.wait(timeout=300) == 0, full_proc.stderr.read()[-2000:]
    full_proc.stderr.close()
    a = torch.load(tmp_path / "runs dir" / "full" / "last.ckpt", weights_only=True)
    b = torch.load(killed / "last.ckpt", weights_only=True)
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for sa, sb in zip(a["optimizer_states"], b["optimizer_states"]):
        for pid, state in sa["state"].items():
            for name, tensor in state.items():
                assert torch.equal(tensor, sb["state"][pid][name]), (pid, name)
    assert sorted(p.name for p in (tmp_path / "runs dir").iterdir()) == ["full", "killed"]
