"""One predictor for every kind of model: a run, a cv run (folds averaged), an ensemble folder
and an exported file predict, evaluate, export and serve through one path, with the same
probabilities from the CLI and from `podium.load`."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import fast_overrides, make_folder
from PIL import Image

import podium
from podium.cli import main
from podium.data.synth import synth_mask_dataset
from podium.errors import PodiumError
from podium.inference.predictor import load_predictor
from podium.rundir import ENSEMBLE_FILE, TEST_PROBABILITIES_FILE

CLASSES = ["cat", "dog", "fox"]


def _cv(root: Path, data: Path, name: str, *extra: str, folds: int = 2, test: Path | None = None) -> Path:
    args = ["cv", *fast_overrides(root, **{"output.report": "false", "train.lr": "0.002"}), f"data.train={data}",
            f"output.name={name}", *extra, "--folds", str(folds), "--quiet"]
    assert main(args + (["--test", str(test)] if test else [])) == 0
    return root / "runs dir" / name


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two 2-fold cv runs (32 and 24 px) and their weighted ensemble; a fold is a single run."""
    root = tmp_path_factory.mktemp("predictor")
    data = make_folder(root / "train", {c: 8 for c in CLASSES})
    flat = root / "flat"
    flat.mkdir()
    for path in sorted(make_folder(root / "labelled", {c: 3 for c in CLASSES}, seed=9).rglob("*.png")):
        shutil.copy(path, flat / path.name)
    cv = _cv(root, data, "cv")
    small = _cv(root, data, "cv24", "data.image_size=24")
    ensemble = podium.ensemble([cv, small], "weighted", out=root / "ens").dir
    return {"root": root, "cv": cv, "small": small, "single": small / "fold0", "ensemble": ensemble, "flat": flat,
            "labelled": root / "labelled"}


def _probs(table: pd.DataFrame) -> np.ndarray:
    return table.set_index("id").sort_index()[CLASSES].to_numpy()


@pytest.mark.parametrize("kind", ["cv", "ensemble"])
def test_cli_and_python_api_give_the_same_probabilities(models, kind, tmp_path):
    out = tmp_path / "cli"
    assert main(["predict", str(models[kind]), "--data", str(models["flat"]), "--out", str(out), "--quiet"]) == 0
    written = pd.read_parquet(out / "probabilities.parquet")
    model = podium.load(models[kind])
    assert model.kind == kind
    in_python = model.predict(models["flat"], out=tmp_path / "api")
    np.testing.assert_allclose(_probs(written), _probs(in_python), atol=1e-6)
    assert pd.read_csv(out / "submission.csv").shape[0] == len(list(models["flat"].iterdir()))


def test_cv_run_predicts_the_mean_of_its_folds(models, tmp_path):
    folds = [podium.predict(models["cv"] / f"fold{k}", models["flat"], out=tmp_path / f"f{k}") for k in range(2)]
    together = podium.predict(models["cv"], models["flat"], out=tmp_path / "cv")
    np.testing.assert_allclose(_probs(together), (_probs(folds[0]) + _probs(folds[1])) / 2, atol=1e-5)


def test_ensemble_applies_its_fitted_weights_to_members_of_other_sizes(models, tmp_path):
    record = json.loads((models["ensemble"] / ENSEMBLE_FILE).read_text())
    w = record["weights"]
    assert len(w) == 2 and abs(sum(w) - 1) < 1e-6
    model = podium.load(models["ensemble"])
    assert model.predictor.image_size == (32, 32)  # the largest member; the 24-px cv run resizes inside
    cv = _probs(podium.predict(models["cv"], models["flat"], out=tmp_path / "cv"))
    small = _probs(podium.predict(models["small"], models["flat"], out=tmp_path / "small"))
    ens = _probs(model.predict(models["flat"], out=tmp_path / "ens"))
    # the small member reads 32-px images resized to 24 inside the ensemble, not 24-px files: close, not equal
    np.testing.assert_allclose(ens, w[0] * cv + w[1] * small, atol=0.05)
    assert np.abs(ens - (w[0] * cv + w[1] * small)).mean() < 0.01


@pytest.mark.parametrize("kind", ["cv", "ensemble"])
def test_evaluate_any_model_on_labelled_data(models, kind):
    result = podium.evaluate(models[kind], models["labelled"])
    assert len(result.predictions) == 9 and 0 <= result.metrics["f1"] <= 1
    assert result.dir.parent == models[kind] / "evaluations" and (result.dir / "per_class.csv").is_file()
    assert main(["evaluate", str(models[kind]), "--data", str(models["labelled"]), "--quiet"]) == 0


