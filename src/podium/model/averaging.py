"""Checkpoint averaging: the element-wise mean of several epochs' weights of one run
(`podium average-checkpoints`), written as a loadable checkpoint."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from podium.errors import PodiumError
from podium.fileio import atomic_path


def _load_state_dict(path: str | Path) -> tuple[dict, dict]:
    """Through the one checkpoint reader (weights_only=True): averaging never runs pickled code."""
    from podium.model.checkpoints import read_checkpoint

    ckpt = read_checkpoint(path)
    return ckpt, ckpt["state_dict"]


def average_checkpoints(paths: Sequence[str | Path]) -> dict:
    """Element-wise mean of checkpoints' weights (SWA-style averaging of one run's epochs).

    Float tensors are averaged in float64 and cast back; integer buffers such
    as BatchNorm's ``num_batches_tracked`` are counters, not weights, so the
    last checkpoint's value is kept. Checkpoints are loaded one at a time.
    """
    if len(paths) == 0:
        raise PodiumError("average_checkpoints needs at least one checkpoint path")
    _, first = _load_state_dict(paths[0])
    sums = {k: v.double().clone() if v.is_floating_point() else v.clone() for k, v in first.items()}
    for path in paths[1:]:
        _, state = _load_state_dict(path)
        _check_same_keys(first, state, paths[0], path)
        for key, value in state.items():
            if value.is_floating_point():
                sums[key] += value.double()
            else:
                sums[key] = value.clone()
    n = len(paths)
    return {
        k: (sums[k] / n).to(first[k].dtype) if first[k].is_floating_point() else sums[k]
        for k in first
    }


def _check_same_keys(ref: dict, state: dict, ref_path, path) -> None:
    for key in list(ref) + [k for k in state if k not in ref]:
        if key not in state or key not in ref:
            where = path if key not in state else ref_path
            raise PodiumError(
                f"cannot average {ref_path} and {path}: key {key!r} is missing from {where}; "
                "only checkpoints of the same model architecture can be averaged"
            )
        if tuple(ref[key].shape) != tuple(state[key].shape):
            raise PodiumError(
                f"cannot average {ref_path} and {path}: key {key!r} has shape "
                f"{tuple(ref[key].shape)} vs {tuple(state[key].shape)}; "
                "only checkpoints of the same model architecture can be averaged"
            )


def save_averaged_checkpoint(paths: Sequence[str | Path], out_path: str | Path) -> Path:
    """Write a loadable checkpoint: first checkpoint's fields with the averaged weights."""
    import torch

    averaged = average_checkpoints(paths)
    ckpt, _ = _load_state_dict(paths[0])
    ckpt["state_dict"] = averaged
    ckpt["podium_averaged_from"] = [str(p) for p in paths]
    with atomic_path(out_path) as tmp:
        torch.save(ckpt, tmp)
    return Path(out_path)
