"""Headless Chromium on the meeting page (/, sfu/static/meeting.html): two pages
join one room over the WebSocket protocol and each decodes the other's video
(getStats framesDecoded), then one leaves and the other sees it go.

Chromium needs --allow-loopback-in-peer-connection in the loopback-only
namespace and fake media devices (tests/e2e/cdp.py FLAGS)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import urllib.request

import pytest

from ..conftest import SfuProcess
from .cdp import Chromium, Tab

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(120)]

MEDIA_TIMEOUT = 40.0


@pytest.fixture
def dev_sfu(tmp_path, netns):
    server = SfuProcess(tmp_path, "--dev").start()
    yield server
    server.stop()


async def open_meeting(browser: Chromium, sfu, **query) -> Tab:
    tab = await browser.new_tab(f"{sfu.url}/?{urllib.parse.urlencode(query)}")
    assert await tab.wait_for("typeof window.meetingState === 'object'", timeout=10), tab.console
    return tab


async def diagnose(tab: Tab, sfu) -> str:
    try:
        state = await tab.evaluate("window.meetingState")
        stats = await tab.evaluate("window.meetingStats()")
        notice = await tab.evaluate("document.getElementById('notice').textContent")
    except Exception as exc:
        state, stats, notice = f"unavailable: {exc}", None, None
    return (f"state={json.dumps(state)}\nstats={json.dumps(stats)}\nnotice={notice!r}\n"
            f"console={tab.console}\nserver log (tail):\n{sfu.log()[-3000:]}")


async def wait_media(tab: Tab, names: list[str], timeout: float) -> dict:
    """Poll meetingStats() until every named participant's video decodes (>30 frames) and audio arrives."""
    deadline = time.monotonic() + timeout
    while True:
        stats = await tab.evaluate("window.meetingStats()")
        by_name = {p["name"]: p for p in stats["participants"].values()}
        if all(n in by_name and by_name[n]["video"] > 30 and by_name[n]["audio"] > 0 for n in names):
            return stats
        if time.monotonic() >= deadline:
            return stats
        await asyncio.sleep(0.25)


async def captions(tab: Tab) -> list[str]:
    return await tab.evaluate(
        "[...document.querySelectorAll('#tiles figcaption')].map((c) => c.textContent)")


async def test_two_pages_see_each_other(dev_sfu, chromium):
    alice = await open_meeting(chromium, dev_sfu, room="browser-meet", name="Alice", autojoin=1)
    assert await alice.wait_for("window.meetingState.joined || window.meetingState.error", 15), \
        await diagnose(alice, dev_sfu)
    bob = await open_meeting(chromium, dev_sfu, room="browser-meet", name="Bob", autojoin=1)
    for tab, other in ((alice, "Bob"), (bob, "Alice")):
        stats = await wait_media(tab, [other], MEDIA_TIMEOUT)
        by_name = {p["name"]: p for p in stats["participants"].values()}
        assert other in by_name and by_name[other]["video"] > 30, await diagnose(tab, dev_sfu)
        assert by_name[other]["audio"] > 0 and by_name[other]["frameWidth"] > 0, by_name
        assert stats["connection"] == "connected", stats
    # a tile per participant, with the display name
    assert sorted(await captions(alice)) == ["Alice (you)", "Bob"]
    # the tiles' background comes from the shared theme.css
    assert await alice.evaluate(
        "getComputedStyle(document.documentElement).getPropertyValue('--tile').trim()") == "#20252c"
    assert sorted(await captions(bob)) == ["Alice", "Bob (you)"]
    health = dev_sfu.health()
    assert health["transports"] == 2 and health["producers"] == 4 and health["consumers"] == 4, health

    # Bob turns his camera off: Alice's page shows it
    await bob.evaluate("document.getElementById('camera').click()")
    assert await alice.wait_for(
        "[...document.querySelectorAll('#tiles figure')].some((f) => f.classList.contains('video-off'))", 5)

    # Bob leaves: his tile goes away on Alice's page and the SFU frees his session
    await bob.evaluate("document.getElementById('leave').click()")
    assert await alice.wait_for(
        "![...document.querySelectorAll('#tiles figcaption')].some((c) => c.textContent === 'Bob')", 10), \
        await captions(alice)
    assert await bob.wait_for("!window.meetingState.joined", 5)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and dev_sfu.health()["transports"] != 1:
        await asyncio.sleep(0.1)
    health = dev_sfu.health()
    # Alice's page keeps its two receiving sections, idle (bound to nothing), for the next tracks
    assert health["transports"] == 1 and health["producers"] == 2 and health["consumers"] == 2, health
    assert not [line for line in alice.console if line.startswith("exception")], alice.console


async def test_page_asks_for_a_token_without_dev_mode(sfu, chromium):
    page = await open_meeting(chromium, sfu, room="tokens", name="Carol", autojoin=1)
    assert await page.wait_for("window.meetingState.error", 10)
    assert "access token" in (await page.evaluate("window.meetingState.error"))
    assert await page.evaluate("document.getElementById('token-field').hidden") is False
    # with a token minted for the room (sfu token), the same page joins
    token = sfu.token("tokens", identity="carol@example.com", name="Carol", host=True)
    page = await open_meeting(chromium, sfu, room="tokens", name="Carol", token=token, autojoin=1)
    assert await page.wait_for("window.meetingState.joined || window.meetingState.error", 15), \
        await diagnose(page, sfu)
    assert await page.evaluate("window.meetingState.error") is None
    # a host (her token's host grant) may end the meeting: the page says so and leaves
    assert await page.evaluate("document.getElementById('end').hidden") is False
    await page.evaluate("document.getElementById('end').click()")
    assert await page.wait_for("window.meetingState.ended", 10), await diagnose(page, sfu)
    assert "ended" in await page.evaluate("document.getElementById('notice').textContent")


