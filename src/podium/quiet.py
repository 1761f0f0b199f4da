"""How chatty podium is: one owner for library noise and for plain (file-friendly) output.

Lightning announces the hardware ("GPU available ...", "TPU available ..."), advertises a
cloud logger ("Tip: ... litlogger"), says it is "Loading `train_dataloader`" and warns that a
fresh run folder "exists and is not empty" (it holds the run's config); torch and tqdm add
deprecation/notebook warnings. None of it helps a podium user, so `quiet_libraries` silences
exactly these at their source (Lightning's loggers, targeted warning filters) for the length of
a ``with`` block and restores every level and filter afterwards: no process-wide state is left
behind, and warnings podium or the user's code raise still show. ``verbosity("verbose")``
(the CLI's ``--verbose``) turns the silencing off for its block and lets Lightning's INFO lines
through even where the process had set its loggers higher.

`plain_output` says whether output goes to a file or pipe rather than a terminal: then
progress is one plain line per epoch (`EpochLines`) and rich tables are rendered at full width.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import sys
import warnings
from collections.abc import Iterator

#: "quiet" (results and errors), "normal" (default) or "verbose" (libraries' own messages too)
_LEVEL: contextvars.ContextVar[str] = contextvars.ContextVar("podium_verbosity", default="normal")

#: Lightning's loggers whose INFO lines are banners and tips (warnings and errors still pass)
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")

#: (message regex, category name) of known-harmless library warnings
NOISY_WARNINGS = (
    r".*Checkpoint directory .* exists and is not empty",  # a fresh run folder holds its config
    r".*does not have many workers",  # podium chooses data.num_workers deliberately
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",  # torch pytree, raised inside Lightning
    r"IProgress not found",  # tqdm in a notebook without ipywidgets
    r".*The number of training batches .* is smaller than the logging interval",
)


def current() -> str:
    """The verbosity in effect: quiet, normal or verbose."""
    return _LEVEL.get()


@contextlib.contextmanager
def verbosity(level: str) -> Iterator[None]:
    """Run a block at ``level`` (quiet/normal/verbose); the previous level comes back afterwards."""
    if level not in ("quiet", "normal", "verbose"):
        raise ValueError(f"verbosity must be quiet, normal or verbose, not {level!r}")
    token = _LEVEL.set(level)
    try:
        yield
    finally:
        _LEVEL.reset(token)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence Lightning's banners/tips and the known-harmless warnings for this block only.

    Levels are set after Lightning is imported (its import sets ``lightning.pytorch`` to INFO),
    and restored on exit with the warning filters, so nothing outlives the block.
    """
    import lightning.pytorch  # noqa: F401  (its import resets its logger to INFO: set ours after)

    verbose = current() == "verbose"
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS]
    before = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        if not verbose:
            for pattern in NOISY_WARNINGS:
                warnings.filterwarnings("ignore", message=pattern)
        for lg in loggers:  # verbose: Lightning's INFO lines, whatever level the caller's process left
            lg.setLevel(logging.INFO if verbose else logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, before, strict=True):
                lg.setLevel(level)


def plain_output(stream=None) -> bool:
    """True when ``stream`` (default stdout) is not a terminal: a log file, a pipe, a notebook cell."""
    stream = stream or sys.stdout
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):
        return True


def shown_epoch(index: int) -> int:
    """The epoch number people read: 1-based, as the per-epoch lines (``epoch 3/15``), the progress
    bar, the result tables, `podium runs` and the report's curves count. Lightning, metrics.csv,
    summary.json and checkpoint names keep its 0-based index; a 2-epoch run whose best epoch was
    its last said "epoch 2/2" in its log and then "best val_f1 (epoch 1)"."""
    return int(index) + 1


def make_progress_bar():
    """Lightning's rich bar (terminals), counting epochs as `shown_epoch` does ("Epoch 2/2" for the
    last of two, where Lightning's own bar says "Epoch 1/1")."""
    from lightning.pytorch.callbacks import RichProgressBar

    class EpochBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            text = f"Epoch {shown_epoch(current_epoch)}"
            if self.trainer.max_epochs is not None:
                text += f"/{self.trainer.max_epochs}"
            return f"{text:{len(self.validation_description)}}"  # padded as Lightning does: no flicker

    return EpochBar(leave=True)


def epoch_line(epoch: int, epochs: int, metrics: dict) -> str:
    """``epoch 3/15 train_loss 0.4100 val_f1 0.8120 ...``: one line, losses first, then the rest by name."""
    names = sorted(metrics, key=lambda k: (not k.startswith("train_"), k))
    parts = [f"{k} {v:.4f}" for k, v in ((k, metrics[k]) for k in names)]
    return " ".join([f"epoch {shown_epoch(epoch)}/{epochs}", *parts])


def make_epoch_lines():
    """A Lightning callback printing `epoch_line` after each validated epoch (files and pipes)."""
    import lightning.pytorch as pl

    class EpochLines(pl.Callback):
        """One plain line per epoch instead of a redrawn progress bar (which a file records as
        wrapped fragments)."""

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            if trainer.sanity_checking or not trainer.is_global_zero:
                return
            metrics = {}
            for key, value in trainer.callback_metrics.items():
                try:
                    metrics[key] = float(value)
                except (TypeError, ValueError):
                    continue
            metrics = {k: v for k, v in metrics.items() if not k.endswith("_step") and k not in ("epoch", "step")}
            print(epoch_line(trainer.current_epoch, trainer.max_epochs or 0, metrics), flush=True)

    return EpochLines()
