"""The one config schema: every knob, its default and a one-line description.

A YAML file plus dotted overrides (``train.epochs=3``) resolve into a
`PodiumConfig`. Unknown keys and bad values fail here, before any work starts,
naming the dotted key, the value found, what is allowed and close matches.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeAlias

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from podium.errors import PodiumError, closest, unknown_name


@dataclass(frozen=True)
class RegistryName:
    """A config value that must be a key of a registry dict (``module.NAME``), so adding a
    loss, schedule, preset or detector is one edit in its module. The registry module is
    imported when a value is checked, not when the schema is built."""
    registry: str
    kind: str
    also: tuple[str, ...] = ()

    def names(self) -> list[str]:
        module, _, attr = self.registry.rpartition(".")
        return [*self.also, *getattr(importlib.import_module(module), attr)]

    def __call__(self, value: str) -> str:
        names = self.names()
        if value not in names:
            raise ValueError(str(unknown_name(self.kind, value, names)))
        return value


# ``Annotated[str, ...]`` aliases whose allowed values are the keys of a registry (spelled out, not built by a
# function, so type checkers see them as types).
Loss: TypeAlias = Annotated[str, AfterValidator(RegistryName("podium.model.losses.LOSSES", "loss"))]
Optimizer: TypeAlias = Annotated[str, AfterValidator(RegistryName("podium.model.optim.OPTIMIZERS", "optimizer"))]
Scheduler: TypeAlias = Annotated[str, AfterValidator(RegistryName("podium.model.optim.SCHEDULERS", "scheduler"))]
ClassWeights: TypeAlias = Annotated[str, AfterValidator(RegistryName("podium.data.statistics.CLASS_WEIGHTS", "class-weights mode (or give a list of floats)"))]
Preset: TypeAlias = Annotated[str, AfterValidator(RegistryName("podium.data.transforms.ALBU_PRESETS", "augmentation preset"))]
Detector: TypeAlias = Annotated[str, AfterValidator(RegistryName("podium.data.crops.DETECTORS", "crop detector", ("none",)))]
TTAMerge: TypeAlias = Annotated[str, AfterValidator(RegistryName("podium.evaluation.tta.MERGES", "TTA merge"))]
ResizeMode: TypeAlias = Annotated[str, AfterValidator(RegistryName("podium.data.images.RESIZE_MODES", "resize mode"))]
TrackerName: TypeAlias = Annotated[str, AfterValidator(RegistryName("podium.reports.tracking.LOGGERS", "logger"))]


def _check_tta_views(value):
    if isinstance(value, list) and value:
        from podium.evaluation.tta import parse_views

        try:
            parse_views([v for v in value if v != "none"] or ["identity"])
        except PodiumError as exc:
            raise ValueError(str(exc)) from None
    return value


#: numpy and Lightning seeds are unsigned 32-bit numbers
SEED_MAX = 2**32 - 1
#: the largest network input side: beyond it one image does not fit in memory for training
MAX_IMAGE_SIDE = 4096
#: Lightning's accelerator names (`auto` picks one; `gpu` is CUDA or MPS)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")


class Section(BaseModel):
    # allow_inf_nan=False: `train.lr=inf` or `nan` fails here, naming the key, instead of training to nan.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="after")
    @classmethod
    def _finite_numbers(cls, v, info):
        """Free-form values (``crop.options``, ``augment.train_ops``) are not typed as floats,
        so their numbers are checked here: inf or nan anywhere in the config is a mistake."""
        where = _non_finite_at(v)
        if where is not None:
            raise ValueError(f"non-finite number (inf or nan) at {info.field_name}{where}; use a finite number")
        return v


def _non_finite_at(value, path: str = "") -> str | None:
    """The sub-path (``""``, ``[0].p``) of the first inf/nan in plain values, or None."""
    import math

    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        items = ((f".{k}", v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        found = _non_finite_at(item, path + key)
        if found is not None:
            return found
    return None


class DataConfig(Section):
    format: Literal["folder", "csv", "mask_competition"] = Field(
        "folder", description="Layout of `train`: an ImageFolder (one sub-folder per class), a CSV, or the mask-competition layout.")
    train: str | None = Field(None, description="Training data: a folder of class sub-folders, or a CSV file.")
    val: str | None = Field(None, description="Explicit validation folder/CSV; when empty a stratified holdout of `train` is used.")
    root: str | None = Field(None, description="Folder that CSV image paths are relative to (default: the CSV's folder).")
    path_column: str = Field("path", description="CSV column holding image paths.")
    label_column: str = Field("label", description="CSV column holding class labels.")
    id_column: str | None = Field(None, description="CSV column holding image ids (default: the path relative to the root).")
    group_column: str | None = Field(None, description="CSV column of group ids (e.g. person): a group never straddles train and validation.")
    label_case: Literal["error", "merge", "keep"] = Field("error", description="Labels that differ only by case or surrounding spaces ('cat', 'Cat', 'cat '): refuse them naming the variants, merge them (every label stripped and lower-cased), or keep them as separate classes.")
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="Fraction of `train` held out for validation when `val` is empty.")
    split_seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed of the holdout split (fixed so runs are comparable).")
    image_size: int | tuple[int, int] = Field(224, description="Network input size: an int (square) or [height, width]. A model built for one size (timm ViT, DeiT, EVA, Swin; torchvision's tv/vit_*, square and a multiple of its patch) is built for this one.")
    num_workers: int | None = Field(None, ge=0, description="DataLoader worker processes (default: chosen from the CPU count).")
    on_bad_image: Literal["error", "skip"] = Field("error", description="Unreadable images: stop naming the file, or skip them and report the count.")
    max_image_pixels: int | None = Field(178_956_970, ge=1, description="Images with more pixels (width x height, read from the header) are bad images, refused or skipped like unreadable ones: decompression bombs never get decoded. null = no limit.")
    draft_decode: bool = Field(True, description="Decode JPEGs at reduced size when the target is much smaller (never changes the result size).")
    cache: Literal["none", "memory", "disk", "device"] = Field("none", description="Cache decoded, resized images in memory or a memory-mapped file, shared across epochs and runs; `device` keeps them on the training device (GPU) and augments batches there, without loader workers (presets none, flip, light, reference).")
    cache_dir: str | None = Field(None, description="Folder of the disk cache (default: images/ in podium's cache root, $PODIUM_CACHE_DIR or ~/.cache/podium).")
    resize: ResizeMode = Field("squash", description="How images reach `image_size`: squash (stretch to it), crop (short side to size, center crop) or pad (long side to size, black borders); crop and pad keep the aspect ratio.")
    eval_crop_pct: float = Field(1.0, gt=0.0, le=1.0, description="Validation and prediction view: resize (by `resize`) to image_size / eval_crop_pct, then keep the center image_size, like torchvision's resize 256 + crop 224 (0.875) or timm's crop_pct. 1.0 = the whole image.")

    pseudo_labels: str | None = Field(None, description="Table (parquet: path, [id, group, fold], one probability column per class) of unlabelled images added to TRAINING only, never to validation or to the OOF score (`podium pseudo-label` writes it); an image whose group is in the validation part is left out of that run or fold.")
    pseudo_mode: Literal["soft", "hard"] = Field("soft", description="How `pseudo_labels` images are learned: their probabilities as soft targets, or their most likely class as a hard label.")

    @field_validator("image_size")
    @classmethod
    def _positive_size(cls, v):
        sizes = (v, v) if isinstance(v, int) else v
        if min(sizes) < 8:
            raise ValueError("image sides must be at least 8 pixels")
        if max(sizes) > MAX_IMAGE_SIDE:
            raise ValueError(f"image sides must be at most {MAX_IMAGE_SIDE} pixels, found {max(sizes)}: one "
                             f"{max(sizes)}x{max(sizes)} float image alone needs {3 * 4 * max(sizes) ** 2 / 2**30:.1f} GiB")
        return v

    @property
    def size_hw(self) -> tuple[int, int]:
        s = self.image_size
        return (s, s) if isinstance(s, int) else (int(s[0]), int(s[1]))


class ModelConfig(Section):
    name: str = Field("tv/mobilenet_v2", description="A timm model name (e.g. resnet18, efficientnet_b0) or a torchvision one prefixed `tv/` (e.g. tv/resnet18).")
    pretrained: bool = Field(True, description="Start from ImageNet weights downloaded the usual timm/torchvision way.")
    pretrained_path: str | None = Field(None, description="Local weights file (timm or torchvision state dict) instead of downloading; implies pretrained.")
    dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Dropout before the new classifier head.")
    freeze_backbone_epochs: int = Field(0, ge=0, description="Train only the head for the first N epochs.")


class AugmentConfig(Section):
    backend: Literal["albumentations", "torchvision"] = Field("albumentations", description="Library that runs the augmentation ops.")
    preset: Preset = Field("light", description="Named train augmentation recipe; `light` is best on short fine-tunes.")
    train_ops: list[dict[str, Any]] | None = Field(None, description="Explicit train ops replacing the preset: [{name: HorizontalFlip, p: 0.5}, ...].")
    eval_ops: list[dict[str, Any]] | None = Field(None, description="Extra deterministic ops applied at eval/predict time, after resizing.")
    normalize: Literal["imagenet", "dataset", "none"] = Field("imagenet", description="Normalization statistics: ImageNet's, the training set's own, or none.")
    mean: tuple[float, float, float] | None = Field(None, description="Explicit per-channel mean in [0,1] (overrides `normalize`).")
    std: tuple[float, float, float] | None = Field(None, description="Explicit per-channel std in [0,1] (overrides `normalize`).")
    trivial_augment: bool = Field(False, description="Add torchvision's TrivialAugmentWide (one random op of random strength per image) after the preset.")
    random_erasing: float = Field(0.0, ge=0.0, le=1.0, description="Probability of erasing one random rectangle per training image (torchvision RandomErasing), after the preset.")


class TrainConfig(Section):
    epochs: int = Field(10, ge=1, description="Number of training epochs (the upper bound when `max_time` is set).")
    max_time: str | None = Field(None, description="Wall-clock limit of the fit (Lightning's `max_time`), e.g. 90s, 30m, 1h30m or DD:HH:MM:SS. Epoch times are measured and the number of epochs is re-planned so the schedule (cosine) reaches its floor on the last epoch that fits, instead of being cut mid-way. null = no limit.")
    batch_size: int = Field(64, ge=1, description="Images per batch (per device). 64 beat 32 at the same lr on both face dev tasks (+0.035 and +0.040 macro F1, 3 seeds) and tied on hymenoptera (benchmarks/recipes/RESULTS.md).")
    loss: Loss = Field("label_smoothing", description="Loss: cross-entropy, label-smoothed cross-entropy, focal, soft macro F1, logit-adjusted (Menon et al. 2021) or balanced softmax (= logit-adjusted with tau 1).")
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0, description="Smoothing of the `label_smoothing` loss.")
    focal_gamma: float = Field(2.0, ge=0.0, description="Focusing parameter of the focal loss.")
    logit_adjust_tau: float = Field(1.0, ge=0.0, description="`logit_adjusted` loss: scale of the log class priors added to the logits in training (0 = cross-entropy).")
    class_weights: list[float] | ClassWeights = Field(
        "sqrt", description="Loss class weights: none, auto (inverse frequency), sqrt (its square root, milder) or an explicit list.")
    drw_epochs: int = Field(0, ge=0, description="Deferred re-weighting: apply `class_weights` only in the last N epochs (0 = in every epoch).")
    sampler: Literal["random", "balanced"] = Field("random", description="`balanced` draws classes equally often (WeightedRandomSampler).")
    optimizer: Optimizer = Field("sgd", description="Optimizer (timm factory; sgd is Nesterov momentum, momentum is plain SGD with momentum).")
    lr: float = Field(0.01, gt=0.0, description="Peak learning rate.")
    backbone_lr_mult: float = Field(1.0, gt=0.0, description="Learning rate of the pretrained backbone as a multiple of `lr` (the new head always gets `lr`).")
    layer_decay: float | None = Field(None, gt=0.0, le=1.0, description="Layer-wise learning-rate decay (timm's `param_groups_layer_decay`): the head trains at `lr`, each layer below it at `layer_decay` times the layer above (AutoGluon fine-tunes with 0.9). null = off.")
    weight_decay: float = Field(1e-4, ge=0.0, description="Weight decay (not applied to biases and norm layers).")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    scheduler: Scheduler = Field("cosine", description="Learning-rate schedule.")
    warmup_epochs: float = Field(0.0, ge=0.0, description="Linear warmup length in epochs (fractions allowed).")
    min_lr: float = Field(1e-6, ge=0.0, description="Floor of the cosine and plateau schedules.")
    step_epochs: int = Field(3, ge=1, description="`step`: decay the learning rate every N epochs.")
    milestones: list[int] = Field([5, 8], description="`multistep`: epochs at which the learning rate decays.")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="Decay factor of step, multistep and plateau schedules.")
    plateau_patience: int = Field(2, ge=0, description="`plateau`: epochs without improvement before decaying.")
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = Field("auto", description="Numeric precision; `auto` uses bf16 on GPUs that support it, else 32.")
    accumulate_grad_batches: int = Field(1, ge=1, description="Accumulate gradients over N batches before each optimizer step.")
    gradient_clip_val: float | None = Field(None, gt=0.0, description="Clip the gradient norm to this value.")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after N epochs without improvement of `monitor`.")
    save_epoch_checkpoints: bool = Field(False, description="Also keep every epoch's weights in epochs/ (for `podium average-checkpoints`).")
    ema: bool = Field(False, description="Keep an exponential moving average of the weights and validate/save it.")
    ema_decay: float = Field(0.999, gt=0.0, lt=1.0, description="EMA decay per optimizer step.")
    mixup_alpha: float = Field(0.0, ge=0.0, description="MixUp Beta(alpha, alpha) on training batches (timm's Mixup; 0 = off).")
    cutmix_alpha: float = Field(0.0, ge=0.0, description="CutMix Beta(alpha, alpha) on training batches (0 = off; with MixUp each batch picks one).")
    mixup_prob: float = Field(1.0, ge=0.0, le=1.0, description="Share of training batches that MixUp/CutMix touch.")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Global seed (Python, NumPy, torch, workers).")
    channels_last: bool = Field(True, description="Run convolutions in channels-last memory layout (same results; 1.7x faster steps measured on this CPU, standard on GPUs).")
    compile: Literal["off", "auto", "on"] = Field("off", description="torch.compile the model; `auto` compiles only on a CUDA GPU.")
    monitor: Literal["val_f1", "val_acc", "val_loss", "val_auroc", "val_precision", "val_recall", "epoch"] = Field(
        "val_f1", description="Metric that selects the best checkpoint (macro F1 by default); `epoch` keeps the last epoch.")
    accelerator: str = Field("auto", description="Lightning accelerator: auto, cpu, gpu, mps, ...")
    devices: int | str | list[int] = Field("auto", description="Lightning devices: a count, a list of ids, or auto.")
    strategy: str = Field("auto", description="Lightning strategy: auto, ddp, ddp_spawn, fsdp, ...")
    num_nodes: int = Field(1, ge=1, description="Number of nodes for multi-node DDP (torchrun --nnodes, SLURM --nodes).")
    sync_batchnorm: bool = Field(False, description="Under DDP, BatchNorm statistics over the global batch (all ranks) instead of each rank's share; worth it when the per-rank batch is small.")

    @field_validator("accelerator")
    @classmethod
    def _known_accelerator(cls, v: str) -> str:
        if v not in ACCELERATORS:
            raise ValueError(str(unknown_name("accelerator", v, ACCELERATORS)))
        return v

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        """Lightning's registered strategy names (Lightning is imported only for a non-default value)."""
        if v == "auto":
            return v
        from lightning.pytorch.strategies import StrategyRegistry

        names = ["auto", *StrategyRegistry.available_strategies()]
        if v not in names:
            raise ValueError(str(unknown_name("strategy", v, names)))
        return v

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_from_bool(cls, v):
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v  # YAML reads on/off as booleans

    @field_validator("max_time", mode="before")
    @classmethod
    def _max_time_duration(cls, v):
        if v is None:
            return v
        from podium.durations import parse_duration

        try:
            parse_duration(v, "train.max_time")
        except PodiumError as exc:
            raise ValueError(str(exc).removeprefix("train.max_time: ")) from None
        return str(v)

    @property
    def max_time_s(self) -> float | None:
        """`max_time` in seconds (None without a limit)."""
        from podium.durations import parse_duration

        return None if self.max_time is None else parse_duration(self.max_time, "train.max_time")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, v):
        return str(v) if isinstance(v, int) else v  # YAML reads `32` as a number

    @field_validator("class_weights")
    @classmethod
    def _positive_weights(cls, v):
        if isinstance(v, list) and any(w < 0 for w in v):
            raise ValueError("class weights must be >= 0")
        return v

    @property
    def monitor_mode(self) -> str:
        return "min" if self.monitor == "val_loss" else "max"


