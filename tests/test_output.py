"""What a user sees: quiet by default, plain and unbroken in a log file (issue 19).

The commands run through the CLI with stdout and stderr captured at the file descriptors (not a
terminal), as `podium train ... > train.log 2>&1` records them.
"""
import logging
import re
import warnings

import yaml
from conftest import COLORS, fast_overrides, make_folder

from podium.cli import main
from podium.quiet import epoch_line, quiet_libraries, verbosity
from podium.schema import parse_overrides

NOISE = ("GPU available", "TPU available", "Tip:", "litlogger", "Loading `train_dataloader`", "LeafSpec",
         "exists and is not empty", "TqdmWarning", "`Trainer.fit` stopped")


def run_to_file(args: list[str], capfd) -> str:
    """The command's stdout and stderr as a file records them (pytest's capture is not a terminal)."""
    code = main(args)
    out, err = capfd.readouterr()
    text = out + err
    assert code == 0, text
    return text


def assert_clean(text: str) -> None:
    for noise in NOISE:
        assert noise not in text, f"{noise!r} in:\n{text}"
    # a long path or a table cell is never wrapped mid-token into the file
    assert not re.search(r"\.parq\s*\n|COMPLET\s*\n|\n\s*uet\b", text), text


def test_train_to_a_file_is_one_plain_line_per_epoch_without_banners(tmp_path, capfd):
    data = make_folder(tmp_path / "data")
    args = ["train", *fast_overrides(tmp_path, **{"data.train": str(data), "train.epochs": 3,
                                                  "output.report": "false",
                                                  "output.name": "a-run-name-long-enough-to-wrap-at-eighty-" * 2})]
    text = run_to_file(args, capfd)
    assert_clean(text)
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"], text
    assert all("train_loss" in line and "val_f1" in line for line in epochs)
    # the result table numbers the best epoch as the lines above it do (it said "epoch 1" for "epoch 2/3")
    f1 = {line.split()[1].split("/")[0]: float(line.split("val_f1 ")[1].split()[0]) for line in epochs}
    shown = re.search(r"best val_f1 \(epoch (\d+)\)", text)
    assert shown and f1[shown.group(1)] == max(f1.values()), text
    run_dir = next((tmp_path / "runs dir").iterdir())
    # the full path of the run is on one line of the results table, not folded at 80 columns
    assert any(str(run_dir) in line for line in text.splitlines()), text

    quiet = run_to_file([*args, "--quiet", "train.epochs=1"], capfd)
    assert not [line for line in quiet.splitlines() if line.startswith(("epoch ", "run folder"))], quiet
    assert "val macro F1" in quiet  # results still shown

    # --verbose brings Lightning's own messages back. They are read from Lightning's logger, not
    # the captured text: whether Lightning prints them itself or hands them to the root logger
    # depends on which handlers existed when it was first imported (pytest's own, in a full run).
    verbose_records = _lightning_messages(lambda: run_to_file([*args, "--verbose", "train.epochs=1"], capfd))
    assert any("GPU available" in m for m in verbose_records), _logging_state(verbose_records)
    quiet_records = _lightning_messages(lambda: run_to_file([*args, "train.epochs=1"], capfd))
    assert not any("GPU available" in m for m in quiet_records), quiet_records


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _lightning_messages(action) -> list[str]:
    """The messages Lightning's rank-zero logger lets through while ``action`` runs.

    That logger is one global of lightning_utilities, named after whichever of Lightning's
    rank_zero modules (pytorch's or fabric's) was imported last, so it is taken from there."""
    import lightning.pytorch  # noqa: F401  (sets the rank-zero logger on import)
    from lightning_utilities.core import rank_zero

    handler = _Records()
    logger = rank_zero.log
    logger.addHandler(handler)
    try:
        action()
    finally:
        logger.removeHandler(handler)
    return handler.messages


def test_tune_to_a_file_prints_the_table_once_at_full_width(tmp_path, capfd):
    data = make_folder(tmp_path / "data")
    raw = parse_overrides(fast_overrides(tmp_path, **{"data.train": str(data), "output.report": "false"}))
    raw["search"] = {"train.lr": {"low": 1e-3, "high": 0.2, "log": True}}
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    text = run_to_file(["tune", str(cfg), "--trials", "2", "--study", "s", "--dir", str(tmp_path / "st")],
                       capfd)
    assert_clean(text)
    assert text.count("┏") == 1, text  # one table, not one per redraw
    assert re.search(r"┘\n+best trial \d", text), text  # the summary starts on its own line
    assert sum("COMPLETE" in line for line in text.splitlines()) == 2


