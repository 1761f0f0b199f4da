"""Data-centric study: `podium audit` against injected label noise, pseudo-label rounds, and
distillation, on the real dev sets (faces_mask3_dev, utkface_dev), scored on a clean held-back part.

Why: the audit, pseudo-labelling and distillation are only worth their cost if they move
macro F1 on images nothing was fitted on. Every number here is macro F1 on a fixed, grouped
(faces: by source photo), clean test part (20%) that no run, audit or teacher ever sees.

Usage (repository root; resumable: a cell already in results.csv is never re-run, a
finished run folder is reused):

    nice -n 15 .venv/bin/python -m benchmarks.data_centric.run --work ~/.cache/podium-datacentric \\
        --studies audit --datasets faces,utk --seeds 0,1
    .venv/bin/python -m benchmarks.data_centric.run --work ~/.cache/podium-datacentric --report

Studies (each cell one seed of one dataset; runs are tv/mobilenet_v2 from ImageNet weights,
64 px, podium's default recipe, `--epochs` epochs):
  audit   noise 5% and 15% injected into the training pool (class-conditional: each class
          loses that share of its images to the other classes in proportion to their
          frequency; utk: per attribute, gender flipped, age moved to a neighbouring bin), a
          3-fold cv run on the noisy pool, `podium audit` (cleanlab; without the feature pass,
          which does not change label issues), precision / recall of the flagged (image,
          attribute) pairs against the injected ones; then macro F1 of single runs trained on
          the noisy pool, on the noisy pool minus the flagged images (`task.label_fixes`
          drops them), on the noisy pool with the flagged labels replaced by the audit's
          suggestion (relabel) and on the clean labels.
  pseudo  the training pool split 50/50 (grouped) into labelled images and an unlabelled
          pool whose labels are hidden; rounds of `podium pseudo-label` (3-fold cv runs):
          macro F1 of the cv run (folds averaged) with 0, 1 and 2 rounds, same epochs.
  distill a teacher (3-fold cv run on the clean pool), a student of the same backbone
          distilled from it (`podium distill`), the backbone trained normally; macro F1 of
          the three and images/s of their ONNX exports (batch 32, one process, 2 threads).

Data: extracted under ~/.cache/podium-data (never the repo). utkface_dev is used through a
fixed stratified sample of 4,000 of its 7,822 images so that every cell fits two shared
CPU cores; faces_mask3_dev whole (3,244 faces).
"""
from __future__ import annotations

import argparse
import json
import os
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-b0353104.pth"
DATA = Path.home() / ".cache" / "podium-data"
COLUMNS = ["study", "dataset", "seed", "noise", "variant", "macro_f1", "precision", "recall", "n_flagged",
           "n_injected", "images_per_s", "wall_s", "run_dir", "extra"]
UTK_ATTRIBUTES = {"gender": ["female", "male"], "age": ["young", "middle", "old"]}
QUIET: Callable = lambda *a, **k: None
#: the audit method of the study's first rows (cleanlab's own default filter_by)
LEGACY_AUDIT_METHOD = "prune_by_noise_rate"


# ---------------------------------------------------------------- data


def _extract(archive: str, marker: str) -> Path:
    target = DATA / marker
    if not (target / "labels.csv").is_file():
        DATA.mkdir(parents=True, exist_ok=True)
        with tarfile.open(SHARED / "data" / archive) as tar:
            tar.extractall(DATA, filter="data")
    return target


def faces() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pool, test): faces grouped by source photo; test = one StratifiedGroupKFold fold (20%)."""
    from sklearn.model_selection import StratifiedGroupKFold

    root = _extract("faces_mask3_dev.tar", "faces_mask3")
    table = pd.read_csv(root / "labels.csv")
    table = table.assign(path=[str(root / p) for p in table["path"]], group=table["source_image"].astype(str))
    pool_idx, test_idx = next(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(
        table, table["label"], groups=table["group"]))
    columns = ["path", "label", "group"]
    return table.iloc[pool_idx][columns].reset_index(drop=True), table.iloc[test_idx][columns].reset_index(drop=True)


def utk() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pool, test): a fixed stratified sample of 4,000 UTKFace images, gender x age bin, 20% test."""
    from sklearn.model_selection import train_test_split

    root = _extract("utkface_dev.tar", "utkface_dev")
    table = pd.read_csv(root / "labels.csv")
    table["age"] = np.where(table["age"] < 30, "young", np.where(table["age"] < 60, "middle", "old"))
    table["path"] = [str(root / p) for p in table["path"]]
    strata = table["gender"] + "/" + table["age"]
    table, _ = train_test_split(table, train_size=4000, stratify=strata, random_state=0)
    strata = table["gender"] + "/" + table["age"]
    pool, test = train_test_split(table, test_size=0.2, stratify=strata, random_state=0)
    columns = ["path", "gender", "age"]
    return pool[columns].reset_index(drop=True), test[columns].reset_index(drop=True)


