"""End to end through the CLI, in-process: train -> predict -> evaluate, and the error paths."""
import json
import shutil

import pandas as pd
import pytest
import torch
from conftest import fast_overrides, make_folder

from podium.cli import main
from podium.errors import PodiumError
from podium.schema import load_config


def _train(tmp_path, image_folder, *extra, name="exp"):
    args = ["train", *fast_overrides(tmp_path), f"data.train={image_folder}", f"output.name={name}", "--quiet", *extra]
    assert main(args) == 0


@pytest.fixture
def trained_run(tmp_path, image_folder):
    _train(tmp_path, image_folder, "train.epochs=2")
    return tmp_path / "runs dir" / "exp"


def test_train_writes_a_complete_run_folder(trained_run):
    files = {p.name for p in trained_run.iterdir()}
    for name in ("config.yaml", "classes.json", "best.ckpt", "last.ckpt", "metrics.csv", "summary.json",
                 "val_predictions.parquet", "per_class.csv", "confusion_matrix.csv", "confusion_matrix.png", "split.csv"):
        assert name in files, name
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["monitor"] == "val_f1" and summary["seed"] == 42
    assert {"torch", "timm", "lightning"} <= set(summary["versions"])
    metrics = pd.read_csv(trained_run / "metrics.csv")
    assert list(metrics["epoch"]) == [0, 1] and metrics["val_f1"].notna().all()
    assert json.loads((trained_run / "classes.json").read_text())["classes"] == ["cat", "dog", "fox"]
    val = pd.read_parquet(trained_run / "val_predictions.parquet")
    assert list(val.columns[:4]) == ["id", "path", "target", "prediction"]
    assert val[["cat", "dog", "fox"]].sum(axis=1).round(4).eq(1).all()


def test_predict_and_evaluate(trained_run, tmp_path, val_folder, capsys):
    assert main(["predict", str(trained_run), "--data", str(val_folder), "--quiet"]) == 0
    out = trained_run / "predictions" / "val"
    probs = pd.read_parquet(out / "probabilities.parquet")
    sub = pd.read_csv(out / "submission.csv")
    assert len(probs) == len(sub) == 12 and list(probs.columns) == ["id", "cat", "dog", "fox"]
    assert set(sub["label"]) <= {"cat", "dog", "fox"}
    # a second prediction never overwrites the first
    assert main(["predict", str(trained_run), "--data", str(val_folder), "--quiet"]) == 0
    assert (trained_run / "predictions" / "val-2" / "submission.csv").exists()
    assert main(["evaluate", str(trained_run), "--data", str(val_folder), "--quiet"]) == 0
    metrics = json.loads((trained_run / "evaluations" / "val" / "metrics.json").read_text())
    assert 0 <= metrics["f1"] <= 1 and metrics["n_images"] == 12
    assert "macro F1" in capsys.readouterr().out


def test_submission_format_options(tmp_path, image_folder, val_folder):
    _train(tmp_path, image_folder, "output.submission.id_column=image", "output.submission.label_column=y",
           "output.submission.label_format=index", "output.submission.id_format=stem")
    run = tmp_path / "runs dir" / "exp"
    assert main(["predict", str(run), "--data", str(val_folder), "--out", str(tmp_path / "pred out"), "--quiet"]) == 0
    sub = pd.read_csv(tmp_path / "pred out" / "submission.csv")
    assert list(sub.columns) == ["image", "y"] and sub["y"].between(0, 2).all()
    assert sub["image"].iloc[0] == "cat_000"
    # the one output rule: a taken --out gets the next free sibling, the first submission stays as it was
    before = (tmp_path / "pred out" / "submission.csv").read_bytes()
    assert main(["predict", str(run), "--data", str(val_folder), "--out", str(tmp_path / "pred out"), "--quiet"]) == 0
    assert (tmp_path / "pred out-2" / "submission.csv").is_file()
    assert (tmp_path / "pred out" / "submission.csv").read_bytes() == before


def test_existing_run_gets_a_new_folder(tmp_path, image_folder):
    _train(tmp_path, image_folder)
    _train(tmp_path, image_folder)
    assert (tmp_path / "runs dir" / "exp").is_dir() and (tmp_path / "runs dir" / "exp-2" / "best.ckpt").is_file()


def test_dry_run_writes_nothing(tmp_path, image_folder):
    assert main(["train", *fast_overrides(tmp_path), f"data.train={image_folder}", "--dry-run", "--quiet"]) == 0
    assert not (tmp_path / "runs dir").exists()


