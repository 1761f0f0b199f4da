"""`train.max_time`: a wall-clock limit that ends a run on a finished schedule.

Lightning's ``max_time`` alone stops training wherever the clock runs out: the
cosine schedule is cut mid-way and the last epochs never see a small learning
rate. `PlanToDeadline` measures each epoch (training, validation and
checkpointing), and after each one sets the number of epochs to the last one
that fits in what is left, rebuilding the schedule for that length
(`Classifier.replan`). Lightning's ``max_time`` stays as the hard stop for
when an epoch takes far longer than measured.
"""
from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

from lightning.pytorch.callbacks import Callback

#: planned epochs are timed at this multiple of the measured epoch time (load varies between epochs)
SAFETY = 1.05

#: the clock epochs are timed with (tests replace it to give epochs any duration)
CLOCK: Callable[[], float] = time.monotonic


def epochs_that_fit(remaining_s: float, epoch_s: float, *, done: int, upper: int, safety: float = SAFETY) -> int:
    """Total epochs (at least ``done``, at most ``upper``) when ``remaining_s`` is left after ``done``
    epochs of ``epoch_s`` each."""
    more = math.floor(max(remaining_s, 0.0) / (epoch_s * safety)) if epoch_s > 0 else upper
    return max(done, min(upper, done + more))


def typical_epoch(times: list[float]) -> float:
    """The epoch time to plan with: the first epoch also fills caches and starts workers, so it
    counts only until later epochs have been measured."""
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


class PlanToDeadline(Callback):
    """Re-plan the run's length after every epoch so it ends within ``seconds`` on its schedule's end.

    ``clock`` is injectable so tests can give epochs any duration. The state
    (time used, epoch times, planned length) is saved in checkpoints: a resumed
    run keeps counting from where it stopped, as Lightning's own timer does.
    """

    def __init__(self, seconds: float, upper_epochs: int, clock: Callable[[], float] | None = None):
        self.seconds, self.upper = float(seconds), int(upper_epochs)
        self.clock = clock or (lambda: CLOCK())
        self.used = 0.0            # seconds of training before the current fit (resumed runs)
        self.epoch_times: list[float] = []
        self.planned: int | None = None
        self._fit_start = self._epoch_start = 0.0

    @property
    def state_key(self) -> str:
        return "PlanToDeadline"

    def elapsed(self) -> float:
        return self.used + self.clock() - self._fit_start

    def on_train_start(self, trainer, pl_module) -> None:
        self._fit_start = self.clock()
        if self.planned is not None and self.planned != trainer.fit_loop.max_epochs:
            pl_module.replan(self.planned)  # a resumed run continues on the plan it was following

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self.clock()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.epoch_times.append(self.clock() - self._epoch_start)
        done = trainer.current_epoch + 1
        total = epochs_that_fit(self.seconds - self.elapsed(), typical_epoch(self.epoch_times), done=done,
                                upper=self.upper)
        if total != trainer.fit_loop.max_epochs:
            pl_module.replan(total)
        self.planned = total

    def state_dict(self) -> dict:
        return {"used": self.elapsed() if self._fit_start else self.used, "epoch_times": list(self.epoch_times),
                "planned": self.planned}

    def load_state_dict(self, state: dict) -> None:
        self.used = float(state.get("used", 0.0))
        self.epoch_times = [float(t) for t in state.get("epoch_times", [])]
        self.planned = state.get("planned")
