"""Benchmark of `podium auto` (issue 20): the single default run vs auto at two budgets, scored
by macro F1 on a fixed grouped ~20% test part that auto never sees (not for weights, biases or TTA).

    python -m benchmarks.auto.run --tasks faces_mask3 --budgets 20m,60m --seeds 0,1
    python -m benchmarks.auto.run --tasks faces_mask3 --budgets 4m,8m --seeds 0 --single-epochs 4  (reduced)

Resumable: every finished cell is a line of results.jsonl under --cache and is skipped when run
again; an interrupted auto cell resumes its own folder (same arguments). The same command runs on a
GPU machine (train.accelerator=auto): the measured plan then buys larger models and sizes.
Data: the extracted task folders under --cache/data (from /work/shared/data/*.tar when missing).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[3] / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
TARS = {"faces_mask3": "faces_mask3_dev.tar", "hymenoptera": "hymenoptera.tar", "utkface": "utkface_dev.tar"}
ROOTS = {"utkface": "utkface_dev"}  # the folder a tar extracts to, where it is not the task's name


def task_tables(name: str, cache: Path, limit: int | None = None) -> tuple[Path, Path, Path]:
    """pool.csv (path,label,group), test.csv (path,label,group) and test_images.csv (path only):
    the test part is fold 0 of podium's grouped stratified 5-fold split (seed 0), about 20%."""
    from podium.data.splits import make_folds

    root = cache / "data" / ROOTS.get(name, name)
    if not root.is_dir():
        (cache / "data").mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-xf", str(SHARED / "data" / TARS[name]), "-C", str(cache / "data")], check=True)
    out = cache / "auto-tasks" / (name + (f"-pool{limit}" if limit else ""))
    pool, test, images = out / "pool.csv", out / "test.csv", out / "test_images.csv"
    if pool.is_file() and test.is_file() and images.is_file():
        return pool, test, images
    if name == "faces_mask3":
        t = pd.read_csv(root / "labels.csv")
        frame = pd.DataFrame({"path": [str(root / p) for p in t["path"]], "label": t["label"],
                              "group": t["source_image"].astype(str)})
    elif name == "utkface":  # gender x age bin (<30, 30-59, >=60), 6 classes; no person id: one image per group
        t = pd.read_csv(root / "labels.csv")
        age_bin = np.where(t["age"] < 30, "young", np.where(t["age"] < 60, "middle", "old"))
        frame = pd.DataFrame({"path": [str(root / p) for p in t["path"]], "label": t["gender"].astype(str) + "_" + age_bin,
                              "group": [Path(p).stem for p in t["path"]]})
    else:  # hymenoptera: class folders under train/ and val/, one image per group
        paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        frame = pd.DataFrame({"path": [str(p) for p in paths], "label": [p.parent.name for p in paths],
                              "group": [p.stem for p in paths]})
    folds = make_folds(frame, 5, 0)
    out.mkdir(parents=True, exist_ok=True)
    pool_frame = frame[folds != 0]
    if limit and limit < len(pool_frame):  # a reduced run: whole groups drawn at random (seed 0) up to `limit` images
        rng = np.random.default_rng(0)
        groups = pool_frame["group"].drop_duplicates().to_numpy()
        rng.shuffle(groups)
        sizes = pool_frame.groupby("group").size().reindex(groups).cumsum()
        pool_frame = pool_frame[pool_frame["group"].isin(groups[(sizes <= limit).to_numpy()])]
    pool_frame.to_csv(pool, index=False)
    frame[folds == 0].to_csv(test, index=False)
    frame[folds == 0][["path"]].to_csv(images, index=False)
    return pool, test, images


def base_overrides(args, runs: Path, seed: int) -> list[str]:
    items = [f"model.name={args.model}", f"data.image_size={args.size}", "data.group_column=group",
             f"train.seed={seed}", f"output.dir={runs}", "output.tensorboard=false",
             f"data.num_workers={args.workers}", f"train.accelerator={args.accelerator}"]
    if WEIGHTS.is_file() and args.model == "tv/mobilenet_v2":
        items.append(f"model.pretrained_path={WEIGHTS}")
    return items


def score(probs: pd.DataFrame, test: pd.DataFrame) -> float:
    from podium.evaluation.scores import macro_f1

    classes = sorted(test["label"].unique())
    key = probs["id"].astype(str)
    by_path = dict(zip(test["path"].astype(str), test["label"]))
    by_name = {Path(p).name: lab for p, lab in by_path.items()}
    truth = [by_path.get(i, by_name.get(Path(i).name)) for i in key]
    if any(t is None for t in truth):
        raise SystemExit("test ids do not match the test table")
    y = np.array([classes.index(t) for t in truth])
    pred = probs[classes].to_numpy().argmax(1)
    return macro_f1(y, pred, len(classes))


