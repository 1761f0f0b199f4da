"""Grad-CAM for the run report, through pytorch-grad-cam (`grad-cam` on PyPI, a maintained library).

podium adds only what the library leaves to its caller:

* the feature layer and how its output becomes a 2-D map (`CamTarget`): a CNN's last Conv2d; for a
  vision transformer (timm's ViT/DeiT/EVA family, torchvision's ViT) the first norm of its last
  block, whose patch tokens are laid back on the patch grid with the class/register tokens dropped
  (pytorch-grad-cam's ``reshape_transform``). The patch embedding, a ViT's only Conv2d, is the
  first layer, not a feature map worth explaining; a guard against in-place activations after it;
* the input size. A heat map has the resolution of the layer's feature map: MobileNetV2 at
  64 px has a 2x2 one, and a 2x2 map bilinearly stretched over the picture is a colour field, not
  an explanation. `plan_cam` probes the map's size once and, below `MIN_FEATURE_SIDE`, computes
  the CAM on the model's own input upscaled until the map is at least that large (the model sees
  the same picture, only bigger), or says in one line why it cannot;
* one batched forward for every (image, class) pair instead of one per map, a backward pass that
  stops at the layer, and the model left as it came (training mode, parameter gradients).
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

#: the smallest feature-map side worth painting (a 224-px ImageNet CNN's last map is 7x7)
MIN_FEATURE_SIDE = 7
#: no CAM input side beyond this (cost grows with its square)
MAX_CAM_SIDE = 1024


class ModuleGradCam:
    """The bare model and the eval preprocessing (resize + normalize) of a trained Classifier."""

    def __init__(self, module, size: tuple[int, int]):
        self.module, self.model, self.size = module, module.model, size

    def preprocess(self, rgb: np.ndarray):
        import torch

        from podium.data.images import resize_rgb

        x = torch.from_numpy(resize_rgb(rgb, self.size)).permute(2, 0, 1).unsqueeze(0)
        return self.module.normalize(x.to(self.module.mean.device))


def gradcam_source(module, size: tuple[int, int]) -> ModuleGradCam | None:
    """A Grad-CAM source for single-head models; multi-head targets would need a per-head index."""
    return None if module.heads else ModuleGradCam(module, size)


def last_conv(model: torch.nn.Module) -> torch.nn.Module | None:
    """The last Conv2d of the model (the usual Grad-CAM layer), or None when it has none."""
    import torch

    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return convs[-1] if convs else None


@dataclass(frozen=True)
class CamTarget:
    """The layer Grad-CAM weights and the layout of its output.

    A convolutional layer gives (N, C, h, w) as it is. A transformer block gives tokens
    (N, prefix + h*w, C): ``prefix`` class/distillation/register tokens (timm's
    ``num_prefix_tokens``), then one token per patch in row-major order on a grid that depends on
    the input size (``grid``: input (H, W) -> (h, w)); `reshape_transform` turns them into a map.
    """

    layer: torch.nn.Module
    prefix: int = 0
    grid: Callable[[tuple[int, int]], tuple[int, int]] | None = None
    patch: tuple[int, int] = (1, 1)  # a transformer takes inputs in whole patches
    channels_last: bool = False  # (N, h, w, C): a hierarchical transformer's stage (timm's Swin)

    @property
    def tokens(self) -> bool:
        return self.grid is not None or self.channels_last

    @property
    def what(self) -> str:
        """How the page names the map."""
        return "last block's patch-token grid" if self.tokens else "last feature map"

    def reshape_transform(self, input_hw: tuple[int, int]) -> Callable | None:
        """pytorch-grad-cam's ``reshape_transform`` for an input of ``input_hw``; None for a conv layer."""
        if self.channels_last:
            return _channels_first
        if self.grid is None:
            return None
        return functools.partial(tokens_to_map, prefix=self.prefix, grid=self.grid((int(input_hw[0]), int(input_hw[1]))))


