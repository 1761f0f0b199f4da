"""Throughput of `podium serve` (images/s) at concurrency 1, 8 and 32, micro-batching on and off.

Why: the server micro-batches concurrent requests so that throughput rises with
concurrency; this measures whether it does, on a realistic model
(tv/mobilenet_v2 at 224 px from the ImageNet weights in ../shared/weights) and
real photos (hymenoptera JPEGs from ../shared/data) as uploads.

Usage (from the repository root; the server and the client share the machine):

    nice -n 10 .venv/bin/python benchmarks/serve/run_bench.py --work /tmp/serve-bench \
        [--seconds 8] [--repeats 3] [--backends onnx,torch] [--concurrency 1,8,32]

Each configuration starts a fresh `podium serve` subprocess on 127.0.0.1,
warms it up, then N client tasks each post one image at a time (multipart,
like `curl -F files=@x.jpg`) in a loop for ``--seconds``; every answer is
checked (HTTP 200 and a top class). Results go to WORK/results.csv and are
printed as a Markdown table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
PODIUM = [sys.executable, "-m", "podium"]


def prepare(work: Path) -> tuple[Path, list[Path]]:
    """A one-epoch tv/mobilenet_v2 run at 224 px on hymenoptera (ImageNet init) and its ONNX export."""
    data = work / "hymenoptera"
    if not data.is_dir():
        with tarfile.open(SHARED / "data" / "hymenoptera.tar") as tar:
            tar.extractall(work, filter="data")
    run = work / "runs" / "mbv2"
    if not (run / "best.ckpt").is_file():
        subprocess.run([*PODIUM, "train", f"data.train={data / 'train'}", f"data.val={data / 'val'}",
                        "model.name=tv/mobilenet_v2",
                        f"model.pretrained_path={SHARED / 'weights' / 'mobilenet_v2-b0353104.pth'}",
                        "data.image_size=224", "train.epochs=1", "train.accelerator=cpu", "train.precision=32",
                        "data.num_workers=1", "output.report=false", f"output.dir={work / 'runs'}", "output.name=mbv2",
                        "--quiet"], check=True)
    onnx = run / "exports" / "onnx" / "model.onnx"
    if not onnx.is_file():
        subprocess.run([*PODIUM, "export", str(run), "--format", "onnx", "--dynamic-batch"], check=True)
    photos = sorted(p for p in (data / "val").rglob("*.jpg"))[:64]
    return run, photos


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, batching: bool, max_batch: int) -> subprocess.Popen:
    """A `podium serve` subprocess, once /health answers. It inherits the benchmark's CPU priority:
    a server niced below its own client would be starved by it and measure the client."""
    args = [*PODIUM, "serve", str(model), "--port", str(port), "--max-batch-size", str(max_batch),
            "--max-wait-ms", "5", "--max-files", "4"]
    args += ["--batching", "on" if batching else "off"]  # explicit: the default (auto) is off on a CPU
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
        if proc.poll() is not None:
            raise RuntimeError("server died: " + proc.stderr.read().decode()[-2000:])
    proc.kill()
    raise RuntimeError("server did not start in 120 s")


async def load(url: str, photos: list[bytes], concurrency: int, seconds: float) -> dict:
    """``concurrency`` clients posting one photo each in a loop; a bounded run (time and count)."""
    import httpx

    latencies: list[float] = []
    failures = 0
    stop = time.monotonic() + seconds
    limit = 100_000  # a hard cap on requests, whatever the speed

    async def client(worker: int, http: httpx.AsyncClient):
        nonlocal failures
        k = worker
        while time.monotonic() < stop and len(latencies) + failures < limit:
            started = time.perf_counter()
            r = await http.post("/predict", files={"files": (f"{k}.jpg", photos[k % len(photos)], "image/jpeg")})
            if r.status_code == 200 and r.json()["predictions"][0]["top"]:
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1
            k += concurrency

    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency)) as http:
        began = time.perf_counter()
        await asyncio.gather(*[client(i, http) for i in range(concurrency)])
        elapsed = time.perf_counter() - began
    lat = np.asarray(latencies) * 1000
    return {"images_per_s": len(latencies) / elapsed, "requests": len(latencies), "failures": failures,
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
            "p95_ms": float(np.percentile(lat, 95)) if len(lat) else None}


def measure(url: str, photos: list[bytes], concurrency: int, seconds: float) -> dict:
    """One load run, with the server's own batch statistics over exactly that run."""
    import httpx

    before = httpx.get(f"{url}/stats").json()
    result = asyncio.run(load(url, photos, concurrency, seconds))
    after = httpx.get(f"{url}/stats").json()
    batches = after["batches"] - before["batches"]
    images = after["images"] - before["images"]
    return {**result, "mean_batch": images / batches if batches else None,
            "infer_ms_per_image": 1000 * (after["inference_s"] - before["inference_s"]) / images if images else None}


def bench(model: Path, backend: str, photos: list[bytes], concurrency: list[int], seconds: float,
          repeats: int) -> list[dict]:
    """Both servers (batching off and on) up at once, measured alternately, ``repeats`` rounds:
    on a shared machine whose load drifts, each pair of numbers is taken under similar load."""
    servers = {}
    try:
        for mode in ("off", "on"):
            port = free_port()
            servers[mode] = (start_server(model, port, mode == "on", max_batch=32), f"http://127.0.0.1:{port}")
            asyncio.run(load(servers[mode][1], photos, 4, 2.0))  # warm-up: first calls allocate and load kernels
        rows = []
        for round_ in range(repeats):
            for c in concurrency:
                for mode in ("off", "on"):
                    row = {"backend": backend, "batching": mode, "concurrency": c, "round": round_,
                           **measure(servers[mode][1], photos, c, seconds)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        return rows
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/serve-bench"))
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--backends", default="onnx,torch")
    parser.add_argument("--concurrency", default="1,8,32")
    parser.add_argument("--repeats", type=int, default=3, help="alternating rounds; the table shows medians")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    run, photo_paths = prepare(args.work)
    photos = [p.read_bytes() for p in photo_paths]
    models = {"onnx": run / "exports" / "onnx" / "model.onnx", "torch": run}
    concurrency = [int(c) for c in args.concurrency.split(",")]
    rows = []
    for backend in args.backends.split(","):
        rows += bench(models[backend], backend, photos, concurrency, args.seconds, args.repeats)
    table = pd.DataFrame(rows)
    table.to_csv(args.work / "results.csv", index=False)
    summary = (table.groupby(["backend", "batching", "concurrency"], sort=False)
               [["images_per_s", "p50_ms", "p95_ms", "mean_batch", "infer_ms_per_image"]].median().round(1))
    summary["failures"] = table.groupby(["backend", "batching", "concurrency"], sort=False)["failures"].sum()
    summary.to_csv(args.work / "summary.csv")
    print(summary.to_string())


if __name__ == "__main__":
    main()
