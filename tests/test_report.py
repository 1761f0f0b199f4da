"""Run report on a planted run folder; Grad-CAM on tiny CNNs; headless rendering of both pages."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from podium.errors import PodiumError
from podium.reports.gradcam import gradcam, overlay_heatmap
from podium.reports.report import GradCamSource, build_run_report, confusion_figure, curves_figure

CLASSES = ["bird", "cat", "dog"]
SECTIONS = ["Summary", "Training curves", "Confusion matrix", "Per-class metrics", "ROC curves",
            "Most confused pairs", "Confidently wrong"]


def smooth_image(seed: int, size: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)


def planted_predictions(image_dir: Path) -> pd.DataFrame:
    """18 validation rows: mostly right, a few wrong, one wrong with 0.97 confidence ('planted')."""
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    spec = ([("cat", "cat")] * 5 + [("dog", "dog")] * 4 + [("bird", "bird")] * 3
            + [("cat", "dog")] * 2 + [("dog", "cat")] + [("bird", "cat")] + [("cat", "bird")])
    rows = []
    for k, (target, prediction) in enumerate(spec):
        probs = rng.dirichlet(np.ones(3)) * 0.3
        probs[CLASSES.index(prediction)] += 0.6 + 0.05 * rng.random()  # confidence ~0.6-0.85
        rows.append({"id": f"img{k}", "target": target, "prediction": prediction, **dict(zip(CLASSES, probs))})
    rows.append({"id": "planted", "target": "bird", "prediction": "dog", "bird": 0.01, "cat": 0.02, "dog": 0.97})
    frame = pd.DataFrame(rows)
    paths = []
    for k, row in frame.iterrows():
        path = image_dir / f"{row['id']}.png"
        cv2.imwrite(str(path), smooth_image(k))
        paths.append(str(path))
    frame.insert(1, "path", paths)
    frame["site"] = ["a", "b"] * (len(frame) // 2) + ["a"] * (len(frame) % 2)
    return frame


def write_run(run: Path, preds: pd.DataFrame, cv: bool = False) -> Path:
    run.mkdir(parents=True)
    (run / "classes.json").write_text(json.dumps({"classes": CLASSES}))
    (run / "summary.json").write_text(json.dumps({"best_metric": 0.71, "best_epoch": 2, "monitor": "val_f1"}))
    (run / "config.yaml").write_text("model:\n  name: tiny\n")
    metrics = pd.DataFrame({"epoch": [0, 1, 2], "train_loss": [1.1, 0.8, 0.6], "val_loss": [1.0, 0.9, 0.85],
                            "val_acc": [0.5, 0.6, 0.7], "val_f1": [0.4, 0.6, 0.71], "lr": [1e-3, 5e-4, 1e-4]})
    if cv:
        for fold in ("fold0", "fold1"):
            (run / fold).mkdir()
            metrics.to_csv(run / fold / "metrics.csv", index=False)
        preds.to_parquet(run / "oof_predictions.parquet", index=False)
    else:
        metrics.to_csv(run / "metrics.csv", index=False)
        preds.to_parquet(run / "val_predictions.parquet", index=False)
    return run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    preds = planted_predictions(tmp / "images")
    run = write_run(tmp / "run", preds)
    return preds, run, build_run_report(run, max_gallery=8)


def test_report_sections_and_files(report):
    _, run, path = report
    assert path == run / "report.html"
    page = path.read_text()
    for title in [*SECTIONS, "Metrics by site"]:
        assert f"<h2>{title}</h2>" in page, title
    assert "Grad-CAM" not in page  # no model given
    for name in ("curves", "confusion_counts", "confusion_normalized", "per_class", "roc", "confidently_wrong"):
        assert (run / "report" / f"{name}.png").stat().st_size > 1000, name
    assert "<script" not in page
    # the confidently-wrong table: id, label, predicted, confidence; no absolute path repeating the id
    wrong = page[page.index("<h2>Confidently wrong</h2>"):]
    wrong = wrong[:wrong.index("</table>")]
    assert ">predicted</th>" in wrong and ">path</th>" not in wrong
    assert "path" in pd.read_csv(run / "suspect_labels.csv").columns  # the CSV keeps it


def test_report_counts_epochs_from_one(report):
    """The curves and the last-epoch table number epochs as the epoch lines do (metrics.csv's 0, 1, 2
    are epochs 1, 2, 3; test_leaderboard checks the headline's best epoch)."""
    _, run, path = report
    page = path.read_text()
    last = page[page.index("<h3>Last epoch</h3>"):]
    last = last[:last.index("</table>")]
    assert re.search(r"<td>3</td>", last) and not re.search(r"<td>2</td>", last), last


def test_confusion_matrix_matches_planted(report):
    preds, run, _ = report
    counts = pd.read_csv(run / "report" / "confusion_counts.csv").set_index("true")
    assert list(counts.index) == CLASSES and list(counts.columns) == CLASSES
    for t in CLASSES:
        for p in CLASSES:
            assert counts.loc[t, p] == ((preds["target"] == t) & (preds["prediction"] == p)).sum(), (t, p)
    assert counts.loc["cat", "dog"] == 2 and counts.loc["bird", "dog"] == 1
    normalised = pd.read_csv(run / "report" / "confusion_normalized.csv").set_index("true")
    assert normalised.loc["cat", "cat"] == pytest.approx(5 / 8, abs=1e-4)


def test_suspect_labels_planted_first(report):
    preds, run, _ = report
    suspects = pd.read_csv(run / "suspect_labels.csv")
    assert list(suspects.columns) == ["id", "path", "label", "predicted", "confidence"]
    assert len(suspects) == int((preds["target"] != preds["prediction"]).sum()) == 6
    first = suspects.iloc[0]
    assert (first["id"], first["label"], first["predicted"]) == ("planted", "bird", "dog")
    assert first["confidence"] == pytest.approx(0.97)
    assert suspects["confidence"].is_monotonic_decreasing


def test_confused_pairs_and_per_class_in_page(report):
    _, run, path = report
    page = path.read_text()
    section = page[page.index("<h2>Most confused pairs</h2>"):]
    first_row = re.search(r"<tbody><tr>(.*?)</tr>", section).group(1)
    assert '<td class="text">cat</td><td class="text">dog</td><td>2</td>' in first_row


def test_cv_run_uses_oof(tmp_path):
    preds = planted_predictions(tmp_path / "images").assign(fold=lambda f: np.arange(len(f)) % 2)
    run = write_run(tmp_path / "cv", preds, cv=True)
    page = build_run_report(run).read_text()
    assert "oof_predictions.parquet" in page
    # the fold column gets a section named for it; the other extra column keeps its own
    assert "<h2>Per-fold metrics</h2>" in page and "<h2>Metrics by site</h2>" in page
    assert "Per-attribute" not in page and "Metrics by fold" not in page
    folds = page[page.index("<h2>Per-fold metrics</h2>"):]
    folds = folds[:folds.index("</table>")]
    assert ">fold</th>" in folds and ">macro F1</th>" in folds and folds.count("<tr>") == 3  # header + 2 folds
    assert '<td class="text">fold0</td>' in page and '<td class="text">fold1</td>' in page  # per-fold last epoch
    counts = pd.read_csv(run / "report" / "confusion_counts.csv").set_index("true")
    assert counts.to_numpy().sum() == len(preds)
    assert (run / "report" / "curves.png").exists()


def _fold_tables(k: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(1)
    return {f"fold{i}": pd.DataFrame({"epoch": range(6), "train_loss": 1 - 0.1 * np.arange(6) + rng.random(6) / 20,
                                      "val_loss": 1.1 - 0.08 * np.arange(6), "val_f1": 0.5 + 0.05 * np.arange(6),
                                      "lr": [1e-3] * 6}) for i in range(k)}


def test_cv_curves_one_panel_per_metric_legend_outside():
    fig = curves_figure(_fold_tables(5))
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.lines]
    assert [ax.get_title() for ax in panels] == ["train_loss", "val_loss", "val_f1", "lr"]
    for ax in panels:
        folds = [ln for ln in ax.lines if ln.get_label().startswith("fold")]
        assert len(folds) == 5
        colours = {tuple(np.round(ln.get_color(), 3)) for ln in folds}
        assert len(colours) == 5  # no fold shares a colour
        mean = [ln for ln in ax.lines if ln.get_label() == "mean of 5 folds"]
        assert len(mean) == 1 and mean[0].get_linewidth() > 2 * max(ln.get_linewidth() for ln in folds)
        assert ax.get_legend() is None  # no legend on top of the data
    assert panels[0].get_ylim() == panels[1].get_ylim()  # train and val loss on one scale
    assert panels[3].get_yscale() == "log"
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [f"fold{i}" for i in range(5)] + ["mean of 5 folds"]
    box = legend.get_window_extent()
    assert all(not box.overlaps(ax.get_window_extent()) for ax in fig.axes)
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_single_run_curves_have_no_legend():
    fig = curves_figure(_fold_tables(1))
    assert not fig.legends and all(len(ax.lines) <= 1 for ax in fig.axes)
    import matplotlib.pyplot as plt
    plt.close(fig)


def _texts(fig) -> list:
    return [t for t in fig.axes[0].texts]


def test_confusion_numbers_scale_with_cells_and_big_matrices_use_percent():
    import matplotlib.pyplot as plt

    small = confusion_figure(np.array([[50, 3, 1], [2, 40, 0], [0, 5, 61]]), ["a", "b", "c"], "counts")
    small_size = {t.get_fontsize() for t in _texts(small)}
    assert len(small_size) == 1 and small_size.pop() >= 12  # was a fixed 7 pt
    n = 20
    counts = np.diag(np.full(n, 90)) + np.eye(n, k=1, dtype=int) * 7
    big = confusion_figure(counts, [f"class{i}" for i in range(n)], "counts")
    big_size = _texts(big)[0].get_fontsize()
    assert 5 <= big_size < 12
    assert sum(t.get_text() == "" for t in _texts(big)) == n * n - (2 * n - 1)  # zero cells left blank
    share = counts / counts.sum(axis=1, keepdims=True)
    shares = confusion_figure(share, [f"class{i}" for i in range(n)], "row-normalised", percent=True)
    texts = [t.get_text() for t in _texts(shares)]
    assert "93" in texts and "100" in texts and "%" not in "".join(texts)
    assert shares.axes[0].get_title().endswith("(%)")
    small_share = confusion_figure(np.array([[0.75, 0.25], [0.0, 1.0]]), ["a", "b"], "row-normalised", percent=True)
    assert [t.get_text() for t in _texts(small_share)] == ["75%", "25%", "0%", "100%"]
    for fig in (small, big, shares, small_share):
        plt.close(fig)


def test_missing_predictions_is_a_user_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PodiumError, match="val_predictions.parquet"):
        build_run_report(tmp_path / "empty")


