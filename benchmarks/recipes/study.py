"""Recipe study: tasks x recipes x seeds, each cell one `podium train` run on a fixed dev split.

Why: podium's defaults must beat the reference recipes on real held-out tasks
scored by macro F1. Every recipe is a dict of podium config overrides, so the
study measures podium's own pipeline configured like each reference; every
technique switch is one more recipe.

Usage (repository root; resumable: a cell already in results.csv is never re-run):

    nice -n 19 .venv/bin/python -m benchmarks.recipes.study --work ~/.cache/podium-study \\
        --tasks faces_mask3 --recipes podium,reference,course --seeds 0 --epochs 3 --size 48 \\
        --out benchmarks/recipes

Tasks (each a fixed dev split, written once under WORK/tasks/<task>/{train,val}.csv):
  faces_mask3  real face crops (3 classes, rare 3%); validation = one StratifiedGroupKFold fold
               (20%) grouped by `source_image`, so faces of one photo never straddle; 64 px, 15 epochs.
  utkface      gender x age bins (<30, 30-59, >=60), 6 classes; no group column, so a fixed
               stratified 20% split (seed 0); 128 px, 6 epochs.
  utkface_mh   the utkface split with gender and exact-age columns, trained in multihead mode
               (a head per attribute), so the `ordinal` recipe can learn from the exact ages.
  hymenoptera  the official train / val folders (ants vs bees); 128 px, 6 epochs.
  cifar_lt     CIFAR-10 train images, long-tailed subset (500 -> 25 per class, ratio 20),
               validation 50 per class from the remaining train images; 32 px, 10 epochs.

--epochs / --size override the tasks' protocol for screening: the protocol tag
(e.g. ``e3-s48``) is part of a cell's key, so screening and full cells never mix.
The runner only shells out to `podium train`; on a GPU machine the same
command trains there (train.accelerator=auto) with nothing changed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
RESULT_COLUMNS = ["task", "protocol", "recipe", "seed", "macro_f1", "rare_recall", "accuracy", "wall_s",
                  "epochs", "best_epoch", "rare_class", "last_f1", "bias_gain", "cut_gain", "run_dir"]
#: scores derived from a finished run folder; rows written without them are filled in from run_dir
DERIVED = ("last_f1", "bias_gain", "cut_gain")


# ---------------------------------------------------------------- recipes

#: name -> (description, podium overrides). "@size" is replaced by the task's image size.
RECIPES: dict[str, tuple[str, dict]] = {
    "podium": ("podium defaults (batch 64 since this study; the rows were run as `b64` = batch 64 on top of the old defaults)", {}),
    "podium_b32": ("podium's defaults before this study: batch 32 (every one-switch recipe below was measured on top of these)",
                   {"train.batch_size": 32}),
    "reference": ("torchvision reference: RRC 0.08-1 + flip, SGD 0.01 momentum 0.9 (not Nesterov), wd 4e-5, "
                  "cosine, label smoothing 0.1, batch 64, no class weights, last epoch", {
                      "augment.preset": "reference", "train.optimizer": "momentum", "train.lr": 0.01,
                      "train.momentum": 0.9, "train.weight_decay": 4e-5, "train.scheduler": "cosine",
                      "train.loss": "label_smoothing", "train.label_smoothing": 0.1, "train.batch_size": 64,
                      "train.class_weights": "none", "train.monitor": "epoch", "model.dropout": 0.2}),
    "course": ("plain course loop: squash, no augmentation, Adam 1e-4, StepLR(7, 0.1), CE, best val accuracy", {
        "augment.preset": "none", "data.resize": "squash", "train.optimizer": "adam", "train.lr": 1e-4,
        "train.weight_decay": 0.0, "train.scheduler": "step", "train.step_epochs": 7, "train.gamma": 0.1,
        "train.loss": "ce", "train.class_weights": "none", "train.monitor": "val_acc"}),
    "timm": ("timm train.py-style: AdamW 1e-3, RRC 0.08-1 + flip + RandAugment m9, random erasing 0.2, "
             "wd 0.05 (the usual AdamW setting; train.py's literal default is 2e-5), label smoothing 0.1, "
             "1 warmup epoch (timm: 5, too long for 5-15 epoch runs), cosine, no class weights, last epoch", {
                 "augment.backend": "torchvision",
                 "augment.train_ops": [{"name": "RandomResizedCrop", "size": "@size", "scale": [0.08, 1.0]},
                                       {"name": "RandomHorizontalFlip"}, {"name": "RandAugment", "magnitude": 9}],
                 "augment.random_erasing": 0.2, "train.optimizer": "adamw", "train.lr": 1e-3,
                 "train.weight_decay": 0.05, "train.warmup_epochs": 1, "train.class_weights": "none",
                 "train.monitor": "epoch"}),
    # one switch at a time on top of podium's defaults
    "logit_adj": ("podium + logit-adjusted loss (tau 1), no class weights",
                  {"train.loss": "logit_adjusted", "train.class_weights": "none"}),
    "drw": ("podium + deferred re-weighting: inverse-frequency weights in the last third of the epochs",
            {"train.class_weights": "auto", "train.drw_epochs": "@third"}),
    "bb_lr_0.1": ("podium + backbone lr x0.1", {"train.backbone_lr_mult": 0.1}),
    "lpft": ("podium + LP-FT: head only for the first epoch", {"model.freeze_backbone_epochs": 1}),
    "crop": ("podium + aspect-preserving resize (short side + center crop)", {"data.resize": "crop"}),
    "pad": ("podium + aspect-preserving resize (pad)", {"data.resize": "pad"}),
    "rrc_wide": ("podium + RandomResizedCrop 0.08-1 (reference crop)", {"augment.preset": "reference"}),
    "trivial": ("podium + TrivialAugmentWide", {"augment.trivial_augment": True}),
    "erasing": ("podium + random erasing 0.25", {"augment.random_erasing": 0.25}),
    "mixup": ("podium + MixUp 0.2 / CutMix 1.0", {"train.mixup_alpha": 0.2, "train.cutmix_alpha": 1.0}),
    "bb_lr_0.1+la": ("podium + backbone lr x0.1 + logit-adjusted loss, no class weights",
                     {"train.backbone_lr_mult": 0.1, "train.loss": "logit_adjusted", "train.class_weights": "none"}),
    "ref_nesterov": ("reference with Nesterov SGD", {"@base": "reference", "train.optimizer": "sgd"}),
    "ref_sqrt": ("reference + sqrt class weights", {"@base": "reference", "train.class_weights": "sqrt"}),
    "ref_bestf1": ("reference selecting the best val macro F1 epoch", {"@base": "reference", "train.monitor": "val_f1"}),
    # checkpoint selection on a small validation set (podium selects the best val macro F1 epoch)
    "sel_loss": ("podium selecting the lowest val loss epoch", {"train.monitor": "val_loss"}),
    "sel_last": ("podium keeping the last epoch", {"train.monitor": "epoch"}),
    "ema": ("podium + EMA of the weights (decay 0.998), EMA weights validated and selected",
            {"train.ema": True, "train.ema_decay": 0.998}),
    "ref_evalcrop": ("reference evaluated like torchvision: resize to size/0.875, center crop",
                     {"@base": "reference", "data.eval_crop_pct": 0.875}),
    "evalcrop": ("podium + eval resize to size/0.875 and center crop", {"data.eval_crop_pct": 0.875}),
    "ordinal": ("podium + ordinal age head trained on exact ages, bin edges tuned on validation "
                "(multihead tasks only)", {"task.ordinal": ["age"]}),
    # not podium: the same recipe as a plain PyTorch loop (benchmarks/recipes/tv_reference.py)
    "tv_loop": ("torchvision reference recipe as a plain PyTorch loop outside podium (RRC on the original image, "
                "eval resize size/0.875 + center crop, per-epoch cosine, wd on every parameter)", {"@loop": True}),
}


def recipe_overrides(name: str, size: int, epochs: int) -> dict:
    """A recipe's overrides with ``@base`` expanded and ``@size`` / ``@third`` filled in."""
    if name not in RECIPES:
        raise SystemExit(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    overrides = dict(RECIPES[name][1])
    base = overrides.pop("@base", None)
    overrides.pop("@loop", None)
    if base:
        overrides = {**recipe_overrides(base, size, epochs), **overrides}

    def fill(value):
        if value == "@size":
            return size
        if value == "@third":
            return max(1, round(epochs / 3))
        if isinstance(value, list):
            return [fill(v) for v in value]
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    return {k: fill(v) for k, v in overrides.items()}


# ---------------------------------------------------------------- tasks

@dataclass(frozen=True)
class Task:
    name: str
    image_size: int
    epochs: int
    build: Callable[[Path], tuple[pd.DataFrame, pd.DataFrame]]
    extra: tuple[str, ...] = ()


def _extract(archive: Path, work: Path, marker: str) -> Path:
    target = work / "data"
    if not (target / marker).exists():
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    return target / marker


def _faces_mask3(work: Path):
    from sklearn.model_selection import StratifiedGroupKFold

    root = _extract(SHARED / "data" / "faces_mask3_dev.tar", work, "faces_mask3")
    table = pd.read_csv(root / "labels.csv")
    table["path"] = [str(root / p) for p in table["path"]]
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=0)
    train_idx, val_idx = next(folds.split(table, table["label"], groups=table["source_image"]))
    return table.iloc[train_idx][["path", "label"]], table.iloc[val_idx][["path", "label"]]


