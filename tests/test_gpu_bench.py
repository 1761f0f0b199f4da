"""benchmarks/gpu: the prepared GPU script works on the CPU (--dry-run), boxes its stages in
time and records what it measured. The GPU numbers themselves are in benchmarks/gpu/RESULTS.md."""
from __future__ import annotations

import argparse
import json

import pytest
from conftest import SHARED

from benchmarks.gpu import run as gpu

CIFAR = SHARED / "data" / "cifar10.tar.gz"


@pytest.mark.skipif(not CIFAR.is_file(), reason=f"{CIFAR} (the CIFAR-10 JPEG tarball) is absent")
def test_dry_run_trains_the_cifar_config_and_prepares_airbench(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # restored afterwards (the dry run sets it)
    out = tmp_path / "out"
    code = gpu.main(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work"), "--subset", "3",
                     "--stages", "podium,airbench", "--weights", "", "--data", str(CIFAR),
                     "--set", "model.name=test_efficientnet", "--set", "model.pretrained=false"])
    results = json.loads((out / "results.json").read_text())
    stages = results["stages"]
    assert code == 0, {k: v.get("error") for k, v in stages.items()}
    assert list(stages) == ["prepare", "podium", "airbench"]
    assert stages["prepare"]["images"] == {"train": 30, "test": 10}
    podium = stages["podium"]
    assert podium["train_images"] == 30 and podium["val_images"] == 10 and podium["device"] == "cpu"
    (epoch,) = podium["epochs"]
    assert 0 <= epoch["val_acc"] <= 1 and epoch["train_s"] > 0 and podium["train_images_per_s"] > 0
    assert podium["config"]["data"]["cache"] == "device" and podium["config"]["data"]["image_size"] == 32
    assert stages["airbench"]["train_shape"] == [30, 32, 32, 3]  # airbench's own layout: N, H, W, C uint8
    assert (out / "podium_metrics.csv").is_file()
    assert "podium: best test acc" in (out / "results.md").read_text()


def _bench(tmp_path, budget: float) -> gpu.Bench:
    args = argparse.Namespace(out=str(tmp_path / "out"), work=str(tmp_path / "work"), commit="abc", dry_run=True,
                              budget=budget, set=[], weights="")
    return gpu.Bench(args)


def test_a_failing_stage_is_recorded_and_later_stages_still_run(tmp_path):
    bench = _bench(tmp_path, budget=100)

    def broken(_):
        raise RuntimeError("no such GPU")

    bench.run("first", broken, needs=0)
    bench.run("second", lambda _: {"value": 3}, needs=0)
    bench.run("third", lambda _: {"value": 4}, needs=1000)  # more than the budget leaves
    saved = json.loads((tmp_path / "out" / "results.json").read_text())["stages"]
    assert saved["first"]["status"] == "error" and "RuntimeError: no such GPU" in saved["first"]["error"]
    assert saved["second"] == {"status": "ok", "value": 3, "seconds": saved["second"]["seconds"]}
    assert saved["third"]["status"] == "skipped" and "needs ~1000" in saved["third"]["reason"]


def test_junit_results_give_each_test_outcome_and_its_properties(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_cuda" name="test_a" time="1.5"/>'
        '<testcase classname="tests.test_cuda" name="test_b" time="0.1"><skipped message="needs a CUDA GPU"/></testcase>'
        '<testcase classname="tests.test_cuda" name="test_c" time="2"><properties>'
        '<property name="onnx_providers" value="CPUExecutionProvider"/></properties>'
        '<failure message="assert 1 == 2"/></testcase></testsuite></testsuites>')
    cases = gpu._junit_cases(xml)
    assert [(c["test"], c["outcome"]) for c in cases] == [("test_a", "passed"), ("test_b", "skipped"),
                                                          ("test_c", "failure")]
    assert cases[2]["onnx_providers"] == "CPUExecutionProvider" and cases[2]["message"] == "assert 1 == 2"
