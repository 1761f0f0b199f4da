"""Smoke tests of the speed benchmarks: every benchmark runs in --quick mode and reports.

No timing assertions: the numbers depend on the machine and its load.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import runner as bench
from podium.errors import PodiumError

REPO = Path(__file__).resolve().parents[1]
THREADS_BEFORE = __import__("torch").get_num_threads()


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    # One torch thread: on a loaded machine OpenMP threads spin instead of working (seconds, not minutes).
    report = bench.run_benchmarks(quick=True, out=tmp / "out", data_root=tmp / "data", threads=1,
                                  log=lambda *a: None)
    return report, tmp / "out"


def test_every_benchmark_reports_rows_and_finite_ratios(quick_report):
    report, _ = quick_report
    names = [b["name"] for b in report["benchmarks"]]
    assert names == list(bench.BENCHMARKS)
    for b in report["benchmarks"]:
        assert not b["error"], b["error"]
        assert b["rows"], b["name"]
        assert b["ratios"], b["name"]
        for row in b["rows"]:
            assert row["median"] > 0 and all(v > 0 for v in row["values"]), (b["name"], row)
        for q in b["ratios"]:
            assert math.isfinite(q["value"]) and q["value"] > 0, (b["name"], q)


def test_every_target_is_reported_with_a_verdict(quick_report):
    report, _ = quick_report
    ratios = {q["ratio"]: q for b in report["benchmarks"] for q in b["ratios"]}
    for name in bench.TARGETS:
        assert name in ratios, name
        assert ratios[name]["met"] in (True, False)


def test_report_files_hold_the_machine_and_the_ratio_table(quick_report):
    report, out = quick_report
    saved = json.loads((out / "speed.json").read_text())
    assert saved["machine"]["usable_cpus"] >= 1
    assert saved["machine"]["torch_threads"] >= 1
    assert len(saved["benchmarks"]) == len(bench.BENCHMARKS)
    md = (out / "speed.md").read_text()
    assert "| ratio | value | target | met | note |" in md
    for name in bench.BENCHMARKS:
        assert f"### {name}:" in md
    assert report["machine"]["cpu"] in md


def test_threads_are_restored_after_a_run(quick_report):
    report, _ = quick_report
    assert report["machine"]["torch_threads"] == 1
    import torch

    assert torch.get_num_threads() == THREADS_BEFORE


def test_only_selects_benchmarks_and_rejects_unknown_names():
    assert bench.parse_only("b1, B3") == ["B1", "B3"]
    assert bench.parse_only(None) == list(bench.BENCHMARKS)
    with pytest.raises(PodiumError, match="B7"):
        bench.parse_only("B1,B7")


def test_generated_images_are_reused_and_labelled(tmp_path):
    paths, targets, source = bench.benchmark_images(True, 6, data_root=tmp_path)
    again, _, _ = bench.benchmark_images(True, 6, data_root=tmp_path)
    assert sorted(paths) == sorted(again) and len(set(paths)) == 6
    assert set(targets.tolist()) == {0, 1}
    assert "generated" in source


def test_data_that_is_not_images_fails_with_a_clear_message(tmp_path):
    bogus = tmp_path / "images.tar"
    bogus.write_text("not a tar")
    with pytest.raises(PodiumError, match="not a tar archive"):
        bench.benchmark_images(False, 4, data=bogus, data_root=tmp_path / "cache")