def _utkface(work: Path):
    from sklearn.model_selection import train_test_split

    root = _extract(SHARED / "data" / "utkface_dev.tar", work, "utkface_dev")
    table = pd.read_csv(root / "labels.csv")
    age_bin = np.where(table["age"] < 30, "young", np.where(table["age"] < 60, "middle", "old"))
    table["label"] = table["gender"].astype(str) + "_" + age_bin
    table["path"] = [str(root / p) for p in table["path"]]
    train, val = train_test_split(table, test_size=0.2, stratify=table["label"], random_state=0)
    return train[["path", "label"]], val[["path", "label"]]


def _utkface_attributes(work: Path):
    """The utkface split (same images on each side) with gender and exact age columns for
    multihead runs; ``label`` is the composite name (gender/age bin) the run predicts."""
    from sklearn.model_selection import train_test_split

    root = _extract(SHARED / "data" / "utkface_dev.tar", work, "utkface_dev")
    table = pd.read_csv(root / "labels.csv")
    age_bin = np.where(table["age"] < 30, "young", np.where(table["age"] < 60, "middle", "old"))
    strata = table["gender"].astype(str) + "_" + age_bin
    table["label"] = table["gender"].astype(str) + "/" + age_bin
    table["path"] = [str(root / p) for p in table["path"]]
    train, val = train_test_split(table, test_size=0.2, stratify=strata, random_state=0)
    columns = ["path", "label", "gender", "age"]
    return train[columns], val[columns]


