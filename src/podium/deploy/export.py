"""Export a trained model (a run, a cv run or an ensemble) to ONNX or TorchScript, checked
against PyTorch on real images.

The exported graph is the model's own forward as `inference.load_predictor`
builds it: uint8 RGB NCHW images 0..255 in, normalization inside, scores out
whose softmax is the prediction (a run's logits; for attribute heads, cv runs
and ensembles log-probabilities). A cv run exports as one graph that averages
its folds, an ensemble as one graph of its members with their fitted weights,
per-attribute voting and biases, each member with its own TTA views and input
size. A sidecar JSON beside the file says everything a consumer must know to
feed it (input size, layout, dtype and range, channel order, class names, TTA
views, the config), and a parity check on the model's own validation images
compares the export's probabilities with PyTorch's before anything is written:
an export that drifts more than the tolerance (1e-4 by default, the atol
Optimum uses for MobileNet) fails and leaves nothing behind.

ONNX uses the TorchScript-based exporter (``dynamo=False``): it handles the
uint8 input, the channels-last model and a dynamic batch axis with no extra
dependency, and passes the parity check on timm and torchvision models.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from podium.errors import PodiumError

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
DEFAULT_TOLERANCE = 1e-4
DEFAULT_OPSET = 17
PARITY_IMAGES = 64
PARITY_BATCH = 8  # differs from the dynamic export's example batch (2), so the batch axis is exercised
INPUT_NAME, OUTPUT_NAME = "images", "logits"


@dataclass
class Export:
    """An exported model: the file, its sidecar, the parity report."""

    path: Path
    sidecar: Path
    parity_path: Path
    parity: dict

    def __repr__(self) -> str:
        p = self.parity
        return (f"Export({str(self.path)!r}, max_abs_diff={p['max_abs_diff']:.2e}, "
                f"top1_agreement={p['top1_agreement']:.4f})")


def export(model, format: str = "onnx", *, checkpoint: str = "best", out: str | Path | None = None,
           dynamic_batch: bool = False, tolerance: float = DEFAULT_TOLERANCE, opset: int = DEFAULT_OPSET,
           parity_images: int = PARITY_IMAGES, log: Callable[[str], None] | None = None) -> Export:
    """Export ``model`` (a run, cv run or ensemble folder, or a `podium.Run`) and check parity;
    the Python API of `podium export`."""
    return export_run(getattr(model, "dir", model), format, checkpoint=checkpoint, out=out, dynamic_batch=dynamic_batch,
                      tolerance=tolerance, opset=opset, parity_images=parity_images, log=log)


def export_run(source: str | Path, format: str = "onnx", *, checkpoint: str = "best", out: str | Path | None = None,
               dynamic_batch: bool = False, tolerance: float = DEFAULT_TOLERANCE, opset: int = DEFAULT_OPSET,
               parity_images: int = PARITY_IMAGES, log: Callable[[str], None] | None = None) -> Export:
    """Write ``model.onnx|.pt`` + ``model.json`` (sidecar) + ``model.parity.json`` atomically.

    Nothing is written unless the parity check passes: the model goes to a
    temporary file, is loaded back by its runtime and compared with PyTorch.
    """
    if format not in FORMATS:
        raise PodiumError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if not tolerance > 0:
        raise PodiumError(f"--tolerance must be > 0, found {tolerance}")
    if not Path(source).is_dir():
        raise PodiumError(f"export takes a run, cv run or ensemble folder; {source} is not a folder "
                          "(an exported model is exported already)")
    from podium.rundir import EXPORTS_DIR, writing_into

    with writing_into(source, "export", out if out is not None else Path(source) / EXPORTS_DIR):
        return _export_checked(source, format, checkpoint, out, dynamic_batch, tolerance, opset, parity_images, log)


def _export_checked(source: str | Path, format: str, checkpoint: str, out: str | Path | None, dynamic_batch: bool,
                    tolerance: float, opset: int, parity_images: int, log: Callable[[str], None] | None) -> Export:
    from podium.fileio import atomic_path, write_json
    from podium.inference.predictor import load_predictor

    predictor = load_predictor(source, checkpoint=checkpoint, device="cpu")
    images = _parity_images(predictor, parity_images)
    module = _eager(predictor.module)
    path, created = _output_path(predictor.source, format, out)
    log = log or (lambda message: None)
    parity_path, sidecar_path = path.with_name(path.stem + ".parity.json"), path.with_suffix(".json")
    written: list[Path] = []
    try:
        with atomic_path(path) as tmp:
            started = time.perf_counter()
            opset_used = _write_model(module, tmp, format, predictor.image_size, dynamic_batch, opset)
            log(f"exported {format} in {time.perf_counter() - started:.1f}s; checking parity on "
                f"{len(images)} validation images")
            sidecar = build_sidecar(predictor, format, path, checkpoint, dynamic_batch, opset_used)
            exported = _load_exported(tmp, format, sidecar)
            parity = check_parity(module, exported, images, tolerance)
            sidecar["parity"] = {k: parity[k] for k in ("max_abs_diff", "top1_agreement", "n_images", "tolerance")}
            if not parity["passed"]:
                raise _parity_failed(format, parity)
            written.append(write_json(parity_path, parity))
            written.append(write_json(sidecar_path, sidecar))
    except BaseException:  # no sidecar without its model, no empty folder
        for done in written:
            done.unlink(missing_ok=True)
        if created:
            _remove_if_empty(path.parent)
        raise
    log(f"parity: max |p_export - p_torch| = {parity['max_abs_diff']:.2e}, top-1 agreement "
        f"{parity['top1_agreement']:.4f} on {parity['n_images']} images")
    return Export(path, sidecar_path, parity_path, parity)


def _parity_failed(format: str, parity: dict) -> PodiumError:
    """The error of an export that drifted from PyTorch beyond the tolerance."""
    return PodiumError(
        f"exported {format} model differs from PyTorch by up to {parity['max_abs_diff']:.3g} in "
        f"probability on {parity['n_images']} validation images (top-1 agreement "
        f"{parity['top1_agreement']:.4f}), above the tolerance {parity['tolerance']:g}; nothing was written. "
        f"Try another --opset, or accept the difference with --tolerance {parity['max_abs_diff'] * 2:.1g}")


def _eager(module):
    """The model with plain (not torch.compile'd) backbones, on the CPU: exporters trace eager code."""
    from podium.model.engine import Classifier

    for part in module.modules():
        if isinstance(part, Classifier):
            object.__setattr__(part, "_run_model", part.model)
    return module.cpu().eval()


def _output_path(run_dir: Path, format: str, out: str | Path | None) -> tuple[Path, bool]:
    """``out`` (a new file with the format's suffix), else ``<folder>/exports/<format>[-k]/model<suffix>``."""
    from podium.rundir import EXPORTS_DIR, next_free_dir

    suffix = FORMATS[format]
    if out is None:
        return next_free_dir(run_dir / EXPORTS_DIR, format) / f"model{suffix}", True
    out = Path(out)
    if out.suffix.lower() != suffix:
        raise PodiumError(f"--out {out}: a {format} export is a file ending in {suffix} (e.g. model{suffix})")
    taken = [p for p in (out, out.with_suffix(".json"), out.with_name(out.stem + ".parity.json")) if p.exists()]
    if taken:
        raise PodiumError(f"{taken[0]} already exists; choose another --out (exports are never overwritten)")
    created = not out.parent.exists()
    out.parent.mkdir(parents=True, exist_ok=True)
    return out, created


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


class ExportedForward(torch.nn.Module):
    """The module that is traced: the Classifier's forward alone, so the export holds the
    backbone and the normalization but not the loss and metric submodules."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(images)


def _write_model(module, path: Path, format: str, size: tuple[int, int], dynamic_batch: bool, opset: int) -> int | None:
    """Trace ``module`` on a uint8 example batch (2 images when the batch is dynamic) into ``path``."""
    import warnings

    h, w = size
    example = torch.randint(0, 256, (2 if dynamic_batch else 1, 3, h, w), dtype=torch.uint8)
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation and tracer warnings
        if format == "torchscript":  # Lightning's tracer keeps the module's Trainer properties out of the trace
            traced = (module.to_torchscript(method="trace", example_inputs=example, check_trace=False)
                      if hasattr(module, "to_torchscript") else torch.jit.trace(module, example, check_trace=False))
            torch.jit.save(torch.jit.freeze(traced), str(path))
            return None
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
        try:
            torch.onnx.export(ExportedForward(module).eval(), (example,), str(path), dynamo=False,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes, opset_version=opset,
                              do_constant_folding=True)
        except Exception as exc:  # an op the exporter cannot express at this opset
            raise PodiumError(f"ONNX export of {_model_names(module)} at opset {opset} failed: "
                              f"{type(exc).__name__}: {str(exc)[:400]}; try another --opset") from None
    try:
        import onnx
    except ImportError:
        raise PodiumError("ONNX export needs the onnx package: pip install -e '.[onnx]' in the podium clone") from None
    onnx.checker.check_model(str(path))  # a structurally valid graph before any runtime sees it
    return opset


def _model_names(module) -> str:
    from podium.model.engine import Classifier

    names = sorted({m.model_cfg.name for m in module.modules() if isinstance(m, Classifier)})
    return ", ".join(names) or type(module).__name__


def build_sidecar(predictor, format: str, path: Path, checkpoint: str, dynamic_batch: bool,
                  opset: int | None) -> dict:
    """What a consumer needs to feed the model and read its output, and where it came from."""
    import podium
    from podium.model.engine import Classifier

    cfg = predictor.config
    h, w = predictor.image_size
    batch = None if dynamic_batch else 1
    classifiers = [m for m in predictor.module.modules() if isinstance(m, Classifier)]
    first = classifiers[0]
    log_probs = predictor.kind != "run" or bool(first.heads)
    sidecar = {
        "format": format, "file": path.name, "podium_version": podium.__version__, "torch_version": torch.__version__,
        "opset": opset, "kind": predictor.kind,
        "exporter": "torch.onnx (TorchScript-based, dynamo=False)" if format == "onnx" else "torch.jit.trace",
        "input": {"name": INPUT_NAME, "shape": [batch or "batch", 3, h, w], "batch_size": batch, "layout": "NCHW",
                  "dtype": "uint8", "range": [0, 255], "channel_order": "RGB", "image_size": [h, w],
                  "normalization": "inside the model",
                  "mean": [float(v) for v in first.hparams["mean"]], "std": [float(v) for v in first.hparams["std"]],
                  "resize": cfg.data.resize, "eval_crop_pct": cfg.data.eval_crop_pct,
                  "eval_ops": cfg.augment.eval_ops or [],
                  "preprocess": "decode to RGB with EXIF rotation, resize to image_size / eval_crop_pct by `resize` "
                                "(podium data.resize), keep the centre image_size, then the config's "
                                "augment.eval_ops"},
        "output": {"name": OUTPUT_NAME, "kind": "log_probabilities" if log_probs else "logits",
                   "shape": [batch or "batch", len(predictor.classes)],
                   "probabilities": "softmax over axis 1"},
        "classes": list(predictor.classes), "tta": predictor.tta or [], "tta_merge": predictor.tta_merge,
        "source": str(predictor.source.resolve()), "checkpoint": predictor.meta.get("checkpoint", checkpoint),
        "model_name": _model_names(predictor.module), "config": cfg.model_dump(mode="json"),
    }
    if predictor.kind != "run":
        sidecar["members"] = {k: predictor.meta[k] for k in ("members", "method", "weights") if k in predictor.meta}
        sidecar["members"]["note"] = ("each member resizes the input to its own size and applies its own TTA views "
                                      "inside the graph")
    return sidecar


def _load_exported(path: Path, format: str, sidecar: dict):
    from podium.inference.predictor import OnnxPredictor, TorchScriptPredictor

    return OnnxPredictor(path, sidecar) if format == "onnx" else TorchScriptPredictor(path, sidecar)


def _parity_images(predictor, limit: int) -> np.ndarray:
    """Up to ``limit`` validation images of the model, read through its eval pipeline (uint8 NCHW):
    a run's validation split, a cv run's out-of-fold images, an ensemble's OOF images."""
    paths = validation_paths(predictor.source, predictor.kind)
    if not paths:
        raise PodiumError(f"{predictor.source} lists no validation images to check the export against")
    dataset = predictor.dataset(paths[:limit])
    return torch.stack([dataset[i][0] for i in range(len(dataset))]).numpy()


def validation_paths(folder: Path, kind: str) -> list[str]:
    """Image paths the model never trained on: what parity checks (and the report) look at."""
    from podium.data.samples import load_split
    from podium.rundir import OOF_FILE, read_classes, read_folds, read_table

    if kind == "run":
        return list(load_split(folder, read_classes(folder)).val["path"])
    if kind == "cv":
        return list(read_folds(folder)["path"])
    oof = folder / OOF_FILE
    table = read_table(oof, "the ensemble's OOF predictions") if oof.is_file() else None
    if table is None or "path" not in table.columns:
        raise PodiumError(f"{folder} has no OOF table with image paths to check the export against; rebuild the "
                          "ensemble from run or cv folders (their OOF tables carry paths)")
    return list(table["path"])


def check_parity(module, predictor, images: np.ndarray, tolerance: float = DEFAULT_TOLERANCE) -> dict:
    """Max |p_export - p_torch| over classes and images, and top-1 agreement, batch by batch."""
    diffs, agree, logit_diff = [], 0, 0.0
    for start in range(0, len(images), PARITY_BATCH):
        batch = images[start:start + PARITY_BATCH]
        with torch.inference_mode():
            ref_logits = module(torch.from_numpy(batch)).float()
        ref = ref_logits.softmax(1).numpy()
        got_logits = predictor.logits(batch)
        got = torch.from_numpy(got_logits).softmax(1).numpy()
        diffs.append(np.abs(got - ref).max(axis=1))
        logit_diff = max(logit_diff, float(np.abs(got_logits - ref_logits.numpy()).max()))
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
    per_image = np.concatenate(diffs)
    max_diff = float(per_image.max())
    return {"passed": bool(max_diff <= tolerance), "max_abs_diff": max_diff, "mean_abs_diff_per_image_max":
            float(per_image.mean()), "max_abs_logit_diff": logit_diff, "top1_agreement": agree / len(images),
            "n_images": int(len(images)), "batch_size": PARITY_BATCH, "tolerance": float(tolerance),
            "source": "validation images of the model (never trained on), eval pipeline"}
