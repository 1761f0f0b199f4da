"""Feature vectors of audited images: what the classifier head sees (its input), computed by
the model that never trained on them (each fold's model on its own validation images)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from podium.curation.audit import AuditData


def fold_features(data: AuditData, log=print) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(fold, row indices into ``data.table``, features) per fold; a single run is fold -1."""
    from podium.model.checkpoints import load_module
    from podium.rundir import best_checkpoint, fold_dir, read_config

    folds = data.table["fold"].to_numpy()
    for fold in sorted(set(folds.tolist())):
        run_dir = data.dir if data.kind == "run" else fold_dir(data.dir, int(fold))
        index = np.flatnonzero(folds == fold)
        module = load_module(best_checkpoint(run_dir), data.classes)
        log(f"features of {len(index)} image(s) from {run_dir}")
        yield int(fold), index, head_inputs(module, data.table["path"].iloc[index].tolist(), read_config(run_dir))


@torch.inference_mode()
def head_inputs(module, paths: list[str], cfg) -> np.ndarray:
    """(N, D) inputs of the classifier head (pooled backbone features) for images read as
    validation reads them."""
    from podium.data.dataset import build_eval_dataset, make_loader
    from podium.model.models import head_name

    loader = make_loader(build_eval_dataset(paths, None, cfg.data, cfg.augment), cfg.train.batch_size)
    head = module.model.get_submodule(head_name(module.model))
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().float().flatten(1).cpu()))
    try:
        module.eval()
        for images, _, _ in loader:
            module(images)
    finally:
        hook.remove()
    return torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32)
