"""What the report's Grad-CAM needs from a trained module: the bare model and eval preprocessing."""
from __future__ import annotations

import numpy as np


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
