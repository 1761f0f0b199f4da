"""Grad-CAM for the run report, through pytorch-grad-cam (`grad-cam` on PyPI, a maintained library).

podium adds only what the library leaves to its caller:

* the feature layer (the last Conv2d) and a guard against in-place activations after it;
* the input size. A heat map has the resolution of the layer's feature map: MobileNetV2 at
  64 px has a 2x2 one, and a 2x2 map bilinearly stretched over the picture is a colour field, not
  an explanation. `plan_cam` probes the map's size once and, below `MIN_FEATURE_SIDE`, computes
  the CAM on the model's own input upscaled until the map is at least that large (the model sees
  the same picture, only bigger), or says in one line why it cannot;
* one batched forward for every (image, class) pair instead of one per map, a backward pass that
  stops at the layer, and the model left as it came (training mode, parameter gradients).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
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
class CamPlan:
    """How the report computes its maps: at ``cam_hw`` (the model's ``input_hw``, or that upscaled
    until the feature map is large enough), or ``skip``, the one-line reason it does not."""

    input_hw: tuple[int, int]
    feature_hw: tuple[int, int]
    cam_hw: tuple[int, int]
    cam_feature_hw: tuple[int, int]
    skip: str | None = None

    @property
    def upscaled(self) -> bool:
        return self.cam_hw != self.input_hw

    def describe(self) -> str:
        h, w = self.input_hw
        fh, fw = self.feature_hw
        if not self.upscaled:
            return f"At the model's {h}x{w} input the last feature map is {fh}x{fw}; maps computed at that size."
        ch, cw = self.cam_hw
        bh, bw = self.cam_feature_hw
        return (f"At the model's {h}x{w} input the last feature map is only {fh}x{fw} (a heat map would be a colour "
                f"field), so the maps are computed on the same input upscaled to {ch}x{cw}, where it is {bh}x{bw}.")


def _feature_hw(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    import torch

    seen: dict[str, tuple[int, int]] = {}

    def hook(_m, _i, out):
        seen["hw"] = (int(out.shape[-2]), int(out.shape[-1]))

    handle = layer.register_forward_hook(hook)
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
    layer = layer if layer is not None else last_conv(model)
    if layer is None:
        return CamPlan((h, w), (0, 0), (h, w), (0, 0),
                       skip=f"{type(model).__name__} has no convolutional feature map to weight "
                            "(Grad-CAM here needs a Conv2d layer).")
    fh, fw = _feature_hw(model, layer, x[:1])
    if min(fh, fw) >= MIN_FEATURE_SIDE:
        return CamPlan((h, w), (fh, fw), (h, w), (fh, fw))
    factor = MIN_FEATURE_SIDE / max(1, min(fh, fw))
    cam_hw, bigger = (h, w), (fh, fw)
    for _ in range(3):  # a stride's rounding can leave the map a cell short: grow again from what it gave
        cam_hw = (math.ceil(cam_hw[0] * factor), math.ceil(cam_hw[1] * factor))
        if max(cam_hw) > MAX_CAM_SIDE:
            return CamPlan((h, w), (fh, fw), cam_hw, bigger,
                           skip=f"the last feature map is {fh}x{fw} at the model's {h}x{w} input and a "
                                f"{MIN_FEATURE_SIDE}x{MIN_FEATURE_SIDE} one would need an input over {MAX_CAM_SIDE} px.")
        try:
            bigger = _feature_hw(model, layer, F.interpolate(x[:1], size=cam_hw, mode="bilinear", align_corners=False))
        except Exception as exc:  # a model built for one input size (a fixed positional embedding, a flatten)
            return CamPlan((h, w), (fh, fw), cam_hw, bigger,
                           skip=f"the last feature map is {fh}x{fw} at the model's {h}x{w} input (too coarse to "
                                f"show anything) and the model does not run on an input upscaled to "
                                f"{cam_hw[0]}x{cam_hw[1]} ({type(exc).__name__}).")
        if min(bigger) >= MIN_FEATURE_SIDE:
            return CamPlan((h, w), (fh, fw), cam_hw, bigger)
        factor = MIN_FEATURE_SIDE / max(1, min(bigger))
    return CamPlan((h, w), (fh, fw), cam_hw, bigger,
                   skip=f"the last feature map is {fh}x{fw} at the model's {h}x{w} input and stays "
                        f"{bigger[0]}x{bigger[1]} at {cam_hw[0]}x{cam_hw[1]}.")


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
    layer = layer if layer is not None else last_conv(model)
    if layer is None:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer; pass layer=")
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
        cam = GradCAM(model=_LogitsOnly(model), target_layers=[layer])
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
