"""A run interrupted after epoch 1 and resumed ends exactly like an uninterrupted one."""
import pandas as pd
import pytest
import torch
from conftest import fast_overrides
from lightning.pytorch.callbacks import Callback

from podium.cli import main
from podium.model.training import train
from podium.schema import load_config


class StopAfterEpochs(Callback):
    """Ends fit after N epochs without changing the schedule (an interruption to resume from)."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


@pytest.mark.parametrize("scheduler", ["cosine", "plateau"])
def test_resume_matches_uninterrupted(tmp_path, image_folder, scheduler):
    overrides = fast_overrides(tmp_path, **{"train.epochs": 3, "train.scheduler": scheduler,
                                            "train.warmup_epochs": 0.5, "augment.preset": "default"})
    full = train(load_config(None, overrides + [f"data.train={image_folder}", "output.name=full"]), progress=False)
    cut = train(load_config(None, overrides + [f"data.train={image_folder}", "output.name=cut"]), progress=False,
                callbacks=[StopAfterEpochs(1)])
    assert len(pd.read_csv(cut.run_dir / "metrics.csv")) == 1
    assert main(["train", "--resume", str(cut.run_dir), "--quiet"]) == 0

    a = torch.load(full.run_dir / "last.ckpt", weights_only=False)
    b = torch.load(cut.run_dir / "last.ckpt", weights_only=False)
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    for key, value in a["state_dict"].items():
        assert torch.allclose(value.float(), b["state_dict"][key].float(), atol=1e-6), key
    ma, mb = pd.read_csv(full.run_dir / "metrics.csv"), pd.read_csv(cut.run_dir / "metrics.csv")
    pd.testing.assert_frame_equal(ma, mb, check_exact=False, atol=1e-5)


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    assert "not a podium run folder" in capsys.readouterr().err