class SubmissionConfig(Section):
    id_column: str = Field("id", description="Header of the image-id column of the submission CSV.")
    label_column: str = Field("label", description="Header of the label column of the submission CSV.")
    label_format: Literal["name", "index"] = Field("name", description="Write labels as class names or class indices.")
    id_format: Literal["id", "name", "stem"] = Field("id", description="Image id as given (relative path), file name, or file name without extension.")


class OutputConfig(Section):
    dir: str = Field("runs", description="Parent folder of run folders.")
    name: str = Field("exp", description="Run name; an existing runs/<name> gets a numbered sibling (exp-2), never overwritten.")

    @field_validator("name")
    @classmethod
    def _single_folder_name(cls, v: str) -> str:
        """A run name is one folder inside ``output.dir``: never a path that leaves it."""
        import re

        if not v.strip() or v in (".", "..") or re.search(r"[/\\]", v) or v != v.strip() or "\0" in v:
            raise ValueError("a run name must be a single folder name (no '/', '\\', '..', leading or "
                             "trailing spaces); put the parent folder in output.dir, e.g. output.dir=runs/exps output.name=exp1")
        return v
    submission: SubmissionConfig = Field(default_factory=SubmissionConfig, description="Submission CSV format.")
    tensorboard: bool = Field(True, description="Write TensorBoard logs under the run folder; false drops tensorboard from `loggers`.")
    loggers: list[TrackerName] = Field(["tensorboard", "csv"], description="Experiment loggers: TensorBoard (tb/), csv (metrics.csv, always written), W&B (offline under the run folder; `wandb sync` uploads) and MLflow; `[tensorboard, csv, wandb, mlflow]` uses all.")
    experiment: str = Field("podium", description="W&B project and MLflow experiment that runs are logged under.")
    mlflow_uri: str | None = Field(None, description="MLflow tracking URI (default: MLflow's own, $MLFLOW_TRACKING_URI or sqlite:///mlflow.db in the working folder).")
    group: str | None = Field(None, description="Group of this run in W&B (`group`) and MLflow (tag `podium.group`); cross-validation sets it to the cv folder's name for every fold.")
    report: bool = Field(True, description="Write the HTML training report (report.html) at the end of each run.")
    gradcam: bool = Field(False, description="Add Grad-CAM overlays to that report (slower; `podium report RUN --gradcam` adds them later).")

    @field_validator("loggers", mode="before")
    @classmethod
    def _loggers_list(cls, v):
        """``output.loggers=tensorboard,wandb`` on the command line means the list."""
        return [part.strip() for part in v.split(",") if part.strip()] if isinstance(v, str) else v


