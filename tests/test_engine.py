import lightning.pytorch as pl
import pytest
import torch
from conftest import fast_overrides

from podium.model.training import train
from podium.schema import load_config


class _Probe(pl.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        bns = [m for m in module.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        backbone = [p for n, p in module.model.named_parameters() if not n.startswith(module.model.podium_head + ".")]
        self.rows.append((trainer.current_epoch, all(b.training for b in bns), any(b.training for b in bns),
                          all(p.requires_grad for p in backbone), backbone[0].detach().clone()))


def test_freeze_backbone_then_fine_tune_everything(tmp_path, image_folder):
    probe = _Probe()
    cfg = load_config(None, fast_overrides(tmp_path, **{"train.epochs": 2, "model.freeze_backbone_epochs": 1,
                                                        "output.report": "false"}) + [f"data.train={image_folder}"])
    train(cfg, progress=False, callbacks=[probe])
    frozen = [r for r in probe.rows if r[0] == 0]
    thawed = [r for r in probe.rows if r[0] == 1]
    assert all(not r[2] and not r[3] for r in frozen)  # BN in eval, backbone not trainable
    assert all(torch.equal(frozen[0][4], r[4]) for r in frozen)  # backbone weights did not move
    assert all(r[1] and r[3] for r in thawed)  # BN back in train mode, backbone trainable
    assert not torch.equal(frozen[-1][4], thawed[-1][4])


def test_train_gives_the_caller_its_torch_thread_count_back(tmp_path, image_folder):
    """Training lowers torch's (process-wide) thread count for its loader workers, then restores it."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(7)
        cfg = load_config(None, fast_overrides(tmp_path) + [f"data.train={image_folder}"])
        train(cfg, progress=False, dry_run=True)
        assert torch.get_num_threads() == 7
    finally:
        torch.set_num_threads(before)


def test_a_fixed_size_vit_is_built_for_the_runs_image_size(tmp_path, image_folder):
    """timm's ViTs take one input size (a positional embedding per patch of it): vit_tiny_patch16_224
    at data.image_size=32 stopped mid-fit with timm's AssertionError ('Input height (32) doesn't
    match model (224)'). It is built for the run's size, and its checkpoint reloads at that size."""
    from podium.model.checkpoints import load_module

    cfg = load_config(None, fast_overrides(tmp_path, **{"model.name": "vit_tiny_patch16_224", "data.image_size": "32",
                                                        "output.report": "false"}) + [f"data.train={image_folder}"])
    result = train(cfg, progress=False, log=lambda *a: None)
    module = load_module(result.run_dir / "best.ckpt", model_name="vit_tiny_patch16_224")
    assert module.hparams["img_size"] == [32, 32] and tuple(module.model.patch_embed.img_size) == (32, 32)
    assert module.model.pos_embed.shape[1] == 1 + 2 * 2  # the class token and a 2x2 patch grid
    with torch.no_grad():
        assert module.model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_a_torchvision_vit_is_built_for_the_runs_image_size_from_224_px_weights(tmp_path):
    """torchvision's ViTs were always built at 224 px: tv/vit_b_16 at data.image_size=32 with
    model.pretrained_path stopped mid-fit with torchvision's AssertionError ('Wrong image height!
    Expected 224 but got 32!'). It is built for the run's size, the 224-px weights' position
    embedding resampled by torchvision's interpolate_embeddings, and its checkpoint reloads at 32 px."""
    import torchvision
    from torchvision.models.vision_transformer import interpolate_embeddings

    from podium.model.checkpoints import load_module
    from podium.model.engine import Classifier
    from podium.schema import ModelConfig, TrainConfig

    torch.manual_seed(0)
    at_224 = torchvision.models.vit_b_16(weights=None).state_dict()
    torch.save(at_224, tmp_path / "vit_b_16_224.pt")
    module = Classifier(ModelConfig(name="tv/vit_b_16", pretrained_path=str(tmp_path / "vit_b_16_224.pt")),
                        TrainConfig(), ["a", "b", "c"], (0.5,) * 3, (0.25,) * 3, img_size=[32, 32])
    resampled = interpolate_embeddings(32, 16, dict(at_224))["encoder.pos_embedding"]
    assert module.model.image_size == 32
    assert torch.equal(module.model.encoder.pos_embedding.detach(), resampled)  # 1 + 2x2 tokens, from the file
    assert torch.equal(module.model.conv_proj.weight.detach(), at_224["conv_proj.weight"])
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, tmp_path / "best.ckpt")
    reloaded = load_module(tmp_path / "best.ckpt", model_name="tv/vit_b_16")
    assert reloaded.model.image_size == 32
    with torch.no_grad():
        assert reloaded.model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_a_torchvision_vit_refuses_a_size_it_cannot_be_built_for():
    """torchvision's ViT takes one square input, a whole number of patches: anything else is one
    message saying what the model takes and which sizes would do."""
    from podium.errors import PodiumError
    from podium.model.models import create_model

    with pytest.raises(PodiumError, match=r"tv/vit_b_16 .* multiple of its 16-px patch, but data.image_size is "
                                          r"40x40\. Use a square multiple of 16 \(e\.g\. data\.image_size=32 or 48\)$"):
        create_model("tv/vit_b_16", 3, pretrained=False, img_size=(40, 40))
    with pytest.raises(PodiumError, match=r"data.image_size is 32x48\. .* or a timm ViT"):
        create_model("tv/vit_b_32", 3, pretrained=False, img_size=(32, 48))


def test_a_fixed_size_timm_vit_loads_224_px_weights_from_pretrained_path_at_the_runs_size(tmp_path):
    """timm resampled the position embedding of the weights it downloads, not of a model.pretrained_path
    file: vit_tiny_patch16_224 at data.image_size=32 with 224-px weights stopped with torch's RuntimeError
    ('size mismatch for pos_embed: [1, 197, 192] ... [1, 5, 192]'). timm's own checkpoint filter resamples it."""
    import timm

    from podium.model.models import create_model

    at_224 = timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict()
    torch.save(at_224, tmp_path / "vit_tiny_224.pt")
    model = create_model("vit_tiny_patch16_224", 3, pretrained_path=str(tmp_path / "vit_tiny_224.pt"), img_size=(32, 32))
    assert model.pos_embed.shape == (1, 1 + 2 * 2, 192)
    assert torch.equal(model.pos_embed.detach()[:, :1], at_224["pos_embed"][:, :1])  # the class token's, kept
    assert torch.equal(model.patch_embed.proj.weight.detach(), at_224["patch_embed.proj.weight"])
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 3)


def test_a_pretrained_path_file_of_another_architecture_is_refused_in_a_few_names(tmp_path):
    """resnet18 weights for tv/resnet50 share key names with other shapes: torch raised its own
    RuntimeError listing every mismatch; now one PodiumError names a few (`serialization.misfit`)."""
    import torchvision

    from podium.errors import PodiumError
    from podium.model.models import create_model

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pt")
    with pytest.raises(PodiumError, match=r"does not fit tv/resnet50 .*of another shape.*layer1\.0\.conv1\.weight"):
        create_model("tv/resnet50", 3, pretrained_path=str(tmp_path / "resnet18.pt"))
    with pytest.raises(PodiumError, match=r"does not fit tv/resnet34 .*missing key"):  # same shapes, fewer blocks
        create_model("tv/resnet34", 3, pretrained_path=str(tmp_path / "resnet18.pt"))
    assert create_model("tv/resnet18", 3, pretrained_path=str(tmp_path / "resnet18.pt")).fc.out_features == 3
