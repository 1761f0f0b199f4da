"""The per-class bias gate of `podium auto` checked against the held-back test part (inference-free:
reads the OOF and test probabilities every finished auto cell saved).

For each cell: the nested gain of the biases on its final OOF table, how often that gain survives
a paired bootstrap resample of the OOF rows (`p_gain`), the decision of the old gate (gain > 0)
and of the new one (`nested_bias_gain`'s `recommended`), and what applying the fitted biases did
to the cell's test macro F1.

    PYTHONPATH=src:. python -m benchmarks.auto.bias_gate ~/.cache/podium-auto-idle > benchmarks/auto/bias_gate.tsv
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.auto.run import score


def cell_row(cache: Path, auto_json: Path) -> dict:
    from podium.evaluation.biases import apply_logit_biases, nested_bias_gain

    d = json.loads(auto_json.read_text())
    final, classes = d["final"], d["classes"]
    oof = pd.read_parquet(final["oof"])
    y = np.array([classes.index(t) for t in oof["target"]])
    r = nested_bias_gain(oof[classes].to_numpy(np.float64), y, len(classes), seed=d["config"]["train"]["seed"])
    test = pd.read_csv(cache / "auto-tasks" / auto_json.parts[-3] / "test.csv")
    plain = pd.read_parquet(final["test"])
    biased = plain.copy()
    biased[classes] = apply_logit_biases(plain[classes].to_numpy(np.float64), r["biases"])
    f1_plain, f1_biased = score(plain, test), score(biased, test)
    return {"cell": "/".join(auto_json.parts[-4:-1]), "oof_rows": len(oof), "nested_gain": round(r["gain"], 4),
            "p_gain": round(r["p_gain"], 3), "old_gate": bool(r["gain"] > 0), "new_gate": r["recommended"],
            "test_f1_plain": round(f1_plain, 4), "test_f1_biased": round(f1_biased, 4),
            "test_delta": round(f1_biased - f1_plain, 4)}


def main(argv: list[str]) -> int:
    cache = Path(argv[0]).expanduser()
    rows = pd.DataFrame([cell_row(cache, f) for f in sorted(cache.glob("auto-cells*/*/auto-*/auto.json"))])
    print(rows.to_csv(sep="\t", index=False), end="")
    for gate in ("old_gate", "new_gate"):
        kept = rows[rows[gate]]
        print(f"# {gate}: keeps {len(kept)} of {len(rows)} cells; test macro F1 change summed over them "
              f"{kept['test_delta'].sum():+.4f}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
