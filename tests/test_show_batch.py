"""`podium show-batch` / ``cfg.show_batch()``: augmented training images with their true labels."""
import numpy as np
from conftest import COLORS, fast_overrides, make_folder
from PIL import Image

import podium
from podium.cli import main
from podium.reports.batch import show_batch


def test_cli_writes_a_grid_and_never_overwrites(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    args = ["show-batch", *fast_overrides(tmp_path, **{"data.train": str(data)}), "--n", "6"]
    assert main(args) == 0
    first = tmp_path / "runs dir" / "exp-batch.png"
    assert "6 augmented training images" in capsys.readouterr().out
    assert Image.open(first).size[0] > 200  # a real figure
    assert main(args) == 0
    assert (tmp_path / "runs dir" / "exp-batch-2.png").is_file()


def test_labels_belong_to_the_images_and_n_takes_effect(tmp_path):
    data = make_folder(tmp_path / "data")
    cfg = podium.config(None, *fast_overrides(tmp_path, **{"data.train": str(data), "augment.preset": "none",
                                                            "data.resize": "squash"}))
    preview = cfg.show_batch(n=5, out=str(tmp_path / "b.png"), log=lambda *a: None)
    assert len(preview.labels) == 5 and set(preview.labels) <= set(COLORS)
    assert preview._repr_png_()[:4] == b"\x89PNG"
    # the images behind the grid: each centre has its label's colour (loader order is seeded)
    from podium.data.samples import prepare_data
    from podium.model.training import build_datamodule

    prepared = prepare_data(cfg, log=lambda *a: None)
    x, y = next(iter(build_datamodule(cfg, prepared).train_dataloader()))[:2]
    for image, target in zip(x[:5], y[:5]):
        centre = np.asarray(image)[:, 16, 16].astype(int)
        label = prepared.classes[int(target)]
        assert np.abs(centre - np.array(COLORS[label])).max() < 40, (label, centre)
    assert preview.labels == [prepared.classes[int(t)] for t in y[:5]]
    assert show_batch(cfg, n=2, out=tmp_path / "c.png", log=lambda *a: None).labels == preview.labels[:2]