@pytest.mark.parametrize("kind", ["cv", "ensemble"])
def test_export_is_one_onnx_graph_with_parity_and_predicts_like_the_folder(models, kind, tmp_path):
    result = podium.export(models[kind], "onnx", dynamic_batch=True)
    assert result.parity["passed"] and result.parity["max_abs_diff"] < 1e-4
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["kind"] == kind and sidecar["tta"] == [] and len(sidecar["members"]["members"]) >= 2
    exported = podium.predict(result.path, models["flat"], out=tmp_path / "onnx")
    folder = podium.predict(models[kind], models["flat"], out=tmp_path / "torch")
    np.testing.assert_allclose(_probs(exported), _probs(folder), atol=1e-4)


def test_serve_a_cv_run(models):
    from test_serve import png_bytes, serving

    predictor = load_predictor(models["cv"])
    with serving(predictor) as url:
        health = httpx.get(f"{url}/health").json()
        assert health["kind"] == "cv" and health["classes"] == 3
        answer = httpx.post(f"{url}/predict", files=[("files", ("a.png", png_bytes(1), "image/png"))]).json()
    top = answer["predictions"][0]["top"]
    expected = podium.load(models["cv"]).predict(Image.open(__import__("io").BytesIO(png_bytes(1))))
    assert top[0]["class"] == expected["prediction"].iloc[0]
    assert abs(top[0]["probability"] - float(expected[top[0]["class"]].iloc[0])) < 1e-5


