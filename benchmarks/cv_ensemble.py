"""Benchmark (not a test): does k-fold CV, TTA and ensembling raise macro F1, and at what cost?

On hymenoptera (ants vs bees; 244 train / 153 val images) with tv/mobilenet_v2
fine-tuned from local ImageNet weights, measured on the untouched val folder:

  single   one run on train (internal 20% holdout picks the checkpoint)
  cv       k-fold CV on train, test = average of the k fold models
  cv+tta   the same fold models, test predicted with TTA (hflip)
  ensemble the k-fold CV above + a second CV (another fold seed, optionally image size), soft vote

Also reports the OOF (cross-validated) scores and the cost ratio
``k-fold wall time / (k x single-run wall time)``.

    PYTHONPATH=src .venv/bin/python benchmarks/cv_ensemble.py --folds 5 --epochs 3
"""
from __future__ import annotations

import argparse
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = (ROOT / ".." / "shared").resolve()


def extract(dest: Path) -> Path:
    target = dest / "hymenoptera"
    if not (target / "val").is_dir():
        with tarfile.open(SHARED / "data" / "hymenoptera.tar") as tar:
            tar.extractall(dest)
    return target


def overrides(data: Path, runs: Path, name: str, size: int, epochs: int, seed: int = 42) -> list[str]:
    return [f"data.train={data / 'train'}", "model.name=tv/mobilenet_v2",
            f"model.pretrained_path={SHARED / 'weights' / 'mobilenet_v2-b0353104.pth'}", f"data.image_size={size}",
            f"train.epochs={epochs}", "train.batch_size=16", "train.lr=0.01", "output.tensorboard=false",
            f"output.dir={runs}", f"output.name={name}", f"cv.seed={seed}", "train.accelerator=cpu"]