class TaskConfig(Section):
    preset: Literal["none", "mask"] = Field("none", description="`mask`: the mask-status competition (mask x gender x age, 18 classes).")
    attributes: dict[str, list[str]] | None = Field(None, description="Classes composed of attributes: {attribute: [ordered class names]} read from CSV columns of those names.")
    mode: Literal["single", "multihead", "per_attribute"] = Field("single", description="One composite head, one shared backbone with a head per attribute, or one model per attribute (`target`).")
    target: str | None = Field(None, description="`per_attribute` mode: the attribute this model predicts.")
    head_weights: dict[str, float] | None = Field(None, description="`multihead` mode: loss weight per attribute (default 1 each).")
    bins: dict[str, list[float]] | None = Field(None, description="Attributes that are binned numbers: {attribute: [thresholds]}, read from a numeric column of that name, e.g. {age: [30, 60]} gives <30, 30-59, >=60 (the `mask` preset bins age by `age_thresholds`).")
    ordinal: list[str] | None = Field(None, description="`multihead` mode: binned attributes (`bins`) learned from their exact value by an ordinal head (one output per integer step), binned at predict time with edges tuned for macro F1 on validation (ordinal_cuts.json in the run).")
    age_thresholds: tuple[int, int] = Field((30, 60), description="`mask` preset: age-bin boundaries (young < a <= middle < b <= old).")
    drop_ambiguous_ages: list[tuple[int, int]] | None = Field(None, description="`mask` preset: drop TRAINING images whose age is in these inclusive bands, e.g. [[28, 29], [57, 59]].")
    label_fixes: str | None = Field(None, description="CSV (id, attribute, new_value[, action]) of label corrections applied at load time: relabel an attribute, or a plain class with attribute `label`; `drop` or `keep` an image (id) or a group.")


