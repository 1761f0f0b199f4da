import lightning.pytorch as pl
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
