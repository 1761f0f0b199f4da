"""Experiment tracking: W&B offline run files and the MLflow store hold the config and metrics."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import fast_overrides, make_folder

from podium.errors import PodiumError
from podium.schema import load_config


def read_wandb_records(path: Path) -> list:
    """The records of a W&B run file (.wandb): a LevelDB-style log of protobuf records in
    32 KiB blocks after a 7-byte header; W&B ships no Python reader for it any more."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pos, chunk = [], 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += block - pos % block
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: the record is complete
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """One tiny run logged to W&B (offline) and MLflow (SQLite store in the test folder)."""
    from podium.model.training import train

    tmp = tmp_path_factory.mktemp("tracking")
    data = make_folder(tmp / "train")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    cfg = load_config(None, fast_overrides(tmp, **{"data.train": data, "output.report": "false",
                                                   "output.loggers": "[csv,wandb,mlflow]",
                                                   "output.mlflow_uri": uri}))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)  # podium's default: offline
        mp.setenv("WANDB_SILENT", "true")
        result = train(cfg, progress=False, log=lambda *a: None)
    return result, uri


def test_wandb_offline_run_files_hold_config_and_metrics(tracked_run):
    result, _ = tracked_run
    files = list((result.run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, "one offline W&B run under the run folder"
    records = read_wandb_records(files[0])
    config = {item.key: json.loads(item.value_json) for r in records if r.HasField("config")
              for item in r.config.update}
    assert config["model.name"] == "test_efficientnet" and config["train.epochs"] == 1
    assert config["output.loggers"] == '["csv", "wandb", "mlflow"]'
    assert "train_cfg" not in config, "the hyper-parameters are the run config, not the module's hparams"
    history = [{("/".join(i.nested_key) or i.key): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.HasField("history")]
    assert any("val_f1" in h for h in history), "per-epoch validation metrics reach W&B"
    finals = [h for h in history if "final/f1" in h]
    assert len(finals) == 1, "final metrics are logged once"
    assert finals[0]["final/f1"] == pytest.approx(result.summary["val_metrics"]["f1"])
    assert finals[0]["final/wall_time_s"] == pytest.approx(result.summary["wall_time_s"])
    run = next(r.run for r in records if r.HasField("run"))
    assert run.project == "podium" and run.display_name == result.run_dir.name


def test_mlflow_store_holds_params_and_metrics(tracked_run):
    import mlflow

    result, uri = tracked_run
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("podium")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == result.run_dir.name
    assert run.data.params["model.name"] == "test_efficientnet"
    assert run.data.params["train.lr"] == "0.05" and run.data.params["data.image_size"] == "32"
    assert run.data.metrics["final/f1"] == pytest.approx(result.summary["val_metrics"]["f1"])
    assert run.data.metrics["final/acc"] == pytest.approx(result.summary["val_metrics"]["acc"])
    assert len(client.get_metric_history(run.info.run_id, "val_f1")) == 1  # one epoch
    assert len(client.get_metric_history(run.info.run_id, "final/f1")) == 1
    assert run.data.tags["podium.run_dir"] == str(result.run_dir.resolve())


def test_cv_folds_log_as_one_group(tmp_path, monkeypatch, tracked_run):
    import pandas as pd

    from podium.evaluation.cv import train_fold
    from podium.reports.tracking import GROUP_TAG, create_loggers

    seen = []

    def fake_train(cfg, **kwargs):  # what train_fold hands to training, without training
        seen.append(cfg)
        return SimpleNamespace(run_dir=Path(cfg.output.dir) / cfg.output.name)

    monkeypatch.setattr("podium.model.training.train", fake_train)
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "path": ["a", "b", "c", "d"], "label": ["x", "y", "x", "y"],
                          "fold": [0, 0, 1, 1]})
    cfg = load_config(None, ["output.loggers=[wandb,mlflow]", f"output.mlflow_uri={tracked_run[1]}"])  # store exists
    for fold in (0, 1):
        train_fold(cfg, tmp_path / "cv-3", frame, ["x", "y"], fold, log=lambda *a: None)
    assert [c.output.group for c in seen] == ["cv-3", "cv-3"]
    wandb_logger, mlflow_logger = create_loggers(seen[1], tmp_path / "cv-3" / "fold1")
    assert wandb_logger._wandb_init["group"] == "cv-3" and wandb_logger._wandb_init["name"] == "cv-3/fold1"
    assert mlflow_logger.tags[GROUP_TAG] == "cv-3"
    assert create_loggers(cfg, tmp_path / "exp")[0]._wandb_init["group"] is None


def test_logger_names_are_checked_and_tensorboard_flag_still_works():
    from podium.reports.tracking import selected_loggers

    with pytest.raises(PodiumError, match=r"output.loggers.*unknown logger 'tensorbord'.*Did you mean 'tensorboard'"):
        load_config(None, ["output.loggers=[tensorbord]"])
    cfg = load_config(None, ["output.loggers=[tensorboard,csv,mlflow]", "output.tensorboard=false"])
    assert selected_loggers(cfg.output) == ["csv", "mlflow"]
    assert selected_loggers(load_config(None, []).output) == ["tensorboard", "csv"]
    assert load_config(None, ["output.loggers=csv, mlflow"]).output.loggers == ["csv", "mlflow"]


def test_missing_tracker_names_the_extra_before_any_run_folder(tmp_path, monkeypatch):
    import importlib.util

    from podium.model.training import train

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = load_config(None, fast_overrides(tmp_path, **{"data.train": make_folder(tmp_path / "train"),
                                                        "output.loggers": "[csv,wandb]"}))
    with pytest.raises(PodiumError, match=r"pip install -e '\.\[wandb\]'"):
        train(cfg, progress=False, log=lambda *a: None)
    assert not (tmp_path / "runs dir").exists(), "refused before the run folder is created"


def test_flattened_config_uses_dotted_keys():
    from podium.reports.tracking import flatten_config

    flat = flatten_config(load_config(None, ["train.milestones=[2,4]"]))
    assert flat["train.milestones"] == "[2, 4]" and flat["output.submission.id_column"] == "id"
    assert flat["crop.options"] == "{}" and not any(isinstance(v, (dict, list)) for v in flat.values())
