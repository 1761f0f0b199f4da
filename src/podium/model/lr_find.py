"""`podium lr-find`: the learning rate (and on a GPU the batch size) found, not guessed.

Lightning's `Tuner` does the work: ``lr_find`` trains a few hundred steps with
an exponentially rising learning rate and suggests the one where the loss
falls fastest (fastai's learning-rate finder); ``scale_batch_size`` doubles the
batch until memory runs out (GPU only: on a CPU it measures nothing useful).
The model, data and loss are built exactly as `podium train` builds them, in a
throw-away folder, so nothing here touches a run.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from podium.errors import PodiumError
from podium.fileio import atomic_path, write_csv, write_json
from podium.schema import PodiumConfig

LR_FIND_FILE = "lr_find.json"
LR_CURVE_FILE = "lr_find.csv"
LR_PLOT_FILE = "lr_find.png"


@dataclass
class LRFinding:
    """What the finder measured: the suggestion, the loss curve, and the batch size it ran with."""
    suggestion: float | None
    curve: pd.DataFrame
    batch_size: int
    batch_note: str
    settings: dict = field(default_factory=dict)
    dir: Path | None = None

    def as_dict(self) -> dict:
        return {"suggestion": self.suggestion, "batch_size": self.batch_size, "batch_note": self.batch_note,
                **self.settings, "points": len(self.curve)}


def find_lr(cfg: PodiumConfig, *, prepared=None, min_lr: float = 1e-6, max_lr: float = 1.0, steps: int = 100,
            scale_batch: bool = False, out_dir: str | Path | None = None, progress: bool = True,
            log=print) -> LRFinding:
    """Run Lightning's learning-rate finder (and batch-size finder when ``scale_batch`` on a GPU).

    ``prepared`` supplies already-split data (auto's folds); ``out_dir`` receives
    lr_find.json, the curve as CSV and the plot.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.tuner import Tuner

    from podium.data.samples import prepare_data
    from podium.model.training import build_datamodule, build_module, normalization, share_cpu_cores

    if not 0 < min_lr < max_lr:
        raise PodiumError(f"lr-find needs 0 < min lr < max lr; got {min_lr} and {max_lr}")
    prepared = prepared or prepare_data(cfg, log=log)
    mean, std = normalization(cfg, prepared)
    # the finder validates after every epoch; its curve is the training loss, so one batch is plenty
    prepared = replace(prepared, val=prepared.val.iloc[:cfg.train.batch_size].reset_index(drop=True))
    pl.seed_everything(cfg.train.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg, prepared)
    module = build_module(cfg, prepared, mean, std)
    with share_cpu_cores(cfg, datamodule.num_workers), tempfile.TemporaryDirectory(prefix="podium-lr-find-") as tmp, \
            _quiet(not progress):
        tuner = Tuner(_tuning_trainer(cfg, Path(tmp)))
        batch_note = _scale_batch(tuner, module, datamodule, cfg, scale_batch, log)
        finder = tuner.lr_find(module, datamodule=datamodule, min_lr=min_lr, max_lr=max_lr, num_training=steps,
                               update_attr=False)
    if finder is None:
        raise PodiumError("the learning-rate finder ran no steps; is the training set empty?")
    curve = pd.DataFrame({"lr": finder.results.get("lr", []), "loss": finder.results.get("loss", [])})
    suggestion = _finite(finder.suggestion()) if len(curve) > 12 else None
    result = LRFinding(suggestion, curve, datamodule.batch_size, batch_note,
                       {"min_lr": min_lr, "max_lr": max_lr, "steps": steps, "model": cfg.model.name,
                        "image_size": list(cfg.data.size_hw), "configured_lr": cfg.train.lr})
    if out_dir is not None:
        result.dir = save_finding(result, finder, Path(out_dir))
    return result


def _tuning_trainer(cfg: PodiumConfig, root: Path):
    import lightning.pytorch as pl

    from podium.model.engine import resolve_precision

    t = cfg.train
    # max_epochs=-1: the finder's step count ends the fit, however few batches an epoch has
    return pl.Trainer(max_epochs=-1, accelerator=t.accelerator, devices=1, precision=resolve_precision(t.precision, t.accelerator),
                      accumulate_grad_batches=t.accumulate_grad_batches, gradient_clip_val=t.gradient_clip_val,
                      logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, default_root_dir=str(root))


def _scale_batch(tuner, module, datamodule, cfg: PodiumConfig, requested: bool, log) -> str:
    """Lightning's batch-size finder on a GPU (power mode from ``train.batch_size``); a note of what happened."""
    from podium.model.engine import uses_cuda

    if not requested:
        return "kept train.batch_size"
    if not uses_cuda(cfg.train.accelerator):
        return "kept train.batch_size: the batch-size finder needs a GPU (memory is what it measures)"
    found = tuner.scale_batch_size(module, datamodule=datamodule, mode="power", init_val=cfg.train.batch_size,
                                   max_trials=4, steps_per_trial=3)
    datamodule.batch_size = int(found or cfg.train.batch_size)
    log(f"batch-size finder: {datamodule.batch_size} images per batch fit in GPU memory")
    return f"found by Lightning's batch-size finder (largest of {cfg.train.batch_size} x 2^k that fits, k <= 4)"


def _quiet(enabled: bool):
    """The finder's own tqdm bar and restore messages go to stderr; quiet runs drop them."""
    import contextlib
    import io

    return contextlib.redirect_stderr(io.StringIO()) if enabled else contextlib.nullcontext()


def _finite(value) -> float | None:
    return float(value) if value is not None and math.isfinite(float(value)) else None


def save_finding(result: LRFinding, finder, out_dir: Path) -> Path:
    """lr_find.json, lr_find.csv and the plot (Lightning's, with the suggestion marked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / LR_CURVE_FILE, result.curve)
    fig = finder.plot(suggest=result.suggestion is not None, show=False)
    fig.axes[0].set_title(f"learning-rate finder: {result.settings['model']}, suggestion "
                          f"{result.suggestion:.3g}" if result.suggestion else "learning-rate finder: no suggestion")
    with atomic_path(out_dir / LR_PLOT_FILE) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    write_json(out_dir / LR_FIND_FILE, result.as_dict())
    return out_dir