DATASETS = {"faces": faces, "utk": utk}


def dataset_overrides(name: str) -> list[str]:
    if name == "faces":
        return ["data.group_column=group"]
    return [f"task.attributes={json.dumps(UTK_ATTRIBUTES)}"]


def label_views(name: str) -> list[str]:
    """The columns a label lives in: `label` (faces), gender and age (utk)."""
    return ["label"] if name == "faces" else list(UTK_ATTRIBUTES)


# ---------------------------------------------------------------- noise


def inject_noise(table: pd.DataFrame, columns: list[str], rate: float, seed: int) -> tuple[pd.DataFrame, set]:
    """Class-conditional noise: in each column, each class loses ``rate`` of its images to the other
    classes, drawn in proportion to their frequency (age: to a neighbouring bin). Returns the noisy
    table and the injected (image id, column) pairs."""
    rng = np.random.default_rng(seed)
    noisy, flips = table.copy(), set()
    for column in columns:
        values = table[column].astype(str).to_numpy()
        classes = sorted(set(values)) if column != "age" else UTK_ATTRIBUTES["age"]
        freq = pd.Series(values).value_counts()
        for c in classes:
            idx = np.flatnonzero(values == c)
            chosen = rng.choice(idx, size=round(rate * len(idx)), replace=False)
            others = _targets(c, classes, column)
            weights = np.array([freq.get(o, 0) for o in others], dtype=float)
            new = rng.choice(others, size=len(chosen), p=weights / weights.sum())
            noisy.loc[chosen, column] = new
            flips |= {(table.loc[i, "id"], column) for i in chosen}
    return noisy, flips


def _targets(c: str, classes: list[str], column: str) -> list[str]:
    if column == "age":
        i = classes.index(c)
        return [classes[j] for j in (i - 1, i + 1) if 0 <= j < len(classes)]
    return [o for o in classes if o != c]


# ---------------------------------------------------------------- runs


class Study:
    def __init__(self, work: Path, epochs: int, out: Path):
        self.work, self.epochs, self.out = work, epochs, out
        self.results = out / "results.csv"

    def done(self, **key) -> bool:
        if not self.results.is_file():
            return False
        table = pd.read_csv(self.results, dtype=str, keep_default_na=False)
        mask = np.ones(len(table), bool)
        for k, v in key.items():
            mask &= table[k].to_numpy() == str(v)
        return bool(mask.any())

    def record(self, **row) -> None:
        frame = pd.DataFrame([{c: row.get(c, "") for c in COLUMNS}])
        header = not self.results.is_file()
        frame.to_csv(self.results, mode="a", header=header, index=False)
        print(json.dumps({k: v for k, v in row.items() if k != "extra"}), flush=True)

    def csv(self, dataset: str, name: str, table: pd.DataFrame) -> Path:
        path = self.work / "data" / dataset / f"{name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            table.to_csv(path, index=False)
        return path

    def config(self, dataset: str, train: Path, name: str, seed: int, *extra: str):
        import podium

        return podium.config(None, f"data.train={train}", "data.image_size=64", "model.name=tv/mobilenet_v2",
                             f"model.pretrained_path={WEIGHTS}", f"train.epochs={self.epochs}", f"train.seed={seed}",
                             "data.cache=disk", f"data.cache_dir={self.work / 'cache'}", "data.path_column=path",
                             "data.id_column=id", "output.report=false", "output.tensorboard=false",
                             f"output.dir={self.work / 'runs' / dataset}", f"output.name={name}",
                             *dataset_overrides(dataset), *extra)

    def train(self, cfg) -> Path:
        """A finished run of this config: an earlier one (``name``, ``name-2``... after an
        interruption), or a new one."""
        import podium
        from podium.rundir import is_finished_run

        found = finished(cfg, is_finished_run)
        return found or Path(podium.train(cfg, log=QUIET).dir)

    def cv(self, cfg, folds: int = 3) -> Path:
        import podium
        from podium.rundir import CV_SUMMARY_FILE

        found = finished(cfg, lambda d: (d / CV_SUMMARY_FILE).is_file())
        return found or Path(podium.cross_validate(cfg, folds=folds, log=QUIET).dir)

    def test_f1(self, model: Path, test: Path, checkpoint: str = "best") -> float:
        """Macro F1 on the held-back part: of the run's best checkpoint (chosen on its validation
        part, which holds the noisy labels too) or of its last epoch (no choice made)."""
        import podium

        out = model / "evaluations" / ("heldback" if checkpoint == "best" else f"heldback-{checkpoint}")
        metrics = out / "metrics.json"
        if metrics.is_file():
            return float(json.loads(metrics.read_text())["f1"])
        return float(podium.evaluate(model, test, out=out, checkpoint=checkpoint).metrics["f1"])