class CropConfig(Section):
    detector: Detector = Field("none", description="Face/box crop applied before training and prediction (cached).")
    options: dict[str, Any] = Field(default_factory=dict, description="Detector options, e.g. {model_path: yunet.onnx} or {box: [0.1, 0.1, 0.9, 0.9]}.")
    margin: float = Field(0.4, ge=0.0, description="Grow the detected box by this fraction of its size.")
    chin_share: float = Field(0.6, ge=0.0, le=1.0, description="Share of the extra height added below the face (keeps masks in view).")
    aspect: str | None = Field("3:4", description="Width:height of the crop box, or null to keep the box's own.")
    fallback_box: tuple[float, float, float, float] | None = Field(None, description="Box (fractions or pixels) used when no face is found; null = whole image.")
    group_reuse: bool = Field(False, description="Detect on each group's `normal` photo and reuse that box for its other photos.")
    cache_dir: str | None = Field(None, description="Where cropped copies are written (default: crops/ in podium's cache root, $PODIUM_CACHE_DIR or ~/.cache/podium).")


class DistillConfig(Section):
    teacher: str | None = Field(None, description="A cv run or ensemble folder whose out-of-fold probabilities are the soft targets of the training images (knowledge distillation; `podium distill`). Its classes must be the data's.")
    temperature: float = Field(2.0, gt=0.0, description="Softmax temperature of the teacher's and student's distributions in the distillation term (its loss is scaled by temperature^2, Hinton et al. 2015).")
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="Weight of the teacher's soft targets; the true labels get 1 - alpha.")
    unlabeled: str | None = Field(None, description="A folder or CSV of unlabelled images the teacher predicts (folds averaged) for the student to learn from too (soft targets only).")


