"""A tiny Chrome DevTools Protocol client for the browser tests.

`Chromium` runs headless Chromium as a child process in its own session (so
that the whole process tree can be found and killed with killpg; this process
is a child subreaper meanwhile, so orphaned renderers are reaped here), reads
the DevTools port from the DevToolsActivePort file in its profile directory,
and opens tabs with `PUT /json/new?<url>`. `Tab` speaks CDP over the tab's websocket
(aiohttp): `call(method, **params)` and `evaluate(expression)`; console
messages and uncaught exceptions are kept in `Tab.console` for diagnostics.
"""

from __future__ import annotations

import asyncio
import base64
import ctypes
import itertools
import os
import signal
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "/usr/bin/chromium"
PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--mute-audio",
    "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    # Chromium leaves loopback out of its network list, so in a loopback-only
    # namespace it would gather no candidate at all and never send an ICE check.
    "--allow-loopback-in-peer-connection",
    "--remote-debugging-port=0",
]


class CdpError(RuntimeError):
    pass


class Tab:
    """One page target, driven over its DevTools websocket."""

    def __init__(self, info: dict, http: aiohttp.ClientSession) -> None:
        self.id: str = info["id"]
        self.ws_url: str = info["webSocketDebuggerUrl"]
        self._http = http
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None
        self.console: list[str] = []

    async def connect(self) -> "Tab":
        self._ws = await self._http.ws_connect(self.ws_url, max_msg_size=0)
        self._reader = asyncio.ensure_future(self._read())
        await self.call("Runtime.enable")
        await self.call("Page.enable")
        return self

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                data = msg.json()
                if "id" in data:
                    future = self._pending.pop(data["id"], None)
                    if future is not None and not future.done():
                        if "error" in data:
                            future.set_exception(CdpError(str(data["error"])))
                        else:
                            future.set_result(data.get("result", {}))
                else:
                    self._on_event(data.get("method", ""), data.get("params", {}))
        finally:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(CdpError("DevTools connection closed"))
            self._pending.clear()

    def _on_event(self, method: str, params: dict) -> None:
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            self.console.append(f"exception: {exc.get('description') or details.get('text')}")

    async def call(self, method: str, timeout: float = 10.0, **params: Any) -> dict:
        if self._ws is None or self._ws.closed:
            raise CdpError("not connected")
        msg_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        await self._ws.send_json({"id": msg_id, "method": method, "params": params})
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            self._pending.pop(msg_id, None)

    async def evaluate(self, expression: str, timeout: float = 10.0) -> Any:
        """Evaluate in the page, await a returned promise, return the value as JSON."""
        result = await self.call(
            "Runtime.evaluate", timeout=timeout, expression=expression,
            awaitPromise=True, returnByValue=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise CdpError(f"{expression!r} threw: {text}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float, interval: float = 0.25) -> Any:
        """Poll until `expression` is truthy; return its last value either way."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.evaluate(expression)
            except CdpError:  # e.g. no execution context yet while the page loads
                if time.monotonic() >= deadline:
                    raise
                value = None
            if value or time.monotonic() >= deadline:
                return value
            await asyncio.sleep(interval)

    async def screenshot(self, path: str | os.PathLike) -> None:
        result = await self.call("Page.captureScreenshot", format="png")
        Path(path).write_bytes(base64.b64decode(result["data"]))

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass


class Chromium:
    """Headless Chromium in its own process group, with a throw-away profile."""

    def __init__(self, profile_dir: str | os.PathLike, executable: str = CHROMIUM,
                 extra_flags: tuple[str, ...] = ()) -> None:
        self.profile = Path(profile_dir)
        self.executable = executable
        self.extra_flags = extra_flags
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.browser_path: str | None = None  # /devtools/browser/<id>
        self.stderr_path = self.profile.parent / (self.profile.name + ".stderr.log")
        self._http: aiohttp.ClientSession | None = None
        self._subreaper = False
        self._tabs: list[Tab] = []

    async def start(self, timeout: float = 20.0) -> "Chromium":
        self.profile.mkdir(parents=True, exist_ok=True)
        port_file = self.profile / "DevToolsActivePort"
        port_file.unlink(missing_ok=True)
        self._subreaper = _set_child_subreaper(True)
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen(
                [self.executable, *FLAGS, *self.extra_flags, f"--user-data-dir={self.profile}",
                 "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        try:
            # First line: the port; second: the browser target's path.
            while self.port is None:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"chromium exited with {self.proc.returncode}: {self.stderr()}")
                if time.monotonic() > deadline:
                    raise RuntimeError("chromium did not open its DevTools port: " + self.stderr())
                try:
                    port, path = port_file.read_text().splitlines()[:2]
                    self.port, self.browser_path = int(port), path
                except (OSError, ValueError):
                    await asyncio.sleep(0.05)
        except BaseException:
            self.kill()
            raise
        self._http = aiohttp.ClientSession()
        return self

    @property
    def devtools_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    async def new_tab(self, url: str) -> Tab:
        assert self._http is not None, "start() first"
        async with self._http.put(f"{self.devtools_url}/json/new?{urllib.parse.quote(url, safe='')}") as r:
            if r.status != 200:
                raise CdpError(f"/json/new: {r.status} {await r.text()}")
            info = await r.json()
        tab = await Tab(info, self._http).connect()
        self._tabs.append(tab)
        return tab

    async def close(self, timeout: float = 5.0) -> None:
        """Ask the browser to quit (it then reaps its own children), kill what is left."""
        for tab in self._tabs:
            await tab.close()
        self._tabs.clear()
        if self._http is not None:
            try:
                async with self._http.ws_connect(f"ws://127.0.0.1:{self.port}{self.browser_path}") as ws:
                    await ws.send_json({"id": 1, "method": "Browser.close"})
                    await asyncio.wait_for(ws.receive(), timeout)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                pass
            await self._http.close()
            self._http = None
        deadline = time.monotonic() + timeout
        while self.proc is not None and self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self.kill()

    def kill(self, timeout: float = 5.0) -> None:
        """SIGKILL the whole process group (browser, zygote, renderers, GPU/utility)
        and wait until none of its processes is left, zombies included: while the
        browser runs this process is a child subreaper, so the renderers orphaned
        by the kill are reparented here and reaped below instead of by init."""
        if self.proc is None:
            return
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                if self.proc.poll() is None:
                    self.proc.wait()
                me = os.getpid()
                for pid, ppid, zombie in session_processes(self.proc.pid):
                    if ppid == me:
                        try:
                            os.waitpid(pid, os.WNOHANG)
                        except ChildProcessError:
                            pass
                    elif not zombie:  # left the process group but not the session
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                left = self.processes()
                if not left:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"chromium processes left behind: {left}")
                time.sleep(0.02)
        finally:
            if self._subreaper:
                _set_child_subreaper(False)
                self._subreaper = False

    def processes(self) -> list[int]:
        """Processes of this browser's session, for leak checks (zombies count
        only where this process is their reaper)."""
        if self.proc is None:
            return []
        return [pid for pid, ppid, zombie in session_processes(self.proc.pid)
                if not zombie or self._subreaper]


def _set_child_subreaper(on: bool) -> bool:
    """prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants are reparented to us."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) == 0


def session_processes(sid: int) -> list[tuple[int, int, bool]]:
    """(pid, parent pid, is zombie) of every process in session `sid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:
            continue
        # fields after the parenthesised command: state ppid pgrp session ...
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[3]) == sid:
            found.append((int(entry), int(fields[1]), fields[0] == "Z"))
    return found