# --------------------------------------------------------------------------- Grad-CAM


def tiny_cnn(n_classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 6, 3, padding=1),
                         nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, n_classes))


def test_gradcam_shape_range_and_no_side_effects():
    model = tiny_cnn().train()
    x = torch.randn(1, 3, 20, 28)
    heat = gradcam(model, x, target_class=1)
    assert heat.shape == (20, 28) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1 and np.isfinite(heat).all()
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="target_class"):
        gradcam(model, x, target_class=3)
    # a frozen model (a fine-tuned backbone with requires_grad off) still gets its map, the same one
    for p in model.parameters():
        p.requires_grad_(False)
    assert np.allclose(gradcam(model, x, target_class=1), heat, atol=1e-5)
    # gradients a caller holds are left as they were
    model[0].weight.requires_grad_(True)
    model[0].weight.grad = torch.ones_like(model[0].weight)
    gradcam(model, x, target_class=1)
    assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))


def test_gradcam_localises_the_evidence():
    # class 0 score = mean red intensity, so its evidence is exactly where the red square is
    conv = nn.Conv2d(3, 1, 1, bias=False)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    model = nn.Sequential(conv, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    x = torch.zeros(1, 3, 16, 16)
    x[0, 0, 2:6, 9:13] = 1.0
    heat = gradcam(model, x, target_class=0)
    assert heat[2:6, 9:13].min() == pytest.approx(1.0) and heat[10:, :6].max() == 0
    assert gradcam(model, x, target_class=1).max() == 0  # negative evidence only: empty map


def test_overlay_heatmap():
    rgb = np.full((10, 12, 3), 128, np.uint8)
    heat = np.zeros((5, 6), np.float32)
    heat[:, 3:] = 1.0
    out = overlay_heatmap(rgb, heat)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert out[5, 10, 0] > out[5, 10, 2] and out[5, 1, 2] > out[5, 1, 0]  # hot = red, cold = blue


def red_detector(stride: int = 4, n_classes: int = 2) -> nn.Module:
    """Class 0 = red in the picture, through two strided convs: at 32 px its last feature map is 2x2
    (what MobileNetV2 has at 64 px)."""
    first, second = nn.Conv2d(3, 1, stride, stride=stride, bias=False), nn.Conv2d(1, 1, stride, stride=stride,
                                                                                  bias=False)
    head = nn.Linear(1, n_classes, bias=False)
    with torch.no_grad():
        first.weight.zero_()
        first.weight[0, 0] = 1.0 / stride**2
        second.weight.fill_(1.0 / stride**2)
        head.weight.copy_(torch.tensor([[1.0], [-1.0], [0.5]][:n_classes]))
    return nn.Sequential(first, second, nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def test_small_feature_map_is_computed_on_an_upscaled_input():
    from podium.reports.gradcam import gradcam_batch, plan_cam

    model = red_detector()
    x = torch.zeros(1, 3, 32, 32)
    x[0, 0, 2:10, 18:30] = 1.0  # a red patch in the top right, smaller than a quarter of the picture
    plan = plan_cam(model, x)
    # 2x2 at 32 px; the smallest input with a 7x7 map is 112 px (3.5x)
    assert (plan.feature_hw, plan.cam_hw, plan.cam_feature_hw, plan.skip) == ((2, 2), (112, 112), (7, 7), None)
    assert "only 2x2" in plan.describe() and "upscaled to 112x112, where it is 7x7" in plan.describe()
    native = gradcam(model, x, 0)
    big = torch.nn.functional.interpolate(x, size=plan.cam_hw, mode="bilinear", align_corners=False)
    (upscaled,), logits = gradcam_batch(model, big, [0])
    assert logits.shape == (1, 2) and logits[0].argmax() == 0
    # the patch covers 9% of the picture: the 2x2 map paints a quarter of it hot, the 7x7 one about the patch
    assert (native > 0.5).mean() > 0.2 and 0.05 < (upscaled > 0.5).mean() < 0.15
    rows, cols = np.nonzero(upscaled > 0.5)
    assert 7 <= rows.mean() <= 35 and 63 <= cols.mean() <= 105  # centred on the patch (rows 7:35, cols 63:105)
    assert upscaled[60:, :].max() == 0 and upscaled[:, :36].max() == 0


def test_gradcam_skipped_with_a_reason_when_no_size_works():
    from podium.reports.gradcam import plan_cam

    fixed = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))  # 32 px only
    plan = plan_cam(fixed, torch.zeros(1, 3, 32, 32))
    assert plan.skip and "4x4" in plan.skip and "does not run" in plan.skip
    no_conv = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3))
    assert "no convolutional feature map" in plan_cam(no_conv, torch.zeros(1, 3, 32, 32)).skip