class CVConfig(Section):
    folds: int = Field(5, ge=2, description="Number of folds (stratified; grouped when the data has groups).")
    seed: int = Field(42, ge=0, le=SEED_MAX, description="Seed of the fold assignment.")


class PredictConfig(Section):
    tta: Literal["auto"] | Annotated[list[str], AfterValidator(_check_tta_views)] = Field(
        "auto", description="Test-time views added to the plain image, e.g. [hflip, scale_0.9]; [] = none; `auto` = hflip when training flipped images.")
    tta_merge: TTAMerge = Field("mean", description="How TTA views are merged.")
    logit_biases: str | None = Field(None, description="JSON of per-class logit biases fitted for macro F1 (`podium cv-biases`), applied to predictions.")


class TuneConfig(Section):
    keep_best: int = Field(1, ge=0, description="`podium tune` keeps the checkpoints (*.ckpt) of this many best trials and deletes the others' as trials finish (their metrics, logs and configs stay); 0 keeps none.")


class PodiumConfig(Section):
    data: DataConfig = Field(default_factory=DataConfig, description="Where the images are and how they are read.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Backbone and head.")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="Augmentation and normalization.")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Loss, optimizer, schedule and hardware.")
    output: OutputConfig = Field(default_factory=OutputConfig, description="Run folders and submission format.")
    task: TaskConfig = Field(default_factory=TaskConfig, description="Multi-attribute tasks.")
    crop: CropConfig = Field(default_factory=CropConfig, description="Face/box crop preprocessing.")
    cv: CVConfig = Field(default_factory=CVConfig, description="Cross-validation.")
    predict: PredictConfig = Field(default_factory=PredictConfig, description="Inference options.")
    distill: DistillConfig = Field(default_factory=DistillConfig, description="Knowledge distillation from a teacher.")
    tune: TuneConfig = Field(default_factory=TuneConfig, description="Hyper-parameter search (`podium tune`).")

    @model_validator(mode="after")
    def _check_cross_fields(self):
        if self.train.warmup_epochs >= self.train.epochs:
            raise ValueError(
                f"train.warmup_epochs ({self.train.warmup_epochs}) must be below train.epochs ({self.train.epochs})")
        if self.train.mixup_alpha > 0 or self.train.cutmix_alpha > 0:
            from podium.model.losses import SOFT_TARGET_LOSSES

            if self.train.loss not in SOFT_TARGET_LOSSES:
                raise ValueError(
                    f"train.mixup_alpha/cutmix_alpha need a loss that takes soft targets; train.loss is "
                    f"{self.train.loss!r}. Use one of {', '.join(SOFT_TARGET_LOSSES)}, or set both alphas to 0")
            if self.task.mode == "multihead":
                raise ValueError("train.mixup_alpha/cutmix_alpha are not supported with task.mode=multihead "
                                 "(mixed composite targets); use task.mode=single or per_attribute, or set both to 0")
        soft = [k for k, v in (("distill.teacher", self.distill.teacher), ("data.pseudo_labels", self.data.pseudo_labels)) if v]
        if soft and (self.train.mixup_alpha > 0 or self.train.cutmix_alpha > 0):
            raise ValueError(f"{soft[0]} trains on soft targets, which MixUp/CutMix would mix again; set "
                             "train.mixup_alpha and train.cutmix_alpha to 0")
        if soft and self.task.ordinal:
            raise ValueError(f"{soft[0]} is not supported with ordinal heads (task.ordinal): they learn exact values, "
                             "not class probabilities. Remove task.ordinal")
        if self.distill.unlabeled and not self.distill.teacher:
            raise ValueError("distill.unlabeled needs distill.teacher (the model that labels those images)")
        if self.train.layer_decay is not None and self.train.backbone_lr_mult != 1.0:
            raise ValueError(f"train.layer_decay ({self.train.layer_decay}) and train.backbone_lr_mult "
                             f"({self.train.backbone_lr_mult}) both scale the backbone's learning rate; set one of them "
                             "(layer_decay=null or backbone_lr_mult=1)")
        if self.data.cache == "device":
            from podium.data.device import unsupported_on_device

            problem = unsupported_on_device(self.augment)
            if problem:
                raise ValueError(problem)
        if self.task.ordinal and self.task.mode != "multihead":
            raise ValueError(f"task.ordinal needs task.mode=multihead (a head per attribute); found task.mode="
                             f"{self.task.mode}. Set task.mode=multihead or remove task.ordinal")
        if self.data.format != "folder" and self.data.train and not self.data.train.lower().endswith(".csv") \
                and self.data.format == "csv":
            raise ValueError(f"data.format is csv but data.train {self.data.train!r} is not a .csv file")
        return self


