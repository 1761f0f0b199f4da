"""Export to ONNX / TorchScript with a parity check on real validation images, and
`predict --model` on the exported file giving what `predict RUN` gives."""
import json

import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from conftest import fast_overrides, make_folder

from podium.cli import main
from podium.deploy.export import export_run
from podium.errors import PodiumError
from podium.inference.predictor import load_predictor
from podium.rundir import load_run

TOLERANCE = 1e-4


def _train(root, model_name, name):
    data = make_folder(root / "train", {"cat": 10, "dog": 10, "fox": 10})
    overrides = {"model.name": model_name, "output.report": "false", "train.lr": "0.002"}  # logits stay moderate
    args = ["train", *fast_overrides(root, **overrides), f"data.train={data}", f"output.name={name}", "--quiet"]
    assert main(args) == 0
    return root / "runs dir" / name


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("timm"), "test_efficientnet", "timm")


@pytest.fixture(scope="module")
def tv_run(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("tv"), "tv/mobilenet_v2", "tv")


@pytest.fixture(scope="module")
def unlabeled(tmp_path_factory):
    """A flat folder of images none of the runs saw."""
    root = make_folder(tmp_path_factory.mktemp("test") / "labelled", {"cat": 4, "dog": 4, "fox": 3}, seed=5)
    flat = root.parent / "flat"
    flat.mkdir()
    for path in sorted(root.rglob("*.png")):
        path.rename(flat / path.name)
    return flat


@pytest.mark.parametrize("which", ["timm_run", "tv_run"])
def test_onnx_export_matches_pytorch_on_validation_images(which, request):
    run = request.getfixturevalue(which)
    assert load_run(run).config.train.channels_last  # the default: export works on a channels-last model
    result = export_run(run, "onnx", dynamic_batch=True)
    assert result.path == run / "exports" / "onnx" / "model.onnx" and result.path.is_file()
    parity = json.loads(result.parity_path.read_text())
    n_val = int((pd.read_csv(run / "split.csv")["split"] == "val").sum())
    assert parity["passed"] and parity["n_images"] == n_val > 0
    assert parity["max_abs_diff"] < TOLERANCE and parity["top1_agreement"] == 1.0
    sidecar = json.loads(result.sidecar.read_text())
    assert sidecar["input"]["dtype"] == "uint8" and sidecar["input"]["range"] == [0, 255]
    assert sidecar["input"]["layout"] == "NCHW" and sidecar["input"]["channel_order"] == "RGB"
    assert sidecar["input"]["image_size"] == [32, 32] and sidecar["input"]["batch_size"] is None
    assert sidecar["classes"] == ["cat", "dog", "fox"] and sidecar["tta"] == ["identity", "hflip"]
    assert sidecar["output"]["kind"] == "logits" and sidecar["opset"] == 17 and sidecar["podium_version"]
    assert sidecar["parity"]["max_abs_diff"] == parity["max_abs_diff"]
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, 32, 32] and session.get_inputs()[0].type == "tensor(uint8)"
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    reference = load_predictor(run)  # the run itself, in PyTorch
    got = torch.from_numpy(session.run(None, {"images": images})[0]).softmax(1).numpy()
    assert np.abs(got - reference.probabilities(images, tta=None)).max() < TOLERANCE


def test_static_batch_export_runs_any_number_of_images(timm_run, tmp_path):
    result = export_run(timm_run, "onnx", out=tmp_path / "static" / "m.onnx")
    assert result.sidecar == tmp_path / "static" / "m.json" and (tmp_path / "static" / "m.parity.json").is_file()
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 32, 32]
    images = np.random.default_rng(1).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    exported = load_predictor(result.path)  # splits into batches of 1
    assert np.abs(exported.probabilities(images) - load_predictor(timm_run).probabilities(images)).max() < TOLERANCE


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated in favour of torch.export
def test_torchscript_export_works(tv_run):
    result = export_run(tv_run, "torchscript")
    assert result.path.suffix == ".pt" and result.parity["max_abs_diff"] < TOLERANCE
    scripted = torch.jit.load(str(result.path))
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        expected = load_predictor(tv_run).module(images).softmax(1)
        assert (scripted(images).softmax(1) - expected).abs().max() < TOLERANCE
    assert load_predictor(result.path, trust=True).backend == "torchscript"  # TorchScript is code: opt-in


