"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for the browser tests.

No browser-automation package: the DevTools protocol is JSON over a WebSocket, spoken here with the
`websockets` client the project already has. A `Browser` starts one Chromium per test module; each `Page`
records what a user would not see in a screenshot: uncaught JavaScript exceptions, `console.error` calls, and
every request. With `offline=True` the browser cannot reach anything but loopback (host names other than
localhost do not resolve, and any request to a non-loopback host is failed and recorded), as on an
air-gapped network.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.sync.client import ClientConnection, connect

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
]


def chromium_or_skip() -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (CI installs Debian's chromium in .ci/run)")
    return chromium


class BrowserError(AssertionError):
    pass


@dataclass
class Page:
    """One tab. `errors` holds uncaught exceptions and console errors; `requests` every URL requested;
    `blocked` the requests to non-loopback hosts that an offline browser failed."""

    browser: Browser
    session_id: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    loaded: bool = False

    def call(self, method: str, params: dict[str, Any] | None = None, timeout: float = 60) -> dict[str, Any]:
        return self.browser.call(method, params, session_id=self.session_id, timeout=timeout)

    def open(self, url: str, timeout: float = 90) -> None:
        """Navigate and wait for the load event."""
        self.loaded = False
        self.errors.clear()
        answer = self.call("Page.navigate", {"url": url}, timeout=timeout)
        if answer.get("errorText"):
            raise BrowserError(f"{url} did not open: {answer['errorText']}")
        if "loaderId" not in answer:
            return  # same-document navigation (only the #fragment changed): no load event follows
        self.browser.pump_until(lambda: self.loaded, timeout, f"the load event of {url}")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} raised: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; its value. Fails with the page's text."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(
                    f"timed out after {timeout:.0f} s waiting for {what or expression}; the page shows:\n"
                    f"{(self.text() or '')[:2000]}\nerrors: {self.errors}"
                )
            self.browser.pump(0.5)

    def wait_for_text(self, *needles: str, timeout: float = 60) -> str:
        """Wait until the page's visible text contains every needle; that text."""
        probe = " && ".join(f"document.body.innerText.includes({json.dumps(n)})" for n in needles)
        self.wait_for(f"document.body && {probe}", timeout, what=f"the text {needles}")
        return self.text()

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def click_link(self, text: str) -> str:
        """Follow the first link whose text is `text` (as a user clicking it would); the URL it went to."""
        href = self.evaluate(
            f"(() => {{ const a = [...document.querySelectorAll('a')].find(a => a.innerText.trim() === "
            f"{json.dumps(text)}); return a ? a.href : null; }})()"
        )
        if not href:
            raise BrowserError(f"no link {text!r} on the page:\n{self.text()[:2000]}")
        self.open(href)
        return href

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def assert_no_js_errors(self, allowed: tuple[str, ...] = ()) -> None:
        """No uncaught exception and no console error, except those containing an `allowed` fragment."""
        unexpected = [e for e in self.errors if not any(fragment in e for fragment in allowed)]
        assert not unexpected, f"JavaScript errors on the page: {unexpected}"

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Page.loadEventFired":
            self.loaded = True
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            described = details.get("exception", {}).get("description") or details.get("text")
            self.errors.append(f"uncaught: {described} ({details.get('url', '')}:{details.get('lineNumber')})")
        elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.errors.append(f"console.error: {args}"[:1000])
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Fetch.requestPaused":
            url = params["request"]["url"]
            host = urlsplit(url).hostname or ""
            if url.startswith(("http:", "https:", "ws:", "wss:")) and host not in LOOPBACK:
                self.blocked.append(url)
                self.browser.send(
                    "Fetch.failRequest",
                    {"requestId": params["requestId"], "errorReason": "InternetDisconnected"},
                    session_id=self.session_id,
                )
            else:
                self.browser.send(
                    "Fetch.continueRequest", {"requestId": params["requestId"]}, session_id=self.session_id
                )


class Browser:
    """One headless Chromium; `new_page()` opens tabs. Use as a context manager."""

    def __init__(self, profile_dir: Path, *, offline: bool = False, window: tuple[int, int] = (1440, 1000)) -> None:
        self.profile_dir = profile_dir
        self.offline = offline
        self.window = window
        self.proc: subprocess.Popen | None = None
        self.ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._answers: dict[int, dict[str, Any]] = {}
        self.pages: dict[str, Page] = {}

    def __enter__(self) -> Browser:
        chromium = chromium_or_skip()
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        (self.profile_dir / "DevToolsActivePort").unlink(missing_ok=True)
        flags = [*CHROMIUM_FLAGS, f"--window-size={self.window[0]},{self.window[1]}"]
        if self.offline:
            # Nothing but loopback resolves: a CDN's host name fails as it would on an air-gapped network.
            flags.append("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1")
        self.proc = subprocess.Popen(
            [chromium, *flags, f"--user-data-dir={self.profile_dir}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=(self.profile_dir / "chromium.log").open("wb"),
            start_new_session=True,
        )
        port_file = self.profile_dir / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BrowserError(f"chromium did not start; see {self.profile_dir / 'chromium.log'}")
            time.sleep(0.2)
        port, path = port_file.read_text().splitlines()[:2]
        self.ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=64 * 1024 * 1024, open_timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.ws is not None:
            self.ws.close()
        if self.proc is not None and self.proc.poll() is None:
            # Chromium's own children (renderers, GPU and network services) share its process group.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def new_page(self) -> Page:
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = Page(self, session)
        self.pages[session] = page
        for domain in ("Page", "Runtime", "Network"):
            page.call(f"{domain}.enable")
        if self.offline:
            page.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]})
        return page

    def send(self, method: str, params: dict[str, Any] | None = None, session_id: str | None = None) -> int:
        assert self.ws is not None
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session_id:
            message["sessionId"] = session_id
        self.ws.send(json.dumps(message))
        return ident

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, session_id: str | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        ident = self.send(method, params, session_id)
        self.pump_until(lambda: ident in self._answers, timeout, method)
        answer = self._answers.pop(ident)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def pump_until(self, done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout:.0f} s waiting for {what}")
            self.pump(0.25)

    def pump(self, seconds: float) -> None:
        """Handle the messages that arrive within `seconds` (answers are kept, events go to their page)."""
        assert self.ws is not None
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                raw = self.ws.recv(timeout=left)
            except TimeoutError:
                return
            message = json.loads(raw)
            if "id" in message:
                self._answers[message["id"]] = message
            elif (page := self.pages.get(message.get("sessionId", ""))) is not None:
                page._event(message["method"], message.get("params", {}))
