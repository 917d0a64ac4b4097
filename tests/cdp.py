"""A minimal Chrome DevTools Protocol client for the browser tests: open a page in headless Chromium,
run JavaScript in it, wait for a condition. Only tornado's websocket client (a Jupyter dependency)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from pathlib import Path


class BrowserError(AssertionError):
    pass


class Page:
    """One Chromium tab at `url`; `evaluate(js)` returns the value of an expression (promises awaited)."""

    def __init__(self, chromium: str, url: str, profile: Path, width: int = 1280, height: int = 2000,
                 helpers: str = ""):
        profile.mkdir(parents=True, exist_ok=True)
        (profile / "DevToolsActivePort").unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
             "--disable-background-networking", "--disable-component-update", "--remote-debugging-port=0",
             f"--window-size={width},{height}", f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        port = self._port(profile / "DevToolsActivePort")
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)  # tornado makes its futures on the current loop
        self.socket = self.loop.run_until_complete(self._connect(self._page_socket(port, url)))
        self.sequence = 0
        self.call("Page.enable")
        if helpers:  # defined in every document the tab loads, before its own scripts
            self.call("Page.addScriptToEvaluateOnNewDocument", source=helpers)
        self.call("Page.navigate", url=url)
        self.wait_for(f"document.readyState === 'complete' && location.href === {json.dumps(url)}",
                      what=f"{url} to load")

    def _port(self, file: Path, timeout: float = 30) -> int:
        start = time.time()
        while time.time() - start < timeout:
            if file.is_file() and file.read_text().strip():
                return int(file.read_text().split()[0])
            time.sleep(0.1)
        raise BrowserError("chromium did not open its debugging port")

    def _page_socket(self, port: int, url: str, timeout: float = 30) -> str:
        start = time.time()
        while time.time() - start < timeout:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list") as response:
                pages = [t for t in json.load(response) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            time.sleep(0.1)
        raise BrowserError(f"no page target for {url}")

    async def _connect(self, address: str):
        from tornado.websocket import websocket_connect

        return await websocket_connect(address, max_message_size=256 * 1024 * 1024)

    def call(self, method: str, **params) -> dict:
        self.sequence += 1
        message = {"id": self.sequence, "method": method, "params": params}
        self.loop.run_until_complete(self.socket.write_message(json.dumps(message)))
        while True:
            reply = self.loop.run_until_complete(self.socket.read_message())
            if reply is None:
                raise BrowserError("the browser closed the connection")
            data = json.loads(reply)
            if data.get("id") == self.sequence:
                if "error" in data:
                    raise BrowserError(f"{method}: {data['error']}")
                return data["result"]

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:200]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str = "") -> object:
        start = time.time()
        while time.time() - start < timeout:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.2)
        raise BrowserError(f"timed out waiting for {what or expression[:120]}")

    def screenshot(self, path: Path, selector: str | None = None) -> Path:
        """A PNG of the page, or of the element `selector` matches (its whole box, scrolled or not)."""
        import base64

        clip = {}
        if selector:
            box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
                                " return [r.left + scrollX, r.top + scrollY, r.width, r.height]; })()")
            clip = {"clip": dict(zip(("x", "y", "width", "height"), box), scale=1)}
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True, **clip)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.loop.run_until_complete(asyncio.sleep(0))
            self.socket.close()
        finally:
            self.process.kill()
            self.process.wait()
            self.loop.close()
