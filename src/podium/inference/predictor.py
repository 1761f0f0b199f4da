"""One predictor for every kind of trained model.

`load_predictor(path)` reads a run folder, a cross-validation folder (its folds
averaged), an ensemble folder (its members, fitted weights, per-attribute
voting and biases) or an exported model (``.onnx``; a TorchScript ``.pt`` only
with ``trust=True``, because TorchScript is code). Each becomes a `Predictor`:
uint8 NCHW RGB images at one input size in, scores out whose softmax is the
prediction, plus what inference needs around it: the class names, the config
that says how images are read and how the submission is written, and the TTA
views. Prediction, evaluation, export, serving and `podium.load` all go
through it, so the same model gives the same probabilities everywhere.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from podium.errors import PodiumError, summarize_list
from podium.schema import PodiumConfig, validate_config

if TYPE_CHECKING:
    import torch

#: exported file suffix -> format
SUFFIXES = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript"}
SIDECAR_SUFFIX = ".json"
#: `tta` argument meaning "the views the model was trained/exported with"
DEFAULT = "default"
#: config keys that decide how an image becomes the uint8 input: ensemble members must agree on them
READING_KEYS = ("data.resize", "data.eval_crop_pct", "data.draft_decode", "augment.eval_ops", "crop")


class Predictor:
    """uint8 NCHW images -> class scores (softmax = probabilities), and how to feed it.

    ``kind`` is run, cv, ensemble, onnx or torchscript. ``tta`` are the views
    applied around the model (a run's `predict.tta`); cv runs and ensembles
    apply their members' views inside the model and have none outside.
    """

    kind = "?"
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
        self.device: str | torch.device = "cpu"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.source)!r}, {len(self.classes)} classes, {self.backend})"

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) the model expects."""
        return self.config.data.size_hw

    def dataset(self, sources):
        """Images (paths or file objects) read exactly as validation reads them."""
        from podium.data.dataset import build_eval_dataset

        return build_eval_dataset(list(sources), None, self.config.data, self.config.augment)

    # -- the module protocol predict_loader and TTA use (``__call__`` on a tensor, ``to``, ``eval``)
    def to(self, device) -> Predictor:
        return self

    def eval(self) -> Predictor:
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Torch uint8 NCHW -> torch float scores on the same device."""
        import torch

        return torch.from_numpy(self.logits(images.detach().cpu().numpy())).to(images.device)

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(N, C) float32 scores for a uint8 (N, 3, H, W) array; a fixed export batch is honoured
        by splitting and padding the last chunk."""
        images = self._check(images)
        step = self.batch_size
        if not step or len(images) == step:
            return self._logits(images)
        chunks = []
        for start in range(0, len(images), step):
            part = images[start:start + step]
            n = len(part)
            if n < step:
                part = np.concatenate([part, np.zeros((step - n, *part.shape[1:]), dtype=part.dtype)])
            chunks.append(self._logits(part)[:n])
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)), dtype=np.float32)

    def _logits(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check(self, images: np.ndarray) -> np.ndarray:
        h, w = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, h, w):
            raise PodiumError(f"{self.source.name} expects uint8 images of shape (N, 3, {h}, {w}); "
                              f"got {tuple(images.shape)}")
        return np.ascontiguousarray(images, dtype=np.uint8)

    def probabilities(self, images: np.ndarray, tta: list[str] | None | str = DEFAULT) -> np.ndarray:
        """(N, C) probabilities of a uint8 batch, TTA views merged as the model does."""
        import torch

        from podium.evaluation.tta import predict_with_tta

        views = self.tta if tta == DEFAULT else tta
        batch = torch.from_numpy(np.ascontiguousarray(images))
        with torch.inference_mode():
            if views:
                return predict_with_tta(self, batch, views, merge=self.tta_merge).numpy()
            return self(batch).float().softmax(1).numpy()

    @contextlib.contextmanager
    def views(self, tta: list[str] | None | str = DEFAULT) -> Iterator[list[str] | None]:
        """The outer views to use for one call (``tta`` resolved like `predict.tta`)."""
        if tta == DEFAULT:
            yield self.tta
        else:
            from podium.inference.views import requested_views

            yield requested_views(tta)

    def describe(self) -> dict:
        """What /health and logs say about the model."""
        return {"model": self.source.name, "kind": self.kind, "backend": self.backend, "classes": len(self.classes),
                "image_size": list(self.image_size), "tta": self.tta or [], "batch_size": self.batch_size}


