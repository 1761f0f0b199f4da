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


def write_report(results: Path, out: Path) -> Path:
    table = pd.read_csv(results)
    text = "\n\n".join(["## Audit\n\n" + audit_table(table), "### Per attribute\n\n" + attribute_table(table),
                        "## Pseudo-labels\n\n" + pseudo_table(table), "## Distillation\n\n" + distill_table(table)])
    out.write_text(text + "\n")
    return out
