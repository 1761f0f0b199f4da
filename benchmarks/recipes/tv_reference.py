"""The torchvision reference recipe as a plain PyTorch loop, outside podium.

Why: the study's ``reference`` recipe is podium configured like the torchvision
reference. To find what podium's *pipeline* costs, the same recipe must also run
without podium. This follows ``references/classification/train.py`` and
``presets.py`` of pytorch/vision step by step (its code is not copied here; the
script cannot run offline as is, since it downloads weights and builds the model
with the weights' 1000 classes):

- train: PIL image -> RandomResizedCrop(size, scale 0.08-1, bilinear, antialias)
  on the *original* image -> RandomHorizontalFlip -> float -> Normalize(ImageNet);
- eval: Resize(short side to size / 0.875) -> CenterCrop(size) -> Normalize;
- mobilenet_v2 (dropout 0.2) from the local ImageNet weights, new Linear head;
- CrossEntropyLoss(label_smoothing), SGD(momentum, not Nesterov) with weight
  decay on every parameter (``--norm-weight-decay`` unset), CosineAnnealingLR
  stepped once per epoch (T_max = epochs), no warm-up, RandomSampler, the last
  epoch's weights evaluated.

It writes a run folder in podium's shape (summary.json, metrics.csv,
val_predictions.parquet) so the study scores it like any podium run.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

#: the reference's knobs for the study's tasks (the issue's command line)
DEFAULTS = {"lr": 0.01, "momentum": 0.9, "weight_decay": 4e-5, "label_smoothing": 0.1, "batch_size": 64,
            "crop_pct": 0.875, "workers": 2}


def _datasets(train_csv: Path, val_csv: Path, size: int, crop_pct: float):
    import torch
    from PIL import Image
    from torchvision.transforms import v2 as T

    classes = sorted(pd.read_csv(train_csv)["label"].astype(str).unique())
    index = {c: i for i, c in enumerate(classes)}
    norm = [T.ToImage(), T.ToDtype(torch.float32, scale=True),
            T.Normalize(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))]
    train_tf = T.Compose([T.RandomResizedCrop(size, antialias=True), T.RandomHorizontalFlip(), *norm])
    eval_tf = T.Compose([T.Resize(int(math.floor(size / crop_pct)), antialias=True), T.CenterCrop(size), *norm])

    class Table(torch.utils.data.Dataset):
        def __init__(self, csv: Path, transform):
            frame = pd.read_csv(csv)
            self.paths = frame["path"].tolist()
            self.targets = [index[str(v)] for v in frame["label"]]
            self.transform = transform

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, i):
            with Image.open(self.paths[i]) as im:
                return self.transform(im.convert("RGB")), self.targets[i]

    return classes, Table(train_csv, train_tf), Table(val_csv, eval_tf)


def _model(num_classes: int, weights: Path | None):
    import torch
    import torchvision

    model = torchvision.models.mobilenet_v2(weights=None)
    if weights is not None:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.classifier[1] = torch.nn.Linear(model.classifier[1].in_features, num_classes)
    return model


def _evaluate(model, loader) -> tuple[np.ndarray, np.ndarray]:
    import torch

    model.eval()
    probs, targets = [], []
    with torch.inference_mode():
        for images, y in loader:
            probs.append(torch.softmax(model(images), 1).numpy())
            targets.append(y.numpy())
    return np.concatenate(probs), np.concatenate(targets)


def train_reference(train_csv: Path, val_csv: Path, out: Path, *, size: int, epochs: int, seed: int,
                    weights: Path | None = None, log=print, **knobs) -> Path:
    """Train the reference recipe; returns the run folder (podium-shaped files)."""
    import torch

    from podium.evaluation.scores import macro_f1

    opts = {**DEFAULTS, **knobs}
    torch.manual_seed(seed)
    np.random.seed(seed)
    classes, train_ds, val_ds = _datasets(train_csv, val_csv, size, opts["crop_pct"])
    gen = torch.Generator().manual_seed(seed)
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=opts["batch_size"], shuffle=True, generator=gen,
                                               num_workers=opts["workers"], persistent_workers=opts["workers"] > 0)
    val_loader = torch.utils.data.DataLoader(val_ds, batch_size=opts["batch_size"], num_workers=opts["workers"])
    model = _model(len(classes), weights)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=opts["label_smoothing"])
    optimizer = torch.optim.SGD(model.parameters(), lr=opts["lr"], momentum=opts["momentum"],
                                weight_decay=opts["weight_decay"], nesterov=False)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    rows, started = [], time.time()
    for epoch in range(epochs):
        model.train()
        for images, y in train_loader:
            loss = criterion(model(images), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        scheduler.step()
        probs, targets = _evaluate(model, val_loader)
        f1 = macro_f1(targets, probs.argmax(1), len(classes))  # podium's one macro F1: the two recipes compare
        rows.append({"epoch": epoch, "val_f1": f1, "val_acc": float((probs.argmax(1) == targets).mean())})
        log(f"  reference loop epoch {epoch}: val macro F1 {f1:.3f}")
    return _write_run(out, classes, probs, targets, rows, wall=time.time() - started, seed=seed, opts=opts)


def _write_run(out: Path, classes, probs, targets, rows, *, wall: float, seed: int, opts: dict) -> Path:
    out.mkdir(parents=True, exist_ok=False)
    table = pd.DataFrame(probs, columns=classes)
    table.insert(0, "target", [classes[t] for t in targets])
    table.to_parquet(out / "val_predictions.parquet")
    pd.DataFrame(rows).to_csv(out / "metrics.csv", index=False)
    summary = {"classes": classes, "wall_time_s": wall, "epochs_trained": len(rows), "best_epoch": len(rows) - 1,
               "seed": seed, "recipe": "torchvision reference loop (benchmarks/recipes/tv_reference.py)", **opts}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return out
