"""train.max_time: the run is re-planned from measured epoch times and ends on its schedule's floor."""
import pandas as pd
import pytest
from lightning.pytorch.callbacks import Callback

from podium.durations import lightning_duration, parse_duration
from podium.errors import PodiumError
from podium.model import timelimit
from podium.model.timelimit import epochs_that_fit, typical_epoch
from podium.schema import load_config
from tests.conftest import fast_overrides


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("2h", 7200), ("1h30m", 5400), ("45", 45),
                                           ("00:01:00:05", 3605), ("1.5h", 5400), (120, 120)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "30 minutes later", "-5m", "0", "1h30"])
def test_bad_durations_name_the_key(text):
    with pytest.raises(PodiumError, match="train.max_time.*write it like"):
        load_config(None, [f"train.max_time={text}"])


def test_lightning_duration_rounds_up():
    assert lightning_duration(3605.2) == "00:01:00:06"


def test_epochs_that_fit():
    assert epochs_that_fit(100, 10, done=1, upper=50) == 10  # 100 s left / (10 s x 1.05) -> 9 more
    assert epochs_that_fit(100, 10, done=1, upper=5) == 5
    assert epochs_that_fit(5, 10, done=3, upper=50) == 3   # nothing more fits: stop now
    assert typical_epoch([30, 10, 12, 11]) == 11  # the first (cache-filling) epoch is not typical


class FakeMinutes(Callback):
    """Every training batch takes one (fake) minute on the run's clock."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def on_train_batch_end(self, *args, **kwargs):
        self.now += 60.0


def test_max_time_ends_the_run_on_the_schedule_floor(tmp_path, image_folder, monkeypatch):
    from podium.model.training import train

    clock = FakeMinutes()
    monkeypatch.setattr(timelimit, "CLOCK", clock)
    # 28 training images / batch 7 = 4 batches = 4 fake minutes an epoch; 17 minutes hold 4 epochs, not 50
    cfg = load_config(None, [*fast_overrides(tmp_path, **{"train.batch_size": 7, "train.epochs": 50,
                                                          "train.min_lr": 1e-4, "output.report": "false"}),
                             f"data.train={image_folder}", "train.max_time=17m", "train.optimizer=adam",
                             "train.lr=0.01"])
    result = train(cfg, progress=False, log=lambda *a: None, callbacks=[clock])
    metrics = pd.read_csv(result.run_dir / "metrics.csv")
    assert len(metrics) == 4 and result.summary["planned_epochs"] == 4
    assert result.summary["epoch_times_s"] == [240.0] * 4 and result.summary["max_time_s"] == 1020
    assert metrics["lr"].iloc[-1] == pytest.approx(1e-4)  # the cosine reached its floor on the last epoch
    assert metrics["lr"].is_monotonic_decreasing and metrics["lr"].iloc[-2] > 1e-3


def test_max_time_is_lightnings_hard_stop(tmp_path):
    from lightning.pytorch.callbacks import Timer

    from podium.model.engine import build_callbacks, build_trainer

    cfg = load_config(None, [*fast_overrides(tmp_path), "train.max_time=1h30m"])
    trainer = build_trainer(cfg, tmp_path, callbacks=build_callbacks(cfg, tmp_path), progress=False)
    timers = [c for c in trainer.callbacks if isinstance(c, Timer)]
    assert len(timers) == 1 and timers[0]._duration == 5400
    assert any(isinstance(c, timelimit.PlanToDeadline) for c in trainer.callbacks)
