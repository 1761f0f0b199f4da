import numpy as np
import pytest
import torch

from podium.data.transforms import ALBU_PRESETS, TV_PRESETS, build_train_pipeline, extra_train_ops
from podium.schema import AugmentConfig


def _image(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (32, 32, 3), dtype=np.uint8)


def test_every_preset_exists_in_both_backends_and_keeps_the_size():
    assert set(ALBU_PRESETS) == set(TV_PRESETS)
    for backend in ("albumentations", "torchvision"):
        for preset in ALBU_PRESETS:
            out = build_train_pipeline(AugmentConfig(backend=backend, preset=preset), (24, 24))(_image(), seed=3)
            assert out.dtype == torch.uint8 and tuple(out.shape) == (3, 32, 32) if preset in ("none", "flip") \
                else tuple(out.shape) == (3, 24, 24)


def test_reference_preset_is_torchvisions_random_resized_crop_and_flip():
    ops = build_train_pipeline(AugmentConfig(preset="reference"), (24, 24)).ops
    assert type(ops[0]).__name__ == "RandomResizedCrop" and tuple(ops[0].scale) == (0.08, 1.0)
    assert type(ops[1]).__name__ == "HorizontalFlip"


def test_switches_off_add_nothing():
    assert extra_train_ops(AugmentConfig()) == []
    assert build_train_pipeline(AugmentConfig(preset="none"), (32, 32)).is_identity


@pytest.mark.parametrize("switch", [{"trivial_augment": True}, {"random_erasing": 1.0}])
def test_trivial_augment_and_random_erasing_are_seeded_uint8_ops(switch):
    pipe = build_train_pipeline(AugmentConfig(preset="none", **switch), (32, 32))
    assert not pipe.is_identity
    image = _image(1)
    a, b = pipe(image, seed=11), pipe(image, seed=11)
    assert a.dtype == torch.uint8 and tuple(a.shape) == (3, 32, 32)
    assert torch.equal(a, b)  # same seed, same augmentation: reproducible and resumable
    outs = {pipe(image, seed=s).numpy().tobytes() for s in range(8)}
    assert len(outs) > 1
    if "random_erasing" in switch:
        assert (a == 0).all(0).sum() > 0  # an erased (zeroed) rectangle


def test_tensor_ops_do_not_disturb_the_global_torch_rng():
    pipe = build_train_pipeline(AugmentConfig(preset="none", trivial_augment=True), (32, 32))
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    pipe(_image(), seed=5)
    assert torch.equal(torch.rand(1), expected)
