"""The GPU path: bf16 mixed precision, channels-last, torch.compile, normalization on the device,
the device image cache and ONNX parity against PyTorch on CUDA.

Marked ``cuda`` and skipped without a CUDA GPU (CI has none); `python -m benchmarks.gpu`
runs them first on a GPU machine (``pytest -m cuda``) and records the outcome.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import fast_overrides, make_folder
from lightning.pytorch.callbacks import Callback

import podium
from podium.model.checkpoints import load_module
from podium.model.engine import resolve_precision
from podium.rundir import load_run
from podium.schema import load_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _module(run):
    """The run's best weights as a Classifier on the GPU (compiled again when the run compiled)."""
    info = load_run(run.dir)
    return load_module(info.checkpoint("best"), info.classes).cuda().eval()


def _gpu_config(root, **extra):
    """The suite's fast config, on the GPU with podium's GPU defaults (precision auto)."""
    data = make_folder(root / "train", {"cat": 16, "dog": 16, "fox": 16})
    overrides = {"train.accelerator": "auto", "train.devices": 1, "train.precision": "auto",
                 "data.train": data, "output.report": "false", "train.lr": "0.002", **extra}
    return load_config(None, fast_overrides(root, **overrides))


class _Watch(Callback):
    """What the training step saw: batch dtype and device, the first conv's output dtype."""

    def __init__(self):
        self.batches, self.conv_dtypes, self._hook = set(), set(), None

    def on_train_start(self, trainer, pl_module):
        conv = next(m for m in pl_module.model.modules() if isinstance(m, torch.nn.Conv2d))
        self._hook = conv.register_forward_hook(lambda m, i, o: self.conv_dtypes.add(o.dtype))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.add((type(trainer.train_dataloader).__name__, batch[0].dtype, batch[0].device.type))

    def on_train_end(self, trainer, pl_module):
        self._hook.remove()


@pytest.fixture(scope="module")
def gpu_run(tmp_path_factory):
    watch = _Watch()
    run = podium.train(_gpu_config(tmp_path_factory.mktemp("gpu")), callbacks=[watch], progress=False)
    return run, watch


@pytest.fixture(autouse=True)
def _no_tf32():
    """Exact float32 on the GPU for the comparisons (TF32 convolutions differ by ~1e-3)."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_auto_precision_trains_in_bf16_on_uint8_batches(gpu_run):
    run, watch = gpu_run
    assert resolve_precision("auto", "auto") == ("bf16-mixed" if torch.cuda.is_bf16_supported() else "32")
    assert run.summary["device"] == "cuda" and np.isfinite(run.summary["best_metric"])
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    assert watch.conv_dtypes == {expected}
    # CPU workers ship uint8 (a quarter of float32's bytes); Lightning moves them to the GPU as they are
    assert watch.batches == {("DataLoader", torch.uint8, "cuda")}


def test_normalization_runs_on_the_device_from_uint8(gpu_run):
    module = _module(gpu_run[0])
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, device="cuda")
    mean = torch.tensor(module.hparams["mean"], device="cuda").view(1, 3, 1, 1)
    std = torch.tensor(module.hparams["std"], device="cuda").view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    assert module.mean.device.type == "cuda"
    torch.testing.assert_close(module.normalize(images), expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(module(images), module.model(expected.contiguous(memory_format=torch.channels_last)),
                                   rtol=1e-4, atol=1e-4)


def test_channels_last_gives_the_contiguous_result(gpu_run):
    module = _module(gpu_run[0])
    conv = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, device="cuda")
    assert module._prepare(images).is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fast = module(images)
        module.channels_last = False
        module.model.to(memory_format=torch.contiguous_format)
        plain = module(images)
    module.channels_last = True
    module.model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(fast, plain, rtol=1e-4, atol=1e-4)


def test_device_cache_keeps_images_on_the_gpu_and_trains(tmp_path):
    watch = _Watch()
    run = podium.train(_gpu_config(tmp_path, **{"data.cache": "device", "train.epochs": 2}), callbacks=[watch],
                       progress=False)
    assert watch.batches == {("DeviceBatches", torch.uint8, "cuda")}
    assert np.isfinite(run.summary["best_metric"]) and run.summary["val_images"] > 0


def test_onnx_export_matches_pytorch_on_cuda(gpu_run, record_property):
    """The export's own parity check compares onnxruntime with PyTorch on the CPU; here the
    reference is the same weights in PyTorch on CUDA (float32), against onnxruntime with its CUDA
    provider when installed, else its CPU one (recorded as ``onnx_providers``)."""
    from podium.deploy.export import export_run
    from podium.inference.predictor import load_predictor

    run = gpu_run[0]
    result = export_run(run.dir, "onnx", dynamic_batch=True)
    assert json.loads(result.parity_path.read_text())["passed"]
    onnx_model = load_predictor(result.path)
    record_property("onnx_providers", ",".join(onnx_model.session.get_providers()))
    module = _module(run)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = module(images.cuda()).float().softmax(1).cpu().numpy()
    got = torch.from_numpy(onnx_model.logits(images.numpy())).softmax(1).numpy()
    assert np.abs(got - reference).max() < 1e-4
    assert (got.argmax(1) == reference.argmax(1)).all()


def test_compile_auto_compiles_on_cuda_trains_and_matches_eager(tmp_path):
    """Last in this file: compiling costs the most time."""
    # 48 images, 8 of them validation: every batch has 8 images, so each graph compiles once
    run = podium.train(_gpu_config(tmp_path, **{"train.compile": "auto", "data.val_fraction": 1 / 6}), progress=False)
    module = _module(run)
    assert isinstance(module._run_model, torch._dynamo.eval_frame.OptimizedModule)
    assert np.isfinite(run.summary["best_metric"])
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, device="cuda")
    with torch.no_grad():
        compiled = module(images)
        eager = module.model(module._prepare(images))
    torch.testing.assert_close(compiled, eager, rtol=1e-3, atol=1e-3)
