"""`podium cv`, `cv-gather`, `cv gather`, `ensemble`, `average-checkpoints` end to end, in-process."""
import pandas as pd
from test_cv import make_images, skip_html_report, tiny_overrides

from podium import cli


def test_cv_one_fold_per_call_then_gather_and_ensemble(tmp_path, capsys, monkeypatch):
    skip_html_report(monkeypatch)
    data = make_images(tmp_path / "train", per_class=6)
    runs = tmp_path / "runs"
    args = tiny_overrides(data, runs, name="cvx", epochs=1)
    run = runs / "cvx"

    assert cli.main(["cv", *args, "--folds", "2", "--fold", "0", "--quiet"]) == 0
    assert (run / "folds.csv").is_file() and (run / "fold0" / "summary.json").is_file()
    assert not (run / "fold1").exists() and not (run / "oof_predictions.parquet").exists()
    out = capsys.readouterr().out  # the CLI, not the library, says which folds are left and what to run
    assert "folds still to train" in out and "cv-gather" in out and "1" in out.split("folds still to train")[1].split("\n")[0]
    assert cli.main(["cv-gather", str(run)]) == 2
    assert "fold 1 missing" in capsys.readouterr().err

    assert cli.main(["cv", *args, "--folds", "2", "--fold", "1", "--quiet"]) == 0  # last fold: gathers itself
    oof = pd.read_parquet(run / "oof_predictions.parquet")
    assert len(oof) == 18 and set(oof["fold"]) == {0, 1}
    capsys.readouterr()
    assert cli.main(["cv", "gather", str(run)]) == 0
    assert "CV macro F1" in capsys.readouterr().out

    assert cli.main(["ensemble", str(run), str(run / "oof_predictions.parquet"), "--method", "weighted",
                     "--out", str(tmp_path / "ens")]) == 0
    out = capsys.readouterr().out
    assert "ensemble (weighted)" in out
    assert "does NOT beat its best member" in out  # two copies of one member: nothing to gain, said plainly
    scores = pd.read_csv(tmp_path / "ens" / "scores.csv")
    assert list(scores["kind"]) == ["member", "member", "ensemble"] and scores["macro_f1"].nunique() == 1


def test_cv_user_errors_exit_2_with_a_message(tmp_path, capsys):
    data = make_images(tmp_path / "train", per_class=3)
    args = tiny_overrides(data, tmp_path / "runs")
    assert cli.main(["cv", *args, "--folds", "2", "--fold", "5"]) == 2
    assert "--fold 5 is out of range" in capsys.readouterr().err
    assert cli.main(["cv-gather", str(tmp_path)]) == 2
    assert "not a cross-validation folder" in capsys.readouterr().err
    assert cli.main(["average-checkpoints", str(tmp_path), "--last", "2"]) == 2
    assert "no per-epoch checkpoints" in capsys.readouterr().err
    assert cli.main(["ensemble", str(tmp_path / "nope.parquet")]) == 2
    assert "neither a cv folder" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing created by refused commands
