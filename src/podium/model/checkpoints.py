"""The one checkpoint reader: every podium command that opens a .ckpt goes through here.

Checkpoints are shared between teammates and downloaded from the web, so they
are data, not code: `torch.load(..., weights_only=True)` never runs pickled
objects, and a file that needs more than tensors and plain containers is
refused with a message that names it.
"""
from __future__ import annotations

from pathlib import Path

from podium.errors import PodiumError, summarize_list
from podium.model.serialization import misfit, safe_torch_load, state_shapes


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's contents (tensors and plain Python values only)."""
    path = Path(path)
    ckpt = safe_torch_load(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        found = summarize_list(list(ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise PodiumError(f"checkpoint {path} has no 'state_dict' (found {found}); expected a Lightning checkpoint")
    return ckpt


def load_module(ckpt_path: str | Path, classes: list[str] | None = None, model_name: str | None = None):
    """Rebuild the Classifier from a checkpoint without downloading pretrained weights,
    in eval mode; ``classes`` (the run's class map) and ``model_name`` (the run's model.name)
    must match the checkpoint's: a checkpoint of another architecture would otherwise predict
    silently with its own model, not the one the run's config.yaml names."""
    from podium.model.engine import Classifier

    ckpt_path = Path(ckpt_path)
    checkpoint = read_checkpoint(ckpt_path)
    hparams = checkpoint.get("hyper_parameters")
    if not hparams:
        raise PodiumError(f"{ckpt_path} is not a podium checkpoint (no hyper-parameters)")
    if classes is not None and list(hparams["classes"]) != list(classes):
        raise PodiumError(
            f"checkpoint {ckpt_path} was trained on {len(hparams['classes'])} classes "
            f"{hparams['classes'][:10]}, but the run's class map has {len(classes)}: {classes[:10]}")
    found = checkpoint_model_name(checkpoint)
    if model_name is not None and found is not None and found != model_name:
        raise PodiumError(
            f"checkpoint {ckpt_path} holds a {found} model, but the run's config.yaml names model.name={model_name}; "
            "it belongs to another run. Give a checkpoint of this run (--checkpoint best|last), or predict with the "
            "run the checkpoint came from")
    module = Classifier(**{**hparams, "load_pretrained": False})
    try:
        module.load_state_dict(checkpoint["state_dict"], strict=True)
    except RuntimeError as exc:
        why = misfit(state_shapes(module.state_dict()), state_shapes(checkpoint["state_dict"])) or str(exc)[:300]
        raise PodiumError(
            f"checkpoint {ckpt_path} does not fit model {module.model_cfg.name} with "
            f"{len(hparams['classes'])} classes (architecture or class count mismatch): {why}") from None
    from podium.model.ordinal import apply_saved_cuts

    apply_saved_cuts(module, ckpt_path.parent)  # a run's tuned ordinal bin edges, if any
    return module.eval()


def checkpoint_model_name(checkpoint: dict) -> str | None:
    """The model.name a checkpoint (as `read_checkpoint` returns it) was trained with, or None for
    one that does not say: what resume and prediction compare with the run's config.yaml."""
    model_cfg = (checkpoint.get("hyper_parameters") or {}).get("model_cfg")
    return model_cfg.get("name") if isinstance(model_cfg, dict) else None


def checkpoint_classes(path: str | Path) -> list[str]:
    """The class map a checkpoint was trained on (for checks before resuming)."""
    hparams = read_checkpoint(path).get("hyper_parameters") or {}
    return list(hparams.get("classes", []))