@dataclass
class TinySource:
    model: nn.Module

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(cv2.resize(rgb, (32, 32))).permute(2, 0, 1).float() / 255.0
        return ((x - 0.5) / 0.25).unsqueeze(0)


def test_report_with_gradcam(tmp_path):
    preds = planted_predictions(tmp_path / "images")
    run = write_run(tmp_path / "run", preds)
    source = TinySource(tiny_cnn())
    assert isinstance(source, GradCamSource)
    page = build_run_report(run, model_forward=lambda: source, max_gallery=4).read_text()
    part = page[page.index("<h2>Grad-CAM</h2>"):]
    part = part[:part.index("</section>")]
    assert "the last feature map is 32x32; maps computed at that size" in part and "upscaled" not in part
    png = cv2.imread(str(run / "report" / "gradcam.png"))
    assert png.shape[0] > 6 * 160 and png.shape[1] >= 3 * 160  # 6 misclassified images, 3 tiles each
    # a 2x2 feature map: computed on a 4x larger input, and the page says so
    from podium.reports.html import Page
    from podium.reports.report import _gradcam_section, suspect_labels

    suspects = suspect_labels(preds, CLASSES)
    page = Page("t")
    _gradcam_section(page, tmp_path / "small", suspects, CLASSES, TinySource(red_detector(n_classes=3)))
    part = html.unescape(page.sections[0].render())
    assert "only 2x2" in part and "upscaled to 112x112, where it is 7x7" in part and "predicts the report's class for" in part
    assert (tmp_path / "small" / "gradcam.png").is_file()
    # no size works: one line saying why, no picture
    page = Page("t")
    fixed = nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    _gradcam_section(page, tmp_path / "fixed", suspects, CLASSES, TinySource(fixed))
    part = page.sections[0].render()
    assert "Grad-CAM skipped: the last feature map is 4x4" in part and "<img" not in part
    assert not (tmp_path / "fixed" / "gradcam.png").exists()