def finished(cfg, is_done: Callable[[Path], bool]) -> Path | None:
    parent, name = Path(cfg.output.dir), cfg.output.name
    for k in range(1, 20):
        candidate = parent / (name if k == 1 else f"{name}-{k}")
        if candidate.is_dir() and is_done(candidate):
            return candidate
    return None


def with_ids(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(id=[Path(p).name for p in table["path"]])


# ---------------------------------------------------------------- audit study


#: the audit study's retrained runs and what each does to the flagged labels (None: nothing)
VARIANT_ACTIONS = {"relabelled": "relabel", "cleaned": "drop", "distilled": None, "cleaned-distilled": "drop",
                   "downweighted": "weight"}


def audit_cell(study: Study, dataset: str, seed: int, noise: float, pool: pd.DataFrame, test: Path,
               method: str = LEGACY_AUDIT_METHOD, variants: tuple[str, ...] = ("relabelled", "cleaned"),
               audit_epochs: int | None = None) -> None:
    """One noise level of one seed. ``method`` (the audit's cleanlab filter_by): the first rows of
    results.csv ran cleanlab's default, prune_by_noise_rate, as study ``audit``; another method is
    study ``audit:METHOD`` on the same noisy pool, cv run and noisy run, with its own audit folder
    and fixed runs. ``variants``: the retrained runs, ``relabelled`` (every flagged label set to the
    suggestion), ``cleaned`` (every flagged image dropped), ``distilled`` (the noisy labels kept, each
    training image also taught the audit cv run's out-of-fold probability: `distill.teacher`, alpha
    0.5, so a flipped label is outvoted where the folds disagree with it, without deciding which
    labels are wrong), ``cleaned-distilled`` (both) and ``downweighted`` (every flagged image kept,
    its label weighted in the loss by how much the folds believe it: `suggested_fixes(action="weight")`). The ``cleaned-cap0.4`` rows (flagged
    images dropped while no class lost more than 40% of its images) ran at commit d685536, whose
    `suggested_fixes(max_class_share=)` was removed after they scored below ``cleaned``.
    ``audit_epochs``: the audit's cv run trains that many epochs instead of the study's (a stronger
    out-of-fold model, as a user would audit with); study ``audit:METHOD@cvEe``, its own cv run and
    fixed runs, the same noisy run."""
    import podium
    from podium.curation.audit import load_audit

    name, suffix = ("audit", "") if method == LEGACY_AUDIT_METHOD else (f"audit:{method}", f"-{method}")
    tag = f"n{int(noise * 100)}-s{seed}"
    cv_name, cv_extra = f"audit-cv-{tag}", []
    if audit_epochs and audit_epochs != study.epochs:
        name, suffix = f"{name}@cv{audit_epochs}e", f"{suffix}-cv{audit_epochs}e"
        cv_name, cv_extra = f"audit-cv{audit_epochs}e-{tag}", [f"train.epochs={audit_epochs}"]
    if all(study.done(study=name, dataset=dataset, seed=seed, noise=noise, variant=v) for v in variants):
        return
    noisy, flips = inject_noise(pool, label_views(dataset), noise, seed)
    train = study.csv(dataset, f"noisy-{tag}", noisy)
    t0 = time.time()
    cv = study.cv(study.config(dataset, train, cv_name, seed, *cv_extra))
    folder = cv / f"audit-bench{suffix}"
    audit = podium.audit(cv, features=False, out=folder, method=method, log=QUIET) if not (
        folder / "issues.csv").is_file() else load_audit(folder)
    issues = audit.issues
    labels = issues[issues["kind"] == "label"]
    flagged = {(str(i), str(a)) for i, a in zip(labels["id"], labels["attribute"], strict=True)}
    hits = flagged & flips
    precision, recall = len(hits) / max(len(flagged), 1), len(hits) / max(len(flips), 1)
    per_attribute = {a: {"flagged": sum(1 for f in flagged if f[1] == a), "injected": sum(1 for f in flips if f[1] == a),
                         "hits": sum(1 for f in hits if f[1] == a)} for a in label_views(dataset)}
    if not study.done(study=name, dataset=dataset, seed=seed, noise=noise, variant="audit"):
        study.record(study=name, dataset=dataset, seed=seed, noise=noise, variant="audit", precision=precision,
                     recall=recall, n_flagged=len(flagged), n_injected=len(flips), wall_s=round(time.time() - t0, 1),
                     run_dir=str(cv), extra=json.dumps({"per_attribute": per_attribute,
                                                        "cv_macro_f1": podium.CrossValidation(cv).score}))
    noisy_run = study.train(study.config(dataset, train, f"audit-noisy-{tag}", seed))
    if not study.done(study=name, dataset=dataset, seed=seed, noise=noise, variant="noisy"):
        study.record(study=name, dataset=dataset, seed=seed, noise=noise, variant="noisy",
                     macro_f1=study.test_f1(noisy_run, test), run_dir=str(noisy_run))
    for variant in variants:
        if study.done(study=name, dataset=dataset, seed=seed, noise=noise, variant=variant):
            continue
        extra, n_fixed = [f"distill.teacher={cv}"] if variant.endswith("distilled") else [], 0
        action = VARIANT_ACTIONS[variant]
        if action:
            fixes = audit.suggested_fixes(kinds=("label",), action=action)
            fixes_path = study.work / "data" / dataset / f"{action}{suffix}-{tag}.csv"
            fixes.to_csv(fixes_path, index=False)
            extra, n_fixed = [*extra, f"task.label_fixes={fixes_path}"], len(fixes)
        run = study.train(study.config(dataset, train, f"audit-{variant}{suffix}-{tag}", seed, *extra))
        study.record(study=name, dataset=dataset, seed=seed, noise=noise, variant=variant,
                     macro_f1=study.test_f1(run, test), n_flagged=n_fixed, run_dir=str(run))


def clean_cell(study: Study, dataset: str, seed: int, pool: Path, test: Path) -> Path:
    run = study.train(study.config(dataset, pool, f"clean-s{seed}", seed))
    if not study.done(study="audit", dataset=dataset, seed=seed, variant="clean"):
        study.record(study="audit", dataset=dataset, seed=seed, noise=0.0, variant="clean",
                     macro_f1=study.test_f1(run, test), run_dir=str(run))
    return run


def rescore_last(study: Study) -> Path:
    """``results_last_epoch.csv``: the held-back macro F1 of the last epoch of every single run of the
    audit study (noisy, clean, cleaned*, relabelled), beside its best-checkpoint F1. Why: each run
    keeps the epoch of best macro F1 on its validation part, which holds noisy labels (and only
    ~20 images of the rare class), so that choice adds noise to every paired comparison."""
    out = study.out / "results_last_epoch.csv"
    done = set(pd.read_csv(out)["run_dir"]) if out.is_file() else set()
    table = pd.read_csv(study.results)
    runs = table[table["study"].astype(str).str.startswith("audit") & (table["variant"] != "audit")]
    for row in runs.drop_duplicates("run_dir").itertuples(index=False):
        if row.run_dir in done or not (Path(row.run_dir) / "last.ckpt").is_file():
            continue
        f1 = study.test_f1(Path(row.run_dir), study.work / "data" / row.dataset / "test.csv", checkpoint="last")
        frame = pd.DataFrame([{"dataset": row.dataset, "seed": row.seed, "run_dir": row.run_dir,
                               "macro_f1_best": row.macro_f1, "macro_f1_last": f1}])
        frame.to_csv(out, mode="a", header=not out.is_file(), index=False)
        print(json.dumps({"run_dir": row.run_dir, "best": row.macro_f1, "last": f1}), flush=True)
    return out


# ---------------------------------------------------------------- pseudo-label study


def halves(dataset: str, pool: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(labelled, unlabelled) halves of the pool, fixed for every seed (grouped for faces)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    strata = pool["label"] if dataset == "faces" else pool["gender"] + "/" + pool["age"]
    if dataset == "faces":
        a, b = next(StratifiedGroupKFold(2, shuffle=True, random_state=0).split(pool, strata, groups=pool["group"]))
    else:
        a, b = next(StratifiedKFold(2, shuffle=True, random_state=0).split(pool, strata))
    unlabelled = pool.iloc[b][[c for c in ("path", "id", "group") if c in pool]]
    return pool.iloc[a].reset_index(drop=True), unlabelled.reset_index(drop=True)


def pseudo_cell(study: Study, dataset: str, seed: int, pool: pd.DataFrame, test: Path, precision: float = 0.9,
                balance: bool = False) -> None:
    """Round 0 and rounds 1, 2 of `podium pseudo-label` at ``precision``. The first rows ran at 0.9
    before the per-class cap existed (``balance`` False: variants round1, round2); other settings
    are variants ``roundR-bal-pP`` / ``roundR-all-pP`` with their own folders. A round that the cap
    leaves empty is not trained (podium stops): its row has no F1 and says why."""
    import podium

    suffix = "" if (precision, balance) == (0.9, False) else f"-{'bal' if balance else 'all'}-p{precision:g}"
    if any(study.done(study="pseudo", dataset=dataset, seed=seed, variant=f"round{r}{suffix}") for r in (2,)) or (
            study.done(study="pseudo", dataset=dataset, seed=seed, variant=f"stopped{suffix}")):
        return
    labelled, unlabelled = halves(dataset, pool)
    train = study.csv(dataset, "half-labelled", labelled)
    unlabelled_csv = study.csv(dataset, "half-unlabelled", unlabelled)
    model = study.cv(study.config(dataset, train, f"pseudo-r0-s{seed}", seed))
    if not study.done(study="pseudo", dataset=dataset, seed=seed, variant="round0"):
        study.record(study="pseudo", dataset=dataset, seed=seed, variant="round0", macro_f1=study.test_f1(model, test),
                     run_dir=str(model), extra=json.dumps({"cv_macro_f1": podium.CrossValidation(model).score,
                                                           "labelled": len(labelled), "unlabelled": len(unlabelled)}))
    for r in (1, 2):
        out = study.work / "runs" / dataset / f"pseudo{suffix}-r{r}-s{seed}"
        record_file = out / "pseudo.json"
        if record_file.is_file() and (json.loads(record_file.read_text())["rounds"]
                                      or json.loads(record_file.read_text()).get("stopped")):
            record = json.loads(record_file.read_text())
        else:
            t0 = time.time()
            record = podium.pseudo_label(model, unlabelled_csv, rounds=1, precision=precision, mode="soft",
                                         balance=balance, out=out, log=QUIET).record
            if record["rounds"]:
                record["rounds"][0]["wall_s"] = round(time.time() - t0, 1)
        if not record["rounds"]:
            study.record(study="pseudo", dataset=dataset, seed=seed, variant=f"stopped{suffix}",
                         extra=json.dumps({"round": r, "stopped": record["stopped"]}))
            return
        entry = record["rounds"][0]
        model = Path(entry["model"])
        if not study.done(study="pseudo", dataset=dataset, seed=seed, variant=f"round{r}{suffix}"):
            study.record(study="pseudo", dataset=dataset, seed=seed, variant=f"round{r}{suffix}",
                         macro_f1=study.test_f1(model, test), run_dir=str(model),
                         extra=json.dumps({"cv_macro_f1": entry["score"], "n_pseudo": entry["n_pseudo"],
                                           "per_class": entry["per_class"], "thresholds": entry["thresholds"],
                                           "eligible": entry.get("eligible"), "precision": precision,
                                           "balance": balance}))


# ---------------------------------------------------------------- distillation study


def distill_cell(study: Study, dataset: str, seed: int, pool: Path, test: Path) -> None:
    import podium
    from podium.rundir import is_finished_run

    if study.done(study="distill", dataset=dataset, seed=seed, variant="student"):
        return
    teacher = study.cv(study.config(dataset, pool, f"teacher-cv-s{seed}", seed))
    baseline = study.train(study.config(dataset, pool, f"clean-s{seed}", seed))
    name = f"student-s{seed}"
    student = finished(study.config(dataset, pool, name, seed), is_finished_run) or Path(
        podium.distill(teacher, overrides=[f"output.name={name}"], log=QUIET).dir)
    speeds = images_per_second({"teacher": teacher, "student": student, "baseline": baseline}, test)
    for variant, model in (("teacher", teacher), ("baseline", baseline), ("student", student)):
        study.record(study="distill", dataset=dataset, seed=seed, variant=variant, macro_f1=study.test_f1(model, test),
                     images_per_s=speeds[variant], run_dir=str(model))


def images_per_second(models: dict[str, Path], test: Path, batch: int = 32, repeats: int = 7) -> dict[str, float]:
    """Throughput of each model's ONNX export on one uint8 batch of held-back images (onnxruntime,
    2 threads), the median of ``repeats`` timed calls after a warm-up, all measured in this one run."""
    import podium

    paths = pd.read_csv(test)["path"].tolist()[:batch]
    out = {}
    for name, model in models.items():
        target = model / "exports" / "bench" / "model.onnx"
        if not target.is_file():
            podium.export(model, out=target, dynamic_batch=True, log=QUIET)
        predictor = podium.load_predictor(target, threads=2)
        images = np.stack([predictor.dataset(paths)[i][0].numpy() for i in range(len(paths))])
        predictor.logits(images)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            predictor.logits(images)
            times.append(time.perf_counter() - t0)
        out[name] = round(len(images) / float(np.median(times)), 1)
    return out


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "podium-datacentric")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--studies", default="audit,pseudo,distill")
    parser.add_argument("--datasets", default="faces,utk")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--noise", default="0.15,0.05")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--audit-epochs", type=int, default=None,
                        help="epochs of the audit's cv run (default: --epochs); its rows are study audit:METHOD@cvEe")
    parser.add_argument("--audit-method", default=LEGACY_AUDIT_METHOD,
                        help="podium audit --method (cleanlab filter_by) for the audit study")
    parser.add_argument("--audit-variants", default="relabelled,cleaned",
                        help=f"retrained runs of the audit study: {', '.join(VARIANT_ACTIONS)}")
    parser.add_argument("--pseudo-precision", type=float, default=0.9, help="podium pseudo-label --precision")
    parser.add_argument("--pseudo-balance", action="store_true",
                        help="podium pseudo-label --balance: the per-class cap (off by default; the first rows ran without it)")
    parser.add_argument("--rescore-last", action="store_true",
                        help="only score the last epoch of every single run of the audit study on the held-back "
                             "part (results_last_epoch.csv): macro F1 with no checkpoint chosen on the noisy "
                             "validation part")
    parser.add_argument("--report", action="store_true", help="only write RESULTS tables from results.csv")
    args = parser.parse_args(argv)
    study = Study(args.work.expanduser(), args.epochs, args.out)
    bad = [v for v in filter(None, args.audit_variants.split(",")) if v not in VARIANT_ACTIONS]
    if bad:
        parser.error(f"--audit-variants: unknown {bad}; allowed {', '.join(VARIANT_ACTIONS)}")
    if args.report:
        from benchmarks.data_centric.report import write_report

        write_report(study.results, args.out / "tables.md", study.work / "data")
        return 0
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    if args.rescore_last:
        rescore_last(study)
        return 0
    data = {name: tuple(with_ids(t) for t in DATASETS[name]()) for name in args.datasets.split(",")}
    for seed in (int(s) for s in args.seeds.split(",")):
        for dataset, (pool, test) in data.items():
            test_csv = study.csv(dataset, "test", test)
            pool_csv = study.csv(dataset, "pool", pool)
            for name in args.studies.split(","):
                if name == "audit":
                    clean_cell(study, dataset, seed, pool_csv, test_csv)
                    for noise in (float(n) for n in args.noise.split(",")):
                        audit_cell(study, dataset, seed, noise, pool, test_csv, args.audit_method,
                                   tuple(filter(None, args.audit_variants.split(","))), args.audit_epochs)
                elif name == "pseudo":
                    pseudo_cell(study, dataset, seed, pool, test_csv, args.pseudo_precision, args.pseudo_balance)
                elif name == "distill":
                    distill_cell(study, dataset, seed, pool_csv, test_csv)
                else:
                    raise SystemExit(f"unknown study {name!r}: audit, pseudo, distill")
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