# ---------------------------------------------------------------- loading

def parse_overrides(overrides: list[str]) -> dict:
    """``["train.epochs=3", "model.name=resnet18"]`` -> nested dict (values parsed as YAML)."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or any(not part for part in key.split(".")):
            raise PodiumError(
                f"bad override {item!r}: expected dotted.key=value, e.g. train.epochs=3 or model.name=resnet18")
        value = yaml.safe_load(raw) if raw.strip() else None
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise PodiumError(f"bad override {item!r}: {part!r} was already set to a value")
            node = child
        node[parts[-1]] = value
    return tree


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise PodiumError(f"{path} is a folder, not a config file; to train on it, pass data.train={path}")
    if not path.is_file():
        raise PodiumError(f"config file not found: {path}. Pass an existing YAML file, or none to use the defaults.")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise PodiumError(f"config file {path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise PodiumError(f"config file {path} is not text (not UTF-8: byte {exc.object[exc.start]:#04x} at "
                          f"position {exc.start}); pass a YAML config file") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise PodiumError(f"config file {path} must hold a mapping of sections (data:, model:, ...), found {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> PodiumConfig:
    """Resolve defaults <- ``base`` <- YAML file <- overrides into a validated config."""
    raw = dict(base or {})
    if path is not None:
        raw = deep_merge(raw, read_yaml(path))
    if overrides:
        raw = deep_merge(raw, parse_overrides(overrides))
    return validate_config(raw)


def validate_config(raw: dict) -> PodiumConfig:
    try:
        return PodiumConfig.model_validate(raw)
    except ValidationError as exc:
        raise PodiumError(format_validation_error(exc)) from None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that owns the field at ``loc[:-1]``."""
    model: Any = PodiumConfig
    for part in loc[:-1]:
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return None
        model = fields[part].annotation
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _is_union_member(part: str) -> bool:
    """A pydantic loc part naming a union member type (``int``, ``tuple[int, int]``, ``function-after[...]``),
    not a config key (``strategy`` and ``interpolation`` are keys)."""
    return part in ("int", "str", "float", "bool", "none") or part.startswith(
        ("tuple[", "list[", "literal[", "function-", "dict[", "union["))


