"""B1-B6 speed benchmarks: re-exported from `podium.bench_speed` (B1-B5), `podium.bench_techniques`
(B6) and `podium.bench` (runner, registry), where they live.

Run ``python -m benchmarks --help`` (or ``podium bench --help``). Each
benchmark is a function ``(Context) -> Result``; see BENCHMARKS.md for what
each one compares and the latest numbers.
"""
from __future__ import annotations

from . import ensure_podium_importable

ensure_podium_importable()

from podium.bench import BENCHMARKS, machine_info, main, run_benchmarks, to_markdown  # noqa: E402
from podium.bench_speed import (  # noqa: E402
    TARGETS,
    bench_epoch_vs_compute,
    bench_kfold,
    bench_loader,
    bench_loop_overhead,
    bench_tta,
)
from podium.bench_techniques import bench_techniques  # noqa: E402

__all__ = ["BENCHMARKS", "TARGETS", "bench_loader", "bench_epoch_vs_compute", "bench_loop_overhead", "bench_tta",
           "bench_kfold", "bench_techniques", "machine_info", "main", "run_benchmarks", "to_markdown"]