def test_in_memory_images_predict_like_their_files(models, tmp_path):
    model = podium.load(models["cv"])
    files = sorted(models["flat"].iterdir())[:3]
    from_files = model.predict(models["flat"], out=tmp_path / "files").set_index("id")
    one = model.predict(Image.open(files[0]))
    assert list(one.columns) == ["id", "prediction", *CLASSES] and len(one) == 1
    arrays = model.predict([np.asarray(Image.open(f).convert("RGB")) for f in files])
    expected = from_files.loc[[f.name for f in files], CLASSES].to_numpy()
    np.testing.assert_allclose(arrays[CLASSES].to_numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(one[CLASSES].to_numpy()[0], expected[0], atol=1e-5)
    with pytest.raises(PodiumError, match="uint8"):
        model.predict(np.zeros((8, 8, 3), dtype=np.float32))


def test_tta_option_takes_effect_on_every_member(models, tmp_path):
    plain = _probs(podium.predict(models["cv"], models["flat"], tta=None, out=tmp_path / "none"))
    flipped = _probs(podium.predict(models["cv"], models["flat"], tta=["hflip", "vflip"], out=tmp_path / "tta"))
    assert np.abs(plain - flipped).max() > 1e-4
    again = _probs(podium.predict(models["cv"], models["flat"], tta=None, out=tmp_path / "none-again"))
    np.testing.assert_allclose(plain, again, atol=1e-7)  # the override does not stick to the loaded members


def test_cv_gather_predicts_a_test_set_afterwards(models, tmp_path):
    copy = Path(shutil.copytree(models["cv"], tmp_path / "cv"))
    assert not (copy / TEST_PROBABILITIES_FILE).exists()
    assert main(["cv-gather", str(copy), "--test", str(models["flat"]), "--quiet"]) == 0
    test = pd.read_parquet(copy / TEST_PROBABILITIES_FILE)
    direct = podium.predict(models["cv"], models["flat"], out=tmp_path / "direct")
    np.testing.assert_allclose(_probs(test), _probs(direct), atol=1e-6)
    assert (copy / "submission.csv").is_file()


def test_prediction_csv_needs_only_its_path_column(models, tmp_path):
    """A model trained on a grouped CSV (data.group_column) reads an unlabelled CSV without that column."""
    from podium.data.samples import prediction_samples

    pd.DataFrame({"path": [str(p) for p in sorted(models["flat"].iterdir())]}).to_csv(tmp_path / "test.csv", index=False)
    cfg = podium.config(None, "data.group_column=person", "data.label_column=label")
    frame = prediction_samples(cfg, tmp_path / "test.csv", competition=False)
    assert len(frame) == len(list(models["flat"].iterdir())) and "group" not in frame.columns
    with pytest.raises(PodiumError, match="lacks column"):  # training data still needs its groups
        podium.eda(tmp_path / "test.csv", "data.group_column=person")


def test_outputs_are_never_overwritten(models, tmp_path):
    out = tmp_path / "out"
    first = podium.predict(models["cv"], models["flat"], out=out)
    second = podium.predict(models["cv"], models["flat"], out=out)
    assert Path(first.attrs["out_dir"]) == out and Path(second.attrs["out_dir"]) == tmp_path / "out-2"
    (tmp_path / "file").write_text("x")
    with pytest.raises(PodiumError, match="is a file"):
        podium.predict(models["cv"], models["flat"], out=tmp_path / "file" / "sub")


def test_models_that_cannot_predict_new_images_say_why(models, tmp_path):
    rank = podium.ensemble([models["cv"], models["small"]], "rank", out=tmp_path / "rank").dir
    with pytest.raises(PodiumError, match="rank averaging ranks each member over the whole test set"):
        podium.load(rank)
    table = podium.ensemble([models["cv"] / "oof_predictions.parquet", models["small"]], "soft", out=tmp_path / "t").dir
    with pytest.raises(PodiumError, match="prediction table"):
        podium.load(table)
    with pytest.raises(PodiumError, match="not a run, cv run or ensemble folder"):
        podium.load(tmp_path)


def test_torchscript_is_code_and_loads_only_when_trusted(models, tmp_path):
    result = podium.export(models["single"], "torchscript")
    with pytest.raises(PodiumError, match="TorchScript is code"):
        podium.load(result.path)
    assert main(["predict", str(result.path), "--data", str(models["flat"]), "--quiet"]) == 2
    assert podium.load(result.path, trust=True).kind == "torchscript"
    assert main(["predict", str(result.path), "--data", str(models["flat"]), "--trust-model", "--quiet"]) == 0


def test_a_sidecar_that_does_not_describe_its_model_is_refused(models, tmp_path):
    result = podium.export(models["single"], "onnx")
    copy = tmp_path / "model.onnx"
    shutil.copy(result.path, copy)
    sidecar = json.loads(result.sidecar.read_text())
    sidecar["classes"] = ["a", "b"]
    (tmp_path / "model.json").write_text(json.dumps(sidecar))
    with pytest.raises(PodiumError, match="outputs 3 scores, the sidecar lists 2 classes"):
        podium.load(copy)


def test_composite_mask_task_cv_and_ensemble_vote_per_attribute(tmp_path):
    data = tmp_path / "mask"
    synth_mask_dataset(data, people=10, seed=2, image_size=(48, 64), eval_people=2)
    extra = ("data.format=mask_competition", "task.preset=mask", "task.mode=multihead", "train.epochs=1")
    cv = _cv(tmp_path, data, "mask-cv", *extra)
    ens = podium.ensemble([cv, cv], "soft", out=tmp_path / "ens").dir
    assert json.loads((ens / ENSEMBLE_FILE).read_text())["voting"].startswith("per attribute")
    model = podium.load(ens)
    probs = model.predict(data, out=tmp_path / "pred")
    assert len(model.classes) == 18 and np.allclose(probs[model.classes].sum(axis=1), 1, atol=1e-5)
    submission = pd.read_csv(Path(probs.attrs["submission"]))
    assert list(submission.columns) == ["ImageID", "ans"]  # the competition's own format, info.csv order
    export = podium.export(ens, "onnx", dynamic_batch=True)
    assert export.parity["max_abs_diff"] < 1e-4


def test_podium_config_merges_before_it_validates(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("train: {epochs: 1, warmup_epochs: 2}\n")
    with pytest.raises(PodiumError, match="warmup_epochs"):
        podium.config(path)
    assert podium.config(path, "train.epochs=10").train.epochs == 10


def test_combination_votes_like_the_table_ensembles():
    """The torch voting used for prediction and export equals `evaluation.ensemble` on tables."""
    from podium.evaluation.ensemble import hard_vote, soft_vote, vote_per_attribute
    from podium.inference.members import Combination
    from podium.tasks.spec import composite_task

    rng = np.random.default_rng(0)
    probs = [rng.dirichlet(np.ones(12), size=20).astype(np.float32) for _ in range(3)]
    fixed = [_Fixed(p) for p in probs]
    w = [0.5, 0.3, 0.2]
    x = torch.zeros(20, 3, 4, 4, dtype=torch.uint8)
    for method, vote in (("soft", soft_vote), ("hard", hard_vote)):
        got = Combination(fixed, weights=w, method=method)(x).numpy()
        np.testing.assert_allclose(got, vote(probs, w), atol=1e-5)
    task = composite_task([f"{a}/{b}" for a in ("m0", "m1", "m2") for b in ("g0", "g1", "g2", "g3")])
    got = Combination(fixed, weights=w, radices=task.radices)(x).numpy()
    marginals = [[task.marginal_probs(p, n) for n in task.names] for p in probs]
    np.testing.assert_allclose(got, vote_per_attribute(marginals, "soft", w), atol=1e-5)


class _Fixed(torch.nn.Module):
    def __init__(self, probs: np.ndarray):
        super().__init__()
        self.register_buffer("probs", torch.from_numpy(probs))

    def forward(self, images):
        return self.probs[: len(images)]
