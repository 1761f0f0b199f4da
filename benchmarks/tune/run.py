"""Pruning benchmark for `podium tune`: epochs executed and best value with and without pruning.

Why: the point of pruning is to spend fewer epochs on hopeless trials without
losing the best result. This runs the same seeded study twice on real data,
once with the median pruner and once without, and compares the total epochs
trained and the best validation macro F1 each reached.

Task: hymenoptera (ants vs bees) from ../shared/data, the official train/val
split, 64 px, tv/mobilenet_v2 fine-tuned from the local ImageNet weights,
``data.cache=disk`` (every trial reuses the decoded images). The random
sampler with a fixed seed draws the *same* parameter sets in both studies (a
TPE sampler would adapt to the pruned trials, so the two studies would not
try the same configurations).

Usage (from the repository root; writes WORK/results_<pruner>.json and the studies under WORK/studies;
the two studies may run at the same time with --only median / --only none):

    nice -n 19 .venv/bin/python benchmarks/tune/run.py --work /tmp/tune-bench [--trials 20] [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "src"))
SHARED = REPO.parent / "shared"

SEARCH = {
    "train.lr": {"low": 1.0e-4, "high": 1.0, "log": True},
    "train.optimizer": ["sgd", "adamw"],
    "augment.preset": ["none", "light", "default"],
    "model.dropout": {"low": 0.0, "high": 0.5},
}


def extract_hymenoptera(work: Path) -> Path:
    root = work / "data"
    if not (root / "hymenoptera" / "train").is_dir():
        root.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED / "data" / "hymenoptera.tar") as tar:
            tar.extractall(root, filter="data")
    return root / "hymenoptera"


def tune_config(data: Path, work: Path, epochs: int, size: int) -> dict:
    return {
        "data": {"train": str(data / "train"), "val": str(data / "val"), "image_size": size, "cache": "disk",
                 "cache_dir": str(work / "cache"), "num_workers": 0, "on_bad_image": "skip"},
        "model": {"name": "tv/mobilenet_v2", "pretrained_path": str(SHARED / "weights" / "mobilenet_v2-b0353104.pth")},
        "train": {"epochs": epochs, "batch_size": 32, "accelerator": "cpu", "devices": 1, "precision": "32"},
        "output": {"dir": str(work / "runs"), "tensorboard": False, "report": False},
        "search": SEARCH,
    }


def run_study(raw: dict, work: Path, name: str, trials: int, pruner: str) -> dict:
    from podium import tune

    started = time.time()
    result = tune(raw, trials=trials, study=name, root=work / "studies", sampler="random", pruner=pruner,
                  prune_startup=5, seed=0, log=lambda m: None)
    frame = pd.read_csv(result.trials_csv)
    return {"study": name, "pruner": pruner, "trials": len(frame), "counts": result.counts,
            "epochs_run": int(frame["epochs_run"].fillna(0).sum()), "best_value": result.best_value,
            "best_trial": result.best_trial, "best_params": result.best_params,
            "wall_s": round(time.time() - started, 1)}


def summarize(work: Path, trials: int) -> str:
    """Markdown: per-trial epochs and values of both studies side by side, then the totals.

    Reads the Optuna storages directly, so studies still running (or stopped early)
    are compared over the trials both have finished."""
    import optuna

    from podium.tuning.outputs import trials_frame
    from podium.tuning.study import prepare_settings

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    frames = {}
    for p in ("median", "none"):
        settings = prepare_settings({"search": SEARCH}, trials=trials, study=f"prune-{p}-{trials}", root=work / "studies")
        frames[p] = trials_frame(optuna.load_study(study_name=settings.study_name, storage=settings.storage_url), settings)
    keys = [k for k in SEARCH]
    both = frames["median"].merge(frames["none"], on="number", suffixes=("_median", "_none"))
    both = both[both["state_median"].isin(["COMPLETE", "PRUNED"]) & both["state_none"].eq("COMPLETE")]
    same = all((both[f"{k}_median"].astype(str) == both[f"{k}_none"].astype(str)).all() for k in keys)
    lines = ["| trial | " + " | ".join(keys) + " | no pruning: macro F1 | epochs | median pruner: state | value | epochs |",
             "|" + "---|" * (len(keys) + 6)]
    for _, r in both.iterrows():
        params = [f"{r[k + '_none']:.3g}" if isinstance(r[k + "_none"], float) else str(r[k + "_none"]) for k in keys]
        lines.append(f"| {int(r['number'])} | " + " | ".join(params) + f" | {r['value_none']:.4f} | {int(r['epochs_run_none'])} "
                     f"| {r['state_median']} | {r['value_median']:.4f} | {int(r['epochs_run_median'])} |")
    best = {p: both.loc[both[f"state_{p}"] == "COMPLETE", f"value_{p}"].max() for p in ("median", "none")}
    lines += ["", f"trials compared: {len(both)} (identical parameters in both studies: {same})", "",
              "| | epochs executed | best val macro F1 | pruned trials |", "|---|---|---|---|"]
    for p, label in (("none", "no pruning"), ("median", "median pruner")):
        pruned = int((both[f"state_{p}"] == "PRUNED").sum())
        lines.append(f"| {label} | {int(both[f'epochs_run_{p}'].sum())} | {best[p]:.4f} | {pruned} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--only", choices=["median", "none"], help="run one of the two studies")
    parser.add_argument("--summarize", action="store_true", help="print the comparison table of finished studies")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.work, args.trials))
        return
    import warnings

    warnings.simplefilter("ignore")
    import logging

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    data = extract_hymenoptera(args.work)
    raw = tune_config(data, args.work, args.epochs, args.size)
    for pruner in ([args.only] if args.only else ["median", "none"]):
        result = run_study(raw, args.work, f"prune-{pruner}-{args.trials}", args.trials, pruner)
        (args.work / f"results_{pruner}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