def test_f1(ids: pd.Series, probs: np.ndarray, classes: list[str]) -> float:
    from podium.evaluation.scores import macro_f1

    y = np.array([classes.index(i.split("/")[0]) for i in ids])
    return macro_f1(y, probs.argmax(1), len(classes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--second-size", type=int, default=160)
    parser.add_argument("--second-folds", type=int, default=3)
    parser.add_argument("--workdir", default="/tmp/podium-cv-bench")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_cv.md"))
    args = parser.parse_args()

    import podium
    from podium.data.dataset import load_samples
    from podium.evaluation.cv import oof_tta, run_cv
    from podium.evaluation.ensemble_runs import ensemble_members
    from podium.inference.predict import predict_frame
    from podium.inference.predictor import load_predictor
    from podium.schema import load_config

    work = Path(args.workdir)
    data = extract(work)
    runs = work / f"runs-{int(time.time())}"
    quiet = dict(progress=False, log=lambda *a: None)
    rows, times = {}, {}

    from podium.model.training import train

    cfg = load_config(None, overrides(data, runs, "single", args.size, args.epochs))
    t = time.perf_counter()
    single = train(cfg, progress=False, log=lambda *a: None)
    times["single"] = time.perf_counter() - t
    ev = podium.evaluate(single.run_dir, data / "val", out=runs / "single-eval")
    rows["single model"] = {"holdout/OOF macro F1": single.val_metrics["f1"], "test macro F1": ev.metrics["f1"],
                            "wall time (s)": times["single"]}

    test = data / "val"
    cfg = load_config(None, overrides(data, runs, "cv", args.size, args.epochs))
    t = time.perf_counter()
    a = run_cv(cfg, folds=args.folds, test_data=test, **quiet)
    times["cv"] = time.perf_counter() - t
    s = a.summary
    classes = s["classes"]
    avg = pd.read_parquet(a.run_dir / "test_probabilities.parquet")
    rows[f"{args.folds}-fold CV (fold average)"] = {
        "holdout/OOF macro F1": s["cv_macro_f1"], "test macro F1": test_f1(avg["id"], avg[classes].to_numpy(), classes),
        "wall time (s)": times["cv"], "fold F1 mean +- std": f"{s['fold_macro_f1_mean']:.4f} +- {s['fold_macro_f1_std']:.4f}"}

    t = time.perf_counter()
    tta = oof_tta(a.run_dir, ["identity", "hflip"])
    test_frame = load_samples(test, cfg.data.model_copy(update={"format": "folder"}), labeled=False)
    # the cv run as one predictor: its folds averaged, each with the identity and hflip views
    probs = predict_frame(load_predictor(a.run_dir, tta=["identity", "hflip"]), test_frame)
    times["tta"] = time.perf_counter() - t
    rows[f"{args.folds}-fold CV + TTA (identity, hflip)"] = {
        "holdout/OOF macro F1": tta["macro_f1_tta"], "test macro F1": test_f1(test_frame["id"], probs, classes),
        "wall time (s)": times["cv"] + times["tta"]}

    cfg = load_config(None, overrides(data, runs, "cv-b", args.second_size, args.epochs, seed=7))
    t = time.perf_counter()
    b = run_cv(cfg, folds=args.second_folds, test_data=test, **quiet)
    times["cv_b"] = time.perf_counter() - t
    avg_b = pd.read_parquet(b.run_dir / "test_probabilities.parquet")
    rows[f"{args.second_folds}-fold CV, size {args.second_size}, fold seed 7"] = {
        "holdout/OOF macro F1": b.summary["cv_macro_f1"],
        "test macro F1": test_f1(avg_b["id"], avg_b[classes].to_numpy(), classes), "wall time (s)": times["cv_b"]}
    ens = ensemble_members([str(a.run_dir), str(b.run_dir)], "soft", out=runs / "ensemble")
    ens_test = pd.read_parquet(Path(ens["out_dir"]) / "test_probabilities.parquet")
    rows["ensemble of both CVs (soft)"] = {
        "holdout/OOF macro F1": ens["oof_macro_f1"],
        "test macro F1": test_f1(ens_test["id"], ens_test[classes].to_numpy(), classes),
        "wall time (s)": times["cv"] + times["cv_b"]}

    fold_times = [f["wall_time_s"] for f in s["folds"]]
    ratio = times["cv"] / (args.folds * times["single"])
    table = pd.DataFrame(rows).T
    text = [
        "# Cross-validation, TTA and ensembles on hymenoptera", "",
        f"tv/mobilenet_v2 from local ImageNet weights, image size {args.size}, {args.epochs} epochs, batch 16, "
        f"SGD lr 0.01 cosine, CPU ({_cpu()}). Train: {s['n_images']} images (hymenoptera/train); "
        f"test: {len(test_frame)} labelled images (hymenoptera/val) never used for training or selection.", "",
        "'holdout/OOF macro F1' is the single run's 20% holdout, or the CV's out-of-fold score (every train image "
        "predicted by the fold that did not train on it); 'test macro F1' is on hymenoptera/val.", "",
        _markdown(table), "",
        f"- cost ratio k-fold / (k x single run) = {times['cv']:.1f} s / ({args.folds} x {times['single']:.1f} s) "
        f"= **{ratio:.2f}** (fold wall times {', '.join(f'{x:.1f}' for x in fold_times)} s; each fold trains on "
        f"{(args.folds - 1) / args.folds:.0%} of train vs 80% for the single run, and also predicts the test set)",
        f"- TTA on OOF: macro F1 {tta['macro_f1_plain']:.4f} -> {tta['macro_f1_tta']:.4f} (gain {tta['gain']:+.4f}); "
        f"TTA prediction cost {times['tta']:.1f} s for OOF + test",
        f"- ensemble member scores (OOF): {', '.join(f'{r.name}={r.macro_f1:.4f}' for r in ens['scores'].itertuples())}",
        "", "Raw numbers: " + json.dumps({k: round(v, 2) for k, v in times.items()}),
    ]
    Path(args.out).write_text("\n".join(text) + "\n")
    print("\n".join(text))


def _markdown(table: pd.DataFrame) -> str:
    cols = list(table.columns)
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) and v == v else ("" if v != v else str(v))  # noqa: E731
    lines = ["| setup | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(fmt(row[c]) for c in cols) + " |" for name, row in table.iterrows()]
    return "\n".join(lines)


def _cpu() -> str:
    import os

    return f"{os.cpu_count()} cores, shared"


if __name__ == "__main__":
    main()
