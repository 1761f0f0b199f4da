"""Does auto gain from tuning the learning rate (Lightning's lr_find) or from train.layer_decay?
(issue 20: "used by the plan only where it pays"). Paired single runs on the same pool, test part,
seeds and epochs as benchmarks/auto/run.py; only the one setting differs between the variants.

    python -m benchmarks.auto.tuning --tasks faces_mask3 --seeds 0,1 --epochs 8 --limit-pool 600

Variants: ``base`` (podium's defaults: sgd, lr 0.01, cosine), ``layer_decay`` (train.layer_decay=0.9,
AutoGluon's default), ``lr_find`` (train.lr = the suggestion of `podium.lr_find` on the pool; the
finder's own wall time is recorded as the cost auto would pay). Resumable: one line per finished
cell in tuning.jsonl under --cache, skipped when run again.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from benchmarks.auto.run import base_overrides, score, task_tables


def run_variant(args, task: str, seed: int, variant: str, pool: Path, test: Path, images: Path, cells: Path,
                lr: float | None) -> dict:
    import podium

    extra = {"base": [], "layer_decay": ["train.layer_decay=0.9"], "lr_find": [f"train.lr={lr}"]}[variant]
    runs = cells / task / f"{variant}-s{seed}"
    cfg = podium.config(None, f"data.train={pool}", *base_overrides(args, runs, seed), f"train.epochs={args.epochs}",
                        *extra)
    t0 = time.monotonic()
    run = podium.train(cfg, log=lambda *a: None)
    wall = time.monotonic() - t0
    probs = podium.predict(run, images)
    return {"test_macro_f1": score(probs, pd.read_csv(test)), "wall_s": wall, "epochs": args.epochs,
            "overrides": extra, "best_metric": run.summary.get("best_metric"),
            "epochs_trained": run.summary.get("epochs_trained")}


def find(args, task: str, pool: Path, cells: Path) -> dict:
    import podium

    cfg = podium.config(None, f"data.train={pool}", *base_overrides(args, cells / task / "lr_find", 0))
    t0 = time.monotonic()
    r = podium.lr_find(cfg, steps=args.lr_steps, log=lambda *a: None)
    return {"suggestion": r.suggestion, "wall_s": time.monotonic() - t0, "steps": args.lr_steps,
            "batch_size": r.batch_size, "dir": str(r.dir)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="faces_mask3")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--variants", default="base,layer_decay,lr_find")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr-steps", type=int, default=100)
    p.add_argument("--model", default="tv/mobilenet_v2")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--limit-pool", type=int)
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "podium-auto-tuning"))
    args = p.parse_args(argv)
    cache = Path(args.cache)
    cells = cache / ("tuning" + (f"-pool{args.limit_pool}" if args.limit_pool else ""))
    cells.mkdir(parents=True, exist_ok=True)
    results = cells / "tuning.jsonl"
    rows = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    done = {r["cell"]: r for r in rows}

    def record(row: dict) -> None:
        row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with results.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        done[row["cell"]] = row
        print(json.dumps(row), flush=True)

    for task in args.tasks.split(","):
        pool, test, images = task_tables(task, cache, args.limit_pool)
        variants = args.variants.split(",")
        if "lr_find" in variants and f"{task}/lr_find" not in done:
            print(f"== {task}/lr_find", flush=True)
            record({"cell": f"{task}/lr_find", "task": task, **find(args, task, pool, cells)})
        lr = done.get(f"{task}/lr_find", {}).get("suggestion")
        for seed in [int(s) for s in args.seeds.split(",")]:
            for variant in variants:
                cell = f"{task}/{variant}/s{seed}"
                if cell in done or (variant == "lr_find" and lr is None):
                    continue
                print(f"== {cell}", flush=True)
                row = run_variant(args, task, seed, variant, pool, test, images, cells, lr)
                record({"cell": cell, "task": task, "variant": variant, "seed": seed, **row})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