def test_vit_target_is_the_last_blocks_norm_on_the_patch_grid():
    """A ViT's only Conv2d is its patch embedding (the first layer): Grad-CAM explains the last
    block's first norm instead, its tokens laid back on the patch grid without the class and
    register tokens (timm's num_prefix_tokens), for whatever input size the model runs at."""
    import timm

    from podium.reports.gradcam import cam_target, gradcam_batch, plan_cam

    vit = timm.create_model("test_vit", pretrained=False, num_classes=3, reg_tokens=2)
    target = cam_target(vit)
    assert target.layer is vit.blocks[-1].norm1 and target.prefix == 3 and target.patch == (16, 16)
    assert target.grid((32, 48)) == (2, 3) and target.grid((112, 112)) == (7, 7)
    tokens = torch.arange(3 + 6, dtype=torch.float32).view(1, 9, 1).expand(2, 9, 4)
    as_map = target.reshape_transform((32, 48))(tokens)
    assert as_map.shape == (2, 4, 2, 3) and as_map[1, 3].tolist() == [[3, 4, 5], [6, 7, 8]]  # row-major patches
    plan = plan_cam(vit, torch.zeros(1, 3, 32, 32))  # 2x2 patches: upscaled in whole patches to a 7x7 grid
    assert (plan.feature_hw, plan.cam_hw, plan.cam_feature_hw, plan.skip) == ((2, 2), (112, 112), (7, 7), None)
    assert "patch-token grid is only 2x2" in plan.describe()
    maps, logits = gradcam_batch(vit, torch.randn(2, 3, 112, 112), [0, 2])
    assert maps.shape == (2, 112, 112) and logits.shape == (2, 3) and maps.max() > 0
    cells = maps[0].reshape(7, 16, 7, 16).mean(axis=(1, 3))
    assert cells.std() > 0.05  # one value per patch that differs across patches, not a colour field
    # a ViT built for 32 px only: the CAM runs on a copy rebuilt for 112 px (timm's set_input_size)
    fixed = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=32)
    plan = plan_cam(fixed, torch.zeros(1, 3, 32, 32))
    assert (plan.cam_hw, plan.cam_feature_hw, plan.skip) == ((112, 112), (7, 7), None)
    assert plan.model is not None and plan.model is not fixed and tuple(fixed.patch_embed.img_size) == (32, 32)
    assert "position encoding resampled" in plan.describe()
    maps, logits = gradcam_batch(plan.model, torch.randn(2, 3, 112, 112), [0, 2])
    assert maps.shape == (2, 112, 112) and maps.max() > 0


