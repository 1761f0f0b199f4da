"""Running a model behind one small interface: a run (PyTorch), an ONNX file
(onnxruntime) or a TorchScript file.

A `Predictor` maps a uint8 NCHW batch (RGB, 0..255, the run's image size) to
class logits and carries what inference needs: the class names, the image size,
the eval pipeline, the TTA views and the run's config (submission format, crops).
It behaves like a module towards `podium.evaluation.predict.predict_frame`
(``__call__`` on a tensor, ``to``, ``eval``, ``classes``), so an exported model
reads images, batches, applies TTA and merges views by exactly the code a run
uses: `predict --model model.onnx` and `predict RUN` can only differ by the
exported graph's numerics, which the export's parity check bounds.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from podium.schema import PodiumConfig, validate_config
from podium.errors import PodiumError

#: file suffix -> exported format
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}
SIDECAR_SUFFIX = ".json"
#: `predict.tta` value meaning "what the model was exported with"
DEFAULT = "default"


def sidecar_path(model_path: str | Path) -> Path:
    """The sidecar JSON beside an exported model (``model.onnx`` -> ``model.json``)."""
    return Path(model_path).with_suffix(SIDECAR_SUFFIX)


def read_sidecar(model_path: str | Path) -> dict:
    """The exported model's sidecar; without it the input size and classes are unknown."""
    path = sidecar_path(model_path)
    if not path.is_file():
        raise PodiumError(f"{path} not found: an exported model needs the sidecar JSON that `podium export` "
                          f"writes beside it (input size, classes, preprocessing); re-export the run")
    try:
        sidecar = json.loads(path.read_text())
    except ValueError as exc:
        raise PodiumError(f"sidecar {path} is not valid JSON: {exc}") from None
    missing = [k for k in ("classes", "input", "config", "format") if k not in sidecar]
    if missing:
        raise PodiumError(f"sidecar {path} lacks {missing}; it was not written by `podium export`")
    return sidecar


def eval_dataset(sources, cfg: PodiumConfig):
    """An unlabelled dataset read exactly as validation and `predict_frame` read images
    (`build_eval_dataset`: size, resize mode, eval crop, draft decoding, eval pipeline),
    for the parity check and uploaded files."""
    from podium.data.dataset import build_eval_dataset

    return build_eval_dataset(list(sources), None, cfg.data, cfg.augment)


class Predictor:
    """uint8 NCHW images -> class logits, plus everything needed to feed it.

    Subclasses implement `_logits` on a numpy or torch batch; a fixed export
    batch size is honoured here by splitting (and padding the last chunk).
    """

    backend = "?"

    def __init__(self, source: Path, classes: list[str], config: PodiumConfig, tta: list[str] | None,
                 batch_size: int | None = None, meta: dict | None = None):
        self.source = Path(source)
        self.classes = list(classes)
        self.config = config
        self.tta = tta
        self.tta_merge = config.predict.tta_merge
        self.batch_size = batch_size
        self.meta = meta or {}

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the model expects."""
        return self.config.data.size_hw

    def dataset(self, sources) -> "ImageDataset":
        """Images (paths or file objects) read as the run reads them (`eval_dataset`)."""
        return eval_dataset(sources, self.config)

    # -- module protocol used by predict_frame / predict_loader / predict_with_tta
    def to(self, device) -> "Predictor":
        return self

    def eval(self) -> "Predictor":
        return self

    def __call__(self, images):
        """Torch uint8 NCHW -> torch float logits on the same device."""
        import torch

        out = self.logits(images.detach().cpu().numpy())
        return torch.from_numpy(out).to(images.device)

    # -- inference
    def logits(self, images: np.ndarray) -> np.ndarray:
        """(N, C) float32 logits for a uint8 (N, 3, H, W) array."""
        images = self._check(images)
        step = self.batch_size
        if not step or len(images) == step:
            return self._logits(images)
        chunks = []
        for start in range(0, len(images), step):
            part = images[start:start + step]
            n = len(part)
            if n < step:  # a fixed-batch export: pad the last chunk, drop the padding after
                part = np.concatenate([part, np.zeros((step - n, *part.shape[1:]), dtype=part.dtype)])
            chunks.append(self._logits(part)[:n])
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)), dtype=np.float32)

    def probabilities(self, images: np.ndarray, tta: list[str] | None | str = DEFAULT) -> np.ndarray:
        """(N, C) probabilities, the TTA views merged as the run does (`tta` default: the model's)."""
        import torch

        from podium.evaluation.tta import predict_with_tta

        views = self.tta if tta == DEFAULT else tta
        batch = torch.from_numpy(np.ascontiguousarray(images))
        with torch.inference_mode():
            if views:
                return predict_with_tta(self, batch, views, merge=self.tta_merge).numpy()
            return self(batch).float().softmax(1).numpy()

    def _check(self, images: np.ndarray) -> np.ndarray:
        h, w = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, h, w):
            raise PodiumError(f"{self.source.name} expects uint8 images of shape (N, 3, {h}, {w}); "
                              f"got {tuple(images.shape)}")
        return np.ascontiguousarray(images, dtype=np.uint8)

    def _logits(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        """What /health and logs say about the model."""
        return {"model": self.source.name, "backend": self.backend, "classes": len(self.classes),
                "image_size": list(self.image_size), "tta": self.tta or [], "batch_size": self.batch_size}


class OnnxPredictor(Predictor):
    """An ONNX export run by onnxruntime (CUDA when its provider is installed, else CPU)."""

    backend = "onnxruntime"

    def __init__(self, path: Path, sidecar: dict, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise PodiumError("running an ONNX model needs onnxruntime: pip install 'podium[onnx]'") from None
        options = ort.SessionOptions()
        if os.environ.get("PODIUM_ORT_NO_SPIN"):
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise PodiumError(f"onnxruntime cannot load {path}: {str(exc)[:300]}") from None
        self.input_name = self.session.get_inputs()[0].name
        super().__init__(path, sidecar["classes"], validate_config(sidecar["config"]), sidecar.get("tta") or None,
                         sidecar["input"].get("batch_size"), sidecar)

    def _logits(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: images})[0], dtype=np.float32)


