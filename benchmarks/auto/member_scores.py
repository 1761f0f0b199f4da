"""Each member's test score beside the ensemble's and the final submission's (inference-free: reads
the test probabilities auto saved), to see which stage (member, ensemble weights, biases) a cell's
test score came from.

    PYTHONPATH=src:. python -m benchmarks.auto.member_scores ~/.cache/podium-auto-idle auto-cells-60m auto-60m-s0
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from benchmarks.auto.run import score


def cell_scores(cache: Path, cells: str, cell: str, task: str) -> list[tuple[str, float]]:
    root = cache / cells / task / cell
    test = pd.read_csv(cache / "auto-tasks" / task / "test.csv")
    files = sorted(root.glob("members/*/*/test_probabilities.parquet")) + sorted(
        root.glob("members/*/tta/*/test_probabilities.parquet"))
    files += [root / "ensemble" / "test_probabilities.parquet", root / "test_probabilities.parquet"]
    return [(str(f.relative_to(root)), score(pd.read_parquet(f), test)) for f in files if f.is_file()]


def main(argv: list[str]) -> int:
    cache, cells, cell = Path(argv[0]).expanduser(), argv[1], argv[2]
    for task_dir in sorted(p for p in (cache / cells).iterdir() if (p / cell / "auto.json").is_file()):
        final = json.loads((task_dir / cell / "auto.json").read_text())["final"]
        for name, f1 in cell_scores(cache, cells, cell, task_dir.name):
            print(f"{task_dir.name}\t{name}\t{f1:.4f}")
        print(f"{task_dir.name}\tfinal: {final.get('kind')} ({final.get('ensemble')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