class TorchPredictor(Predictor):
    """A run (its Classifier), or a cv run / ensemble (a `members.LogProbabilities` module), in PyTorch."""

    backend = "torch"

    def __init__(self, module, kind: str, source: Path, classes: list[str], config: PodiumConfig,
                 tta: list[str] | None, device: str | None = None, meta: dict | None = None):
        from podium.model.engine import inference_device

        super().__init__(source, classes, config, tta, meta=meta)
        self.kind = kind
        self.device = device or inference_device(config.train.accelerator)
        self.module = module.to(self.device).eval()

    def __call__(self, images):
        return self.module(images.to(self.device)).float().to(images.device)

    def _logits(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self(torch.from_numpy(images)).cpu().numpy()

    @contextlib.contextmanager
    def views(self, tta: list[str] | None | str = DEFAULT) -> Iterator[list[str] | None]:
        """Runs take ``tta`` outside the model; cv runs and ensembles give it to every member
        for the call (their own views otherwise)."""
        if self.kind == "run" or tta == DEFAULT:
            with super().views(tta) as outer:
                yield outer
            return
        from podium.inference.views import requested_views

        members = _run_members(self.module)
        saved = [(m.view_names, m.views) for m in members]
        try:
            for member in members:
                _set_member_views(member, requested_views(tta))
            yield None
        finally:
            for member, (names, views) in zip(members, saved):
                member.view_names, member.views = names, views


class OnnxPredictor(Predictor):
    """An ONNX export run by onnxruntime (CUDA when its provider is installed, else CPU)."""

    kind = "onnx"
    backend = "onnxruntime"

    def __init__(self, path: Path, sidecar: dict, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise PodiumError("running an ONNX model needs onnxruntime: pip install -e '.[onnx]' in the podium clone") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise PodiumError(f"onnxruntime cannot load {path}: {str(exc)[:300]}") from None
        self.input_name = self.session.get_inputs()[0].name
        super().__init__(path, sidecar["classes"], _sidecar_config(path, sidecar), sidecar.get("tta") or None,
                         sidecar["input"].get("batch_size"), sidecar)
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        _check_sidecar_shapes(path, self, list(inp.shape), list(out.shape))

    def _logits(self, images: np.ndarray) -> np.ndarray:
        return np.asarray(self.session.run(None, {self.input_name: images})[0], dtype=np.float32)


class TorchScriptPredictor(Predictor):
    """A TorchScript export, run by torch.jit on the CPU. TorchScript is code: loaded only when
    the caller trusts the file (``trust=True``, ``--trust-model``)."""

    kind = "torchscript"
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
        super().__init__(path, sidecar["classes"], _sidecar_config(path, sidecar), sidecar.get("tta") or None,
                         sidecar["input"].get("batch_size"), sidecar)
        h, w = self.image_size
        probe = np.zeros((self.batch_size or 1, 3, h, w), dtype=np.uint8)
        _check_sidecar_shapes(path, self, list(probe.shape), list(self._logits(probe).shape))

    def _logits(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.module(torch.from_numpy(images)).float().numpy()


# ---------------------------------------------------------------- loading


def load_predictor(source: str | Path, *, checkpoint: str = "best", trust: bool = False, threads: int | None = None,
                   device: str | None = None, tta: list[str] | None | str = DEFAULT) -> Predictor:
    """A `Predictor` for a run, cv run or ensemble folder, or an exported ``.onnx`` (``.pt``
    TorchScript with ``trust=True``). ``checkpoint`` (best/last) applies to every run inside;
    ``tta`` replaces the views of every run inside (default: each run's own `predict.tta`)."""
    from podium.rundir import folder_kind

    path = Path(source)
    if path.is_dir():
        kind = folder_kind(path)
        if kind is None:
            raise PodiumError(f"{path} is not a run, cv run or ensemble folder (no config.yaml + classes.json, "
                              "cv.json or ensemble.json); give one of those or an exported model file")
        if kind == "run":
            return _run_predictor(path, checkpoint, device, tta)
        module, config, classes, meta = _combination(path, kind, checkpoint, tta)
        return TorchPredictor(module, kind, path, classes, config, None, device, meta)
    if not path.exists():
        raise PodiumError(f"model {path} not found; give a run, cv run or ensemble folder, or an exported .onnx file")
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise PodiumError(f"cannot tell the format of {path}: expected a folder or a file ending in "
                          f"{', '.join(SUFFIXES)} written by `podium export`")
    sidecar = read_sidecar(path)
    if sidecar["format"] != fmt:
        raise PodiumError(f"{path} looks like {fmt} but its sidecar says {sidecar['format']!r}")
    if fmt == "torchscript" and not trust:
        raise PodiumError(
            f"{path} is a TorchScript file: TorchScript is code and runs whatever its author put in it, so podium "
            "does not load it unless you trust its source. Use the ONNX export (data, not code: `podium export RUN "
            "--format onnx`), or pass --trust-model (Python: trust=True) for a file you made yourself")
    predictor = OnnxPredictor(path, sidecar, threads) if fmt == "onnx" else TorchScriptPredictor(path, sidecar)
    if tta != DEFAULT:
        from podium.inference.views import requested_views

        predictor.tta = requested_views(tta)
    return predictor


def _run_predictor(run_dir: Path, checkpoint: str, device: str | None, tta) -> TorchPredictor:
    from podium.inference.views import resolve_tta
    from podium.model.checkpoints import load_module
    from podium.rundir import load_run

    info = load_run(run_dir)
    ckpt = info.checkpoint(checkpoint)
    module = load_module(ckpt, info.classes, info.config.model.name)
    views = resolve_tta(None if tta == DEFAULT else tta, info.config)
    return TorchPredictor(module, "run", run_dir, info.classes, info.config, views, device,
                          {"checkpoint": str(ckpt)})


def _combination(folder: Path, kind: str, checkpoint: str, tta) -> tuple[Any, PodiumConfig, list[str], dict]:
    """The `LogProbabilities` module of a cv run or ensemble, its reading config, classes and description."""
    from podium.inference.members import LogProbabilities

    combination, leaves = (_cv_combination(folder, checkpoint, tta) if kind == "cv"
                           else _ensemble_combination(folder, checkpoint, tta))
    config = reading_config([cfg for _, cfg in leaves], folder)
    from podium.rundir import read_classes

    meta = {"members": [str(p) for p, _ in leaves], "method": combination.method,
            "weights": [float(w) for w in combination.weights], "checkpoint": checkpoint}
    return LogProbabilities(combination), config, read_classes(folder), meta


def _cv_combination(cv_dir: Path, checkpoint: str, tta):
    """The folds of a cv run, averaged (each with its own TTA views)."""
    from podium.inference.members import Combination
    from podium.rundir import fold_dir, is_finished_run, read_classes, read_cv_meta

    meta = read_cv_meta(cv_dir)
    folds = [fold_dir(cv_dir, f) for f in range(int(meta["k"]))]
    unfinished = [f.name for f in folds if not is_finished_run(f)]
    if unfinished:
        raise PodiumError(f"{cv_dir}: fold(s) {summarize_list(unfinished)} are not finished, so the cv run cannot "
                          f"predict yet. Train them (`podium cv CONFIG --fold N`) and `podium cv-gather {cv_dir}`")
    classes = read_classes(cv_dir)
    members, leaves = zip(*[_run_member(f, checkpoint, tta, classes) for f in folds])
    return Combination(list(members), radices=_radices(classes)), [leaf for group in leaves for leaf in group]


def _ensemble_combination(folder: Path, checkpoint: str, tta):
    """An ensemble folder's members with their fitted weights, voting method and biases."""
    from podium.inference.members import Combination
    from podium.rundir import read_classes, read_ensemble

    record = read_ensemble(folder)
    classes = read_classes(folder)
    members, leaves = [], []
    for entry in ensemble_member_entries(folder, record):
        path = _member_path(folder, entry)
        views = tta if tta != DEFAULT else entry.get("tta", DEFAULT)
        module, found = _member_module(path, checkpoint, views, classes)
        members.append(module)
        leaves.extend(found)
    per_attribute = record.get("voting", "").startswith("per attribute")
    biases = record.get("biases")
    combination = Combination(members, weights=record.get("weights"), method=record.get("method", "soft"),
                              radices=_radices(classes) if per_attribute else None, biases=biases)
    return combination, leaves


def _member_module(path: Path, checkpoint: str, tta, classes: list[str]):
    from podium.rundir import folder_kind, read_classes

    kind = folder_kind(path)
    if kind == "run":
        return _run_member(path, checkpoint, tta, classes)
    if kind == "cv":
        if read_classes(path) != classes:
            raise PodiumError(f"ensemble member {path} predicts other classes than the ensemble: "
                              f"{summarize_list(read_classes(path))}")
        return _cv_combination(path, checkpoint, tta)
    raise PodiumError(f"ensemble member {path} is not a run or cv run folder (a {kind or 'plain'} folder); only "
                      "members that are trained models can predict new images")


def _run_member(run_dir: Path, checkpoint: str, tta, classes: list[str]):
    """(RunMember, [(run_dir, config)]) for one finished run."""
    from podium.inference.members import RunMember
    from podium.inference.views import resolve_tta
    from podium.model.checkpoints import load_module
    from podium.rundir import load_run

    info = load_run(run_dir)
    if info.classes != classes:
        raise PodiumError(f"{run_dir} predicts {len(info.classes)} classes ({summarize_list(info.classes)}), "
                          f"not the {len(classes)} of the cv run or ensemble it belongs to")
    module = load_module(info.checkpoint(checkpoint), info.classes, info.config.model.name)
    views = resolve_tta(None if tta == DEFAULT else tta, info.config)
    member = RunMember(module, info.config.data.size_hw, views, info.config.predict.tta_merge, name=str(run_dir))
    return member, [(run_dir, info.config)]


def _radices(classes: list[str]) -> list[int] | None:
    from podium.tasks.spec import composite_task

    task = composite_task(classes)
    return list(task.radices) if task is not None else None


def ensemble_member_entries(folder: Path, record: dict) -> list[dict]:
    """The ensemble's members as ``{name, path, relative, tta}`` records (older ensemble.json
    files list names only: those are read as paths)."""
    entries = record.get("member_models")
    if entries is None:
        entries = [{"name": str(m), "path": str(m)} for m in record.get("members", [])]
    if not entries:
        raise PodiumError(f"{folder}: the ensemble record lists no members")
    return entries


def _member_path(folder: Path, entry: dict) -> Path:
    """A member's folder: beside the ensemble (moved together), else where it was when the ensemble was made."""
    candidates = [folder / entry["relative"]] if entry.get("relative") else []
    candidates += [Path(entry["path"])] if entry.get("path") else []
    for candidate in candidates:
        if candidate.exists():
            if not candidate.is_dir():
                raise PodiumError(f"ensemble member {entry.get('name')} of {folder} is a prediction table "
                                  f"({candidate.name}), not a model: the ensemble can score and combine tables, "
                                  "but cannot predict new images. Ensemble run or cv run folders to predict")
            return candidate
    raise PodiumError(f"ensemble member {entry.get('name')} of {folder} not found (looked at "
                      f"{', '.join(map(str, candidates)) or 'no recorded path'}); move it back or rebuild the ensemble")


def reading_config(configs: Sequence[PodiumConfig], where: Path) -> PodiumConfig:
    """The config an ensemble reads images with: the members' (which must read images the same
    way) at the largest member input size; smaller members see the image resized inside."""
    first = configs[0]
    ref = _reading_view(first)
    for cfg in configs[1:]:
        differ = [k for k, v in _reading_view(cfg).items() if v != ref[k]]
        if differ:
            raise PodiumError(
                f"the members of {where} read images differently ({', '.join(differ)} differ), so one model cannot "
                "predict for all of them. Predict each member and combine the tables: "
                "`podium ensemble MEMBER... --test-probs P...`")
    sizes = [cfg.data.size_hw for cfg in configs]
    largest = max(sizes, key=lambda hw: (hw[0] * hw[1], hw))
    cfg = first.model_copy(deep=True)
    cfg.data.image_size = (largest[0], largest[1]) if largest[0] != largest[1] else largest[0]
    return validate_config(cfg.model_dump(mode="json"))


def _reading_view(cfg: PodiumConfig) -> dict:
    dumped = cfg.model_dump(mode="json")
    out = {}
    for key in READING_KEYS:
        value: Any = dumped
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        out[key] = value
    return out


def _run_members(module) -> list:
    from podium.inference.members import RunMember

    return [m for m in module.modules() if isinstance(m, RunMember)]


def _set_member_views(member, views: list[str] | None) -> None:
    from podium.evaluation.tta import parse_views

    member.view_names = [v for v in (views or []) if v != "identity"]
    member.views = parse_views(["identity", *member.view_names]) if member.view_names else []


# ---------------------------------------------------------------- exported files


def sidecar_path(model_path: str | Path) -> Path:
    """The sidecar JSON beside an exported model (``model.onnx`` -> ``model.json``)."""
    return Path(model_path).with_suffix(SIDECAR_SUFFIX)


def read_sidecar(model_path: str | Path) -> dict:
    """The exported model's sidecar; without it the input size and classes are unknown."""
    path = sidecar_path(model_path)
    if not path.is_file():
        raise PodiumError(f"{path} not found: an exported model needs the sidecar JSON that `podium export` "
                          f"writes beside it (input size, classes, preprocessing); re-export the model")
    try:
        sidecar = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise PodiumError(f"sidecar {path} is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(sidecar, dict):
        raise PodiumError(f"sidecar {path} is not a JSON object (found {type(sidecar).__name__})")
    missing = [k for k in ("classes", "input", "config", "format") if k not in sidecar]
    if missing:
        raise PodiumError(f"sidecar {path} lacks {missing}; it was not written by `podium export`")
    if not isinstance(sidecar["classes"], list) or not sidecar["classes"] or not isinstance(sidecar["input"], dict):
        raise PodiumError(f"sidecar {path}: 'classes' must be a non-empty list and 'input' an object")
    return sidecar


def _sidecar_config(path: Path, sidecar: dict) -> PodiumConfig:
    try:
        return validate_config(sidecar["config"])
    except PodiumError as exc:
        raise PodiumError(f"sidecar {sidecar_path(path)} holds an invalid config: {exc}") from None


def _check_sidecar_shapes(path: Path, predictor: Predictor, input_shape: list, output_shape: list) -> None:
    """The sidecar must describe the model it sits beside: input (N, 3, H, W) and C outputs."""
    h, w = predictor.image_size
    fixed = [d if isinstance(d, int) else None for d in input_shape]
    problems = []
    if len(fixed) != 4 or fixed[1:] != [3, h, w]:
        problems.append(f"the model takes input {input_shape}, the sidecar says (N, 3, {h}, {w})")
    batch = predictor.batch_size
    if len(fixed) == 4 and fixed[0] is not None and batch is not None and fixed[0] != batch:
        problems.append(f"the model's batch is {fixed[0]}, the sidecar says {batch}")
    n_out = output_shape[-1] if output_shape else None
    if isinstance(n_out, int) and n_out != len(predictor.classes):
        problems.append(f"the model outputs {n_out} scores, the sidecar lists {len(predictor.classes)} classes")
    if problems:
        raise PodiumError(f"{path} does not match its sidecar {sidecar_path(path).name}: {'; '.join(problems)}. "
                          "Re-export the model, or restore the sidecar written with it")


def encode_images(images: Sequence[Any]) -> list[io.BytesIO]:
    """In-memory images (PIL images or HxWx3 uint8 arrays) as lossless PNG files, so they are
    read by the very pipeline files are (EXIF, resize mode, eval crop)."""
    from PIL import Image

    files = []
    for i, image in enumerate(images):
        if isinstance(image, np.ndarray):
            if image.dtype != np.uint8 or image.ndim not in (2, 3):
                raise PodiumError(f"image {i}: an array must be HxW or HxWx3 uint8 RGB; got {image.dtype} {image.shape}")
            image = Image.fromarray(image)
        if not isinstance(image, Image.Image):
            raise PodiumError(f"image {i}: expected a PIL image, an HxWx3 uint8 array or a path; got {type(image).__name__}")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        buffer.seek(0)
        files.append(buffer)
    return files
