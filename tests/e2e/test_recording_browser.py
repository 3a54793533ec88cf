"""Recording by the SFU from the meeting page in headless Chromium: the host's page starts it,
both pages show the notice before the recorder's first packet (each page acknowledges the
banner it showed, the server records nothing before), the host stops it, the creator
downloads the files through the API (403 for the other) and PyAV plays them back; with the
recordings on a full disk the recording stops with a notice on both pages and the meeting
goes on."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import urllib.parse

import pytest

from ..conftest import SfuProcess
from .cdp import Chromium, Tab
from .test_meeting_browser import diagnose, wait_media
from .test_recording_ws import http_get, log_events, probe


pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(150)]

ALICE = "alice@example.com"
BOB = "bob@example.com"


async def two_pages(browser: Chromium, sfu: SfuProcess, room: str) -> tuple[Tab, Tab]:
    tabs = []
    for identity, name, host in ((ALICE, "Alice", True), (BOB, "Bob", False)):
        token = sfu.token(room, identity, name, host=host)
        query = urllib.parse.urlencode({"room": room, "name": name, "token": token, "autojoin": 1})
        tab = await browser.new_tab(f"{sfu.url}/?{query}")
        assert await tab.wait_for("window.meetingState && (window.meetingState.joined || window.meetingState.error)",
                                  20), await diagnose(tab, sfu)
        tabs.append(tab)
    alice, bob = tabs
    for tab, other in ((alice, "Bob"), (bob, "Alice")):
        stats = await wait_media(tab, [other], 40)
        assert any(p["name"] == other and p["video"] > 30 for p in stats["participants"].values()), \
            await diagnose(tab, sfu)
    return alice, bob


async def test_notice_on_every_page_before_the_first_recorded_packet(tmp_path, chromium):
    sfu = SfuProcess(tmp_path).start()
    try:
        alice, bob = await two_pages(chromium, sfu, "recorded")
        assert await alice.evaluate("document.getElementById('record').hidden") is False
        assert await bob.evaluate("document.getElementById('record').hidden") is True
        assert await bob.evaluate("document.getElementById('recording').hidden") is True
        await alice.evaluate("document.getElementById('record').click()")
        for tab in (alice, bob):
            assert await tab.wait_for("window.meetingState.recording === true", 10), await diagnose(tab, sfu)
            assert await tab.evaluate("document.getElementById('recording').hidden") is False
            assert "recorded by the server" in await tab.evaluate("document.getElementById('recording').textContent")
        assert await alice.wait_for("document.getElementById('record').textContent === 'Stop recording'", 5)
        for _ in range(80):
            if log_events(sfu, "recording first packet"):
                break
            await asyncio.sleep(0.25)
        first_packet = log_events(sfu, "recording first packet")[0]["wall"]
        acked = log_events(sfu, "recording notice acknowledged")[0]
        assert acked["missing"] == 0, acked  # both pages acknowledged the banner they showed ...
        assert acked["wall"] <= first_packet  # ... before the recorder got anything
        for tab in (alice, bob):
            shown = await tab.evaluate("window.meetingState.recordingShown") / 1000.0
            assert shown < first_packet, (shown, first_packet)

        await asyncio.sleep(4)
        await alice.evaluate("document.getElementById('record').click()")
        for tab in (alice, bob):
            assert await tab.wait_for("window.meetingState.recordingStopped === 'stopped'", 15), \
                await diagnose(tab, sfu)
            assert await tab.evaluate("document.getElementById('recording').hidden") is True

        meeting_id = await alice.evaluate("window.meetingState.meetingId")
        creator = sfu.token("recorded", ALICE, "Alice", host=True)
        other = sfu.token("recorded", BOB, "Bob")
        status, body = await http_get(sfu, f"/api/meetings/{meeting_id}/recordings", creator)
        assert status == 200, body
        [recording] = json.loads(body)["recordings"]
        files = recording["files"]
        assert sorted((f["participant"], f["kind"]) for f in files) == [
            ("Alice", "audio"), ("Alice", "video"), ("Bob", "audio"), ("Bob", "video")], files
        assert (await http_get(sfu, f"/api/meetings/{meeting_id}/recordings", other))[0] == 403
        for f in files:
            assert (await http_get(sfu, f["url"], other))[0] == 403
            status, data = await http_get(sfu, f["url"], creator)
            assert status == 200
            path = tmp_path / f["file"]
            path.write_bytes(data)
            info = probe(str(path))
            assert info["codec"] == f["codec"] and info["codec"] in ("opus", "vp8", "vp9", "h264"), info
            assert info["frames"] > 20, info
            assert 2.0 < info["duration"] < 20.0, (f, info)
            assert abs(info["duration"] - f["duration_seconds"]) < 1.0, (f, info)
    finally:
        sfu.stop()


async def test_full_disk_stops_the_recording_with_a_notice(tmp_path, chromium):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.fail("mounting the small tmpfs of the full-disk test failed: it needs root (make test runs the suite as root)")
    sfu = SfuProcess(tmp_path, "--recordings-dir", str(disk)).start()
    try:
        alice, bob = await two_pages(chromium, sfu, "full")
        await alice.evaluate("document.getElementById('record').click()")
        for tab in (alice, bob):
            assert await tab.wait_for("window.meetingState.recordingStopped === 'disk_full'", 60), \
                await diagnose(tab, sfu)
            assert "disk is full" in await tab.evaluate("document.getElementById('notice').textContent")
            assert await tab.evaluate("document.getElementById('recording').hidden") is True
        # the meeting goes on: both pages keep decoding each other
        for tab, other in ((alice, "Bob"), (bob, "Alice")):
            before = {p["name"]: p["video"] for p in (await tab.evaluate("window.meetingStats()"))["participants"].values()}
            stats = await wait_media(tab, [other], 5)
            for _ in range(40):
                stats = await tab.evaluate("window.meetingStats()")
                now = {p["name"]: p["video"] for p in stats["participants"].values()}
                if now.get(other, 0) > before.get(other, 0) + 20:
                    break
                await asyncio.sleep(0.25)
            assert now.get(other, 0) > before.get(other, 0) + 20, (before, now)
            assert await tab.evaluate("window.meetingState.joined") is True
    finally:
        sfu.stop()
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
