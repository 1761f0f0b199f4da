import pytest

from podium.cli import main
from podium.errors import PodiumError
from podium.schema import config_reference, load_config, parse_overrides


def test_overrides_parse_yaml_values():
    tree = parse_overrides(["train.epochs=3", "model.name=resnet18", "data.image_size=[64, 48]", "train.ema=true"])
    assert tree == {"train": {"epochs": 3, "ema": True}, "model": {"name": "resnet18"}, "data": {"image_size": [64, 48]}}


def test_file_then_overrides(tmp_path):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text("train:\n  epochs: 7\n  lr: 0.1\nmodel:\n  name: resnet34\n")
    cfg = load_config(cfg_file, ["train.epochs=2"])
    assert (cfg.train.epochs, cfg.train.lr, cfg.model.name) == (2, 0.1, "resnet34")
    assert cfg.data.size_hw == (224, 224)


@pytest.mark.parametrize("override, expected", [
    ("data.imge_size=64", ["data.imge_size", "unknown key", "data.image_size"]),
    ("train.optimizer=sgdd", ["train.optimizer", "'sgdd'", "valid: adam, adamw, ", "Did you mean 'sgd'"]),
    ("train.epochs=0", ["train.epochs", "greater than or equal to 1", "found 0"]),
    ("trian.epochs=3", ["trian", "unknown key", "allowed keys here"]),
    ("train.warmup_epochs=50", ["train.warmup_epochs", "must be below train.epochs"]),
])
def test_bad_config_names_key_value_and_fix(override, expected):
    with pytest.raises(PodiumError) as err:
        load_config(None, [override])
    for fragment in expected:
        assert fragment in str(err.value)


def test_bad_override_syntax():
    with pytest.raises(PodiumError, match="dotted.key=value"):
        parse_overrides(["train.epochs"])


def test_missing_or_invalid_yaml(tmp_path):
    with pytest.raises(PodiumError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(PodiumError, match="not valid YAML"):
        load_config(bad)


def test_reference_lists_every_field():
    ref = config_reference()
    for key in ("data.train", "model.pretrained_path", "train.class_weights", "output.submission.label_format",
                "train.num_nodes", "augment.train_ops"):
        assert f"`{key}`" in ref


def test_cli_config_show_and_errors(capsys, tmp_path):
    assert main(["config", "show", "train.epochs=4"]) == 0
    assert "epochs: 4" in capsys.readouterr().out
    assert main(["config", "show", "train.epoch=4"]) == 2
    err = capsys.readouterr().err
    assert "train.epoch" in err and "Did you mean 'train.epochs'" in err and "Traceback" not in err


def test_folder_given_as_config_explains(tmp_path):
    with pytest.raises(PodiumError, match=r"is a folder, not a config file; to train on it, pass data.train="):
        load_config(tmp_path)
