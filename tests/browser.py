"""Headless Chromium for page tests: the Chrome DevTools Protocol over a pipe, no extra package.

Used by the serve page test and the audit review page test; `chromium()` is None where the
browser is not installed (those tests skip; .ci/run installs it).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path


def chromium() -> str | None:
    found = shutil.which("chromium")
    return found or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)


class DevTools:
    """The Chrome DevTools Protocol over --remote-debugging-pipe (fds 3 and 4): no extra package."""

    def __init__(self, chromium: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds():  # in the child: the browser reads commands on fd 3 and writes replies on fd 4
            import fcntl

            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]
            for fd, target in zip(high, (3, 4)):
                os.dup2(fd, target)
                os.set_inheritable(target, True)

        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
             f"--user-data-dir={profile}", "--window-size=1000,800", "about:blank"],
            close_fds=False, preexec_fn=wire_fds,  # other fds are close-on-exec (Python's default)
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                assert "error" not in reply, reply
                return reply.get("result", {})
            self.events.append(reply)

    def _read(self, deadline: float) -> dict:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            assert left > 0, "Chromium did not answer in time"
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                assert chunk, "Chromium closed the DevTools pipe: " + self.proc.stderr.read().decode()[-2000:]
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.send("Browser.close", timeout=5)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
        os.close(self._to_browser)
        os.close(self._from_browser)


def wait_for(tools: DevTools, session: str, expression: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = tools.send("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                           session)["result"].get("value")
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"page never satisfied {expression}")


def wait_for_event(tools: DevTools, method: str, timeout: float = 30) -> dict:
    """The first DevTools event named ``method`` (events arrive between replies, so ask something cheap
    until it is there); removed from ``tools.events``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for k, event in enumerate(tools.events):
            if event.get("method") == method:
                return tools.events.pop(k)
        tools.send("Browser.getVersion")
        time.sleep(0.05)
    raise AssertionError(f"no {method} event in {timeout} s")
