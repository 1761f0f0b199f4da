"""Training on Lightning: the LightningModule, podium's callbacks and the Trainer.

`Classifier` wraps any backbone with on-device normalization, the loss and the
metrics; `build_trainer` turns the config into a Lightning Trainer (so the
same run goes from one CPU to many GPUs and nodes unchanged).
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from podium.durations import lightning_duration
from podium.errors import PodiumError
from podium.evaluation.metrics import create_metrics
from podium.model.guards import FiniteCheckpoint, NonFiniteGuard
from podium.model.losses import create_loss, scale_row_gradients
from podium.model.models import create_model, head_name, split_parameters
from podium.model.optim import WarmupPlateau, create_optimizer, create_scheduler, end_epoch, step_scheduler
from podium.rundir import EPOCHS_DIR, METRICS_FILE
from podium.schema import ModelConfig, PodiumConfig, TrainConfig


class Classifier(pl.LightningModule):
    """A backbone plus normalization, loss, metrics and optimizer set-up.

    Inputs may be uint8 images (0..255): they are normalized here, on the
    device, so data loading ships 4x fewer bytes and exported models carry
    their own preprocessing.
    """

    def __init__(self, model_cfg: ModelConfig | dict, train_cfg: TrainConfig | dict, classes: list[str], mean, std,
                 class_weights: list[float] | None = None, load_pretrained: bool = True,
                 heads: list[int] | None = None, head_weights: list[float] | None = None,
                 class_counts: list[int] | None = None, ordinal: list[dict] | None = None,
                 soft_temperature: float | None = None, img_size: list[int] | None = None):
        super().__init__()
        # Typed configs in, plain dicts into the checkpoint (loadable with weights_only=True);
        # a dict from a checkpoint is validated by the schema, so defaults live in one place.
        self.model_cfg = ModelConfig.model_validate(model_cfg) if isinstance(model_cfg, dict) else model_cfg
        self.train_cfg = TrainConfig.model_validate(train_cfg) if isinstance(train_cfg, dict) else train_cfg
        self.save_hyperparameters({
            "model_cfg": self.model_cfg.model_dump(mode="json"), "train_cfg": self.train_cfg.model_dump(mode="json"),
            "classes": list(classes), "mean": [float(v) for v in mean], "std": [float(v) for v in std],
            "class_weights": None if class_weights is None else [float(w) for w in class_weights],
            "heads": None if not heads else [int(h) for h in heads],
            "head_weights": None if head_weights is None else [float(w) for w in head_weights],
            "class_counts": None if class_counts is None else [int(c) for c in class_counts],
            "ordinal": None if not ordinal else [dict(o) for o in ordinal],
            "soft_temperature": None if soft_temperature is None else float(soft_temperature),
            # the input size a fixed-size model (ViT) was built for; None in older checkpoints
            "img_size": None if img_size is None else [int(v) for v in img_size]})
        m, t = self.model_cfg, self.train_cfg
        self.classes = list(classes)
        n = len(classes)
        self.heads = list(heads) if heads else None
        if self.heads and int(np.prod(self.heads)) != n:
            raise PodiumError(f"heads {self.heads} do not compose the {n} classes")
        self._init_ordinal(ordinal or [])
        self.model = create_model(
            m.name, sum(self.widths) if self.heads else n, dropout=m.dropout,
            pretrained=m.pretrained and load_pretrained, pretrained_path=m.pretrained_path if load_pretrained else None,
            img_size=None if img_size is None else (int(img_size[0]), int(img_size[-1])))
        self._start_ordinal_at_priors()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self._init_losses(t, n, class_weights, class_counts, head_weights)
        self.mixup = _build_mixup(t, n)
        # training rows with soft targets (distillation, pseudo-labels): see `soft_target_loss`
        self.soft_temperature = soft_temperature
        self.val_metrics = create_metrics(n)
        self.skipped_images = 0
        self.channels_last = bool(t.channels_last)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # Compiled callable kept off the module tree, so checkpoints keep plain parameter names.
        object.__setattr__(self, "_run_model", _maybe_compile(self.model, t.compile))

    def _init_losses(self, t: TrainConfig, n: int, class_weights: list[float] | None,
                     class_counts: list[int] | None, head_weights: list[float] | None) -> None:
        """The training loss: one criterion, or one per head of a composite task; with deferred
        re-weighting (`train.drw_epochs`) also an unweighted twin for the epochs before it starts."""
        loss_kw = dict(label_smoothing=t.label_smoothing, focal_gamma=t.focal_gamma, logit_adjust_tau=t.logit_adjust_tau)
        # Deferred re-weighting: an unweighted twin of the loss serves the epochs before the last drw_epochs.
        self.drw_from_epoch = max(0, t.epochs - t.drw_epochs) if t.drw_epochs and class_weights is not None else 0
        if self.heads:
            weights = _split(class_weights, self.heads)
            counts = _split(class_counts, self.heads)
            self.head_losses = torch.nn.ModuleList([
                create_loss(t.loss, k, class_weights=w, class_counts=c, **loss_kw)
                for k, w, c in zip(self.heads, weights, counts)])
            if self.drw_from_epoch:
                self.head_losses_unweighted = torch.nn.ModuleList([
                    create_loss(t.loss, k, class_counts=c, **loss_kw) for k, c in zip(self.heads, counts)])
            self.head_weights = list(head_weights or [1.0] * len(self.heads))
        else:
            weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
            self.criterion = create_loss(t.loss, n, class_weights=weights, class_counts=class_counts, **loss_kw)
            if self.drw_from_epoch:
                self.criterion_unweighted = create_loss(t.loss, n, class_counts=class_counts, **loss_kw)

    def _init_ordinal(self, ordinal: list[dict]) -> None:
        """Ordinal heads (`task.ordinal`): ``hi - lo`` cumulative outputs instead of k logits, and
        their bin edges as buffers (saved in checkpoints, tuned ones set by `set_ordinal_cuts`)."""
        from podium.model.ordinal import OrdinalSpec

        if ordinal and not self.heads:
            raise PodiumError("ordinal heads need attribute heads (task.mode=multihead)")
        self.ordinal = {spec.head: spec for spec in map(OrdinalSpec.from_dict, ordinal)}
        self.widths = [self.ordinal[i].width if i in self.ordinal else k for i, k in enumerate(self.heads or [])]
        for i, spec in self.ordinal.items():
            self.register_buffer(f"ordinal_cuts_{i}", torch.tensor(spec.cuts, dtype=torch.long))

    def _start_ordinal_at_priors(self) -> None:
        """Ordinal outputs start at the training share of each ``value > step`` (head bias)."""
        if not self.ordinal:
            return
        head = self.model.get_submodule(head_name(self.model))
        linear = head[-1] if isinstance(head, torch.nn.Sequential) else head
        with torch.no_grad():
            for i, spec in self.ordinal.items():
                if spec.priors and linear.bias is not None:
                    start = sum(self.widths[:i])
                    linear.bias[start:start + spec.width] = spec.prior_logits()

    def set_ordinal_cuts(self, cuts: dict[int, list[int]]) -> None:
        for i, values in cuts.items():
            getattr(self, f"ordinal_cuts_{i}").copy_(torch.as_tensor(values, dtype=torch.long))

    def head_log_probs(self, raw: torch.Tensor) -> list[torch.Tensor]:
        """Each attribute's log-probabilities from the raw outputs (softmax or ordinal bins)."""
        from podium.model.ordinal import bin_log_probs

        parts = []
        for i, chunk in enumerate(torch.split(raw.float(), self.widths, dim=1)):
            if i in self.ordinal:
                parts.append(bin_log_probs(chunk, self.ordinal[i].lo, getattr(self, f"ordinal_cuts_{i}")))
            else:
                parts.append(chunk.log_softmax(1))
        return parts

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits; with attribute heads, the composite log-probabilities
        (the product of the heads' probabilities), so softmax gives them back."""
        out = self._run_model(self._prepare(x))
        return self.composite_log_probs(out) if self.heads else out

    def composite_log_probs(self, raw: torch.Tensor) -> torch.Tensor:
        """Attribute heads' raw outputs -> composite log-probabilities."""
        return combine_log_probs(self.head_log_probs(raw))

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.loss_on_inputs(self._prepare(images), targets)

    def reweighting(self) -> bool:
        """Whether the class-weighted loss is in force this epoch (always, unless `train.drw_epochs`)."""
        return not self.drw_from_epoch or self.current_epoch >= self.drw_from_epoch

    def loss_on_inputs(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss on normalized inputs; ``targets`` class indices or (N, C) soft targets."""
        return self.loss_on_outputs(self._run_model(x), targets)

    def loss_on_outputs(self, raw: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The configured loss of the model's raw outputs (class logits, or the heads' outputs)."""
        weighted = self.reweighting()
        if not self.heads:
            criterion = self.criterion if weighted else self.criterion_unweighted
            return criterion(raw, targets)
        from podium.model.ordinal import ordinal_loss

        losses = self.head_losses if weighted else self.head_losses_unweighted
        composite, values = (targets[:, 0], targets[:, 1:]) if targets.ndim == 2 and not targets.is_floating_point() \
            else (targets, None)
        total = raw.new_zeros(())
        parts = split_heads(raw, composite, self.heads, self.widths)
        for i, ((logits, digit), loss_fn, w) in enumerate(zip(parts, losses, self.head_weights)):
            if i in self.ordinal:
                column = sorted(self.ordinal).index(i)
                total = total + w * ordinal_loss(logits, values[:, column], self.ordinal[i].lo, self.ordinal[i].scale)
            else:
                total = total + w * loss_fn(logits, digit)
        return total / sum(self.head_weights)

    def soft_target_loss(self, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The loss of training rows that carry soft targets (`podium.model.soft_targets`): (N, 3 + C)
        floats = class index, weight of that hard label, weight of the soft target, the target
        distribution. The hard part is the configured loss on the rows that have a hard label (so
        label smoothing and class weights still apply) times the rows' mean weight, each row's
        gradient scaled by its weight over that mean (`scale_row_gradients`: per-sample weights,
        `task.label_fixes` rows of action ``weight``); the soft part is Hinton's distillation term
        at `soft_temperature`. Each part is weighted per row and averaged over the batch."""
        from podium.model.losses import distillation_loss

        raw = self._run_model(self._prepare(images))
        labels, w_hard, w_soft, target = rows[:, 0].long(), rows[:, 1], rows[:, 2], rows[:, 3:]
        total = raw.float().sum() * 0.0  # in the graph: a batch whose every weight is 0 still steps (and syncs in DDP)
        hard = w_hard > 0
        if hard.any():
            # the batch's mean weight scales the loss (its value, as logged), each row's share of it its gradient
            mean = w_hard[hard].mean()
            weighted = scale_row_gradients(raw[hard], w_hard[hard] / mean)
            total = total + mean * hard.float().mean() * self.loss_on_outputs(weighted, labels[hard])
        soft = w_soft > 0
        if soft.any():
            log_probs = self.composite_log_probs(raw[soft]) if self.heads else raw[soft].float().log_softmax(1)
            per_row = distillation_loss(log_probs, target[soft], float(self.soft_temperature or 1.0))
            total = total + (w_soft[soft] * per_row).sum() / len(rows)
        return total

    def _unpack(self, batch):
        images, targets, skipped = batch
        self.skipped_images += int(skipped)
        return images, targets

    def training_step(self, batch, batch_idx):
        images, targets = self._unpack(batch)
        if images.numel() == 0:
            return None
        if self.soft_temperature is not None:
            loss = self.soft_target_loss(images, targets)
        elif self.mixup is not None and len(targets) >= 2:
            keep = len(targets) - len(targets) % 2  # timm's Mixup pairs the batch with its reverse: even sizes only
            x, soft = self.mixup(self._prepare(images[:keep]), targets[:keep])
            loss = self.loss_on_inputs(x, soft)
        else:
            loss = self.loss(images, targets)
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets), sync_dist=True)
        return loss

    def validation_step(self, batch, batch_idx):
        images, targets = self._unpack(batch)
        if images.numel() == 0:
            return
        targets = targets[:, 0] if targets.ndim == 2 else targets  # (composite, exact values...) rows
        logits = self(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        self.val_metrics.update(logits.float().softmax(1), targets)
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(targets), sync_dist=True)

    def on_validation_epoch_end(self):
        values = self.val_metrics.compute()
        self.log_dict({k: v for k, v in values.items()}, prog_bar=True, sync_dist=True)
        self.val_metrics.reset()
        if self.trainer.lr_scheduler_configs and not self.trainer.sanity_checking:
            monitor = self.trainer.callback_metrics.get(self.train_cfg.monitor)
            end_epoch(self.trainer.lr_scheduler_configs[0].scheduler, None if monitor is None else float(monitor))

    def configure_optimizers(self):
        t = self.train_cfg
        optimizer = create_optimizer(t.optimizer, self.model, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum,
                                     backbone_lr_mult=t.backbone_lr_mult, head_prefix=head_name(self.model),
                                     layer_decay=t.layer_decay, model_name=self.model_cfg.name)
        self.steps_per_epoch = self._steps_per_epoch()
        sched = self._schedule(optimizer, t.epochs)
        if sched is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": sched}

    def _schedule(self, optimizer, epochs: int) -> dict | None:
        t = self.train_cfg
        return create_scheduler(
            t.scheduler, optimizer, epochs=epochs, steps_per_epoch=self.steps_per_epoch,
            warmup_epochs=min(t.warmup_epochs, max(epochs - 1, 0)), min_lr=t.min_lr, step_epochs=t.step_epochs,
            milestones=t.milestones, gamma=t.gamma, plateau_patience=t.plateau_patience,
            mode="min" if t.monitor == "val_loss" else "max")

    def replan(self, epochs: int) -> None:
        """Train ``epochs`` epochs in all instead of ``train.epochs``: the schedule is rebuilt for
        that length and continues from the current update (`train.max_time` re-planning)."""
        from podium.model.optim import move_to_step

        trainer = self.trainer
        trainer.fit_loop.max_epochs = epochs
        if self.drw_from_epoch:
            self.drw_from_epoch = max(0, epochs - self.train_cfg.drw_epochs)
        if not trainer.lr_scheduler_configs:
            return
        config = trainer.lr_scheduler_configs[0]
        if isinstance(config.scheduler, WarmupPlateau):
            return  # decays on plateaus, not on a planned length
        fresh = self._schedule(trainer.optimizers[0], epochs)
        if fresh is not None:
            move_to_step(fresh["scheduler"], self.global_step)
            config.scheduler = fresh["scheduler"]

    def _steps_per_epoch(self) -> int:
        total = self.trainer.estimated_stepping_batches
        epochs = max(1, self.trainer.max_epochs or 1)
        if total == float("inf"):
            return 1
        return max(1, int(total) // epochs)

    def lr_scheduler_step(self, scheduler, metric):
        step_scheduler(scheduler, global_step=self.global_step)


def _maybe_compile(model: torch.nn.Module, mode: str):
    """torch.compile when asked (`on`) or when a CUDA GPU makes it worth the compile time (`auto`)."""
    if mode == "on" or (mode == "auto" and torch.cuda.is_available()):
        return torch.compile(model)
    return model


def _build_mixup(t: TrainConfig, num_classes: int):
    """timm's Mixup (MixUp and/or CutMix, one per batch), or None when both alphas are 0.

    Its own label smoothing stays 0: the loss applies `train.label_smoothing` to the mixed targets.
    """
    if t.mixup_alpha <= 0 and t.cutmix_alpha <= 0:
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=t.mixup_alpha, cutmix_alpha=t.cutmix_alpha, prob=t.mixup_prob,
                 label_smoothing=0.0, num_classes=num_classes)


def _split(weights: list[float] | None, heads: list[int]) -> list[torch.Tensor | None]:
    if weights is None:
        return [None] * len(heads)
    if len(weights) != sum(heads):
        return [None] * len(heads)
    out, start = [], 0
    for k in heads:
        out.append(torch.tensor(weights[start:start + k], dtype=torch.float32))
        start += k
    return out


def split_heads(raw: torch.Tensor, targets: torch.Tensor, heads: list[int], widths: list[int] | None = None):
    """Per-head outputs (``widths`` columns each, default ``heads``) and per-head target
    digits of mixed-radix composite targets."""
    from podium.tasks.attributes import place_values

    places = [int(p) for p in place_values(heads)]
    chunks = torch.split(raw, widths or heads, dim=1)
    return [(chunk, (targets // place) % k) for chunk, place, k in zip(chunks, places, heads)]


def combine_log_probs(parts: list[torch.Tensor]) -> torch.Tensor:
    """log p(composite) = sum of the heads' log-probabilities, in the mixed-radix order of
    `podium.tasks.attributes` (first head most significant), computed in log space."""
    total = None
    for logp in parts:
        total = logp if total is None else (total.unsqueeze(2) + logp.unsqueeze(1)).flatten(1)
    return total


# ---------------------------------------------------------------- callbacks

class RNGStateCallback(Callback):
    """Saves Python/NumPy/torch RNG states in checkpoints and restores them when
    training resumes, so a resumed run draws the same shuffles and augmentations."""

    def __init__(self):
        self._pending = None

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        # Only tensors and plain Python values: Lightning loads checkpoints with weights_only=True.
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        checkpoint["podium_rng"] = {
            "python": random.getstate(),
            "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, trainer, pl_module, checkpoint):
        self._pending = checkpoint.get("podium_rng")

    def on_train_start(self, trainer, pl_module):
        # Restored here, after Lightning's own start-up work, which may draw random numbers.
        state, self._pending = self._pending, None
        if state:
            random.setstate(state["python"])
            name, keys, pos, has_gauss, gauss = state["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            torch.set_rng_state(state["torch"])
            if state.get("cuda") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])


class EpochCSVLogger(Callback):
    """One row per epoch in ``metrics.csv`` (train and validation metrics, learning rate)."""

    COLUMNS = ["epoch", "train_loss", "val_loss", "val_acc", "val_f1", "val_precision", "val_recall", "val_auroc", "lr"]

    def __init__(self, path: Path):
        self.path = Path(path)

    def on_train_start(self, trainer, pl_module):
        # On resume (the checkpoint is restored by now), drop rows of epochs that will be trained again.
        if trainer.is_global_zero and self.path.exists():
            start = trainer.current_epoch
            with self.path.open() as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) < start]
            self._write(rows)

    def on_train_epoch_end(self, trainer, pl_module):
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch}
        for key in self.COLUMNS[1:-1]:
            row[key] = f"{float(m[key]):.6f}" if key in m else ""
        row["lr"] = f"{trainer.optimizers[0].param_groups[0]['lr']:.8g}" if trainer.optimizers else ""
        rows = []
        if self.path.exists():
            with self.path.open() as f:
                rows = list(csv.DictReader(f))
        self._write(rows + [row])

    def _write(self, rows):
        from podium.fileio import atomic_path

        with atomic_path(self.path) as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.COLUMNS)
            writer.writeheader()
            writer.writerows(rows)


class FreezeBackbone(Callback):
    """Only the new head trains for the first ``epochs`` epochs (the backbone's BN stays in eval)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_start(self, trainer, pl_module):
        frozen = trainer.current_epoch < self.epochs
        backbone, _ = split_parameters(pl_module.model)
        for p in backbone:
            p.requires_grad_(not frozen)
        if not frozen:
            # Lightning keeps the per-module train/eval flags across epochs: put the
            # backbone's BatchNorm back in train mode, or fine-tuning runs on frozen
            # ImageNet statistics and diverges (seen: loss 16 on the first unfrozen step).
            pl_module.model.train()
            return
        for module in pl_module.model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()


# ---------------------------------------------------------------- trainer

def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning will train on a CUDA GPU with this ``train.accelerator``."""
    return torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")


def inference_device(accelerator: str) -> torch.device:
    """The device prediction runs on, by the same rule as training (`train.accelerator`):
    CUDA when Lightning would train there, else the CPU (or MPS when asked for and present)."""
    if uses_cuda(accelerator):
        return torch.device("cuda")
    if accelerator == "mps" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def check_accelerator(accelerator: str) -> None:
    """`train.accelerator` must exist on this machine: `gpu` on a CPU-only machine is the user's to
    change (Lightning would stop with a traceback after the data is prepared)."""
    if accelerator in ("auto", "cpu"):
        return
    from lightning.pytorch.accelerators import CUDAAccelerator, MPSAccelerator, XLAAccelerator

    found = {"cuda": CUDAAccelerator.is_available(), "mps": MPSAccelerator.is_available(),
             "tpu": XLAAccelerator.is_available()}
    ok = found["cuda"] or found["mps"] if accelerator == "gpu" else found[accelerator]
    if not ok:
        have = ", ".join(["cpu", *[k for k, v in found.items() if v]])
        raise PodiumError(f"train.accelerator={accelerator}: no {accelerator.upper()} on this machine (available: "
                          f"{have}); use train.accelerator=auto (the best available) or cpu")


def resolve_precision(requested: str, accelerator: str) -> str:
    """`auto` -> bf16-mixed on GPUs that support it, else 32; fp16 refuses devices without it."""
    has_cuda = uses_cuda(accelerator)
    if requested == "auto":
        return "bf16-mixed" if has_cuda and torch.cuda.is_bf16_supported() else "32"
    if requested == "16-mixed" and not has_cuda:
        raise PodiumError("train.precision=16-mixed needs a CUDA GPU; this machine has none. Use 32 or bf16-mixed.")
    if requested == "bf16-mixed" and has_cuda and not torch.cuda.is_bf16_supported():
        raise PodiumError("train.precision=bf16-mixed: this GPU does not support bfloat16. Use 16-mixed or 32.")
    return requested




def epoch_checkpoint_callback(run_dir: Path) -> ModelCheckpoint:
    """Every epoch's weights in ``<run>/epochs/epoch003.ckpt``: what checkpoint averaging needs.

    Monitoring ``epoch`` (always logged) gives this callback a state key distinct
    from the run's best/last ModelCheckpoints, so they live in one Trainer.
    """
    return ModelCheckpoint(dirpath=Path(run_dir) / EPOCHS_DIR, filename="epoch{epoch:03d}", monitor="epoch", mode="max",
                           save_top_k=-1, every_n_epochs=1, save_last=False, auto_insert_metric_name=False,
                           enable_version_counter=False)


def build_callbacks(cfg: PodiumConfig, run_dir: Path, extra: list[Callback] | None = None) -> list[Callback]:
    t = cfg.train
    callbacks: list[Callback] = [
        FiniteCheckpoint(dirpath=run_dir, filename="best", monitor=t.monitor, mode=t.monitor_mode,
                         save_top_k=1, enable_version_counter=False, auto_insert_metric_name=False),
        # Lightning's save_last only follows top-k saves; a monitor-free checkpoint is truly the latest.
        ModelCheckpoint(dirpath=run_dir, filename="last", monitor=None, save_top_k=1,
                        enable_version_counter=False, auto_insert_metric_name=False),
        EpochCSVLogger(run_dir / METRICS_FILE),
        RNGStateCallback(),
        NonFiniteGuard(),  # stops a run whose loss turns nan before any nan weights are saved
    ]
    if t.save_epoch_checkpoints:
        callbacks.append(epoch_checkpoint_callback(run_dir))
    if t.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=t.monitor, mode=t.monitor_mode, patience=t.early_stopping_patience))
    if cfg.model.freeze_backbone_epochs:
        callbacks.append(FreezeBackbone(cfg.model.freeze_backbone_epochs))
    if t.max_time is not None:
        from podium.model.timelimit import PlanToDeadline

        callbacks.append(PlanToDeadline(t.max_time_s, t.epochs))
    if t.ema:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        callbacks.append(EMAWeightAveraging(decay=t.ema_decay))
    return callbacks + list(extra or [])


def build_trainer(cfg: PodiumConfig, run_dir: Path, *, callbacks: list[Callback] | None = None,
                  dry_run: bool = False, progress: bool = True, loggers: bool = True) -> pl.Trainer:
    """The run's Trainer; ``loggers=False`` (DDP ranks >= 1) builds no tracking loggers, which
    would otherwise make folders or remote runs of their own."""
    t = cfg.train
    made: list = []
    if loggers and not dry_run:
        from podium.reports.tracking import create_loggers

        made = create_loggers(cfg, run_dir)
    from podium.quiet import make_epoch_lines, make_progress_bar, plain_output

    # a redrawn bar in a terminal; one plain line per epoch in a file or pipe (a bar there is fragments)
    bar = progress and not plain_output()
    if bar:
        callbacks = list(callbacks or []) + [make_progress_bar()]
    elif progress:
        callbacks = list(callbacks or []) + [make_epoch_lines()]
    return pl.Trainer(
        max_epochs=t.epochs, accelerator=t.accelerator, devices=t.devices, strategy=t.strategy,
        num_nodes=t.num_nodes, sync_batchnorm=t.sync_batchnorm, precision=resolve_precision(t.precision, t.accelerator),
        accumulate_grad_batches=t.accumulate_grad_batches, gradient_clip_val=t.gradient_clip_val,
        callbacks=callbacks, logger=made or False, default_root_dir=str(run_dir),
        enable_progress_bar=bar, enable_model_summary=False, num_sanity_val_steps=0,
        fast_dev_run=1 if dry_run else False, log_every_n_steps=10,
        # the data module's samplers give each rank its own share (no padded repeats in validation)
        use_distributed_sampler=False,
        max_time=None if t.max_time is None or dry_run else lightning_duration(t.max_time_s),
    )