def tokens_to_map(tokens: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """(N, prefix + h*w, C) tokens -> (N, C, h, w): the prefix tokens dropped (they sit on no
    patch), the patch tokens back in their places."""
    n, length, channels = tokens.shape
    h, w = grid
    if length - prefix != h * w:
        raise ValueError(f"{length} tokens are not {prefix} prefix token(s) + a {h}x{w} patch grid")
    return tokens[:, prefix:, :].reshape(n, h, w, channels).permute(0, 3, 1, 2)


def _channels_first(tokens: torch.Tensor) -> torch.Tensor:
    """(N, h, w, C) -> (N, C, h, w)."""
    return tokens.permute(0, 3, 1, 2)


def _timm_grid(patch_embed) -> Callable[[tuple[int, int]], tuple[int, int]]:
    def grid(hw: tuple[int, int]) -> tuple[int, int]:
        if hasattr(patch_embed, "dynamic_feat_size"):  # what the model computes (padding included)
            h, w = patch_embed.dynamic_feat_size(hw)
            return int(h), int(w)
        ph, pw = patch_embed.patch_size
        return hw[0] // ph, hw[1] // pw
    return grid


def cam_target(model: torch.nn.Module, layer: torch.nn.Module | None = None) -> CamTarget | None:
    """Where Grad-CAM looks in ``model`` (``layer`` when given), or None when it has no such layer.

    A vision transformer (timm: ``patch_embed``, ``blocks``, ``num_prefix_tokens``; torchvision:
    ``conv_proj``, ``encoder.layers``; timm's Swin family, stages of (N, h, w, C) maps: ``layers``,
    ``output_fmt`` NHWC) is explained at its last block's first norm, as
    pytorch-grad-cam recommends (its ViT example): with a class-token head the block's own output
    reaches the head only through the class token, so its patch tokens get no gradient, while the
    norm feeds the attention in which every patch token informs the class token (an average-pooled
    head is served as well). Anything else: the last Conv2d.
    """
    net: Any = model  # the attributes below are the models' own, unknown to nn.Module's type
    if hasattr(net, "patch_embed") and hasattr(net, "blocks") and hasattr(net, "num_prefix_tokens"):
        last = net.blocks[-1]
        patch = tuple(int(v) for v in getattr(net.patch_embed, "patch_size", (1, 1)))
        return CamTarget(layer if layer is not None else getattr(last, "norm1", last),
                         prefix=int(net.num_prefix_tokens), grid=_timm_grid(net.patch_embed),
                         patch=(patch[0], patch[-1]))
    if getattr(net, "output_fmt", None) == "NHWC" and hasattr(net, "patch_embed") and hasattr(net, "layers"):
        last = net.layers[-1].blocks[-1] if hasattr(net.layers[-1], "blocks") else net.layers[-1]
        patch = tuple(int(v) for v in getattr(net.patch_embed, "patch_size", (1, 1)))
        return CamTarget(layer if layer is not None else getattr(last, "norm1", last), patch=(patch[0], patch[-1]),
                         channels_last=True)
    if hasattr(net, "conv_proj") and hasattr(net, "encoder") and hasattr(net, "patch_size"):
        last = net.encoder.layers[-1]
        p = int(net.patch_size)
        return CamTarget(layer if layer is not None else getattr(last, "ln_1", last), prefix=1,
                         grid=lambda hw: (hw[0] // p, hw[1] // p), patch=(p, p))
    layer = layer if layer is not None else last_conv(model)
    return CamTarget(layer) if layer is not None else None


@dataclass(frozen=True)
class CamPlan:
    """How the report computes its maps: at ``cam_hw`` (the model's ``input_hw``, or that upscaled
    until the feature map is large enough), or ``skip``, the one-line reason it does not."""

    input_hw: tuple[int, int]
    feature_hw: tuple[int, int]
    cam_hw: tuple[int, int]
    cam_feature_hw: tuple[int, int]
    skip: str | None = None
    what: str = "last feature map"  # or a transformer's "last block's patch-token grid"
    #: a fixed-size transformer rebuilt for ``cam_hw`` (timm's ``set_input_size``) where the model
    #: itself takes only its own size; None: the model runs the CAM input as it is
    model: Any = field(default=None, compare=False, repr=False)

    @property
    def upscaled(self) -> bool:
        return self.cam_hw != self.input_hw

    def describe(self) -> str:
        h, w = self.input_hw
        fh, fw = self.feature_hw
        if not self.upscaled:
            return f"At the model's {h}x{w} input the {self.what} is {fh}x{fw}; maps computed at that size."
        ch, cw = self.cam_hw
        bh, bw = self.cam_feature_hw
        resized = (" (on a copy of the model rebuilt by timm for that input, its position encoding resampled)"
                   if self.model is not None else "")
        return (f"At the model's {h}x{w} input the {self.what} is only {fh}x{fw} (a heat map would be a colour "
                f"field), so the maps are computed on the same input upscaled to {ch}x{cw}, where it is {bh}x{bw}"
                f"{resized}.")


def _feature_hw(model: torch.nn.Module, target: CamTarget, x: torch.Tensor) -> tuple[int, int]:
    import torch

    seen: dict[str, tuple[int, int]] = {}
    reshape = target.reshape_transform((int(x.shape[-2]), int(x.shape[-1])))

    def hook(_m, _i, out):
        out = reshape(out) if reshape is not None else out
        seen["hw"] = (int(out.shape[-2]), int(out.shape[-1]))

    handle = target.layer.register_forward_hook(hook)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    return seen["hw"]


def plan_cam(model: torch.nn.Module, x: torch.Tensor, layer: torch.nn.Module | None = None) -> CamPlan:
    """Probe the feature map of ``layer`` at the input ``x`` (1, C, H, W) and find the smallest input
    (the cost grows with its area) where its short side is at least `MIN_FEATURE_SIDE`; a skip
    reason where no size works."""
    import torch.nn.functional as F

    h, w = int(x.shape[-2]), int(x.shape[-1])
    target = cam_target(model, layer)
    if target is None:
        return CamPlan((h, w), (0, 0), (h, w), (0, 0),
                       skip=f"{type(model).__name__} has no convolutional feature map or transformer blocks to "
                            "weight (Grad-CAM here needs a Conv2d layer or a ViT).")
    what = target.what
    try:
        fh, fw = _feature_hw(model, target, x[:1])
    except ValueError as exc:  # tokens that do not lay out on the patch grid
        return CamPlan((h, w), (0, 0), (h, w), (0, 0), skip=f"the {what} cannot be laid out as a map: {exc}.",
                       what=what)
    if min(fh, fw) >= MIN_FEATURE_SIDE:
        return CamPlan((h, w), (fh, fw), (h, w), (fh, fw), what=what)
    factor = MIN_FEATURE_SIDE / max(1, min(fh, fw))
    cam_hw, bigger, resized = (h, w), (fh, fw), None
    for _ in range(3):  # a stride's rounding can leave the map a cell short: grow again from what it gave
        cam_hw = (_whole(cam_hw[0] * factor, target.patch[0]), _whole(cam_hw[1] * factor, target.patch[1]))
        if max(cam_hw) > MAX_CAM_SIDE:
            return CamPlan((h, w), (fh, fw), cam_hw, bigger, what=what,
                           skip=f"the {what} is {fh}x{fw} at the model's {h}x{w} input and a "
                                f"{MIN_FEATURE_SIDE}x{MIN_FEATURE_SIDE} one would need an input over {MAX_CAM_SIDE} px.")
        try:
            big = F.interpolate(x[:1], size=cam_hw, mode="bilinear", align_corners=False)
            bigger, resized = _probe_upscaled(model, target, layer, big)
        except Exception as exc:  # a model built for one input size (a fixed positional embedding, a flatten)
            return CamPlan((h, w), (fh, fw), cam_hw, bigger, what=what,
                           skip=f"the {what} is {fh}x{fw} at the model's {h}x{w} input (too coarse to "
                                f"show anything) and the model does not run on an input upscaled to "
                                f"{cam_hw[0]}x{cam_hw[1]} ({type(exc).__name__}).")
        if min(bigger) >= MIN_FEATURE_SIDE:
            return CamPlan((h, w), (fh, fw), cam_hw, bigger, what=what, model=resized)
        factor = MIN_FEATURE_SIDE / max(1, min(bigger))
    return CamPlan((h, w), (fh, fw), cam_hw, bigger, what=what,
                   skip=f"the {what} is {fh}x{fw} at the model's {h}x{w} input and stays "
                        f"{bigger[0]}x{bigger[1]} at {cam_hw[0]}x{cam_hw[1]}.")


def _probe_upscaled(model: torch.nn.Module, target: CamTarget, layer: torch.nn.Module | None,
                    big: torch.Tensor) -> tuple[tuple[int, int], torch.nn.Module | None]:
    """The map's size at the upscaled input ``big``, and the model copy that ran it where the model
    itself takes one input size only (None: the model ran it). The copy is timm's own answer to a
    new input size (``set_input_size`` resamples the positional embedding); the error of the model
    is raised where there is no such copy (or an explicit ``layer`` that belongs to the model)."""
    try:
        return _feature_hw(model, target, big), None
    except Exception:
        twin = _resized_copy(model, (int(big.shape[-2]), int(big.shape[-1]))) if layer is None else None
        if twin is None:
            raise
        twin_target = cam_target(twin)
        assert twin_target is not None  # a copy of a model that had a target
        return _feature_hw(twin, twin_target, big), twin


def _resized_copy(model: torch.nn.Module, hw: tuple[int, int]) -> torch.nn.Module | None:
    """A copy of a fixed-size timm transformer built for input ``hw``, or None for other models."""
    import copy

    if not callable(getattr(model, "set_input_size", None)):
        return None
    import warnings

    twin = copy.deepcopy(model)
    try:
        with warnings.catch_warnings():  # torch's notes on timm's resampling code, not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            twin.set_input_size(img_size=hw)  # type: ignore[operator]
    except Exception:  # a model whose set_input_size takes other arguments: no copy, the skip says why
        return None
    return twin


def _whole(side: float, patch: int) -> int:
    """``side`` rounded up to whole patches (a transformer's input; 1 for a CNN)."""
    return math.ceil(math.ceil(side) / patch) * patch


def gradcam_batch(model: torch.nn.Module, batch: torch.Tensor, targets: list[int],
                  layer: torch.nn.Module | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps (N, H, W) in [0, 1] of ``batch`` (N, C, H, W), row i for class ``targets[i]``,
    and the model's logits (N, classes) on that batch, from one forward and one backward pass.

    pytorch-grad-cam's `GradCAM` does the work. Around it: the backward pass stops at the layer
    (below it nothing is needed, and at an upscaled input that part is most of the cost), and the
    model's mode and its parameters' ``.grad`` are put back as they were.
    """
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if batch.ndim != 4 or len(targets) != batch.shape[0]:
        raise ValueError(f"gradcam_batch expects (N, C, H, W) and N targets, got {tuple(batch.shape)} "
                         f"and {len(targets)} targets")
    target = cam_target(model, layer)
    if target is None:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer or transformer blocks; pass layer=")
    layer = target.layer
    if min(targets, default=0) < 0:
        raise ValueError(f"target_class {min(targets)} out of range (negative)")
    was_training = model.training
    params = list(model.parameters())
    grads = [p.grad for p in params]  # the library zeroes every .grad
    flags = [p.requires_grad for p in params]
    # Backward needs to reach the layer only, not the input or the weights: its output enters the
    # graph as a fresh leaf (a hook that runs before the library's), so the pass back stops there.
    # A copy goes downstream (a hook after the library's), so an in-place activation after the
    # layer cannot overwrite the activations the library kept.
    handles = [layer.register_forward_hook(lambda _m, _i, out: out.detach().requires_grad_(True), prepend=True)]
    cam = None
    try:
        cam = GradCAM(model=_LogitsOnly(model), target_layers=[layer],
                      reshape_transform=target.reshape_transform((int(batch.shape[-2]), int(batch.shape[-1]))))
        handles.append(layer.register_forward_hook(lambda _m, _i, out: out.clone()))
        for p in params:  # no graph for the weights: the forward below the layer records nothing
            p.requires_grad_(False)
        with torch.enable_grad():
            maps = cam(input_tensor=batch.detach(), targets=[ClassifierOutputTarget(int(t)) for t in targets])
        logits = cam.outputs.detach().float().cpu().numpy()
    except IndexError:  # ClassifierOutputTarget indexing past the logits
        outputs = getattr(cam, "outputs", None)
        n_out = outputs.shape[1] if outputs is not None else "the model's"
        raise ValueError(f"target_class {max(targets)} out of range for {n_out} outputs") from None
    finally:
        for handle in handles:
            handle.remove()
        if cam is not None:
            cam.activations_and_grads.release()
        model.train(was_training)
        for p, g, flag in zip(params, grads, flags):
            p.requires_grad_(flag)
            p.grad = g
    return np.clip(maps, 0, 1).astype(np.float32), logits


def gradcam(model: torch.nn.Module, image_tensor: torch.Tensor, target_class: int,
            layer: torch.nn.Module | None = None) -> np.ndarray:
    """HxW Grad-CAM heat map in [0, 1] of one (1, C, H, W) image for ``target_class``."""
    if image_tensor.ndim != 4 or image_tensor.shape[0] != 1:
        raise ValueError(f"gradcam expects a (1, C, H, W) tensor, got shape {tuple(image_tensor.shape)}")
    return gradcam_batch(model, image_tensor, [target_class], layer)[0][0]


def _logits(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


class _LogitsOnly:
    """The model as pytorch-grad-cam calls it: one logits tensor out (some models return a tuple)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __call__(self, x):
        return _logits(self.model(x))

    def eval(self):
        self.model.eval()
        return self

    def parameters(self):
        return self.model.parameters()

    def zero_grad(self, set_to_none: bool = True):
        self.model.zero_grad(set_to_none=set_to_none)


def overlay_heatmap(rgb_uint8: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Blend a [0, 1] heat map (any size, resized to the image) as a JET colour map over an RGB image,
    with pytorch-grad-cam's `show_cam_on_image`."""
    import cv2
    from pytorch_grad_cam.utils.image import show_cam_on_image

    h, w = rgb_uint8.shape[:2]
    heat = cv2.resize(np.clip(heatmap, 0, 1).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(rgb_uint8.astype(np.float32) / 255.0, heat, use_rgb=True, image_weight=1 - alpha)