def test_swin_target_is_its_last_blocks_norm_channels_first():
    """timm's Swin keeps (N, h, w, C) maps: Grad-CAM takes its last block's first norm, channels moved
    first (its only Conv2d is the patch embedding, which the fallback picked)."""
    import timm

    from podium.reports.gradcam import cam_target, gradcam_batch, plan_cam

    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=3, img_size=112,
                             window_size=7, depths=(1, 1, 1, 1), embed_dim=16, num_heads=(1, 1, 1, 1))
    target = cam_target(swin)
    assert target.layer is swin.layers[-1].blocks[-1].norm1 and target.channels_last
    assert target.reshape_transform((112, 112))(torch.zeros(2, 3, 4, 5)).shape == (2, 5, 3, 4)
    plan = plan_cam(swin, torch.zeros(1, 3, 112, 112))  # 28 -> 14 -> 7 -> 4 (padded): a 4x4 map, upscaled
    assert (plan.feature_hw, plan.cam_hw, plan.cam_feature_hw, plan.skip) == ((4, 4), (196, 196), (7, 7), None), plan
    model = plan.model if plan.model is not None else swin
    maps, _ = gradcam_batch(model, torch.randn(1, 3, *plan.cam_hw), [1])
    assert maps.shape == (1, *plan.cam_hw) and maps.max() > 0


