"""Headless Chromium driven over the DevTools protocol on a pipe (no WebDriver and no websocket library).

Chromium started with ``--remote-debugging-pipe`` reads protocol commands from
file descriptor 3 and writes answers and events to 4, each JSON message ended
by a NUL byte.  Enough of the protocol to log in through a real form, read the
DOM, see cookies as the browser stored them, and take screenshots.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.helpers import require_tool, wait_for


class Browser:
    """One headless Chromium with one page.

    Parameters
    ----------
    profile : pathlib.Path
        An empty folder for the browser's profile (cookies live there).
    size : tuple of int
        Window width and height in pixels.
    """

    def __init__(self, profile: Path, size: tuple[int, int] = (1400, 900)) -> None:
        chromium = require_tool("chromium")
        profile.mkdir(parents=True, exist_ok=True)
        to_chrome, self._to_chrome = os.pipe()
        self._from_chrome, from_us = os.pipe()

        def child_fds() -> None:
            # Move both ends above the low numbers first, so that neither is overwritten by the other.
            a, b = fcntl.fcntl(to_chrome, fcntl.F_DUPFD, 10), fcntl.fcntl(from_us, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._log = open(profile.with_name(profile.name + "-chromium.log"), "ab")
        self.proc = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}", "about:blank"],
            # Python's own descriptors are not inherited (PEP 446); 3 and 4 are.
            close_fds=False, preexec_fn=child_fds,
            stdout=subprocess.DEVNULL, stderr=self._log,
        )
        os.close(to_chrome)
        os.close(from_us)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session = ""
        try:
            target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            self.call("Page.enable", session=True)
            self.call("Network.enable", session=True)
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": size[0], "height": size[1], "deviceScaleFactor": 1, "mobile": False}, session=True)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ protocol

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (status {self.proc.poll()})")
            self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = False, timeout: float = 60) -> Any:
        """Send one command and return its result (events that arrive meanwhile are kept in :attr:`events`)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})
            self.events.append(answer)

    def wait_event(self, method: str, timeout: float = 60) -> dict[str, Any]:
        """The first kept or arriving event called ``method`` (it is consumed)."""
        deadline = time.monotonic() + timeout
        while True:
            for i, event in enumerate(self.events):
                if event.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    # ------------------------------------------------------------------ page

    def goto(self, url: str, timeout: float = 60) -> None:
        """Load ``url`` and wait for its load event."""
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=True)
        self.wait_event("Page.loadEventFired", timeout)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (DevTools evaluation is not subject to the page's CSP)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def submit_form(self, selector: str, values: dict[str, str], timeout: float = 60) -> None:
        """Fill the fields of the form ``selector`` by name, submit it as a user would, and wait for the next page."""
        self.events.clear()
        fill = "".join(f"f.elements[{json.dumps(k)}].value = {json.dumps(v)};" for k, v in values.items())
        self.evaluate(f"(() => {{ const f = document.querySelector({json.dumps(selector)}); {fill} f.requestSubmit(); }})()")
        self.wait_event("Page.loadEventFired", timeout)

    def dom(self) -> str:
        """The page's current HTML."""
        return str(self.evaluate("document.documentElement.outerHTML"))

    def cookies(self) -> list[dict[str, Any]]:
        """Every cookie the browser holds for the page, with its flags as stored."""
        return list(self.call("Network.getCookies", session=True)["cookies"])

    def images_loaded(self, selector: str) -> bool:
        """Whether every image matching ``selector`` finished loading with pixels."""
        return bool(self.evaluate(
            f"[...document.querySelectorAll({json.dumps(selector)})].every(i => i.complete && i.naturalWidth > 0)"
            f" && document.querySelectorAll({json.dumps(selector)}).length > 0"
        ))

    def screenshot(self, path: Path) -> Path:
        """Save a PNG of the viewport to ``path``."""
        wait_for(lambda: self.evaluate("document.readyState") == "complete", 30, what="the page to settle")
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        """Close the browser."""
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
