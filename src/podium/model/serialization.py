"""Reading torch files as data, never as code: the one ``torch.load`` in podium.

`checkpoints.read_checkpoint` (every .ckpt) and `models` (``model.pretrained_path``)
both load through `safe_torch_load` and explain weights that do not fit with `misfit`;
it has no podium imports beyond the errors, so any module can use it without import cycles.
"""
from __future__ import annotations

from pathlib import Path

from podium.errors import PodiumError, summarize_list


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


def state_shapes(state_dict: dict) -> dict[str, tuple[int, ...]]:
    """Name -> shape of a state dict's tensors: what `misfit` compares."""
    return {k: tuple(v.shape) for k, v in state_dict.items() if hasattr(v, "shape")}


def misfit(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> str | None:
    """Why a checkpoint's weights (``found``) cannot load into a model (``expected``), in a few
    names (missing, unexpected, different shapes), or None when they fit: torch's own message
    lists every key of both models."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    shapes = [f"{k} {list(found[k])} vs {list(expected[k])}" for k in expected
              if k in found and found[k] != expected[k]]
    parts = [f"{len(missing)} weight(s) missing ({summarize_list(missing, 2)})" if missing else "",
             f"{len(extra)} unexpected ({summarize_list(extra, 2)})" if extra else "",
             f"{len(shapes)} of another shape (checkpoint vs model: {summarize_list(shapes, 2)})" if shapes else ""]
    return "; ".join(p for p in parts if p) or None
