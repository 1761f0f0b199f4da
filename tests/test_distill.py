"""Knowledge distillation: the soft-target loss, a student distilled from a cv run (with unlabelled
images) that is a normal run (export with parity, serve, resume), and bad teachers."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import colour_images

from podium.errors import PodiumError
from podium.model.losses import distillation_loss


def test_distillation_loss_is_hintons_term():
    torch.manual_seed(0)
    logits, teacher = torch.randn(5, 3), torch.softmax(torch.randn(5, 3), 1)
    at_one = distillation_loss(logits.log_softmax(1), teacher, 1.0)
    soft_ce = -(teacher * logits.log_softmax(1)).sum(1)
    entropy = -(teacher * teacher.log()).sum(1)
    assert torch.allclose(at_one, soft_ce - entropy, atol=1e-5)
    assert torch.allclose(distillation_loss(teacher.log(), teacher, 3.0), torch.zeros(5), atol=1e-5)  # same = 0
    t = 4.0
    soft_t, student_t = (teacher.log() / t).softmax(1), (logits / t).log_softmax(1)
    expected = t * t * (soft_t * (soft_t.log() - student_t)).sum(1)
    assert torch.allclose(distillation_loss(logits.log_softmax(1), teacher, t), expected, atol=1e-5)


def _classifier(temperature):
    from podium.model.engine import Classifier

    train = {"loss": "ce", "class_weights": "none", "channels_last": False}
    return Classifier({"name": "test_resnet", "pretrained": False}, train, ["a", "b", "c"], [0.5] * 3, [0.25] * 3,
                      load_pretrained=False, soft_temperature=temperature).eval()


def test_soft_target_rows_weight_the_hard_and_the_soft_part():
    module = _classifier(1.0)
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 1])
    teacher = torch.softmax(torch.randn(4, 3), 1)
    with torch.no_grad():
        plain = module.loss(images, labels)
        logp = module(images).log_softmax(1)

        def rows(hard, soft, target):
            return torch.cat([labels[:, None].float(), torch.full((4, 1), hard), torch.full((4, 1), soft), target], 1)

        assert torch.allclose(module.soft_target_loss(images, rows(1.0, 0.0, teacher)), plain, atol=1e-5)
        soft_only = module.soft_target_loss(images, rows(0.0, 1.0, teacher))
        assert torch.allclose(soft_only, distillation_loss(logp, teacher, 1.0).mean(), atol=1e-5)
        blend = module.soft_target_loss(images, rows(0.3, 0.7, teacher))
        assert torch.allclose(blend, 0.3 * plain + 0.7 * soft_only, atol=1e-5)


def test_per_row_hard_weights_give_the_weighted_losss_gradient():
    """Sample weights (`weight` label fixes): row i's hard label counts w_i, so the gradient is that of
    mean_i(w_i * ce_i), a weight-0 row teaches nothing, and the value is the mean weight times the loss."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    module = _classifier(1.0)
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 1])
    weights = torch.tensor([1.0, 0.2, 0.0, 0.6])
    rows = torch.cat([labels[:, None].float(), weights[:, None], torch.zeros(4, 1), torch.zeros(4, 3)], 1)
    value = module.soft_target_loss(images, rows)
    value.backward()
    got = [p.grad.clone() for p in module.parameters() if p.grad is not None]
    module.zero_grad()
    expected = (weights * F.cross_entropy(module(images), labels, reduction="none")).mean()
    expected.backward()
    want = [p.grad for p in module.parameters() if p.grad is not None]
    assert len(got) == len(want) > 0
    assert all(torch.allclose(g, w, atol=1e-6) for g, w in zip(got, want, strict=True))
    plain = F.cross_entropy(module(images)[weights > 0], labels[weights > 0])
    assert torch.allclose(value, weights[weights > 0].mean() * 0.75 * plain, atol=1e-5)
    module.zero_grad()
    nothing = module.soft_target_loss(images, rows * torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0, 1.0]))
    nothing.backward()  # every weight 0: a zero loss that still steps (DDP ranks stay in step)
    assert nothing.item() == 0 and all((p.grad == 0).all() for p in module.parameters() if p.grad is not None)


@pytest.fixture(scope="module")
def student(noisy_cv, tmp_path_factory):
    import podium

    teacher, _ = noisy_cv
    unlabeled = tmp_path_factory.mktemp("unlabeled")
    colour_images(unlabeled, per_class=2, seed=5, labeled=False)
    run = podium.distill(teacher, model="test_efficientnet", unlabeled=unlabeled, temperature=3.0, alpha=0.7,
                         overrides=["train.epochs=1", "output.name=student"], log=lambda *a: None)
    return teacher, run


def test_a_student_learns_from_the_teachers_oof_and_unlabelled_images(student):
    from podium.rundir import SOFT_TARGETS_FILE, read_config, read_split, read_table

    teacher, run = student
    cfg = read_config(run.dir)
    assert cfg.model.name == "test_efficientnet" and cfg.distill.teacher == str(teacher)
    assert (cfg.distill.temperature, cfg.distill.alpha) == (3.0, 0.7)
    record = run.summary["soft_targets"]["teacher"]
    split = read_split(run.dir)
    train = split[split["split"] == "train"]
    assert record["unlabeled_rows"] == 6 and record["labelled_rows"] == len(train) - 6
    assert (split.loc[split["split"] == "val", "origin"].fillna("") == "").all()  # teacher-labelled: training only
    soft = read_table(run.dir / SOFT_TARGETS_FILE, "soft targets").set_index("id")
    oof = read_table(teacher / "oof_predictions.parquet", "oof").set_index("id")
    labelled = train.loc[train["origin"].fillna("") == "", "id"]
    classes = run.classes
    assert np.allclose(soft.loc[labelled, classes].to_numpy(), oof.loc[labelled, classes].to_numpy(), atol=1e-5)
    assert (soft.loc[labelled, "soft"] == 0.7).all() and np.allclose(soft.loc[labelled, "hard"], 0.3)
    added = soft[soft.index.str.startswith("unlabeled/")]
    assert len(added) == 6 and (added["hard"] == 0).all() and (added["soft"] == 1).all()
    # the teacher (folds averaged) recognises the colours of the unlabelled images
    names = [i.split("/")[-1].split("_")[0] for i in added.index]
    assert (np.asarray(classes)[added[classes].to_numpy().argmax(1)] == names).mean() >= 0.8