UTK_MULTIHEAD = ('task.attributes={"gender": ["female", "male"], "age": ["young", "middle", "old"]}',
                 'task.bins={"age": [30, 60]}', "task.mode=multihead")


def _folder_table(folder: Path) -> pd.DataFrame:
    rows = [(str(p), p.parent.name) for p in sorted(folder.glob("*/*")) if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    return pd.DataFrame(rows, columns=["path", "label"])


def _hymenoptera(work: Path):
    root = _extract(SHARED / "data" / "hymenoptera.tar", work, "hymenoptera")
    return _folder_table(root / "train"), _folder_table(root / "val")


def _cifar_lt(work: Path, top: int = 500, ratio: float = 20.0, val_per_class: int = 50):
    root = _extract(SHARED / "data" / "cifar10.tar.gz", work, "cifar10_png")
    table = _folder_table(root / "train")
    rng = np.random.default_rng(0)
    classes = sorted(table["label"].unique())
    train, val = [], []
    for i, cls in enumerate(classes):
        paths = rng.permutation(table.loc[table["label"] == cls, "path"].to_numpy())
        n = int(round(top * ratio ** (-i / (len(classes) - 1))))
        val.extend((p, cls) for p in paths[:val_per_class])
        train.extend((p, cls) for p in paths[val_per_class:val_per_class + n])
    return pd.DataFrame(train, columns=["path", "label"]), pd.DataFrame(val, columns=["path", "label"])


TASKS: dict[str, Task] = {
    "faces_mask3": Task("faces_mask3", 64, 15, _faces_mask3),
    "utkface": Task("utkface", 128, 6, _utkface),
    "utkface_mh": Task("utkface_mh", 128, 6, _utkface_attributes, extra=UTK_MULTIHEAD),
    "hymenoptera": Task("hymenoptera", 128, 6, _hymenoptera),
    "cifar_lt": Task("cifar_lt", 32, 10, _cifar_lt),
}


def task_files(task: Task, work: Path) -> tuple[Path, Path]:
    """train.csv / val.csv of the task's fixed split, written once (the split never changes)."""
    folder = work / "tasks" / task.name
    train_csv, val_csv = folder / "train.csv", folder / "val.csv"
    if not (train_csv.is_file() and val_csv.is_file()):
        from podium.fileio import write_csv

        folder.mkdir(parents=True, exist_ok=True)
        train, val = task.build(work)
        write_csv(train_csv, train)
        write_csv(val_csv, val)
    return train_csv, val_csv


# ---------------------------------------------------------------- cells

def cell_overrides(task: Task, recipe: str, seed: int, *, epochs: int, size: int, train_csv: Path, val_csv: Path,
                   run_root: Path, extra: list[str]) -> list[str]:
    base = {
        "data.format": "csv", "data.train": str(train_csv), "data.val": str(val_csv), "data.image_size": size,
        "data.cache": "disk", "model.name": "tv/mobilenet_v2", "train.epochs": epochs, "train.seed": seed,
        "output.dir": str(run_root), "output.name": f"{task.name}-{recipe}-s{seed}", "output.report": False,
        "output.tensorboard": False,
    }
    if WEIGHTS.is_file():
        base["model.pretrained_path"] = str(WEIGHTS)
    merged = {**base, **recipe_overrides(recipe, size, epochs)}
    return [f"{k}={json.dumps(v)}" for k, v in merged.items()] + list(task.extra) + list(extra)


def score_run(run_dir: Path, train_csv: Path) -> dict:
    """Macro F1, accuracy and the rarest training class's recall from the run's val_predictions."""
    from sklearn.metrics import accuracy_score, recall_score

    from podium.evaluation.scores import macro_f1_of_labels

    summary = json.loads((run_dir / "summary.json").read_text())
    table = pd.read_parquet(run_dir / "val_predictions.parquet")
    classes = summary["classes"]
    probs = table[classes].to_numpy()
    y_pred = np.asarray(classes)[probs.argmax(1)]
    y_true = table["target"].astype(str).to_numpy()
    counts = pd.read_csv(train_csv)["label"].astype(str).value_counts()
    rare = str(counts.idxmin())
    return {
        "macro_f1": macro_f1_of_labels(y_true, y_pred),  # podium's one macro F1, as training and evaluate score
        "accuracy": accuracy_score(y_true, y_pred),
        "rare_recall": recall_score(y_true, y_pred, labels=[rare], average="macro", zero_division=0),
        "rare_class": rare, "wall_s": summary["wall_time_s"], "epochs": summary["epochs_trained"],
        "best_epoch": summary.get("best_epoch"), **derived_scores(run_dir, classes, table),
    }


def derived_scores(run_dir: Path, classes: list[str], table: pd.DataFrame | None = None) -> dict:
    """Checkpoint choice and post-hoc biases, measured from what every run writes.

    ``last_f1``: validation macro F1 of the last epoch (metrics.csv), next to the
    selected checkpoint's; ``bias_gain``: macro F1 gain of per-class logit biases
    fitted on the validation predictions, scored only on folds they were not
    fitted on (podium's nested_bias_gain), i.e. the honest single-run gain.
    """
    from podium.errors import PodiumError
    from podium.evaluation.biases import nested_bias_gain

    table = pd.read_parquet(run_dir / "val_predictions.parquet") if table is None else table
    metrics = pd.read_csv(run_dir / "metrics.csv")
    y = table["target"].astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy()
    try:
        gain = nested_bias_gain(table[classes].to_numpy(), y, len(classes), n_splits=5, seed=0)["gain"]
    except PodiumError:  # fewer validation images than folds: no honest estimate
        gain = float("nan")
    cuts = run_dir / "ordinal_cuts.json"  # ordinal heads: nested gain of tuning the bin edges
    cut_gain = sum(e["nested_gain"] for e in json.loads(cuts.read_text()).values()) if cuts.is_file() else 0.0
    return {"last_f1": float(metrics["val_f1"].dropna().iloc[-1]), "bias_gain": float(gain), "cut_gain": cut_gain}


def fill_derived(results: pd.DataFrame) -> pd.DataFrame:
    """Rows written before a derived score existed get it from their run folder."""
    results = results.reindex(columns=RESULT_COLUMNS)
    for i, row in results.iterrows():
        if any(pd.isna(row[c]) for c in DERIVED) and Path(str(row["run_dir"])).is_dir():
            classes = json.loads((Path(row["run_dir"]) / "summary.json").read_text())["classes"]
            for key, value in derived_scores(Path(row["run_dir"]), classes).items():
                results.at[i, key] = value
    return results


def load_results(path: Path) -> pd.DataFrame:
    if path.is_file():
        return pd.read_csv(path)
    return pd.DataFrame(columns=RESULT_COLUMNS)


def podium_subprocess(podium_cmd: list[str]) -> Callable[[list[str]], None]:
    """Runs `podium train` in its own process (fresh torch state per cell, and `nice` carries over)."""
    def run(args: list[str]) -> None:
        proc = subprocess.run([*podium_cmd, *args], capture_output=True, text=True,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0:
            raise RuntimeError(f"podium exited with {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return run


def podium_in_process(args: list[str]) -> None:
    """Runs `podium train` in this process (no interpreter start-up: what the unit test uses)."""
    from podium.cli import main

    code = main(args)
    if code:
        raise RuntimeError(f"podium {' '.join(args[:1])} exited with {code}")


def run_cell(task: Task, recipe: str, seed: int, *, protocol: str, epochs: int, size: int, work: Path,
             extra: list[str], runner: Callable[[list[str]], None], log=print) -> dict:
    train_csv, val_csv = task_files(task, work)
    run_root = work / "runs" / protocol
    overrides = cell_overrides(task, recipe, seed, epochs=epochs, size=size, train_csv=train_csv, val_csv=val_csv,
                               run_root=run_root, extra=extra)
    before = set(run_root.glob("*")) if run_root.exists() else set()
    started = time.time()
    try:
        if RECIPES[recipe][1].get("@loop"):
            _run_reference_loop(task, recipe, seed, epochs=epochs, size=size, work=work, run_root=run_root, log=log)
        else:
            runner(["train", "--quiet", *overrides])
    except RuntimeError as exc:
        raise RuntimeError(f"cell {task.name}/{recipe}/seed {seed} failed: {exc}") from None
    new = [p for p in run_root.glob(f"{task.name}-{recipe}-s{seed}*") if p not in before and (p / "summary.json").is_file()]
    if len(new) != 1:
        raise RuntimeError(f"cell {task.name}/{recipe}/seed {seed}: expected one new run folder, found {new}")
    row = {"task": task.name, "protocol": protocol, "recipe": recipe, "seed": seed,
           **score_run(new[0], train_csv), "run_dir": str(new[0])}
    log(f"{task.name:12s} {recipe:12s} seed {seed}: macro F1 {row['macro_f1']:.3f}  rare recall "
        f"{row['rare_recall']:.3f}  acc {row['accuracy']:.3f}  {time.time() - started:.0f}s")
    return row


def _run_reference_loop(task: Task, recipe: str, seed: int, *, epochs: int, size: int, work: Path, run_root: Path,
                        log=print) -> Path:
    """The plain-loop reference cell: same split, weights, epochs and size as the podium cells."""
    from benchmarks.recipes.tv_reference import train_reference

    train_csv, val_csv = task_files(task, work)
    out, n = run_root / f"{task.name}-{recipe}-s{seed}", 2
    while out.exists():
        out, n = run_root / f"{task.name}-{recipe}-s{seed}-{n}", n + 1
    return train_reference(train_csv, val_csv, out, size=size, epochs=epochs, seed=seed,
                           weights=WEIGHTS if WEIGHTS.is_file() else None, log=log)


def run_study(tasks: list[str], recipes: list[str], seeds: list[int], *, work: Path, results_csv: Path,
              epochs: int | None = None, size: int | None = None, extra: list[str] | None = None,
              runner: Callable[[list[str]], None] | None = None, log=print) -> pd.DataFrame:
    """Run every missing (task, protocol, recipe, seed) cell; results.csv is rewritten after each one."""
    from podium.fileio import write_csv

    runner = runner or podium_subprocess([sys.executable, "-m", "podium"])
    results = load_results(results_csv)
    for task_name in tasks:
        if task_name not in TASKS:
            raise SystemExit(f"unknown task {task_name!r}; known: {', '.join(TASKS)}")
        task = TASKS[task_name]
        t_epochs, t_size = epochs or task.epochs, size or task.image_size
        protocol = f"e{t_epochs}-s{t_size}"
        for recipe in recipes:
            recipe_overrides(recipe, t_size, t_epochs)  # unknown names fail before any training
        for seed in seeds:  # seed-major: a study stopped early still has paired cells
            for recipe in recipes:
                done = results[(results["task"] == task_name) & (results["protocol"] == protocol)
                               & (results["recipe"] == recipe) & (results["seed"] == seed)]
                if len(done):
                    continue
                row = run_cell(task, recipe, seed, protocol=protocol, epochs=t_epochs, size=t_size, work=work,
                               extra=list(extra or []), runner=runner, log=log)
                results = pd.concat([results, pd.DataFrame([row])], ignore_index=True)
                write_csv(results_csv, results.reindex(columns=RESULT_COLUMNS))
    return results


# ---------------------------------------------------------------- report

def paired_difference(results: pd.DataFrame, recipe: str, baseline: str) -> tuple[float, float, float, int] | None:
    """Mean macro-F1 difference recipe - baseline over shared seeds, with a 95% t interval (n >= 2)."""
    from scipy import stats

    a = results[results["recipe"] == recipe].set_index("seed")["macro_f1"]
    b = results[results["recipe"] == baseline].set_index("seed")["macro_f1"]
    shared = a.index.intersection(b.index)
    if not len(shared):
        return None
    d = (a[shared] - b[shared]).to_numpy(dtype=float)
    if len(d) < 2:
        return float(d.mean()), float("nan"), float("nan"), 1
    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half), len(d)


def _fmt(mean: float, sd: float, n: int) -> str:
    return f"{mean:.3f}" if n < 2 else f"{mean:.3f} ± {sd:.3f}"


def task_table(results: pd.DataFrame, baseline: str) -> str:
    """One task's table; the paired differences are against ``baseline``, or podium's
    defaults where the task did not run it. Ordinal runs add their edge-tuning gain."""
    rows = []
    if baseline not in set(results["recipe"]):
        baseline = "podium"
    edges = "cut_gain" in results and results["cut_gain"].fillna(0).abs().gt(0).any()
    grouped = results.groupby("recipe")
    means = grouped["macro_f1"].mean()
    best = means.idxmax() if len(means) else None
    lines = ["| recipe | seeds | macro F1 | rare-class recall | accuracy | last-epoch F1 | bias gain (nested) "
             + ("| edge-tuning gain (nested) " if edges else "")
             + f"| wall s | epochs | Δ macro F1 vs {baseline} (95% CI) |", "|---" * (11 if edges else 10) + "|"]
    for recipe, g in sorted(grouped, key=lambda kv: -kv[1]["macro_f1"].mean()):
        n = len(g)
        f1 = _fmt(g["macro_f1"].mean(), g["macro_f1"].std(ddof=1) if n > 1 else 0, n)
        if recipe == best:
            f1 = f"**{f1}**"
        diff = paired_difference(results, recipe, baseline) if recipe != baseline else None
        if diff is None:
            dtext = "—"
        elif diff[3] < 2:
            dtext = f"{diff[0]:+.3f} (1 seed)"
        else:
            dtext = f"{diff[0]:+.3f} [{diff[1]:+.3f}, {diff[2]:+.3f}]"
        rows.append(f"| {recipe} | {n} | {f1} | {_fmt(g['rare_recall'].mean(), g['rare_recall'].std(ddof=1) if n > 1 else 0, n)} "
                    f"| {g['accuracy'].mean():.3f} | {g['last_f1'].mean():.3f} | {g['bias_gain'].mean():+.3f} "
                    + (f"| {g['cut_gain'].fillna(0).mean():+.3f} " if edges else "")
                    + f"| {g['wall_s'].mean():.0f} | {g['epochs'].mean():.0f} | {dtext} |")
    return "\n".join(lines + rows)


def write_report(results: pd.DataFrame, out: Path, *, baseline: str = "reference", header: str = "") -> Path:
    """RESULTS.md (one table per task and protocol) and results.png (macro F1 per recipe)."""
    from podium.fileio import write_text

    parts = [header.rstrip(), ""] if header else []
    for (task, protocol), g in results.groupby(["task", "protocol"], sort=False):
        rare = g["rare_class"].iloc[0]
        parts += [f"### {task} ({protocol}; rarest class `{rare}`)", "", task_table(g, baseline), ""]
    parts += ["Recipes:", ""] + [f"- `{name}`: {RECIPES[name][0]}" for name in dict.fromkeys(results["recipe"])
                                 if name in RECIPES] + [""]
    write_text(out / "RESULTS.md", "\n".join(parts))
    plot_results(results, out / "results.png")
    return out / "RESULTS.md"


def plot_results(results: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(results.groupby(["task", "protocol"], sort=False))
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 2.6 * max(1, len(groups))), squeeze=False)
    for ax, ((task, protocol), g) in zip(axes[:, 0], groups):
        stats_ = g.groupby("recipe")["macro_f1"].agg(["mean", "std"]).sort_values("mean")
        ax.barh(stats_.index, stats_["mean"], xerr=stats_["std"].fillna(0), color="#4477aa")
        ax.set_xlim(max(0.0, float(stats_["mean"].min()) - 0.1), min(1.0, float(stats_["mean"].max()) + 0.05))
        ax.set_title(f"{task} ({protocol}): validation macro F1", fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "podium-study")
    parser.add_argument("--tasks", default="faces_mask3")
    parser.add_argument("--recipes", default="podium,reference,course")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=None, help="override every task's epochs (screening)")
    parser.add_argument("--size", type=int, default=None, help="override every task's image size (screening)")
    parser.add_argument("--baseline", default="reference")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "recipes")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("extra", nargs="*", help="extra podium overrides for every cell (key=value)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    from podium.fileio import write_csv

    results_csv = args.out / "results.csv"
    if not args.report_only:
        run_study(args.tasks.split(","), args.recipes.split(","), [int(s) for s in args.seeds.split(",")],
                  work=args.work.expanduser(), results_csv=results_csv, epochs=args.epochs, size=args.size,
                  extra=args.extra)
    header_file = args.out / "HEADER.md"
    results = fill_derived(load_results(results_csv))
    write_csv(results_csv, results)
    write_report(results, args.out, baseline=args.baseline,
                 header=header_file.read_text() if header_file.is_file() else "")


if __name__ == "__main__":
    main()
