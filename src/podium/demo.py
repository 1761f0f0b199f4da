"""`podium demo`: the whole path on real data that ships with scikit-learn.

The 1,797 handwritten digits (8x8 scans of 43 people's writing) become an
ImageFolder of PNGs; a small CNN trains on CPU, predicts a held-out part and
is evaluated there - the same commands a user runs on their own folder.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from podium.errors import PodiumError
from podium.schema import load_config

DEMO_OVERRIDES = [
    "model.name=resnet10t", "model.pretrained=false", "model.dropout=0.1",
    "data.image_size=32", "train.batch_size=64", "train.optimizer=adamw", "train.lr=0.003",
    "train.weight_decay=0.01", "train.warmup_epochs=0.5", "augment.preset=none",
    "augment.normalize=none", "train.class_weights=none", "output.name=digits",
    "output.submission.id_format=stem",
]


def write_digits_folder(root: Path, test_fraction: float = 0.2, seed: int = 0) -> tuple[Path, Path, Path]:
    """train/<digit>/*.png, test/<digit>/*.png (labelled) and test_images/*.png (unlabelled)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).round().astype(np.uint8)
    idx_train, idx_test = train_test_split(np.arange(len(images)), test_size=test_fraction,
                                           stratify=digits.target, random_state=seed)
    train_dir, test_dir, flat_dir = root / "train", root / "test", root / "test_images"
    if (root / ".complete").exists():
        return train_dir, test_dir, flat_dir
    for split, indices in (("train", idx_train), ("test", idx_test)):
        for i in indices:
            label = str(digits.target[i])
            img = Image.fromarray(images[i], "L").resize((32, 32), Image.Resampling.NEAREST)
            target = root / split / label / f"digit_{i:04d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            img.save(target)
            if split == "test":
                flat = flat_dir / f"digit_{i:04d}.png"
                flat.parent.mkdir(parents=True, exist_ok=True)
                img.save(flat)
    (root / ".complete").write_text("ok\n")
    return train_dir, test_dir, flat_dir


def run_demo(workdir: Path, epochs: int = 6, progress: bool = True, console=None) -> dict:
    import podium

    log = console.print if console else print
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise PodiumError(f"--workdir {workdir} exists and is not a folder")
    train_dir, test_dir, flat_dir = write_digits_folder(workdir / "digits")
    log(f"demo data: {train_dir} (train), {flat_dir} (to predict), {test_dir} (labelled copy)")
    cfg = load_config(None, DEMO_OVERRIDES + [f"data.train={train_dir}", f"train.epochs={epochs}",
                                              f"output.dir={workdir / 'runs'}"])
    run = podium.train(cfg, progress=progress, log=log)
    predictions = run.predict(flat_dir, progress=progress)
    evaluation = run.evaluate(test_dir, progress=progress)
    m = evaluation.metrics
    from rich.table import Table

    table = Table(title="podium demo: handwritten digits (10 classes)")
    for col in ("split", "images", "accuracy", "macro F1"):
        table.add_column(col)
    summary = run.summary
    v = summary["val_metrics"]
    table.add_row("validation (holdout)", str(summary["val_images"]), f"{v['acc']:.4f}", f"{v['f1']:.4f}")
    table.add_row("test (never seen)", str(len(evaluation.predictions)), f"{m['acc']:.4f}", f"{m['f1']:.4f}")
    if console:
        console.print(table)
    log(f"run folder:    {run.dir}")
    log(f"submission:    {predictions.attrs['submission']}")
    log(f"probabilities: {predictions.attrs['probabilities']}")
    log(f"evaluation:    {evaluation.dir}")
    return {"run": run, "predictions": predictions, "evaluation": evaluation}
