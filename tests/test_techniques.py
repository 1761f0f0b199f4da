"""Recipe switches wired through the LightningModule and a real (tiny) run."""
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import fast_overrides, make_folder

from podium.errors import PodiumError
from podium.model.engine import Classifier
from podium.schema import ModelConfig, TrainConfig, load_config

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _module(**train):
    return Classifier(ModelConfig(name="test_efficientnet", pretrained=False), TrainConfig(**train),
                      ["a", "b", "c"], MEAN, STD, class_weights=[0.2, 1.0, 5.0], class_counts=[50, 10, 2])


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(n) % 3


def test_deferred_reweighting_uses_the_class_weights_only_in_the_last_epochs(monkeypatch):
    torch.manual_seed(0)
    module = _module(epochs=4, drw_epochs=1, loss="ce").eval()
    images, targets = _batch()
    with torch.no_grad():
        logits = module(images)
    weighted = torch.nn.functional.cross_entropy(logits, targets, weight=torch.tensor([0.2, 1.0, 5.0]))
    plain = torch.nn.functional.cross_entropy(logits, targets)
    seen = {}
    for epoch in range(4):
        monkeypatch.setattr(Classifier, "current_epoch", property(lambda self, e=epoch: e))
        with torch.no_grad():
            seen[epoch] = (module.reweighting(), module.loss(images, targets).item())
    assert [seen[e][0] for e in range(4)] == [False, False, False, True]
    assert seen[0][1] == pytest.approx(plain.item(), rel=1e-5)
    assert seen[3][1] == pytest.approx(weighted.item(), rel=1e-5)
    assert _module(epochs=4).reweighting()  # drw off: weighted from the first epoch


def test_logit_adjusted_module_uses_the_training_class_priors():
    module = _module(loss="logit_adjusted", logit_adjust_tau=0.5)
    priors = torch.tensor([50.0, 10.0, 2.0]) / 62
    assert torch.allclose(module.criterion.adjustment, 0.5 * priors.log())
    assert "criterion.adjustment" not in module.state_dict()  # rebuilt from the hyper-parameters


def test_mixup_trains_on_soft_targets_and_drops_an_odd_sample(monkeypatch):
    module = _module(mixup_alpha=0.4, cutmix_alpha=1.0, loss="label_smoothing")
    seen = []
    original = module.loss_on_inputs
    monkeypatch.setattr(module, "loss_on_inputs", lambda x, t: seen.append(t) or original(x, t))
    monkeypatch.setattr(module, "log", lambda *a, **k: None)
    images, targets = _batch(7)
    loss = module.training_step((images, targets, 0), 0)
    assert torch.isfinite(loss)
    assert seen[0].shape == (6, 3) and torch.allclose(seen[0].sum(1), torch.ones(6))


@pytest.mark.parametrize("extra, match", [
    (["train.mixup_alpha=0.2", "train.loss=focal"], "need a loss that takes soft targets"),
    (["train.cutmix_alpha=1.0", "task.mode=multihead"], "not supported with task.mode=multihead"),
])
def test_mixup_refuses_what_it_cannot_mix(extra, match):
    with pytest.raises(PodiumError, match=match):
        load_config(None, extra)


def test_new_switches_default_to_todays_recipe():
    cfg = load_config(None, [])
    t, a = cfg.train, cfg.augment
    assert (t.drw_epochs, t.backbone_lr_mult, t.mixup_alpha, t.cutmix_alpha) == (0, 1.0, 0.0, 0.0)
    assert (a.trivial_augment, a.random_erasing, cfg.data.resize) == (False, 0.0, "squash")
    assert t.loss == "label_smoothing" and t.optimizer == "sgd"


def test_a_run_with_every_switch_on_trains_saves_and_reloads(tmp_path):
    from podium.model.checkpoints import load_module
    from podium.model.training import train

    data = make_folder(tmp_path / "data", {"cat": 16, "dog": 8, "fox": 4})
    cfg = load_config(None, fast_overrides(tmp_path, **{
        "train.epochs": 2, "train.loss": "logit_adjusted", "train.mixup_alpha": 0.2, "train.cutmix_alpha": 1.0,
        "train.backbone_lr_mult": 0.1, "train.drw_epochs": 1, "train.class_weights": "auto",
        "augment.trivial_augment": "true", "augment.random_erasing": 0.25, "data.resize": "pad",
        "data.cache": "disk", "data.cache_dir": str(tmp_path / "cache"), "output.report": "false",
    }) + [f"data.train={data}"])
    result = train(cfg, progress=False)
    assert result.summary["epochs_trained"] == 2
    module = load_module(result.run_dir / "last.ckpt")
    counts = np.asarray(module.hparams["class_counts"], dtype=float)
    split = pd.read_csv(result.run_dir / "split.csv")
    assert counts.tolist() == [float((split.query("split == 'train'")["label"] == c).sum()) for c in module.classes]
    assert torch.allclose(module.criterion.adjustment, torch.tensor(np.log(counts / counts.sum()), dtype=torch.float32))
    groups = result.module.trainer.optimizers[0].param_groups
    assert {round(g["initial_lr"] / cfg.train.lr, 6) for g in groups} == {1.0, 0.1}


def test_monitor_epoch_selects_the_last_epoch(tmp_path, image_folder):
    from podium.model.training import train

    cfg = load_config(None, fast_overrides(tmp_path, **{"train.epochs": 2, "train.monitor": "epoch",
                                                        "output.report": "false"}) + [f"data.train={image_folder}"])
    result = train(cfg, progress=False)
    assert result.summary["best_epoch"] == 1
    best = torch.load(result.run_dir / "best.ckpt", weights_only=True, map_location="cpu")
    last = torch.load(result.run_dir / "last.ckpt", weights_only=True, map_location="cpu")
    assert best["epoch"] == last["epoch"] == 1 and best["global_step"] == last["global_step"]


def test_attribute_heads_get_their_own_priors_and_deferred_weights(monkeypatch):
    classes = [f"{g}/{a}" for g in ("m", "f") for a in ("y", "mid", "old")]
    module = Classifier(ModelConfig(name="test_efficientnet", pretrained=False),
                        TrainConfig(loss="logit_adjusted", epochs=3, drw_epochs=1), classes, MEAN, STD,
                        class_weights=[1.0, 1.0, 0.5, 1.0, 2.0], class_counts=[30, 10, 20, 15, 5], heads=[2, 3])
    assert torch.allclose(module.head_losses[0].adjustment, torch.tensor([0.75, 0.25]).log())
    assert torch.allclose(module.head_losses[1].adjustment, (torch.tensor([20.0, 15.0, 5.0]) / 40).log())
    assert module.head_losses_unweighted[1].weight is None and module.head_losses[1].weight is not None
    monkeypatch.setattr(Classifier, "current_epoch", property(lambda self: 0))
    images, targets = _batch(6)
    assert torch.isfinite(module.loss(images, targets)) and not module.reweighting()