def test_cv_to_a_file_is_one_plain_line_per_epoch_per_fold_and_quiet_prints_results_only(tmp_path, capfd):
    """Issue 19 names cv beside train and tune: every fold repeated Lightning's banners and tips."""
    data = make_folder(tmp_path / "data", {c: 6 for c in COLORS})
    args = ["cv", *fast_overrides(tmp_path, **{"data.train": str(data), "train.epochs": 2,
                                               "output.report": "false", "output.name": "cv"}), "--folds", "2"]
    text = run_to_file(args, capfd)
    assert_clean(text)
    epochs = [line.split()[1] for line in text.splitlines() if line.startswith("epoch ")]
    assert epochs == ["1/2", "2/2"] * 2, text  # one line per epoch of each fold, no redraws
    assert "\r" not in text and "fold 1:" in text and "CV macro F1" in text

    quiet = run_to_file([*args, "--quiet", "output.name=cv-quiet", "train.epochs=1"], capfd)
    assert_clean(quiet)
    assert not [line for line in quiet.splitlines() if line.startswith(("epoch ", "fold ", "run folder"))], quiet
    assert "CV macro F1" in quiet  # the results table still shown


def test_tune_quiet_prints_the_study_result_without_the_trials_table(tmp_path, capfd):
    data = make_folder(tmp_path / "data")
    raw = parse_overrides(fast_overrides(tmp_path, **{"data.train": str(data), "output.report": "false"}))
    raw["search"] = {"train.lr": {"low": 1e-3, "high": 0.2, "log": True}}
    cfg = tmp_path / "tune.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
    text = run_to_file(["tune", str(cfg), "--trials", "1", "--study", "q", "--dir", str(tmp_path / "st"), "--quiet"],
                       capfd)
    assert_clean(text)
    assert "┏" not in text and not [line for line in text.splitlines() if line.startswith("epoch ")], text
    assert re.search(r"^best trial 0: ", text, re.M), text


def test_quiet_libraries_restores_levels_and_filters_and_keeps_other_warnings():
    import lightning.pytorch  # noqa: F401

    lg = logging.getLogger("lightning.pytorch")
    before_level, before_filters = lg.level, list(warnings.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_libraries():
            assert lg.level == logging.WARNING
            warnings.warn("Checkpoint directory /x exists and is not empty.", UserWarning, stacklevel=1)
            warnings.warn("podium: something the user must see", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["podium: something the user must see"]
    assert lg.level == before_level and warnings.filters == before_filters
    lg.setLevel(logging.ERROR)  # a process that had turned Lightning down
    try:
        with verbosity("verbose"), quiet_libraries():
            assert lg.level == logging.INFO  # --verbose: Lightning's INFO lines come through
        assert lg.level == logging.ERROR
    finally:
        lg.setLevel(before_level)


def test_progress_bar_counts_epochs_from_one():
    """The terminal bar counts as the plain lines do: "Epoch 2/2" for the last of two epochs
    (Lightning's own bar says "Epoch 1/1")."""
    from types import SimpleNamespace

    from podium.quiet import make_progress_bar

    bar = make_progress_bar()
    bar._trainer = SimpleNamespace(max_epochs=2)
    assert bar._get_train_description(1).strip() == "Epoch 2/2"


def test_epoch_line_puts_training_losses_first():
    line = epoch_line(2, 15, {"val_f1": 0.8123, "train_loss": 0.41})
    assert line == "epoch 3/15 train_loss 0.4100 val_f1 0.8123"


def test_eda_to_a_file_has_no_progress_redraws(tmp_path, capfd):
    data = make_folder(tmp_path / "data")
    text = run_to_file(["eda", str(data), "--out", str(tmp_path / "eda")], capfd)
    assert_clean(text)
    assert "scanning images" not in text and "\r" not in text  # the bar is for terminals only
    assert text.startswith("EDA report: ") and "paste into your config:" in text and "#   mean: [" in text
    assert "class_weights:" not in text  # 12 images of each colour: balanced, no weights suggested


def _logging_state(records: list[str]) -> str:
    """What decides whether Lightning logs (for a failure message): its loggers' levels and rank."""
    from lightning_utilities.core import rank_zero

    levels = {name: logging.getLogger(name).getEffectiveLevel()
              for name in ("lightning", "lightning.pytorch", "lightning.fabric", rank_zero.log.name)}
    return f"records {records}; levels {levels}; disabled {logging.root.manager.disable}; " \
           f"rank {getattr(rank_zero.rank_zero_only, 'rank', None)}"