def run_single(args, task: str, seed: int, pool: Path, test: Path, images: Path, cells: Path) -> dict:
    import podium

    runs = cells / task / f"single-s{seed}"
    t0 = time.monotonic()
    cfg = podium.config(None, f"data.train={pool}", *base_overrides(args, runs, seed), f"train.epochs={args.single_epochs}")
    run = podium.train(cfg, log=lambda *a: None)
    wall = time.monotonic() - t0
    probs = podium.predict(run, images)
    return {"test_macro_f1": score(probs, pd.read_csv(test)), "wall_s": wall, "run": str(run.dir),
            "epochs": args.single_epochs}


def fold_epochs(member: Path) -> list[int | None]:
    """The epochs each fold model of a member trained (its fold runs' summary.json)."""
    return [json.loads((f / "summary.json").read_text()).get("epochs_trained") if (f / "summary.json").is_file()
            else None for f in sorted(member.glob("fold*")) if f.is_dir()]


def run_auto(args, task: str, seed: int, budget: str, pool: Path, test: Path, images: Path, cells: Path) -> dict:
    import podium
    from podium.durations import parse_duration

    folder = cells / task / f"auto-{budget}-s{seed}"
    t0 = time.monotonic()
    r = podium.auto(pool, time=budget, preset=args.preset, test=images, out=folder,
                    overrides=base_overrides(args, cells / task / "runs", seed),
                    models=args.models.split(",") if args.models else None,
                    sizes=[int(s) for s in args.sizes.split(",")] if args.sizes else None, export=False,
                    log=lambda *a: print(*a, flush=True))
    wall = time.monotonic() - t0
    probs = pd.read_parquet(r.dir / "test_probabilities.parquet")
    s = r.summary
    return {"test_macro_f1": score(probs, pd.read_csv(test)), "wall_s_this_process": wall, "spent_s": s["spent_s"],
            "budget_s": parse_duration(budget), "within_10pct": s["within_budget"], "plan": s["plan_text"],
            "mode": s.get("mode", "cv"), "epochs_trained": {m["name"]: fold_epochs(Path(m["dir"])) for m in s["members"]},
            "tta_gain": {m["name"]: m.get("gain") for m in s["members"]},
            "final": f"{s['final']['kind']} {s['final']['name']}", "ensemble": s["final"]["ensemble"],
            "biases_kept": s["biases"]["kept"], "tta": {m["name"]: m["kept"] for m in s["members"]},
            "oof_macro_f1": s["oof_macro_f1"], "stages": s["plan"].get("stages", []), "folder": str(r.dir)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="faces_mask3,utkface,hymenoptera")
    p.add_argument("--budgets", default="20m,60m")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--preset", default="medium")
    p.add_argument("--model", default="tv/mobilenet_v2", help="the single run's model (and the config auto starts from)")
    p.add_argument("--models", help="auto's candidates (default: the preset's with local weights)")
    p.add_argument("--sizes", help="auto's candidate sizes (default: the preset's)")
    p.add_argument("--size", type=int, default=64, help="the single run's image size")
    p.add_argument("--single-epochs", type=int, default=10)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--limit-pool", type=int, help="a reduced run: at most this many training images (whole groups); "
                                                    "the test part is unchanged")
    p.add_argument("--accelerator", default="auto")
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "podium-auto-bench"))
    p.add_argument("--cells", default="auto-cells", help="the cells folder under --cache (a new one for a new "
                   "commit's cells; copy the single runs' lines into its results.jsonl to reuse them)")
    args = p.parse_args(argv)
    cache = Path(args.cache)
    cells = cache / (args.cells + (f"-pool{args.limit_pool}" if args.limit_pool else ""))
    results = cells / "results.jsonl"
    cells.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["cell"] for line in results.read_text().splitlines()} if results.is_file() else set()
    for task in args.tasks.split(","):
        pool, test, images = task_tables(task, cache, args.limit_pool)
        for seed in [int(s) for s in args.seeds.split(",")]:
            todo = [("single", None)] + [("auto", b) for b in args.budgets.split(",")]
            for kind, budget in todo:
                cell = f"{task}/{kind}{'-' + budget if budget else ''}/s{seed}"
                if cell in done:
                    continue
                print(f"== {cell}", flush=True)
                from podium.errors import PodiumError

                try:
                    row = (run_single(args, task, seed, pool, test, images, cells) if kind == "single"
                           else run_auto(args, task, seed, budget, pool, test, images, cells))
                except PodiumError as exc:  # e.g. a budget below the measured minimum: recorded, not hidden
                    row = {"refused": str(exc)}
                row.update({"cell": cell, "task": task, "kind": kind, "budget": budget, "seed": seed,
                            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
                with results.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