def format_validation_error(exc: ValidationError) -> str:
    lines = ["invalid config:"]
    seen: set[str] = set()
    # a registry's own message (valid names, did-you-mean) beats a union member's "should be a list"
    for err in sorted(exc.errors(), key=lambda e: e["type"] != "value_error"):
        # pydantic reports each member of a union as its own error, with the member type
        # ("int", "tuple[...]") or an item index in the loc: one message per field is enough.
        names = [p for p in err["loc"] if isinstance(p, str) and not _is_union_member(p)]
        dotted = ".".join(names) or "config"
        found = err.get("input")
        if dotted in seen:
            continue
        seen.add(dotted)
        if not names:
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
            continue
        if err["type"] == "extra_forbidden":
            owner = _model_at(tuple(names))
            allowed = sorted(owner.model_fields) if owner else []
            hint = closest(names[-1], allowed) if allowed else []
            msg = f"  {dotted}: unknown key (value {found!r})"
            if allowed:
                msg += f"; allowed keys here: {', '.join(allowed)}"
            if hint:
                msg += f". Did you mean {'.'.join(names[:-1] + [hint[0]])!r}?"
            lines.append(msg)
            continue
        msg = f"  {dotted}: {err['msg'].removeprefix('Value error, ')} (found {found!r})"
        allowed = _literal_choices(tuple(names))
        if allowed and isinstance(found, str):
            hint = closest(found, allowed)
            msg += f"; allowed: {', '.join(allowed)}"
            if hint:
                msg += f". Did you mean {hint[0]!r}?"
        lines.append(msg)
    lines.append("Fix the YAML file or the override (see `podium config reference`).")
    return "\n".join(dict.fromkeys(lines))


