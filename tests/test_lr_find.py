"""`podium lr-find`: Lightning's learning-rate finder on the config's data and model, with its plot."""
import json

import pandas as pd

from podium import cli
from tests.conftest import fast_overrides


def test_lr_find_writes_the_curve_the_plot_and_a_suggestion(tmp_path, image_folder, capsys):
    args = ["lr-find", *fast_overrides(tmp_path), f"data.train={image_folder}", "output.name=lrs",
            "--steps", "14", "--min-lr", "1e-5", "--max-lr", "1", "--quiet", "--batch-size-find"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "runs dir" / "lr_find" / "lrs"
    record = json.loads((folder / "lr_find.json").read_text())
    curve = pd.read_csv(folder / "lr_find.csv")
    assert len(curve) == 14 and curve["lr"].is_monotonic_increasing and curve["lr"].iloc[0] >= 1e-5
    assert 1e-5 <= record["suggestion"] <= 1 and (folder / "lr_find.png").stat().st_size > 5000
    assert "needs a GPU" in record["batch_note"] and record["batch_size"] == 8  # CPU: the batch size is kept
    assert f"train.lr={record['suggestion']:.3g}" in out


def test_lr_find_refuses_a_bad_range_before_any_folder(tmp_path, image_folder, capsys):
    args = ["lr-find", *fast_overrides(tmp_path), f"data.train={image_folder}", "--min-lr", "1", "--max-lr", "0.1"]
    assert cli.main(args) == 2
    assert "0 < min lr < max lr" in capsys.readouterr().err
    assert not (tmp_path / "runs dir" / "lr_find" / "exp").exists()
