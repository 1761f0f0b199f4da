"""Backbones: any timm model by name, or a torchvision one as ``tv/<name>``.

Each gets a new classifier head sized to the class count. Weights come from
the usual timm/torchvision download (``pretrained=True``) or from a local
state-dict file (``pretrained_path``), which is how machines without network
access fine-tune from ImageNet.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from podium.errors import PodiumError, closest

TV_PREFIX = "tv/"


def create_model(name: str, num_classes: int, *, pretrained: bool = True, pretrained_path: str | None = None,
                 dropout: float = 0.0, img_size: tuple[int, int] | None = None) -> nn.Module:
    """A classifier with a fresh ``num_classes`` head; records its head's name in ``podium_head``.

    ``img_size`` (the run's data.image_size as (height, width)) reaches the models that are built
    for one input size, whose positional embedding is then made for it: timm's ``fixed_input_size``
    ones (ViT, DeiT, EVA, Swin...; pretrained weights, downloaded or from ``pretrained_path``,
    resampled by timm) and torchvision's ViTs (resampled by torchvision's ``interpolate_embeddings``);
    other models take any size anyway."""
    if pretrained_path is not None and not Path(pretrained_path).expanduser().is_file():
        raise PodiumError(f"model.pretrained_path: weights file not found: {pretrained_path}")
    if name.startswith(TV_PREFIX):
        return _create_torchvision(name[len(TV_PREFIX):], num_classes, pretrained, pretrained_path, dropout, img_size)
    return _create_timm(name, num_classes, pretrained, pretrained_path, dropout, img_size)


def head_name(model: nn.Module) -> str:
    return model.podium_head


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(backbone params, head params): freezing the backbone keeps the head training."""
    prefix = head_name(model) + "."
    backbone, head = [], []
    for name, param in model.named_parameters():
        (head if name.startswith(prefix) else backbone).append(param)
    return backbone, head


# ---------------------------------------------------------------- timm

def _fixed_size_kwargs(name: str, img_size: tuple[int, int] | None) -> dict:
    """``{"img_size": ...}`` where timm's model takes one input size and the run's is another, else {}."""
    import timm

    if img_size is None:
        return {}
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None or not getattr(cfg, "fixed_input_size", False):
        return {}
    size = (int(img_size[0]), int(img_size[-1]))
    return {} if tuple(cfg.input_size[-2:]) == size else {"img_size": size}


def _create_timm(name: str, num_classes: int, pretrained: bool, path: str | None, dropout: float,
                 img_size: tuple[int, int] | None = None) -> nn.Module:
    import timm

    if not timm.is_model(name):
        hint = closest(name, timm.list_models(), n=3)
        tv_hint = " (torchvision models take the prefix tv/, e.g. tv/resnet18)" if _is_tv_model(name) else ""
        raise PodiumError(
            f"model.name: unknown model {name!r}{tv_hint}. "
            + (f"Closest timm models: {', '.join(hint)}. " if hint else "")
            + "See timm.list_models() or torchvision.models.list_models().")
    sized = _fixed_size_kwargs(name, img_size)
    try:
        model = timm.create_model(name, pretrained=pretrained and path is None,
                                  num_classes=num_classes, drop_rate=dropout, **sized)
    except Exception as exc:
        if sized and not isinstance(exc, OSError):
            h, w = sized["img_size"]
            raise PodiumError(
                f"model.name={name} is built for one input size and cannot be built for data.image_size "
                f"{h}x{w}: {type(exc).__name__}: {str(exc)[:200]}. Use an image size it accepts (its default "
                f"is {timm.models.get_pretrained_cfg(name).input_size[-1]}) or another model") from None
        if pretrained and path is None:
            raise _download_error(name, exc) from None
        raise
    model.podium_head = model.pretrained_cfg.get("classifier", "fc") if hasattr(model, "pretrained_cfg") else "fc"
    if isinstance(model.podium_head, (list, tuple)):
        model.podium_head = model.podium_head[0]
    if path is not None:
        state = _read_state_dict(path)
        _load_state(model, _fit_timm(model, state) if sized else state, path, name, skip_prefix=model.podium_head + ".")
    return model


def _fit_timm(model: nn.Module, state: dict) -> dict:
    """``state`` through timm's own checkpoint filter of the model's family (``checkpoint_filter_fn``
    of ViT, EVA, Swin...), which resamples a position embedding saved at another input size, as timm
    does to the weights it downloads; as it is for a family without one."""
    import sys

    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    return filter_fn(state, model) if callable(filter_fn) else state


# ---------------------------------------------------------------- torchvision

def _is_tv_model(name: str) -> bool:
    import torchvision

    return name in torchvision.models.list_models(module=torchvision.models)


def _create_torchvision(name: str, num_classes: int, pretrained: bool, path: str | None, dropout: float,
                        img_size: tuple[int, int] | None = None) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        hint = closest(name, names)
        raise PodiumError(
            f"model.name: unknown torchvision classification model {name!r}"
            + (f"; did you mean tv/{hint[0]}?" if hint else "; see torchvision.models.list_models()"))
    sized = _tv_vit_size(name, img_size)
    if pretrained and path is None and not sized:
        try:
            model = torchvision.models.get_model(name, weights="DEFAULT")
        except Exception as exc:
            raise _download_error(f"tv/{name}", exc) from None
    else:
        model = torchvision.models.get_model(name, weights=None, **sized)
        if path is not None:
            _load_state(model, _fit_tv_vit(model, _read_state_dict(path)), path, f"tv/{name}")
        elif pretrained:  # a ViT at the run's size: torchvision's weights, their position embedding resampled
            model.load_state_dict(_fit_tv_vit(model, _download_tv_state(name)))
    model.podium_head = _replace_last_linear(model, num_classes, dropout)
    return model


