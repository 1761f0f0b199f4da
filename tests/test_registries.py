"""Every entry of every registry works, and the config accepts exactly the registry's names.

Registries are plain dicts name -> callable; looping over them here means a new
entry is tested the moment it is added.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from podium.data.crops import DETECTORS, create_detector
from podium.data.images import RESIZE_MODES
from podium.data.statistics import CLASS_WEIGHTS, class_weight_values
from podium.data.transforms import ALBU_PRESETS, TV_PRESETS, build_train_pipeline
from podium.errors import PodiumError
from podium.evaluation.ensemble import VOTING
from podium.evaluation.tta import MERGES, VIEWS, merge_view_logits, parse_views
from podium.model.losses import LOSSES, create_loss
from podium.model.optim import OPTIMIZERS, SCHEDULERS, create_optimizer, create_scheduler
from podium.schema import RegistryName, load_config

CONFIG_REGISTRIES = {  # dotted config key -> (registry, a valid override value format)
    "train.loss": LOSSES, "train.optimizer": OPTIMIZERS, "train.scheduler": SCHEDULERS,
    "train.class_weights": CLASS_WEIGHTS, "augment.preset": ALBU_PRESETS, "crop.detector": DETECTORS,
    "predict.tta_merge": MERGES, "data.resize": RESIZE_MODES,
}


@pytest.mark.parametrize("key", sorted(CONFIG_REGISTRIES))
def test_config_accepts_every_registry_name_and_rejects_others(key):
    for name in CONFIG_REGISTRIES[key]:
        section, field = key.split(".")
        assert getattr(getattr(load_config(None, [f"{key}={name}"]), section), field) == name
    with pytest.raises(PodiumError, match=rf"{key}: unknown .*valid: "):
        load_config(None, [f"{key}=no_such_entry"])


def test_registry_names_are_read_from_the_registry_itself(monkeypatch):
    """Adding an entry is one edit: the schema picks it up without changing config.py."""
    monkeypatch.setitem(LOSSES, "my_loss", LOSSES["ce"])
    assert load_config(None, ["train.loss=my_loss"]).train.loss == "my_loss"
    assert "my_loss" in RegistryName("podium.model.losses.LOSSES", "loss").names()


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_gives_a_finite_differentiable_value(name):
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = create_loss(name, 3, class_weights=torch.tensor([1.0, 2.0, 0.5]), class_counts=[10, 5, 1])
    value = loss(logits, targets)
    value.backward()
    assert torch.isfinite(value) and logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_steps(name):
    model = torch.nn.Linear(4, 2)
    before = model.weight.detach().clone()
    opt = create_optimizer(name, model, lr=0.1, weight_decay=1e-4)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_every_scheduler_builds_and_steps(name):
    from podium.model.optim import end_epoch, step_scheduler

    model = torch.nn.Linear(4, 2)
    opt = create_optimizer("sgd", model, lr=0.1)
    cfg = create_scheduler(name, opt, epochs=4, steps_per_epoch=3, warmup_epochs=1.0 if name == "none" else 0.0,
                           milestones=[1, 2])
    assert cfg is not None and cfg["interval"] == "step"
    for step in range(12):
        opt.step()
        step_scheduler(cfg["scheduler"], global_step=step + 1)
        if step % 3 == 2:
            end_epoch(cfg["scheduler"], 0.5)
    assert all(np.isfinite(g["lr"]) and g["lr"] >= 0 for g in opt.param_groups)


def test_constant_schedule_without_warmup_is_no_scheduler():
    opt = create_optimizer("sgd", torch.nn.Linear(2, 2), lr=0.1)
    assert create_scheduler("none", opt, epochs=2, steps_per_epoch=2) is None


@pytest.mark.parametrize("mode", sorted(CLASS_WEIGHTS))
def test_every_class_weight_mode(mode):
    weights = class_weight_values([30, 10, 0, 5], mode)
    if mode == "none":
        assert weights is None
    else:
        assert weights[2] == 0 and weights[3] > weights[1] > weights[0]
        assert weights[weights > 0].mean() == pytest.approx(1.0)


def test_both_augmentation_backends_offer_the_same_presets():
    assert list(ALBU_PRESETS) == list(TV_PRESETS)


@pytest.mark.parametrize("backend", ["albumentations", "torchvision"])
@pytest.mark.parametrize("preset", sorted(ALBU_PRESETS))
def test_every_preset_on_both_backends_keeps_size_and_dtype(preset, backend):
    cfg = load_config(None, [f"augment.preset={preset}", f"augment.backend={backend}"])
    pipe = build_train_pipeline(cfg.augment, (24, 32))
    image = np.random.default_rng(0).integers(0, 255, (24, 32, 3), dtype=np.uint8)
    out = pipe(image, seed=3)
    assert out.shape == (3, 24, 32) and out.dtype == torch.uint8
    assert torch.equal(out, pipe(image, seed=3))  # seeded: the same augmentation again


def _detector_options(name, tmp_path, shared):
    if name == "fixed":
        return {"box": [0.1, 0.1, 0.9, 0.9]}
    if name == "csv":
        path = tmp_path / "boxes.csv"
        path.write_text("id,x0,y0,x1,y1\nimg,2,2,20,20\n")
        return {"csv_path": str(path)}
    if name == "yunet":
        model = shared / "weights" / "face_detection_yunet_2026may.onnx"
        if not model.is_file():
            pytest.skip(f"{model} (YuNet weights) is absent on this machine")
        return {"model_path": str(model)}
    return {}


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_every_detector_runs_on_an_image(name, tmp_path):
    from conftest import SHARED

    detector = create_detector(name, **_detector_options(name, tmp_path, SHARED))
    image = np.full((40, 32, 3), 128, dtype=np.uint8)
    box = detector(image, id="img", path="img.png")
    assert box is None or (len(box) == 4 and box[0] < box[2] and box[1] < box[3])
    assert detector.settings()["name"] == name


@pytest.mark.parametrize("name", sorted(VIEWS))
def test_every_tta_view_keeps_the_batch_shape(name):
    batch = torch.randint(0, 255, (2, 3, 16, 16), dtype=torch.uint8)
    for view in parse_views([name]):
        out = view(batch)
        assert out.shape == batch.shape and out.dtype == batch.dtype


@pytest.mark.parametrize("name", sorted(MERGES))
def test_every_merge_gives_probabilities(name):
    probs = merge_view_logits(torch.randn(3 * 4, 5), 3, name)
    assert probs.shape == (4, 5) and torch.allclose(probs.sum(1), torch.ones(4))


@pytest.mark.parametrize("name", sorted(VOTING))
def test_every_voting_method_gives_probabilities(name):
    rng = np.random.default_rng(0)
    members = [rng.dirichlet(np.ones(4), size=6) for _ in range(3)]
    out = VOTING[name](members, [0.2, 0.3, 0.5])
    assert out.shape == (6, 4) and np.allclose(out.sum(1), 1.0)
