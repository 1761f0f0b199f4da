"""`podium serve` over real HTTP on 127.0.0.1: answers, 4xx errors, micro-batching under
50 concurrent requests, and the drop-an-image page in headless Chromium."""
from __future__ import annotations

import contextlib
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import uvicorn
from browser import DevTools, chromium, wait_for, wait_for_event
from conftest import COLORS, fast_overrides, make_folder, make_image
from PIL import Image

from podium.cli import main
from podium.deploy.export import export_run
from podium.deploy.serve import ServeSettings, create_app, server_config
from podium.errors import PodiumError
from podium.inference.predictor import load_predictor

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    data = make_folder(root / "train", {c: 10 for c in CLASSES})
    overrides = {"output.report": "false", "train.lr": "0.002"}
    assert main(["train", *fast_overrides(root, **overrides), f"data.train={data}", "output.name=srv", "--quiet"]) == 0
    return root / "runs dir" / "srv"


@pytest.fixture(scope="module")
def onnx_model(run):
    return export_run(run, "onnx", dynamic_batch=True).path


@pytest.fixture(scope="module")
def predictor(onnx_model):
    return load_predictor(onnx_model)


@contextlib.contextmanager
def serving(predictor, **settings):
    """A real uvicorn server on a free 127.0.0.1 port, in a thread; stopped on exit."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = ServeSettings(**settings)  # served as `podium serve` serves (its protocol, limits and timeouts)
    server = uvicorn.Server(server_config(create_app(predictor, config), config, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def png_bytes(seed: int, color=(220, 40, 40), size: int = 48) -> bytes:
    buffer = io.BytesIO()
    make_image(color, size, seed=seed).save(buffer, format="PNG")
    return buffer.getvalue()


def expected_probs(predictor, data: bytes) -> np.ndarray:
    """What `predict` gives for this file: read by the run's dataset code, TTA included."""
    image, _ = predictor.dataset([io.BytesIO(data)])[0]
    return predictor.probabilities(image.numpy()[None])[0]


def test_endpoints_answer_real_http(predictor, run):
    cat, dog = png_bytes(1, COLORS["cat"]), png_bytes(2, COLORS["dog"])
    with serving(predictor) as url, httpx.Client(base_url=url, timeout=30) as client:
        health = client.get("/health").json()
        assert health["status"] == "ok" and health["backend"] == "onnxruntime" and health["classes"] == 3
        assert client.get("/classes").json() == {"classes": CLASSES}
        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "<script>" in page.text
        answer = client.post("/predict", files=[("files", ("cat.png", cat, "image/png")),
                                                ("files", ("dog.png", dog, "image/png"))])
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [p["file"] for p in body["predictions"]] == ["cat.png", "dog.png"]
        for prediction, data in zip(body["predictions"], (cat, dog)):
            probs = expected_probs(predictor, data)
            top = prediction["top"]
            assert [t["class"] for t in top] == [CLASSES[i] for i in np.argsort(-probs)]
            assert np.allclose([t["probability"] for t in top], np.sort(probs)[::-1], atol=1e-6)
        one = client.post("/predict", params={"top_k": 1}, files={"files": ("cat.png", cat, "image/png")}).json()
        assert len(one["predictions"]) == 1 and len(one["predictions"][0]["top"]) == 1
    with serving(load_predictor(run)) as url:  # a run folder is served by PyTorch, with the same answers
        health = httpx.get(f"{url}/health").json()
        assert health["backend"] == "torch"
        body = httpx.post(f"{url}/predict", files={"files": ("cat.png", cat, "image/png")}, timeout=30).json()
        probs = expected_probs(predictor, cat)
        assert abs(body["predictions"][0]["top"][0]["probability"] - probs.max()) < 1e-4