def _literal_choices(loc: tuple) -> list[str]:
    owner = _model_at(loc)
    if owner is None or loc[-1] not in owner.model_fields:
        return []
    return [str(a) for a in _literal_args(owner.model_fields[loc[-1]].annotation)]


def _registry_names_of(metadata) -> list[str]:
    return [n for meta in metadata or () if isinstance(getattr(meta, "func", None), RegistryName)
            for n in meta.func.names()]


def _registry_names(annotation) -> list[str]:
    """Allowed names of a registry-backed field (its `RegistryName` validator), for the reference."""
    out: list[str] = _registry_names_of(getattr(annotation, "__metadata__", ()))
    for arg in getattr(annotation, "__args__", ()) or ():
        if arg is not annotation:
            out.extend(_registry_names(arg))
    return out


def _literal_args(annotation) -> list:
    origin = getattr(annotation, "__origin__", None)
    if origin is Literal:
        return list(annotation.__args__)
    out = []
    for arg in getattr(annotation, "__args__", ()) or ():
        out.extend(_literal_args(arg))
    return out


# ---------------------------------------------------------------- writing

def config_to_dict(cfg: PodiumConfig) -> dict:
    return cfg.model_dump(mode="json")


def flatten_dict(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as dotted keys (``{"train.lr": 0.01}``): what trackers log as
    hyper-parameters and what `podium runs --where` and `compare` match. Lists and maps (empty
    ones included) become compact JSON, so every value is a scalar."""
    import json

    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_dict(value, dotted + "."))
        elif isinstance(value, (dict, list, tuple)):
            out[dotted] = json.dumps(value)
        else:
            out[dotted] = value
    return out


def config_to_yaml(cfg: PodiumConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)


def config_reference() -> str:
    """Markdown reference of every field, generated from the schema (used in the README)."""
    lines = ["| key | default | description |", "|---|---|---|"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.")
                continue
            default = field.get_default(call_default_factory=True)
            choices = _literal_args(ann) + _registry_names(ann) + _registry_names_of(field.metadata)
            desc = field.description or ""
            if choices and len(choices) <= 8:
                desc += f" One of: {', '.join(str(c) for c in choices)}."
            lines.append(f"| `{prefix}{name}` | `{yaml.safe_dump(default, default_flow_style=True).strip().removesuffix('...').strip()}` | {desc} |")

    walk(PodiumConfig, "")
    return "\n".join(lines)