def test_a_distilled_run_exports_serves_and_resumes(student, tmp_path):
    from fastapi.testclient import TestClient
    from PIL import Image

    import podium
    from podium.deploy.serve import create_app

    _, run = student
    exported = podium.export(run, out=tmp_path / "model.onnx", log=lambda *a: None)
    assert exported.parity["max_abs_diff"] <= 1e-4
    image = io.BytesIO()
    Image.new("RGB", (32, 32), (220, 40, 40)).save(image, format="PNG")
    with TestClient(create_app(podium.load_predictor(exported.path))) as client:
        reply = client.post("/predict", files={"files": ("red.png", image.getvalue(), "image/png")})
    assert reply.status_code == 200, reply.text
    top = reply.json()["predictions"][0]["top"]
    assert {t["class"] for t in top} <= set(run.classes)
    resumed = podium.train(None, resume=run.dir, epochs=2, log=lambda *a: None)
    assert resumed.summary["epochs_trained"] == 2 and resumed.summary["soft_targets"]["teacher"]["alpha"] == 0.7


def test_bad_teachers_get_one_message(noisy_cv, tmp_path):
    import podium
    from podium.fileio import write_json

    teacher, _ = noisy_cv
    with pytest.raises(PodiumError, match="is a single run: its predictions on its own training images"):
        podium.distill(teacher / "fold0", overrides=["train.epochs=1"], log=lambda *a: None)
    other = tmp_path / "other"
    paths = colour_images(other, per_class=3)
    pd.DataFrame({"path": [p.relative_to(other).as_posix() for p in paths],
                  "label": ["x" if "cat" in p.name else "y" for p in paths]}).to_csv(other / "labels.csv", index=False)
    with pytest.raises(PodiumError, match="predicts other classes than the data has"):
        podium.distill(teacher, overrides=[f"data.train={other / 'labels.csv'}", "train.epochs=1"],
                       log=lambda *a: None)
    ensemble = tmp_path / "ens"
    write_json(ensemble / "ensemble.json", {"classes": podium.load_run(teacher / "fold0").classes, "members": []})
    with pytest.raises(PodiumError):
        podium.distill(ensemble, log=lambda *a: None)
    ungathered = tmp_path / "cv"
    ungathered.mkdir()
    for name in ("config.yaml", "cv.json"):
        (ungathered / name).write_text((teacher / name).read_text())
    with pytest.raises(PodiumError, match=r"has no out-of-fold predictions .* podium cv-gather"):
        podium.distill(ungathered, overrides=["train.epochs=1"], log=lambda *a: None)
    pool = tmp_path / "pool.csv"
    pd.DataFrame({"path": [str(p) for p in paths[:2]], "label": ["cat", "zebra"]}).to_csv(pool, index=False)
    with pytest.raises(PodiumError, match="carry labels of another class set: column 'label' has zebra"):
        podium.distill(teacher, unlabeled=pool, overrides=["train.epochs=1"], log=lambda *a: None)
    assert not list((teacher.parent).glob("*-distilled*"))  # nothing trained, nothing left behind


def test_weight_fixes_refuse_mixup_in_one_message(tmp_path):
    from podium.data.samples import PreparedData
    from podium.model.soft_targets import attach_soft_targets
    from podium.schema import load_config

    train = pd.DataFrame({"id": ["a.png", "b.png"], "path": ["a.png", "b.png"], "label": ["x", "y"],
                          "sample_weight": [1.0, 0.3]})
    prepared = PreparedData(train, train.iloc[:0], ["x", "y"])
    cfg = load_config(None, ["train.mixup_alpha=0.2", f"task.label_fixes={tmp_path / 'fixes.csv'}"])
    with pytest.raises(PodiumError, match="1 training image.*sample weight other than 1.*set train.mixup_alpha and train.cutmix_alpha to 0"):
        attach_soft_targets(cfg, prepared, log=lambda *a: None)
    plain = load_config(None, [f"task.label_fixes={tmp_path / 'fixes.csv'}"])
    soft = attach_soft_targets(plain, PreparedData(train, train.iloc[:0], ["x", "y"]), log=lambda *a: None).soft
    assert soft.hard.tolist() == pytest.approx([1.0, 0.3]) and soft.soft.tolist() == [0.0, 0.0]
    assert soft.record["sample_weights"]["weighted_rows"] == 1


def test_a_data_csvs_sample_weight_column_is_checked_and_used():
    from podium.model.soft_targets import sample_weights

    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "sample_weight": [1.0, 0.25, None, 2.0]})
    assert sample_weights(frame).tolist() == [1.0, 0.25, 1.0, 2.0]  # empty = 1
    assert sample_weights(frame.assign(sample_weight=1)) is None     # nothing to weight
    with pytest.raises(PodiumError, match=r"2 image\(s\) have a sample_weight that is not a number >= 0: b \('x'\), d \(-1"):
        sample_weights(frame.assign(sample_weight=[1, "x", "", -1]))