async def test_screen_share_reaches_the_other_page(dev_sfu, chromium):
    alice = await open_meeting(chromium, dev_sfu, room="screens", name="Alice", autojoin=1)
    assert await alice.wait_for("window.meetingState.joined || window.meetingState.error", 15)
    bob = await open_meeting(chromium, dev_sfu, room="screens", name="Bob", autojoin=1, camera=0, mic=0)
    assert await bob.wait_for("window.meetingState.joined || window.meetingState.error", 15)
    assert await alice.wait_for("document.getElementById('camera').disabled === false", 10)
    # getDisplayMedia needs a user gesture
    await alice.call("Runtime.evaluate", expression="document.getElementById('screen').click()", userGesture=True)
    assert await bob.wait_for(
        "[...document.querySelectorAll('#tiles figcaption')].some((c) => c.textContent === 'Alice (screen)')",
        15), (await captions(bob), await diagnose(alice, dev_sfu))
    deadline = time.monotonic() + MEDIA_TIMEOUT
    while True:
        stats = await bob.evaluate("window.meetingStats()")
        sources = next(iter(stats["participants"].values()), {}).get("sources", {})
        if sources.get("screen", 0) > 10 and sources.get("camera", 0) > 10 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    assert sources.get("screen", 0) > 10 and sources.get("camera", 0) > 10, stats
    health = dev_sfu.health()
    assert health["producers"] == 3, health  # camera, microphone, screen
    tiles = await bob.evaluate(
        "[...document.querySelectorAll('#tiles figure')].map((f) => [f.dataset.key, "
        "f.querySelector('video').srcObject ? f.querySelector('video').srcObject.getVideoTracks().length : 0])")
    assert [t for t in tiles if t[0].endswith(":screen") and t[1] == 1], tiles
    # stop sharing: the screen tile goes away at Bob's, the camera stays
    await alice.evaluate("document.getElementById('screen').click()")
    assert await bob.wait_for(
        "![...document.querySelectorAll('#tiles figcaption')].some((c) => c.textContent === 'Alice (screen)')", 10)
    assert dev_sfu.health()["producers"] == 2


async def test_host_mutes_from_the_page_and_the_recording_notice_shows(sfu, chromium):
    """The host's "Mute" button on a tile: the SFU holds that microphone (the host's page
    stops receiving its audio), the muted page turns its microphone off and can turn it
    back on; a recorder's POST /api/meetings/{id}/recording shows the notice on every page."""
    host = await open_meeting(chromium, sfu, room="mutes", name="Host", autojoin=1,
                              token=sfu.token("mutes", identity="host@example.com", name="Host", host=True))
    assert await host.wait_for("window.meetingState.joined || window.meetingState.error", 15)
    guest = await open_meeting(chromium, sfu, room="mutes", name="Guest", autojoin=1, camera=0,
                               token=sfu.token("mutes", identity="guest@example.com", name="Guest"))
    assert await guest.wait_for("window.meetingState.joined || window.meetingState.error", 15)
    button = "document.querySelector('#tiles figure:not(.local) button.host-mute')"

    async def guest_audio() -> int:
        stats = await host.evaluate("window.meetingStats()")
        return sum(p["audio"] for p in stats["participants"].values() if p["name"] == "Guest")

    assert await host.wait_for(f"{button} && !{button}.disabled", 20), await diagnose(host, sfu)
    deadline = time.monotonic() + MEDIA_TIMEOUT
    while await guest_audio() < 20 and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    assert await guest_audio() >= 20, await diagnose(host, sfu)
    assert await guest.evaluate(f"{button} === null")  # no host grant, no Mute buttons

    await host.evaluate(f"{button}.click()")
    assert await guest.wait_for("window.meetingState.mutedByHost === 1", 10), await diagnose(guest, sfu)
    assert await guest.evaluate("document.getElementById('microphone').textContent") == "Microphone off"
    assert await host.wait_for(f"{button}.disabled && {button}.textContent === 'Muted'", 10)
    await asyncio.sleep(0.5)
    held = await guest_audio()
    await asyncio.sleep(1.5)
    assert await guest_audio() == held  # the SFU forwards nothing of the held microphone

    # the guest turns the microphone back on: the host hears it again, the button is back
    await guest.evaluate("document.getElementById('microphone').click()")
    assert await host.wait_for(f"!{button}.disabled && {button}.textContent === 'Mute'", 10)
    deadline = time.monotonic() + 10
    while await guest_audio() < held + 20 and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    assert await guest_audio() >= held + 20

    # a recorder says it records: both pages show the notice
    meeting_id = await host.evaluate("window.meetingState.meetingId")
    request = urllib.request.Request(
        f"{sfu.url}/api/meetings/{meeting_id}/recording", data=json.dumps({"active": True}).encode(),
        headers={"Content-Type": "application/json",
                 "Authorization": "Bearer " + sfu.token("mutes", identity="recorder", host=True)})
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 200
    for tab in (host, guest):
        assert await tab.wait_for("window.meetingState.recording === true && "
                                  "!document.getElementById('recording').hidden", 5)
    assert not [line for line in host.console + guest.console if line.startswith("exception")]