class TorchScriptPredictor(Predictor):
    """A TorchScript export, run by torch.jit on the CPU."""

    backend = "torchscript"

    def __init__(self, path: Path, sidecar: dict):
        import warnings

        import torch

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation notice
                self.module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:  # a truncated or foreign file
            raise PodiumError(f"cannot load TorchScript model {path}: {str(exc)[:300]}") from None
        super().__init__(path, sidecar["classes"], validate_config(sidecar["config"]), sidecar.get("tta") or None,
                         sidecar["input"].get("batch_size"), sidecar)

    def _logits(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(images)).float().numpy()


class RunPredictor(Predictor):
    """A run's checkpoint in PyTorch (the reference the exports are checked against)."""

    backend = "torch"

    def __init__(self, run_dir: Path, checkpoint: str = "best", device: str | None = None):
        from podium.evaluation.predict import resolve_tta
        from podium.model.checkpoints import load_module
        from podium.model.engine import inference_device
        from podium.rundir import load_run

        info = load_run(run_dir)
        self.module = load_module(info.checkpoint(checkpoint), info.classes)
        self.device = device or inference_device(info.config.train.accelerator)
        self.module.to(self.device).eval()
        super().__init__(run_dir, info.classes, info.config, resolve_tta(None, info.config),
                         meta={"checkpoint": str(info.checkpoint(checkpoint))})

    def __call__(self, images):
        return self.module(images.to(self.device)).float().to(images.device)

    def _logits(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self(torch.from_numpy(images)).cpu().numpy()


def load_predictor(source: str | Path, *, checkpoint: str = "best", threads: int | None = None) -> Predictor:
    """A `Predictor` for a run folder, a ``.onnx`` file or a TorchScript ``.pt`` file."""
    path = Path(source)
    if path.is_dir():
        return RunPredictor(path, checkpoint)
    if not path.exists():
        raise PodiumError(f"model {path} not found; give a run folder, an exported .onnx or a TorchScript .pt file")
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise PodiumError(f"cannot tell the format of {path}: expected a run folder or a file ending in "
                          f"{', '.join(SUFFIXES)} written by `podium export`")
    sidecar = read_sidecar(path)
    if sidecar["format"] != kind:
        raise PodiumError(f"{path} looks like {kind} but its sidecar says {sidecar['format']!r}")
    return OnnxPredictor(path, sidecar, threads) if kind == "onnx" else TorchScriptPredictor(path, sidecar)


def predict_exported(model: str | Path, data: str | Path, *, out: str | Path | None = None,
                     batch_size: int | None = None, tta: list[str] | None = None, tta_merge: str | None = None,
                     progress: bool = True, biases: str | Path | None = None) -> dict[str, Any]:
    """Probabilities parquet + submission CSV from an exported model, as `predict_run` writes
    them for a run, so an exported model can be scored and ensembled like one.

    ``tta`` None means the views recorded in the sidecar (the run's own).
    """
    import pandas as pd

    from podium.data.samples import is_competition_layout, prediction_samples
    from podium.evaluation.predict import apply_biases, predict_frame, write_outputs

    predictor = load_predictor(model)
    cfg = predictor.config
    competition = is_competition_layout(cfg, data) and cfg.task.mode != "per_attribute"
    frame = prediction_samples(cfg, data, competition)
    views = predictor.tta if tta is None else _requested_views(tta)
    probs = predict_frame(predictor, frame, cfg, batch_size=batch_size, tta=views, tta_merge=tta_merge,
                          device="cpu", progress=progress)
    probs = apply_biases(probs, biases or cfg.predict.logit_biases, predictor.classes)
    out_dir = _prediction_dir(Path(model), data, out)
    probs_path, sub_path = write_outputs(out_dir, frame["id"], probs, predictor.classes, cfg.output.submission,
                                         competition_root=data if competition else None)
    counts = pd.Series(np.asarray(predictor.classes)[probs.argmax(1)]).value_counts().to_dict()
    return {"out_dir": out_dir, "probabilities": probs_path, "submission": sub_path, "n_images": len(frame),
            "predicted_counts": counts}


def _requested_views(tta: list[str]) -> list[str] | None:
    """``--tta`` on an exported model: the plain image plus the named views, as for a run."""
    views = [v for v in tta if v not in ("none", "identity")]
    return ["identity", *views] if views else None


def _prediction_dir(model: Path, data: str | Path, out: str | Path | None) -> Path:
    """``out`` (new or empty), else ``<model folder>/predictions/<data name>[-k]``: never overwritten."""
    from podium.rundir import next_free_dir

    if out is not None:
        out = Path(out)
        if out.exists() and any(out.iterdir()):
            raise PodiumError(f"output folder {out} exists and is not empty; choose a new --out "
                              "(nothing is overwritten)")
        out.mkdir(parents=True, exist_ok=True)
        return out
    return next_free_dir(model.parent / "predictions", Path(data).stem or "data")