def _tv_vit_size(name: str, img_size: tuple[int, int] | None) -> dict:
    """``{"image_size": side}`` for a torchvision ViT (built for one square input, 224 px unless
    told) where the run has a size, else {}; a size it cannot be built for is refused."""
    import torchvision
    from torchvision.models import vision_transformer

    if img_size is None or torchvision.models.get_model_builder(name).__module__ != vision_transformer.__name__:
        return {}
    patch = int(name.rsplit("_", 1)[-1])  # vit_b_16: 16-px patches
    h, w = int(img_size[0]), int(img_size[-1])
    if h == w and h % patch == 0:
        return {"image_size": h}
    low = max(patch, max(h, w) // patch * patch)
    raise PodiumError(
        f"model.name=tv/{name} is built for one square input whose side is a multiple of its {patch}-px "
        f"patch, but data.image_size is {h}x{w}. Use a square multiple of {patch} "
        f"(e.g. data.image_size={low} or {low + patch})"
        + (", or a timm ViT (e.g. vit_base_patch16_224), which takes [height, width]" if h != w else ""))


def _fit_tv_vit(model: nn.Module, state: dict) -> dict:
    """``state`` with a torchvision ViT's position embedding resampled to ``model``'s image_size by
    torchvision's own ``interpolate_embeddings`` (weights saved at another size, e.g. ImageNet's
    224 px); any other state as it is."""
    from collections import OrderedDict

    from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

    if not isinstance(model, VisionTransformer) or "encoder.pos_embedding" not in state:
        return state
    return interpolate_embeddings(model.image_size, model.patch_size, OrderedDict(state))


def _download_tv_state(name: str) -> dict:
    """The state dict of torchvision's default pretrained weights for ``name`` (downloaded once)."""
    import torchvision

    try:
        return torchvision.models.get_model_weights(name).DEFAULT.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:
        raise _download_error(f"tv/{name}", exc) from None


def _read_state_dict(path: str) -> dict:
    """The state dict in a weights file: plain, or under ``state_dict`` / ``model``."""
    from podium.model.serialization import safe_torch_load

    state = safe_torch_load(Path(path).expanduser(), kind="weights file")
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise PodiumError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


def _load_state(model: nn.Module, state: dict, path: str, name: str, skip_prefix: str | None = None) -> None:
    """Load the weights file's ``state``: strict, except that the classifier (``skip_prefix``) may differ.
    A file of another architecture is refused in a few names (`serialization.misfit`), not torch's
    dump of every key or its RuntimeError for weights of another shape."""
    from podium.model.serialization import misfit, state_shapes

    if skip_prefix:
        state = {k: v for k, v in state.items() if not k.startswith(skip_prefix)}
    mine, theirs = state_shapes(model.state_dict()), state_shapes(state)
    common = [k for k in theirs if k in mine]  # the file's order: misfit names the first few
    why = misfit({k: mine[k] for k in common}, {k: theirs[k] for k in common})
    if not why:
        result = model.load_state_dict(state, strict=False)
        missing = [k for k in result.missing_keys if not (skip_prefix and k.startswith(skip_prefix))]
        if missing or result.unexpected_keys:
            why = (f"{len(missing)} missing key(s) such as {missing[:3]}, {len(result.unexpected_keys)} unexpected "
                   f"such as {result.unexpected_keys[:3]}")
    if why:
        raise PodiumError(
            f"weights file {path} does not fit {name} (architecture mismatch): {why}. Use the model the "
            f"weights were saved from (a torchvision state dict needs the tv/ prefix, e.g. tv/mobilenet_v2).")


def _replace_last_linear(model: nn.Module, num_classes: int, dropout: float) -> str:
    """Swap the final nn.Linear for a new one; returns its dotted name."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise PodiumError("cannot find the classifier (no nn.Linear layer) in this model")
    name, old = linears[-1]
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    new = nn.Linear(old.in_features, num_classes)
    siblings = list(parent.children()) if isinstance(parent, nn.Sequential) else []
    index = int(attr) if attr.isdigit() else -1
    if index > 0 and isinstance(siblings[index - 1], nn.Dropout):
        siblings[index - 1].p = dropout  # reuse the model's own dropout before the head
    elif dropout > 0:
        new = nn.Sequential(nn.Dropout(dropout), new)
        name = f"{name}"
    setattr(parent, attr, new) if not attr.isdigit() else parent.__setitem__(index, new)
    return name


def _download_error(name: str, exc: Exception) -> PodiumError:
    return PodiumError(
        f"could not download pretrained weights for {name}: {type(exc).__name__}: {str(exc)[:200]}. "
        f"Without network access, set model.pretrained_path to a local weights file "
        f"(timm or torchvision state dict), or model.pretrained=false to train from scratch.")
