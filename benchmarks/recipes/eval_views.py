"""Same weights, other evaluation views: what the eval pipeline alone is worth.

Why: ``data.resize`` and ``data.eval_crop_pct`` change only how validation and
test images are read, so their effect is measured on already-trained study runs
(no retraining, no seed noise from training): each run's checkpoint predicts its
validation split once per view, without TTA, as the study scores it.

    .venv/bin/python -m benchmarks.recipes.eval_views --val WORK/tasks/faces_mask3/val.csv RUN [RUN ...]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

#: (data.resize, data.eval_crop_pct): squash is podium's default, crop + 0.875 is torchvision's eval
VIEWS = [("squash", 1.0), ("squash", 0.875), ("crop", 1.0), ("crop", 0.875), ("pad", 1.0)]


def score_views(run: Path, val_csv: Path) -> list[dict]:
    from podium.evaluation.scores import macro_f1
    from podium.inference.predict import predict_frame
    from podium.inference.predictor import load_predictor

    predictor = load_predictor(run, tta=[])  # the best checkpoint, no TTA: as the study scores it
    own = predictor.config
    val = pd.read_csv(val_csv)
    y = val["label"].astype(str).map({c: i for i, c in enumerate(predictor.classes)}).to_numpy()
    rows = []
    for resize, pct in VIEWS:
        cfg = own.model_copy(deep=True)
        cfg.data.resize, cfg.data.eval_crop_pct = resize, pct
        predictor.config = cfg  # how the images are read; the weights stay the same
        probs = predict_frame(predictor, val.assign(id=val["path"]), tta=[])
        rows.append({"run": Path(run).name, "resize": resize, "eval_crop_pct": pct,
                     "macro_f1": macro_f1(y, probs.argmax(1), len(predictor.classes))})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--val", type=Path, required=True, help="the study task's val.csv")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "eval_views.csv")
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args(argv)
    table = pd.DataFrame([row for run in args.runs for row in score_views(run, args.val)])
    table.to_csv(args.out, index=False)
    print(table.pivot_table(index="run", columns=["resize", "eval_crop_pct"], values="macro_f1").round(3).to_string())


if __name__ == "__main__":
    main()
