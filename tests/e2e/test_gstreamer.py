"""GStreamer's webrtcbin publishes through WHIP (RFC 9725) into a real SFU process,
and aiortc WHEP viewers decode its VP8 video and Opus audio, over loopback.

The publisher is tests/e2e/gst_whip_publisher.py run by the SYSTEM python3
(python3-gi and the GStreamer packages from scripts/install-system-deps.sh), a
child process of the test that always ends with it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import pytest

from .clients import Viewer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

SYSTEM_PYTHON = "/usr/bin/python3"
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gst_whip_publisher.py")


class GstPublisher:
    """gst_whip_publisher.py as a child process; its progress lines go to a file."""

    def __init__(self, tmp_path, url: str, duration: float = 60.0, token: str | None = None) -> None:
        self.out_path = tmp_path / "gst_publisher.out"
        self.err_path = tmp_path / "gst_publisher.err"
        self.args = [SYSTEM_PYTHON, SCRIPT, url, "--duration", str(duration), "--connect-timeout", "20"]
        if token:
            self.args += ["--token", token]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "GstPublisher":
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(self.args, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        return self

    def lines(self) -> list[str]:
        return self.out_path.read_text().splitlines() if self.out_path.exists() else []

    def report(self) -> str:
        err = self.err_path.read_text()[-3000:] if self.err_path.exists() else ""
        return f"rc={self.proc.poll() if self.proc else None}\nstdout:\n" + "\n".join(self.lines()) + f"\nstderr:\n{err}"

    async def wait_line(self, line: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if line in self.lines():
                return True
            if self.proc.poll() is not None:
                return line in self.lines()
            await asyncio.sleep(0.05)
        return False

    async def wait_connected(self, timeout: float = 20.0) -> None:
        assert await self.wait_line("connection-state connected", timeout), self.report()

    async def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM: the publisher DELETEs its WHIP resource and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.kill()

    def kill(self) -> int:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        return self.proc.wait() if self.proc is not None else 0


@pytest.fixture
def gst_publisher(tmp_path, sfu):
    """A factory of webrtcbin WHIP publishers into the `sfu` fixture's server;
    no publisher process outlives the test."""
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstWebRTC', '1.0'); "
         "from gi.repository import Gst; Gst.init(None); "
         "assert Gst.ElementFactory.find('webrtcbin') and Gst.ElementFactory.find('nicesrc')"
         " and Gst.ElementFactory.find('vp8enc') and Gst.ElementFactory.find('opusenc')"],
        capture_output=True, text=True, timeout=30,
    )
    if probe.returncode != 0:
        pytest.fail("GStreamer webrtcbin is not usable from the system python3; run "
                    "scripts/install-system-deps.sh\n" + probe.stderr)
    started: list[GstPublisher] = []

    def start(room: str, duration: float = 60.0) -> GstPublisher:
        publisher = GstPublisher(tmp_path, f"{sfu.url}/whip/{room}", duration, token=sfu.token(room)).start()
        started.append(publisher)
        return publisher

    yield start
    for publisher in started:
        publisher.kill()


async def wait_health(sfu, predicate, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    health = sfu.health()
    while not predicate(health) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        health = sfu.health()
    return health


async def test_webrtcbin_publisher_to_aiortc_viewer(sfu, gst_publisher):
    publisher = gst_publisher("gst")
    viewer = Viewer(sfu.url, "gst")
    try:
        await publisher.wait_connected()
        # one BUNDLE transport (max-bundle) carrying a VP8 and an Opus producer
        health = await wait_health(sfu, lambda h: h["producers"] == 2)
        assert health["transports"] == 1 and health["producers"] == 2, health
        await viewer.start()
        assert await viewer.wait_frames("video", 30, timeout=30) >= 30, (viewer.frames, publisher.report())
        assert await viewer.wait_frames("audio", 50, timeout=10) >= 50, (viewer.frames, publisher.report())
        health = sfu.health()
        assert health["consumers"] == 2 and health["stats"]["rtp_forwarded"] > 0, health
        # the publisher ends its session with DELETE (RFC 9725 section 4.2)
        assert await publisher.terminate() == 0, publisher.report()
        assert "deleted 200" in publisher.lines(), publisher.report()
        health = await wait_health(sfu, lambda h: h["producers"] == 0)
        assert health["producers"] == 0 and health["transports"] == 1, health
    finally:
        await viewer.stop()
    health = await wait_health(sfu, lambda h: h["transports"] == 0)
    assert health["transports"] == 0 and health["rooms"] == 0, health


async def test_late_viewer_of_webrtcbin_gets_keyframe_on_request(sfu, gst_publisher):
    """vp8enc sends a keyframe only every 128 frames by default: a viewer joining
    mid-GOP gets its first frame quickly only if webrtcbin answers the SFU's PLI
    (RFC 4585 section 6.3.1) with a keyframe."""
    publisher = gst_publisher("gst-late")
    first = Viewer(sfu.url, "gst-late")
    late = Viewer(sfu.url, "gst-late")
    try:
        await publisher.wait_connected()
        await first.start()
        assert await first.wait_frames("video", 10, timeout=20) >= 10, (first.frames, publisher.report())
        await asyncio.sleep(1.5)  # mid-GOP now
        requests_before = sfu.health()["stats"].get("keyframe_requests_sent", 0)
        await late.start()
        assert await late.wait_frames("video", 1, timeout=10) >= 1, (late.frames, publisher.report())
        assert late.connected_at is not None
        delay = late.first_frame_at["video"] - late.connected_at
        print(f"late viewer: first video frame {delay:.3f}s after connecting")
        assert delay < 1.5, f"first video frame {delay:.2f}s after connecting"
        assert sfu.health()["stats"]["keyframe_requests_sent"] > requests_before
        assert await late.wait_frames("audio", 20, timeout=10) >= 20, late.frames
    finally:
        await late.stop()
        await first.stop()
        await publisher.terminate()


async def test_viewer_waiting_before_webrtcbin_publishes(sfu, gst_publisher):
    viewer = Viewer(sfu.url, "gst-early")
    try:
        await viewer.start()
        publisher = gst_publisher("gst-early", duration=4)
        await publisher.wait_connected()
        assert await viewer.wait_frames("video", 30, timeout=30) >= 30, (viewer.frames, publisher.report())
        assert await viewer.wait_frames("audio", 50, timeout=10) >= 50, (viewer.frames, publisher.report())
        # --duration elapses: the publisher DELETEs and exits on its own
        deadline = time.monotonic() + 15
        while publisher.proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert publisher.proc.poll() == 0, publisher.report()
        assert publisher.lines()[-2:] == ["done", "deleted 200"], publisher.report()
    finally:
        await viewer.stop()
