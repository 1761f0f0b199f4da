"""Which checkpoint should a fold model keep: the epoch with the best validation macro F1 (podium's
default, `train.monitor=val_f1`) or the last one (`train.monitor=epoch`)? Inference only, on the
runs benchmarks/auto/run.py already trained: every cell's models predict the held-back test part
with best.ckpt and with last.ckpt (no TTA, no biases, folds averaged), and every fold predicts its
own validation images with last.ckpt, so the out-of-fold score of each choice is known too (the best
checkpoint's OOF score is optimistic: that checkpoint was chosen on those same images).

    python -m benchmarks.auto.checkpoint_choice --cache ~/.cache/podium-auto-idle

Writes checkpoint_choice.jsonl beside the cells' results.jsonl (one line per cell as it finishes, recomputed;
`--only utkface` limits it to cells whose name starts so).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.auto.run import score


def _test_scores(model_dir: Path, images: Path, test: pd.DataFrame) -> dict:
    import podium

    return {f"test_{c}": score(podium.predict(model_dir, images, checkpoint=c, tta=None), test) for c in ("best", "last")}


def _oof_scores(member: Path) -> dict:
    """OOF macro F1 with each fold's best.ckpt (as gathered) and with its last.ckpt."""
    import podium
    from podium.evaluation.scores import macro_f1

    best, last, truth, epochs = [], [], [], []
    for fold in sorted(member.glob("fold[0-9]*")):
        val = pd.read_parquet(fold / "val_predictions.parquet")
        classes = json.loads((fold / "classes.json").read_text())
        classes = classes["classes"] if isinstance(classes, dict) else classes
        table = fold / "val_paths.csv"
        val[["path"]].to_csv(table, index=False)
        probs = podium.predict(fold, table, checkpoint="last", tta=None)
        table.unlink()
        truth.append(np.array([classes.index(t) for t in val["target"]]))
        best.append(val[classes].to_numpy().argmax(1))
        last.append(probs[classes].to_numpy().argmax(1))
        summary = json.loads((fold / "summary.json").read_text())
        epochs.append((summary.get("best_epoch"), summary.get("epochs_trained")))
    y = np.concatenate(truth)
    n = len(classes)
    return {"oof_best": macro_f1(y, np.concatenate(best), n), "oof_last": macro_f1(y, np.concatenate(last), n),
            "fold_best_epoch_of": epochs}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "podium-auto-bench"))
    p.add_argument("--cells", default="auto-cells", help="the cells folder under --cache")
    p.add_argument("--only", default="", help="only cells whose name starts with this")
    args = p.parse_args(argv)
    cells = Path(args.cache) / args.cells
    out = cells / "checkpoint_choice.jsonl"
    out.write_text("")
    for line in (cells / "results.jsonl").read_text().splitlines():
        cell = json.loads(line)
        if "refused" in cell or not cell["cell"].startswith(args.only):
            continue
        tables = Path(args.cache) / "auto-tasks" / cell["task"]
        test, images = pd.read_csv(tables / "test.csv"), tables / "test_images.csv"
        if cell["kind"] == "single":
            row = _test_scores(Path(cell["run"]), images, test)
        else:
            members = sorted((Path(cell["folder"]) / "members").iterdir())
            row = {}
            for member in members:  # each member's fold models alone, not auto's ensemble of them
                row[member.name] = {**_test_scores(member, images, test), **_oof_scores(member)}
        row.update(cell=cell["cell"], reported=cell["test_macro_f1"])
        with out.open("a") as fh:  # row by row: a long pass keeps what it finished
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