def test_report_gradcam_on_a_vision_transformer(tmp_path, capsys):
    """`podium report --gradcam` on a trained timm ViT built for 32 px only (vit_tiny_patch16_224:
    a 2x2 patch grid), explained on a copy rebuilt for 112 px (a 7x7 grid)."""
    from conftest import fast_overrides, make_folder

    from podium.cli import main

    data = make_folder(tmp_path / "train", {"cat": 6, "dog": 6, "fox": 6})
    overrides = fast_overrides(tmp_path, **{"model.name": "vit_tiny_patch16_224", "train.lr": "1e-6"})  # wrong rows
    assert main(["train", *overrides, f"data.train={data}", "data.val_fraction=0.5", "--quiet"]) == 0
    run = tmp_path / "runs dir" / "exp"
    assert main(["report", str(run), "--gradcam"]) == 0, capsys.readouterr().err
    page = html.unescape((run / "report.html").read_text())
    part = page[page.index("<h2>Grad-CAM</h2>"):]
    part = part[:part.index("</section>")]
    assert "skipped" not in part and "patch-token grid is only 2x2" in part and "upscaled to 112x112" in part
    assert "position encoding resampled" in part
    assert (run / "report" / "gradcam.png").is_file()


# --------------------------------------------------------------------------- headless rendering


def _chromium() -> str | None:
    found = shutil.which("chromium")
    return found or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")
def test_pages_render_headless(report, tmp_path):
    from podium.reports.eda import run_eda

    _, run, report_html = report
    samples = pd.DataFrame({"path": sorted(str(p) for p in (run.parent / "images").glob("*.png"))})
    samples["label"] = ["a", "b", "c"] * (len(samples) // 3) + ["a"] * (len(samples) % 3)
    run_eda(samples, tmp_path / "eda", sample_per_class=3)
    for page in (tmp_path / "eda" / "eda.html", report_html):
        text = page.read_text()
        refs = re.findall(r'(?:src|href)="([^"]*)"', text)
        assert refs and all(r.startswith(("data:", "#")) for r in refs), "external resource in page"
        shot = tmp_path / f"{page.stem}.png"
        proc = subprocess.run(
            [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
             "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", "--window-size=1280,900", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )
        console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
        assert not console, console
        image = cv2.imread(str(shot))
        assert image is not None, proc.stderr[-2000:]
        assert image.shape[:2] == (900, 1280) and image.std() > 10


@pytest.mark.skipif(_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")
def test_wrong_predictions_table_fits_1280_px_in_chromium(tmp_path):
    """Issue 19's check: at 1280 px the confidently-wrong table shows `predicted` and `confidence`
    without horizontal scrolling, with ids as long as a real dataset's (person folders) and images
    stored deep in the user's tree (an absolute path column pushed both off screen)."""
    from browser import DevTools, wait_for

    deep = tmp_path / "home" / "someone" / "competitions" / "mask-classification-2026" / "data" / "train" / "images"
    preds = planted_predictions(deep)
    preds["id"] = [f"000{k:03d}_female_Asian_45/incorrect_mask_{k:02d}.jpg" for k in range(len(preds))]
    run = write_run(tmp_path / "run", preds)
    page = build_run_report(run, max_gallery=8)
    tools = DevTools(_chromium(), tmp_path / "profile")
    try:
        target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        tools.send("Emulation.setDeviceMetricsOverride",
                   {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
        tools.send("Page.enable", session=session)
        tools.send("Page.navigate", {"url": page.as_uri()}, session)
        wait_for(tools, session, "document.readyState === 'complete'")
        layout = tools.send("Runtime.evaluate", {"returnByValue": True, "expression": """(() => {
            const wrap = document.querySelector('#confidently-wrong .table-wrap');
            const heads = Array.from(wrap.querySelectorAll('th'));
            const right = name => heads.find(h => h.textContent === name).getBoundingClientRect().right;
            return {width: window.innerWidth, scroll: wrap.scrollWidth, client: wrap.clientWidth,
                    heads: heads.map(h => h.textContent), predicted: right('predicted'),
                    confidence: right('confidence'), page: document.documentElement.scrollWidth};
        })()"""}, session)["result"]["value"]
    finally:
        tools.close()
    assert layout["width"] == 1280, layout
    assert layout["heads"] == ["id", "label", "predicted", "confidence"], layout
    assert layout["scroll"] <= layout["client"] and layout["page"] <= 1280, layout  # no horizontal scrolling
    assert layout["predicted"] <= 1280 and layout["confidence"] <= 1280, layout
