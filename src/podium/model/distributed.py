"""Which process of a multi-process run this is, and rank 0's run folder for all ranks.

Every rank of a DDP run starts `podium train` on its own: Lightning's launcher
re-runs the command for ranks >= 1 (``train.devices=2``), torchrun and SLURM start
every rank themselves. Only rank 0 creates the run folder and writes run files; the
other ranks learn its path when the process group exists (a broadcast in
`ShareRunDir.setup`), so no rank re-derives it and no environment variable carries it.
"""
from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.callbacks import Callback

from podium.errors import PodiumError

# Set by the launchers, read once here: (torchrun/torchelastic, SLURM, Lightning's own launcher).
_RANK_VARIABLES = ("RANK", "SLURM_PROCID")


def launched_rank(environ=None) -> int:
    """This process's global rank as its launcher announced it (0 for a single process).

    torchrun and torchelastic set RANK; SLURM sets SLURM_PROCID; Lightning's
    launcher gives the processes it starts LOCAL_RANK and NODE_RANK, which are both 0
    only for rank 0. Known before the process group exists, so ranks >= 1 can avoid
    creating anything before they learn rank 0's folder.
    """
    env = os.environ if environ is None else environ
    for name in _RANK_VARIABLES:
        if env.get(name, "").strip().isdigit():
            return int(env[name])
    local, node = env.get("LOCAL_RANK", "0"), env.get("NODE_RANK", env.get("GROUP_RANK", "0"))
    return 0 if (local.strip() or "0") == "0" and (node.strip() or "0") == "0" else 1


class ShareRunDir(Callback):
    """Rank 0's run folder, broadcast to every rank when the process group is up.

    ``run_dir`` is rank 0's folder on rank 0 and a provisional path on other ranks
    (never created; their checkpoint and metrics callbacks write on rank 0 only, and
    ModelCheckpoint takes rank 0's dirpath by the same kind of broadcast).
    """

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.run_dir = Path(trainer.strategy.broadcast(str(self.run_dir), src=0))


def check_launch(train_cfg, environ=None) -> None:
    """A torchrun/torchelastic launch whose process count the config does not match fails here,
    in one sentence, instead of hanging at rendezvous or in Lightning's traceback.

    torchrun sets WORLD_SIZE (all processes) and LOCAL_WORLD_SIZE (this node's); Lightning needs
    ``train.num_nodes`` x ``train.devices`` to equal the first and ``train.devices`` the second.
    """
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" not in env or not env.get("WORLD_SIZE", "").isdigit():
        return
    world, local = int(env["WORLD_SIZE"]), int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"]))
    if world == 1:
        return
    if train_cfg.strategy != "auto" and not train_cfg.strategy.startswith("ddp"):
        raise PodiumError(f"torchrun started {world} processes but train.strategy={train_cfg.strategy}; "
                          "set train.strategy=ddp to train one model across them")
    devices = train_cfg.devices
    count = len(devices) if isinstance(devices, list) else int(devices) if str(devices).isdigit() else None
    if count is not None and count != local or train_cfg.num_nodes * (count or local) != world:
        raise PodiumError(
            f"torchrun started {world} process(es), {local} on this node, but the config asks for "
            f"train.num_nodes={train_cfg.num_nodes} x train.devices={devices}; set "
            f"train.num_nodes={world // max(local, 1)} train.devices={local} (--nnodes and --nproc_per_node)")


def check_sync_batchnorm(train_cfg) -> None:
    """``train.sync_batchnorm`` converts BatchNorm to torch's SyncBatchNorm, which only runs on
    CUDA: on the CPU it would fail inside DDP's setup with a traceback."""
    from podium.model.engine import uses_cuda

    if train_cfg.sync_batchnorm and not uses_cuda(train_cfg.accelerator):
        raise PodiumError(
            f"train.sync_batchnorm=true needs CUDA GPUs (torch's SyncBatchNorm); found train.accelerator="
            f"{train_cfg.accelerator} without CUDA. Set train.sync_batchnorm=false (each rank's BatchNorm "
            "sees its own share of the batch), or use a model with GroupNorm/LayerNorm")