def test_failed_parity_writes_nothing(timm_run, monkeypatch):
    import podium.deploy.export as export_module

    real = export_module._load_exported

    def drifting(path, format, sidecar):  # an exporter bug: the graph's logits are off by 0.05
        predictor = real(path, format, sidecar)
        plain = predictor._logits
        predictor._logits = lambda images: plain(images) + np.array([0.05, 0.0, 0.0], dtype=np.float32)
        return predictor

    monkeypatch.setattr(export_module, "_load_exported", drifting)
    before = set((timm_run / "exports").rglob("*")) if (timm_run / "exports").exists() else set()
    with pytest.raises(PodiumError, match=r"differs from PyTorch by up to .* above the tolerance 0.0001; nothing"):
        export_run(timm_run, "onnx")
    after = set((timm_run / "exports").rglob("*"))
    assert after == before, "a failed export left files behind"
    looser = export_run(timm_run, "onnx", tolerance=0.05)  # --tolerance accepts it
    assert looser.parity["max_abs_diff"] > TOLERANCE and looser.path.is_file()


def test_export_refuses_to_overwrite_and_bad_suffix(timm_run, tmp_path):
    taken = tmp_path / "model.onnx"
    taken.write_text("x")
    with pytest.raises(PodiumError, match="already exists"):
        export_run(timm_run, "onnx", out=taken)
    with pytest.raises(PodiumError, match=r"ending in \.pt"):
        export_run(timm_run, "torchscript", out=tmp_path / "model.onnx2")
    with pytest.raises(PodiumError, match="unknown export format"):
        export_run(timm_run, "tflite")


def test_predict_model_equals_predict_run(timm_run, unlabeled, tmp_path, capsys):
    assert main(["export", str(timm_run), "--format", "onnx", "--dynamic-batch", "--out",
                 str(tmp_path / "onnx" / "model.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "top-1 agreement" in printed and "parity" in printed
    assert main(["predict", str(timm_run), "--data", str(unlabeled), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert main(["predict", "--model", str(tmp_path / "onnx" / "model.onnx"), "--data", str(unlabeled),
                 "--out", str(tmp_path / "exported"), "--quiet"]) == 0
    run = pd.read_parquet(tmp_path / "run" / "probabilities.parquet")
    exported = pd.read_parquet(tmp_path / "exported" / "probabilities.parquet")
    assert list(run.columns) == list(exported.columns) == ["id", "cat", "dog", "fox"]
    assert run["id"].tolist() == exported["id"].tolist() and len(run) == 11
    classes = ["cat", "dog", "fox"]
    assert np.abs(run[classes].to_numpy() - exported[classes].to_numpy()).max() < TOLERANCE
    assert (pd.read_csv(tmp_path / "run" / "submission.csv")
            .equals(pd.read_csv(tmp_path / "exported" / "submission.csv")))
    # the default output folder sits beside the model and is never reused
    assert main(["predict", "--model", str(tmp_path / "onnx" / "model.onnx"), "--data", str(unlabeled), "--quiet"]) == 0
    assert (tmp_path / "onnx" / "predictions" / "flat" / "submission.csv").is_file()


def test_predict_needs_exactly_one_model(timm_run, unlabeled, tmp_path, capsys):
    assert main(["predict", "--data", str(unlabeled)]) == 2
    assert "exactly one model" in capsys.readouterr().err
    assert main(["predict", str(timm_run), "--model", str(tmp_path / "m.onnx"), "--data", str(unlabeled)]) == 2
    assert "got both" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "m.onnx"), "--data", str(unlabeled)]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "lonely.onnx").write_bytes(b"not a model")
    assert main(["predict", "--model", str(tmp_path / "lonely.onnx"), "--data", str(unlabeled)]) == 2
    assert "sidecar" in capsys.readouterr().err


def test_python_api(timm_run):
    import podium

    result = podium.export(podium.load_run(timm_run), "torchscript", parity_images=4)
    assert result.parity["n_images"] == 4 and result.parity["max_abs_diff"] < TOLERANCE
    assert "Export(" in repr(result)
