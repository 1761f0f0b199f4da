"""Reading torch files as data, never as code: the one ``torch.load`` in podium.

`checkpoints.read_checkpoint` (every .ckpt) and `models` (``model.pretrained_path``)
both load through `safe_torch_load`; it has no podium imports beyond the errors,
so any module can use it without import cycles.
"""
from __future__ import annotations

from pathlib import Path

from podium.errors import PodiumError


def safe_torch_load(path: str | Path, kind: str = "checkpoint"):
    """``torch.load(weights_only=True)`` with podium's messages: a file that needs more than
    tensors and plain values is refused naming it (also for ``model.pretrained_path`` weights)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise PodiumError(f"{kind} {path} does not exist; pass a .ckpt file written by podium training"
                          if kind == "checkpoint" else f"{kind} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise PodiumError(
            f"refused to load {kind} {path}: it holds Python objects beyond tensors and plain values, "
            f"which could run code when unpickled ({reason}). podium checkpoints never need that; "
            "only load files from sources you trust, re-exported as plain weights") from None
    except Exception as exc:  # truncated or not a torch file at all
        raise PodiumError(f"cannot read {kind} {path}: {type(exc).__name__}: {str(exc)[:300]} "
                          f"(is it a complete {'.ckpt written by podium' if kind == 'checkpoint' else 'file'}?)") from None
