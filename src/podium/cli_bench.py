"""`podium bench`: the speed benchmarks (same code as ``python -m benchmarks``)."""
from __future__ import annotations

EXAMPLE = "podium bench --quick\n  podium bench --only B1,B3 --out bench-results"


def cmd_bench(args) -> int:
    from .bench import failed, run_from_args

    report = run_from_args(args)
    missed = [q["ratio"] for b in report["benchmarks"] for q in b["ratios"] if q["met"] is False]
    broken = failed(report)
    print(f"wrote {args.out}/speed.json and {args.out}/speed.md"
          + (f"; targets missed: {', '.join(missed)}" if missed else "")
          + (f"; FAILED: {', '.join(broken)} (tracebacks in speed.json)" if broken else ""))
    return 1 if broken else 0


def register(sub, add) -> None:
    """Add `podium bench`; ``add`` is `cli._add` (it looks the example up in cli.EXAMPLES)."""
    from . import cli
    from .bench import add_arguments

    cli.EXAMPLES.setdefault("bench", EXAMPLE)
    p = add(sub, "bench", "Measure loader throughput, loop overhead, TTA and CV speed (writes JSON + markdown).",
            cmd_bench)
    add_arguments(p)
