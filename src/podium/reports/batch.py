"""`podium show-batch CONFIG` / ``podium.config(...).show_batch()``: a grid of training images
exactly as the model receives them (the run's loader, sampler and augmentation; before the
model's own normalization), each titled with its label: the quickest check that crops, flips
and labels are what they should be before spending a training run.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from podium.schema import PodiumConfig, deep_merge, validate_config


@dataclass
class BatchPreview:
    """The written grid; a notebook shows it inline (``_repr_png_``)."""

    path: Path
    labels: list[str] = field(default_factory=list)

    def _repr_png_(self) -> bytes:
        return self.path.read_bytes()


def _free_path(path: Path) -> Path:
    """``path``, or the first free ``name-2.png``, ``name-3.png``...: a preview never overwrites."""
    candidate, n = path, 2
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1
    return candidate


def show_batch(cfg: PodiumConfig, *, n: int = 16, out: str | Path | None = None, log=print) -> BatchPreview:
    """Draw the first ``n`` images of the first training batch(es) with their labels into a PNG.

    ``out`` defaults to ``<output.dir>/<output.name>-batch.png`` (a free name). Mixup/CutMix mix
    images inside the training step, so the grid shows them unmixed.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    from podium.data.samples import prepare_data
    from podium.errors import PodiumError
    from podium.model.training import build_datamodule

    if n < 1:
        raise PodiumError(f"show-batch needs at least 1 image, found n={n}")
    # one batch in this process: no loader workers to start, no device cache to fill
    cfg = validate_config(deep_merge(cfg.model_dump(mode="json"), {"data": {"num_workers": 0}}))
    prepared = prepare_data(cfg, log=lambda *a: None)
    datamodule = build_datamodule(cfg, prepared)
    images: list = []
    labels: list[str] = []
    for batch in datamodule.train_dataloader():
        x, y = batch[0], batch[1]
        for image, target in zip(x, y):
            index = int(target if getattr(target, "ndim", 0) == 0 else target[0])
            images.append(np.asarray(image.detach().cpu()).transpose(1, 2, 0))
            labels.append(prepared.classes[index])
        if len(images) >= n:
            break
    images, labels = images[:n], labels[:n]
    cols = int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, label in zip(axes.flat, images, labels):
        ax.imshow(image if image.shape[2] == 3 else image[..., 0], cmap=None if image.shape[2] == 3 else "gray")
        ax.set_title(label, fontsize=10)
    fig.suptitle(f"training batch: preset {cfg.augment.preset}, {cfg.data.image_size} px, sampler {cfg.train.sampler}",
                 fontsize=10)
    fig.tight_layout()
    target = Path(out) if out else Path(cfg.output.dir) / f"{cfg.output.name}-batch.png"
    target = _free_path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    from podium.fileio import write_atomic

    data = buffer.getvalue()
    write_atomic(target, lambda path: path.write_bytes(data))
    log(f"{len(images)} training images with their labels: {target}")
    return BatchPreview(target, labels)