def test_client_errors_are_4xx_json_saying_what_was_wrong(predictor):
    big = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(big, format="PNG")
    wide = io.BytesIO()
    Image.new("RGB", (400, 300)).save(wide, format="PNG")
    tiff = io.BytesIO()
    Image.new("RGB", (8, 8)).save(tiff, format="TIFF")
    ok = png_bytes(3)
    settings = dict(max_upload_bytes=60_000, max_pixels=100_000, max_files=3, api_key=None)
    with serving(predictor, **settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        def post(files, **kw):
            response = client.post("/predict", files=files, **kw)
            return response.status_code, response.json()

        status, body = post({"files": ("notes.txt", b"hello, not an image", "text/plain")})
        assert status == 415 and "notes.txt" in body["error"] and "not an image" in body["error"]
        status, body = post({"files": ("scan.tif", tiff.getvalue(), "image/tiff")})
        assert status == 415 and "TIFF" in body["error"] and "scan.tif" in body["error"]
        status, body = post({"files": ("noise.png", big.getvalue(), "image/png")})  # ~120 kB > 60 kB
        assert status == 413 and "noise.png" in body["error"] and "60,000" in body["error"]
        status, body = post({"files": ("wide.png", wide.getvalue(), "image/png")})  # 120,000 px > 100,000
        assert status == 413 and "400x300" in body["error"] and "100,000" in body["error"]
        status, body = post({"files": ("cut.png", ok[: len(ok) // 2], "image/png")})
        assert status == 415 and "cut.png" in body["error"]
        status, body = post({"files": ("empty.png", b"", "image/png")})
        assert status == 400 and "empty" in body["error"]
        status, body = post([("files", (f"{i}.png", ok, "image/png")) for i in range(4)])
        assert status == 413 and "4 files" in body["error"] and "limit is 3" in body["error"]
        status, body = post({"image": ("cat.png", ok, "image/png")})  # the wrong field name
        assert status == 422 and "files" in body["error"] and "multipart" in body["error"]
        response = client.post("/predict", content=b"x" * 300_000, headers={"content-type": "application/octet-stream"})
        assert response.status_code == 413 and "exceeds the limit" in response.json()["error"]
        part = b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        chunks = iter([part] + [b"x" * 100_000] * 3)  # chunked: no Content-Length, counted while read
        response = client.post("/predict", content=chunks, headers={"content-type": "multipart/form-data; boundary=b"})
        assert response.status_code == 413 and "exceeds the limit" in response.json()["error"], response.text
        response = client.get("/nope")
        assert response.status_code == 404 and response.json()["error"]
        assert client.get("/stats").json()["client_errors"] >= 8


def _drive(app, chunks: list[bytes], pause_s: float = 0.0) -> tuple[int, dict]:
    """One chunked request (no Content-Length) through an ASGI app, without a server;
    the client pauses ``pause_s`` before each chunk after the first."""
    import asyncio

    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        if not messages:
            return {"type": "http.disconnect"}
        if len(messages) < len(chunks):
            await asyncio.sleep(pause_s)
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "POST", "path": "/predict", "headers": []}, receive, send))
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent
    return starts[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))


@pytest.mark.parametrize("app_reaction", ["answers 400", "raises another error", "lets it through"])
def test_a_cut_chunked_body_is_always_413_or_408(app_reaction):
    """Whatever the app does with a body cut at the limit or the deadline (FastAPI answers 400 "error parsing
    the body" when the read fails inside form parsing; a parser or a disconnect can raise first), the client
    gets the 413 (too large) or the 408 (too slow) saying so."""
    from starlette.responses import JSONResponse

    from podium.deploy.serve import BodyLimit

    async def app(scope, receive, send):
        try:
            while (await receive()).get("more_body"):
                pass
        except Exception:
            if app_reaction == "answers 400":
                return await JSONResponse({"detail": "There was an error parsing the body"}, 400)(scope, receive, send)
            if app_reaction == "raises another error":
                raise RuntimeError("Invalid multipart data.") from None
            raise
        await JSONResponse({"ok": True})(scope, receive, send)

    status, body = _drive(BodyLimit(app, max_bytes=1000), [b"x" * 400] * 4)
    assert status == 413 and "exceeds the limit of 1,000 bytes" in body["error"]
    status, body = _drive(BodyLimit(app, max_bytes=1000, timeout_s=0.2), [b"x" * 100] * 3, pause_s=0.15)
    assert status == 408 and "after 0.2 s" in body["error"] and "200 bytes received" in body["error"]
    assert _drive(BodyLimit(app, max_bytes=1000, timeout_s=5), [b"x" * 400] * 2, pause_s=0.01) == (200, {"ok": True})


def test_api_key_and_server_errors_never_leak_a_traceback(predictor):
    class Broken:
        """A predictor whose inference fails with an internal detail the client must not see."""

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def probabilities(self, images):
            raise RuntimeError("secret internal detail /srv/model")

    ok = png_bytes(4)
    with serving(Broken(predictor), api_key="s3cret") as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/health").status_code == 200  # health and the page stay open
        refused = client.post("/predict", files={"files": ("a.png", ok, "image/png")})
        assert refused.status_code == 401 and "X-API-Key" in refused.json()["error"]
        assert client.get("/classes", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/classes", headers={"X-API-Key": "s3cret"}).status_code == 200
        # the schema and docs are behind the key too (before: /openapi.json and /docs answered anyone)
        assert client.get("/openapi.json").status_code == 401 and client.get("/docs").status_code == 404
        assert "/predict" in client.get("/openapi.json", headers={"X-API-Key": "s3cret"}).json()["paths"]
        failed = client.post("/predict", files={"files": ("a.png", ok, "image/png")}, headers={"X-API-Key": "s3cret"})
        assert failed.status_code == 500 and failed.json()["error"].startswith("internal server error")
        assert "secret" not in failed.text and "Traceback" not in failed.text


def test_slow_inference_504_and_slow_upload_408(predictor):
    class Slow:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def probabilities(self, images):
            time.sleep(1.5)
            return self.inner.probabilities(images)

    def slow_upload():  # a client that stalls mid-body holds no connection past the timeout
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
        time.sleep(1.0)
        yield b"x" * 10 + b"\r\n--b--\r\n"

    with serving(Slow(predictor), request_timeout_s=0.3) as url:
        response = httpx.post(f"{url}/predict", files={"files": ("a.png", png_bytes(5), "image/png")}, timeout=30)
        assert response.status_code == 504 and "longer than 0.3 s" in response.json()["error"]
        response = httpx.post(f"{url}/predict", content=slow_upload(), timeout=30,
                              headers={"content-type": "multipart/form-data; boundary=b"})
        assert response.status_code == 408 and "had not arrived after 0.3 s" in response.json()["error"]


def test_50_concurrent_requests_are_correct_and_batched(predictor):
    colors = list(COLORS.values())
    images = [png_bytes(100 + i, colors[i % 3]) for i in range(50)]
    expected = [expected_probs(predictor, data) for data in images]
    with serving(predictor, max_batch_size=16, max_wait_ms=50, batching="on") as url, httpx.Client(
            base_url=url, timeout=60, limits=httpx.Limits(max_connections=50)) as client:
        def ask(i):
            response = client.post("/predict", files={"files": (f"{i}.png", images[i], "image/png")})
            return response.status_code, response.json()

        with ThreadPoolExecutor(max_workers=50) as pool:
            answers = list(pool.map(ask, range(50)))
        stats = client.get("/stats").json()
    for i, (status, body) in enumerate(answers):
        assert status == 200, body
        top = body["predictions"][0]["top"]
        assert body["predictions"][0]["file"] == f"{i}.png"
        assert top[0]["class"] == CLASSES[int(np.argmax(expected[i]))]
        got = {t["class"]: t["probability"] for t in top}
        assert np.allclose([got[c] for c in CLASSES], expected[i], atol=1e-5)
    assert stats["images"] == 50 and stats["largest_batch"] > 1, stats
    assert stats["batches"] < 50 and stats["largest_batch"] <= 16


def test_batching_auto_is_off_for_a_cpu_model(predictor):
    """`--batching auto` (default): a CPU model answers one image per forward pass (batching
    measured lower throughput on a CPU); a CUDA model would be batched."""
    from podium.deploy.serve import batching_on

    assert str(predictor.device) == "cpu"
    with serving(predictor, max_batch_size=16, max_wait_ms=50) as url, httpx.Client(base_url=url, timeout=60) as client:
        files = [("files", (f"{i}.png", png_bytes(i), "image/png")) for i in range(4)]
        assert client.post("/predict", files=files).status_code == 200
        stats = client.get("/stats").json()
    assert stats["max_batch_size"] == 1 and stats["largest_batch"] == 1 and stats["batches"] == 4, stats
    gpu = type("GpuModel", (), {"device": "cuda:0"})()
    assert batching_on(ServeSettings(), gpu) and not batching_on(ServeSettings(batching="off"), gpu)
    with pytest.raises(PodiumError, match="auto, on or off"):
        ServeSettings(batching="sometimes")


def test_header_timeout_option_reaches_the_server_settings(monkeypatch):
    import podium
    from podium.cli import main

    seen: dict = {}
    monkeypatch.setattr(podium, "serve", lambda model, **kw: seen.update(kw))
    assert main(["serve", "runs/exp", "--header-timeout", "2.5"]) == 0
    assert seen["settings"].header_timeout_s == 2.5 and ServeSettings().header_timeout_s == 10.0
    with pytest.raises(PodiumError, match="header_timeout_s > 0"):
        ServeSettings(header_timeout_s=0)


# ---------------------------------------------------------------- the page in headless Chromium


RESULTS_JS = ("Array.from(document.querySelectorAll('.result')).map(r => ({file: r.querySelector('.file').textContent,"
              " image: r.querySelector('img').naturalWidth, bars: Array.from(r.querySelectorAll('.row')).map(row =>"
              " [row.querySelector('.label').textContent, row.querySelector('.fill').style.width])}))")


BUSY_JS = ("({busy: document.getElementById('drop').getAttribute('aria-busy'), status: "
           "document.getElementById('status').textContent, results: document.querySelectorAll('.result').length})")


@pytest.mark.skipif(chromium() is None, reason="chromium not installed (apt-get install -y chromium)")
def test_page_in_headless_chromium_pick_and_drop(predictor, tmp_path):
    cat = tmp_path / "cat.png"
    cat.write_bytes(png_bytes(7, COLORS["cat"], size=64))
    fox = tmp_path / "fox.png"
    fox.write_bytes(png_bytes(8, COLORS["fox"], size=64))
    picks = [tmp_path / f"pick{i}.png" for i in range(3)]
    for i, path in enumerate(picks):
        path.write_bytes(png_bytes(20 + i, COLORS["dog"], size=64))
    with serving(predictor) as url:
        tools = DevTools(chromium(), tmp_path / "profile")
        try:
            target = tools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "DOM"):
                tools.send(f"{domain}.enable", session=session)
            tools.send("Page.navigate", {"url": url + "/"}, session)
            wait_for(tools, session, "document.readyState === 'complete' && !!document.getElementById('picker')")
            # pick: the file chooser input, as a person choosing a file does
            root = tools.send("DOM.getDocument", session=session)["root"]["nodeId"]
            picker = tools.send("DOM.querySelector", {"nodeId": root, "selector": "#picker"}, session)["nodeId"]
            tools.send("DOM.setFileInputFiles", {"nodeId": picker, "files": [str(cat)]}, session)
            wait_for(tools, session, "document.querySelectorAll('.result').length === 1")
            # drop: a real drag of a file onto the drop zone
            box = wait_for(tools, session, "(() => { const r = document.getElementById('drop')"
                                            ".getBoundingClientRect(); "
                                            "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
            drag = {"items": [], "files": [str(fox)], "dragOperationsMask": 1}
            for kind in ("dragEnter", "dragOver", "drop"):
                tools.send("Input.dispatchDragEvent", {"type": kind, "x": box[0], "y": box[1], "data": drag}, session)
            wait_for(tools, session, "document.querySelectorAll('.result').length === 2 && "
                                      "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
            results = tools.send("Runtime.evaluate", {"expression": RESULTS_JS, "returnByValue": True},
                                 session)["result"]["value"]
            shot = tools.send("Page.captureScreenshot", {"format": "png"}, session)["data"]
            # a multi-file pick: its results in the order of the files, above the earlier ones
            tools.send("DOM.setFileInputFiles", {"nodeId": picker, "files": [str(p) for p in picks]}, session)
            wait_for(tools, session, "document.querySelectorAll('.result').length === 5")
            order = tools.send("Runtime.evaluate", {"expression": "Array.from(document.querySelectorAll('.file'))"
                                                    ".map(e => e.textContent)", "returnByValue": True},
                               session)["result"]["value"]
            page_text = tools.send("Runtime.evaluate", {"expression": "document.body.innerText",
                                                        "returnByValue": True}, session)["result"]["value"]
            # the busy state: hold the next request in the browser (DevTools Fetch) and look at the page meanwhile
            tools.send("Fetch.enable", {"patterns": [{"urlPattern": "*/predict*", "requestStage": "Request"}]}, session)
            tools.send("DOM.setFileInputFiles", {"nodeId": picker, "files": [str(cat), str(fox)]}, session)
            held = wait_for_event(tools, "Fetch.requestPaused")
            busy = tools.send("Runtime.evaluate", {"expression": BUSY_JS, "returnByValue": True},
                              session)["result"]["value"]
            tools.send("Fetch.continueRequest", {"requestId": held["params"]["requestId"]}, session)
            tools.send("Fetch.disable", session=session)
            wait_for(tools, session, "document.querySelectorAll('.result').length === 7 && "
                                      "!document.getElementById('drop').hasAttribute('aria-busy')")
            idle = tools.send("Runtime.evaluate", {"expression": BUSY_JS, "returnByValue": True},
                              session)["result"]["value"]
            errors = [e for e in tools.events if e.get("method") == "Runtime.exceptionThrown"]
        finally:
            tools.close()
    import base64

    (tmp_path / "page.png").write_bytes(base64.b64decode(shot))
    assert not errors, errors
    assert order == ["pick0.png", "pick1.png", "pick2.png", "fox.png", "cat.png"], order
    assert "top 3 most probable classes" in page_text and "five" not in page_text  # k = the 3 classes
    # while the request is out: the drop zone busy, the status says what is being done, no result yet
    assert busy == {"busy": "true", "status": "predicting 2 images\u2026", "results": 5}, busy
    assert idle == {"busy": None, "status": "", "results": 7}, idle
    by_file = {r["file"]: r for r in results}
    assert set(by_file) == {"cat.png", "fox.png"}
    for name, path in (("cat.png", cat), ("fox.png", fox)):
        probs = expected_probs(predictor, path.read_bytes())
        bars = by_file[name]["bars"]
        assert by_file[name]["image"] == 64, "the dropped image is shown"
        assert len(bars) == 3 and bars[0][0] == CLASSES[int(np.argmax(probs))]
        assert abs(float(bars[0][1].rstrip("%")) - 100 * probs.max()) < 0.1
    shot_image = np.asarray(Image.open(tmp_path / "page.png"))
    assert shot_image.std() > 10
