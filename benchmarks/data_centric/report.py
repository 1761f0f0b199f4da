"""Markdown tables of benchmarks/data_centric/results.csv (mean +- std over seeds, n = seeds)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd


def _stat(values: pd.Series, digits: int = 3) -> str:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return "-"
    if len(values) == 1:
        return f"{values.iloc[0]:.{digits}f} (n=1)"
    return f"{values.mean():.{digits}f} +- {values.std(ddof=1):.{digits}f} (n={len(values)})"


def audit_table(results: pd.DataFrame) -> str:
    """One row per audit method (study ``audit``: cleanlab's prune_by_noise_rate; ``audit:METHOD``)
    and noise level; the clean-label runs are shared by every method."""
    header = ("| dataset | audit method | noise | flagged / injected | precision | recall | macro F1 noisy | "
              "after dropping the flagged | after relabelling the flagged | clean labels | "
              "share of the lost F1 recovered (drop) | share recovered (relabel) |")
    rows = [header, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    studies = results[results["study"].astype(str).str.startswith("audit")]
    clean = studies[studies["variant"] == "clean"]
    for (name, dataset, noise), part in studies[studies["variant"] == "audit"].groupby(["study", "dataset", "noise"]):
        cells = studies[(studies["study"] == name) & (studies["dataset"] == dataset) & (studies["noise"] == noise)]
        by = {v: cells[cells["variant"] == v].set_index("seed")["macro_f1"] for v in ("noisy", "cleaned", "relabelled")}
        by["clean"] = clean[clean["dataset"] == dataset].drop_duplicates("seed").set_index("seed")["macro_f1"]
        lost = by["clean"].reindex(by["noisy"].index) - by["noisy"]
        recovered = {v: ((by[v].reindex(lost.index) - by["noisy"]) / lost).dropna() for v in ("cleaned", "relabelled")}
        counts = f"{part['n_flagged'].mean():.0f} / {part['n_injected'].mean():.0f}"
        method = name.partition(":")[2] or "prune_by_noise_rate"
        rows.append(f"| {dataset} | {method} | {noise:.0%} | {counts} | {_stat(part['precision'])} | "
                    f"{_stat(part['recall'])} | {_stat(by['noisy'])} | {_stat(by['cleaned'])} | "
                    f"{_stat(by['relabelled'])} | {_stat(by['clean'].reindex(by['noisy'].index))} | "
                    f"{_stat(recovered['cleaned'], 2)} | {_stat(recovered['relabelled'], 2)} |")
    return "\n".join(rows)


def attribute_table(results: pd.DataFrame) -> str:
    rows = ["| dataset | audit method | noise | seed | attribute | flagged | injected | right | precision | recall |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    audit = results[results["study"].astype(str).str.startswith("audit") & (results["variant"] == "audit")]
    for r in audit.itertuples(index=False):
        method = str(r.study).partition(":")[2] or "prune_by_noise_rate"
        for name, c in json.loads(r.extra)["per_attribute"].items():
            p = c["hits"] / c["flagged"] if c["flagged"] else float("nan")
            rows.append(f"| {r.dataset} | {method} | {r.noise:.0%} | {r.seed} | {name} | {c['flagged']} | "
                        f"{c['injected']} | {c['hits']} | {p:.3f} | {c['hits'] / max(c['injected'], 1):.3f} |")
    return "\n".join(rows)


def pseudo_table(results: pd.DataFrame) -> str:
    rows = ["| dataset | rounds | macro F1 (held-back) | CV macro F1 | pseudo-labelled images |", "|---|---|---|---|---|"]
    part = results[results["study"] == "pseudo"]
    for (dataset, variant), cells in part.groupby(["dataset", "variant"]):
        extra = [json.loads(e) for e in cells["extra"]]
        added = [e["n_pseudo"] for e in extra if e.get("n_pseudo") is not None]
        cv = pd.Series([e.get("cv_macro_f1") for e in extra])
        n = f"{np.mean(added):.0f}" if added else "0"
        rows.append(f"| {dataset} | {variant.removeprefix('round')} | {_stat(cells['macro_f1'])} | {_stat(cv)} | {n} |")
    return "\n".join(rows)


def distill_table(results: pd.DataFrame) -> str:
    rows = ["| dataset | model | macro F1 (held-back) | images/s (ONNX, batch 32, 2 threads) |", "|---|---|---|---|"]
    part = results[results["study"] == "distill"]
    for (dataset, variant), cells in part.groupby(["dataset", "variant"], sort=False):
        rows.append(f"| {dataset} | {variant} | {_stat(cells['macro_f1'])} | {_stat(cells['images_per_s'], 0)} |")
    return "\n".join(rows)


#: the audit studies' retrained variants compared paired against ``cleaned``, in table order
PAIRED_VARIANTS = {"audit:low_normalized_margin": ["cleaned", "downweighted", "distilled", "cleaned-distilled",
                                                   "cleaned-cap0.4", "relabelled"],
                   "audit": ["cleaned", "relabelled"]}


def write_report(results: Path, out: Path, data: Path | None = None) -> Path:
    """tables.md; with ``data`` (the folder of each dataset's held-back ``DATASET/test.csv``, on the
    machine that has the run folders) also the paired retraining tables of the 15% cells."""
    table = pd.read_csv(results)
    parts = ["## Audit\n\n" + audit_table(table), "### Per attribute\n\n" + attribute_table(table)]
    for dataset in sorted(table["dataset"].dropna().unique()) if data is not None else []:
        test = data / dataset / "test.csv"
        studies = table.loc[table["dataset"] == dataset, "study"].dropna().unique()
        for study in sorted(s for s in studies if s.partition("@")[0] in PAIRED_VARIANTS):  # @cv10e: a stronger audit
            variants = paired_variants(table, dataset, study, PAIRED_VARIANTS[study.partition("@")[0]])
            if not test.is_file() or not variants:
                continue
            for checkpoint in ("best", "last"):
                parts.append(f"### Retraining, paired ({dataset}, {study}, {checkpoint})\n\n"
                             + paired_table(table, test, variants, study, checkpoint=checkpoint, dataset=dataset))
    parts += ["## Pseudo-labels\n\n" + pseudo_table(table), "## Distillation\n\n" + distill_table(table)]
    out.write_text("\n\n".join(parts) + "\n")
    return out


def paired_variants(results: pd.DataFrame, dataset: str, study: str, candidates: list[str],
                    noise: float = 0.15) -> list[str]:
    """The ``candidates`` that ran on every seed of the study's noisy runs (the paired table pairs
    by seed), ``cleaned`` first; none when ``cleaned`` did not."""
    cells = results[(results["study"] == study) & (results["dataset"] == dataset) & (results["noise"] == noise)]
    seeds = {v: set(cells.loc[cells["variant"] == v, "seed"]) for v in ["noisy", *candidates]}
    ran = [v for v in candidates if seeds["noisy"] and seeds[v] >= seeds["noisy"]]
    return ran if "cleaned" in ran else []


# ---------------------------------------------------------------- paired comparison of the retrained runs


def _macro_f1(target: np.ndarray, predicted: np.ndarray, k: int, weight: np.ndarray) -> float:
    """Macro F1 with each held-back image counted ``weight`` times (a bootstrap resample)."""
    f1 = []
    for c in range(k):
        tp = weight[(target == c) & (predicted == c)].sum()
        fp = weight[(target != c) & (predicted == c)].sum()
        fn = weight[(target == c) & (predicted != c)].sum()
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return float(np.mean(f1))


def paired_table(results: pd.DataFrame, test: Path, variants: list[str], study: str, noise: float = 0.15,
                 checkpoint: str = "best", reps: int = 2000, seed: int = 0, dataset: str = "faces") -> str:
    """Each retraining variant against dropping every flagged image (``cleaned``), paired by seed:
    mean held-back macro F1, the share of the F1 lost to noise it recovers ((V - noisy) / (clean -
    noisy), means over the seeds), and the paired difference to ``cleaned``, each with a 90%
    interval from resampling the held-back source photos (faces; utk: images) (the same resample for every run, so
    the interval is the test part's sampling noise, not the seeds'). ``checkpoint``: the runs'
    best checkpoint (chosen on their noisy validation part) or their last epoch."""
    test_table = pd.read_csv(test)
    groups = test_table["group" if "group" in test_table else "id"].astype(str).to_numpy()  # utk: one image each
    unique, index = np.unique(groups, return_inverse=True)
    results = results[results["dataset"] == dataset]
    cells = results[(results["study"] == study) & (results["noise"] == noise)]
    clean = results[(results["variant"] == "clean")].drop_duplicates("seed").set_index("seed")["run_dir"]
    runs: dict[str, dict[int, str]] = {v: cells[cells["variant"] == v].drop_duplicates("seed").set_index("seed")[
        "run_dir"].to_dict() for v in ["noisy", *variants]}
    runs["clean"] = clean.to_dict()
    seeds = sorted(set.intersection(*(set(r) for r in runs.values())))
    folder = "heldback" if checkpoint == "best" else f"heldback-{checkpoint}"
    preds: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for name, by_seed in runs.items():
        for s in seeds:
            table = pd.read_parquet(Path(by_seed[s]) / "evaluations" / folder / "predictions.parquet")
            table = table.set_index("id").loc[test_table["id"]]
            classes = sorted(set(table["target"]))
            code = {c: i for i, c in enumerate(classes)}
            preds[(name, s)] = (table["target"].map(code).to_numpy(), table["prediction"].map(code).to_numpy())
    k = len(classes)
    rng = np.random.default_rng(seed)
    weights = [np.ones(len(groups))] + [np.bincount(rng.integers(0, len(unique), len(unique)),
                                                    minlength=len(unique))[index].astype(float) for _ in range(reps)]
    scores = {key: np.array([_macro_f1(*preds[key], k, w) for w in weights]) for key in preds}
    mean = {name: np.mean([scores[(name, s)] for s in seeds], axis=0) for name in runs}

    def cell(values: np.ndarray, digits: int = 3) -> str:
        low, high = np.percentile(values[1:], [5, 95])
        return f"{values[0]:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"

    def by_seed(name: str) -> str:
        """The seeds' own spread: each seed's difference to its noisy run on the whole held-back part."""
        diffs = np.array([scores[(name, s)][0] - scores[("noisy", s)][0] for s in seeds])
        return f"{diffs.mean():+.3f} (sd {diffs.std(ddof=1) if len(diffs) > 1 else 0:.3f}; {(diffs > 0).sum()}/{len(diffs)} up)"

    rows = [f"| variant | seeds | macro F1 ({checkpoint}) | share of the lost F1 recovered | minus cleaned (paired) "
            "| minus noisy, per seed |", "|---|---|---|---|---|---|"]
    lost = mean["clean"] - mean["noisy"]
    for name in ["noisy", *variants, "clean"]:
        recovered = (mean[name] - mean["noisy"]) / np.where(np.abs(lost) > 1e-9, lost, np.nan)
        diff = mean[name] - mean["cleaned"] if "cleaned" in mean else None
        rows.append(f"| {name} | {','.join(map(str, seeds))} | {cell(mean[name])} | {cell(recovered, 2)} | "
                    f"{'-' if diff is None or name == 'cleaned' else cell(diff)} | "
                    f"{'-' if name == 'noisy' else by_seed(name)} |")
    return "\n".join(rows)