def test_user_errors_exit_2_without_traceback(tmp_path, image_folder, capsys):
    assert main(["train", *fast_overrides(tmp_path), f"data.train={tmp_path / 'missing'}", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "data folder not found" in err and "Traceback" not in err
    assert main(["train", *fast_overrides(tmp_path), "model.name=resnet181", f"data.train={image_folder}"]) == 2
    assert "Closest timm models: resnet18" in capsys.readouterr().err
    assert not (tmp_path / "runs dir").exists()  # nothing half-created
    with pytest.raises(PodiumError, match="data folder not found"):  # --debug: the error itself, not exit 2
        main(["train", *fast_overrides(tmp_path), f"data.train={tmp_path / 'missing'}", "--debug"])


def test_evaluate_with_unseen_labels_and_bad_checkpoints(trained_run, tmp_path, capsys):
    other = make_folder(tmp_path / "other", {"cat": 2, "dog": 2})
    (other / "wolf").mkdir()
    shutil.copy(other / "cat" / "cat_000.png", other / "wolf" / "w.png")
    assert main(["evaluate", str(trained_run), "--data", str(other), "--quiet"]) == 2
    assert "never saw: wolf" in capsys.readouterr().err
    # a checkpoint of another architecture / class count
    ckpt = torch.load(trained_run / "best.ckpt", weights_only=False)
    ckpt["hyper_parameters"]["classes"] = ["a", "b"]
    torch.save(ckpt, tmp_path / "wrong.ckpt")
    assert main(["predict", str(trained_run), "--data", str(other), "--checkpoint", str(tmp_path / "wrong.ckpt")]) == 2
    assert "trained on 2 classes" in capsys.readouterr().err
    ckpt = torch.load(trained_run / "best.ckpt", weights_only=False)
    ckpt["state_dict"] = {k: v for k, v in list(ckpt["state_dict"].items())[:-2]}
    torch.save(ckpt, tmp_path / "cut.ckpt")
    assert main(["predict", str(trained_run), "--data", str(other), "--checkpoint", str(tmp_path / "cut.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "does not fit model" in err and "2 weight(s) missing" in err, err  # named, not torch's key dump


def test_bad_images_skip_is_reported(tmp_path):
    root = make_folder(tmp_path / "d", {"cat": 8, "dog": 8, "fox": 8})
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    assert main(["train", *fast_overrides(tmp_path), f"data.train={root}", "--quiet"]) == 2
    assert main(["train", *fast_overrides(tmp_path), f"data.train={root}", "data.on_bad_image=skip", "--quiet"]) == 0


@pytest.mark.parametrize("extra", [
    ["train.loss=focal", "train.optimizer=adamw", "train.scheduler=onecycle", "train.sampler=balanced",
     "train.channels_last=true"],
    ["train.scheduler=multistep", "train.milestones=[1]"],
    ["train.scheduler=none", "train.warmup_epochs=1"],
    ["train.loss=f1", "train.optimizer=adam", "train.scheduler=plateau", "train.warmup_epochs=0.5", "train.ema=true",
     "model.freeze_backbone_epochs=1", "train.class_weights=auto", "augment.backend=torchvision", "augment.preset=strong"],
    ["train.loss=ce", "train.scheduler=step", "train.accumulate_grad_batches=2", "train.gradient_clip_val=1.0",
     "train.early_stopping_patience=1", "augment.normalize=dataset", "data.cache=memory",
     "augment.train_ops=[{name: HorizontalFlip, p: 0.5}, {name: Affine, rotate: [-5, 5]}]"],
])
def test_training_options_run(tmp_path, image_folder, extra):
    _train(tmp_path, image_folder, "train.epochs=2", *extra)


def test_csv_training_with_groups(tmp_path, image_folder):
    rows = []
    for i, p in enumerate(sorted(image_folder.rglob("*.png"))):
        rows.append({"file": str(p.relative_to(image_folder)), "cls": p.parent.name, "person": f"p{i // 2}"})
    csv = tmp_path / "train.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    _train(tmp_path, csv, "data.path_column=file", "data.label_column=cls", "data.group_column=person",
           f"data.root={image_folder}")
    split = pd.read_csv(tmp_path / "runs dir" / "exp" / "split.csv")
    groups = split.groupby("group")["split"].nunique()
    assert (groups == 1).all()


def test_crop_preprocessing_is_cached_and_used(tmp_path, image_folder, val_folder):
    crop = ["crop.detector=center", "crop.options={fraction: 0.8}", "crop.aspect=null",
            f"crop.cache_dir={tmp_path / 'crops'}"]
    assert main(["preprocess", "crop", *fast_overrides(tmp_path), f"data.train={image_folder}", *crop]) == 0
    first = sorted((tmp_path / "crops").rglob("*.jpg"))
    assert len(first) == 36
    _train(tmp_path, image_folder, *crop)
    split = pd.read_csv(tmp_path / "runs dir" / "exp" / "split.csv")
    assert split["path"].str.startswith(str(tmp_path / "crops")).all()
    assert sorted((tmp_path / "crops").rglob("*.jpg")) == first  # reused, not rebuilt
    assert main(["predict", str(tmp_path / "runs dir" / "exp"), "--data", str(val_folder), "--quiet"]) == 0


def test_help_has_examples(capsys):
    for command in (["train"], ["predict"], ["evaluate"], ["demo"], ["eda"], ["report"], ["preprocess", "crop"],
                    ["data", "synth-mask"], ["submission", "check"], ["config", "show"]):
        with pytest.raises(SystemExit) as exit_info:
            main([*command, "--help"])
        assert exit_info.value.code == 0
        assert "example" in capsys.readouterr().out, command


def test_truncated_image_fails_naming_it_or_is_skipped(tmp_path):
    import io

    from PIL import Image

    root = make_folder(tmp_path / "d", {"cat": 8, "dog": 8, "fox": 8}, ext="jpg")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, "JPEG")
    (root / "cat" / "truncated.jpg").write_bytes(buf.getvalue()[:300])
    common = [*fast_overrides(tmp_path), f"data.train={root}", "data.val_fraction=0.5", "--quiet"]
    assert main(["train", *common, "data.on_bad_image=skip"]) == 0
    summary = json.loads((tmp_path / "runs dir" / "exp" / "summary.json").read_text())
    assert summary["train_images"] + summary["val_images"] == 24 and summary["skipped_images"] == 1


def test_train_writes_report_and_report_command(trained_run, capsys):
    html = (trained_run / "report.html").read_text()
    for heading in ("Confusion matrix", "Per-class", "Training curves"):
        assert heading in html, heading
    assert (trained_run / "suspect_labels.csv").exists()
    assert main(["report", str(trained_run), "--gradcam"]) == 0
    assert "suspect labels" in capsys.readouterr().out
    wrong = pd.read_csv(trained_run / "suspect_labels.csv")
    assert ("Grad-CAM" in (trained_run / "report.html").read_text()) == (len(wrong) > 0)


def test_predict_applies_logit_biases(trained_run, tmp_path, val_folder, capsys):
    biases = tmp_path / "logit_biases.json"
    biases.write_text(json.dumps({"classes": ["cat", "dog", "fox"], "biases": [0.0, 0.0, 50.0]}))
    assert main(["predict", str(trained_run), "--data", str(val_folder), "--biases", str(biases),
                 "--out", str(tmp_path / "biased"), "--quiet"]) == 0
    assert set(pd.read_csv(tmp_path / "biased" / "submission.csv")["label"]) == {"fox"}
    biases.write_text(json.dumps({"classes": ["a", "b", "c"], "biases": [0.0, 0.0, 0.0]}))
    assert main(["predict", str(trained_run), "--data", str(val_folder), "--biases", str(biases), "--quiet"]) == 2
    assert "not the model's" in capsys.readouterr().err


def test_tta_auto_adds_hflip_only_when_training_flipped():
    from podium.inference.views import resolve_tta

    flipped = load_config(None, ["augment.preset=light"])
    assert resolve_tta(None, flipped) == ["identity", "hflip"]
    assert resolve_tta(None, load_config(None, ["augment.preset=none"])) is None
    assert resolve_tta(["none"], flipped) is None
    assert resolve_tta(["scale_0.9"], flipped) == ["identity", "scale_0.9"]
    ops = load_config(None, ["augment.train_ops=[{name: Affine, rotate: [-5, 5]}]"])
    assert resolve_tta(None, ops) is None


def test_disk_cache_fills_during_training_and_is_published(tmp_path, image_folder):
    cache_dir = tmp_path / "cache"
    _train(tmp_path, image_folder, "data.cache=disk", f"data.cache_dir={cache_dir}", "train.epochs=2",
           "train.batch_size=9")  # 27 training images: every row is read in each epoch
    published = sorted(p.name for p in cache_dir.glob("*.json"))
    assert len(published) == 2  # train and validation caches, ready for the next run
    assert not list(cache_dir.glob("*.partial.npy"))
    _train(tmp_path, image_folder, "data.cache=disk", f"data.cache_dir={cache_dir}", name="again")
    assert sorted(p.name for p in cache_dir.glob("*.json")) == published  # reused, not rebuilt


def test_epoch_checkpoints_can_be_averaged(tmp_path, image_folder):
    _train(tmp_path, image_folder, "train.epochs=2", "train.save_epoch_checkpoints=true", "output.report=false")
    run = tmp_path / "runs dir" / "exp"
    assert len(list((run / "epochs").glob("*.ckpt"))) == 2
    assert main(["average-checkpoints", str(run), "--last", "2", "--out", str(tmp_path / "avg.ckpt")]) == 0
    assert (tmp_path / "avg.ckpt").is_file()


def test_run_tta_merge_is_the_default_of_predict(tmp_path, image_folder, capsys):
    """predict.tta_merge from the run's config drives `podium predict`; --tta-merge overrides it."""
    import pandas as pd

    runs = tmp_path / "runs dir"
    args = fast_overrides(tmp_path, **{"predict.tta_merge": "gmean", "predict.tta": "[hflip,scale_0.8]",
                                       "output.report": "false"})
    assert main(["train", *args, f"data.train={image_folder}", "--quiet"]) == 0
    run = next(runs.iterdir())
    outs = {}
    for name, extra in (("run", []), ("gmean", ["--tta-merge", "gmean"]), ("mean", ["--tta-merge", "mean"])):
        assert main(["predict", str(run), "--data", str(image_folder), "--out", str(tmp_path / name), "--quiet",
                     *extra]) == 0
        outs[name] = pd.read_parquet(tmp_path / name / "probabilities.parquet").drop(columns="id").to_numpy()
    assert (outs["run"] == outs["gmean"]).all()
    assert abs(outs["run"] - outs["mean"]).max() > 1e-6
