"""Headless Chromium through the SFU: the test page (sfu/static/whip.html, served at /whip.html)
publishes with WHIP and plays with WHEP, driven over the DevTools protocol.

Chromium leaves loopback out of its network list unless started with
--allow-loopback-in-peer-connection (cdp.FLAGS); without it, in the
loopback-only namespace, it has no candidate and never sends a check. The
ICE-lite server learns the browser's address from those checks.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse

import pytest

from .cdp import Chromium, Tab
from .clients import Viewer

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(90)]

MEDIA_TIMEOUT = 30.0
DIAGNOSTIC_TYPES = ["candidate-pair", "local-candidate", "remote-candidate", "transport",
                    "inbound-rtp", "outbound-rtp"]


async def wait_stats(tab: Tab, predicate, timeout: float) -> dict:
    """Poll the page's sfuStats() until `predicate(stats)` holds; return the last stats."""
    deadline = time.monotonic() + timeout
    while True:
        stats = await tab.evaluate("window.sfuStats()")
        if predicate(stats) or time.monotonic() >= deadline:
            return stats
        state = await tab.evaluate("window.sfuState")
        if state and state.get("error"):
            return stats
        await asyncio.sleep(0.25)


async def diagnose(tab: Tab, sfu) -> str:
    """What to print when media does not flow: page state, stats, console, server log."""
    try:
        state = await tab.evaluate("window.sfuState")
        stats = await tab.evaluate("window.sfuStats()")
        rtc = await tab.evaluate(f"window.sfuRtcStats({json.dumps(DIAGNOSTIC_TYPES)})")
    except Exception as exc:  # the page may be gone; the server log still helps
        state, stats, rtc = f"unavailable: {exc}", None, None
    return (
        f"state={json.dumps(state)}\nstats={json.dumps(stats)}\n"
        f"getStats={json.dumps(rtc, indent=1)}\nconsole={tab.console}\n"
        f"server log (tail):\n{sfu.log()[-4000:]}"
    )


async def open_page(browser: Chromium, sfu, query: str) -> Tab:
    room = urllib.parse.parse_qs(query).get("room", ["demo"])[0]
    query += "&token=" + urllib.parse.quote(sfu.token(room, "browser"))
    tab = await browser.new_tab(f"{sfu.url}/whip.html?{query}")
    # the page sets sfuState synchronously when its script runs
    assert await tab.wait_for("typeof window.sfuState === 'object'", timeout=10), tab.console
    return tab


async def test_page_loads(sfu, chromium):
    tab = await open_page(chromium, sfu, "room=lobby")
    assert await tab.evaluate("document.title") == "SFU test page"
    assert await tab.evaluate("document.getElementById('room').value") == "lobby"
    assert await tab.evaluate("window.sfuState") == {
        "publishing": False, "playing": False, "error": None, "status": "idle",
    }
    stats = await tab.evaluate("window.sfuStats()")
    assert stats["framesDecoded"] == 0 and stats["packetsSent"] == 0
    # the colours come from the shared theme.css (also the meeting page's)
    assert await tab.evaluate("getComputedStyle(document.documentElement).getPropertyValue('--accent').trim()") \
        == "#2f6fdb"
    assert tab.console == []


async def started(tab: Tab, sfu, flag: str) -> None:
    """Wait until the page's publish or play negotiation succeeded (201 + answer applied)."""
    assert await tab.wait_for(f"window.sfuState.{flag} || window.sfuState.error", 15), \
        await diagnose(tab, sfu)
    assert (await tab.evaluate("window.sfuState"))["error"] is None, await diagnose(tab, sfu)


async def check_media(sfu, publisher: Tab, player: Tab) -> None:
    played = await wait_stats(player, lambda s: s["framesDecoded"] > 30, MEDIA_TIMEOUT)
    assert played["framesDecoded"] > 30, await diagnose(player, sfu) + "\n" + await diagnose(publisher, sfu)
    assert played["audioPacketsReceived"] > 0, played
    assert played["frameWidth"] > 0 and played["frameHeight"] > 0, played
    assert played["playConnection"] == "connected", played
    published = await publisher.evaluate("window.sfuStats()")
    assert published["packetsSent"] > 0 and published["framesEncoded"] > 0, published
    assert published["publishConnection"] == "connected", published
    health = sfu.health()
    assert health["producers"] == 2 and health["consumers"] == 2, health


async def stop_and_check_freed(sfu, *tabs: Tab) -> None:
    """The page's Stop button DELETEs its sessions; the SFU frees what they held."""
    for tab in tabs:
        await tab.evaluate("document.getElementById('stop').click()")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sfu.health()["transports"]:
        await asyncio.sleep(0.1)
    health = sfu.health()
    assert health["transports"] == 0 and health["producers"] == 0 and health["consumers"] == 0, health
    for tab in tabs:
        state = await tab.evaluate("window.sfuState")
        assert not state["publishing"] and not state["playing"] and state["error"] is None, state


async def test_browser_publishes_browser_plays(sfu, chromium):
    publisher = await open_page(chromium, sfu, "room=browser&publish=1")
    await started(publisher, sfu, "publishing")
    # the player joins mid-GOP: it sees video only once the SFU asked for a keyframe
    player = await open_page(chromium, sfu, "room=browser&play=1")
    await started(player, sfu, "playing")
    await check_media(sfu, publisher, player)
    await stop_and_check_freed(sfu, publisher, player)


async def test_browser_player_waits_for_late_publisher(sfu, chromium):
    player = await open_page(chromium, sfu, "room=early&play=1")
    await started(player, sfu, "playing")
    publisher = await open_page(chromium, sfu, "room=early&publish=1")
    await started(publisher, sfu, "publishing")
    await check_media(sfu, publisher, player)
    await stop_and_check_freed(sfu, player, publisher)


async def test_aiortc_viewer_decodes_browser_publisher(sfu, chromium):
    # tests/e2e/clients.py confines the aiortc viewer to one host candidate on 127.0.0.1
    publisher = await open_page(chromium, sfu, "room=mixed&publish=1")
    await started(publisher, sfu, "publishing")

    viewer = Viewer(sfu.url, "mixed")
    try:
        await viewer.start()
        frames = await viewer.wait_frames("video", 30, timeout=MEDIA_TIMEOUT)
        if frames < 30:
            detail = f"{await viewer.report()}\nhealth={json.dumps(sfu.health())}\n"
            pytest.fail(detail + await diagnose(publisher, sfu))
        assert await viewer.wait_frames("audio", 20, timeout=10) >= 20, viewer.frames
    finally:
        await viewer.stop()
