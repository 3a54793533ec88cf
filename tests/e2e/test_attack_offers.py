"""Huge offers (issue 9): an attacker posts offers with hundreds of sections,
then as many legal ones as the limits allow, into other rooms, over WHIP, WHEP
and the meeting WebSocket, while a WHIP publisher and a WHEP viewer (aiortc)
play in their own room. Every refusal is a clear 400/403/503 (with Retry-After)
or protocol error, the server's memory stays bounded and the legitimate viewer
keeps its media."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from ..conftest import SfuProcess, mint_test_token
from ..test_limits import huge_offer
from .clients import Publisher, Viewer, post_sdp

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(150)]

PENDING = 40  # --max-pending-sessions of this server
ROOM_TRACKS = 600  # --max-room-tracks
SESSION_TRACKS = 64  # --max-session-tracks
FLOOD_SECONDS = 3.0  # each of the two floods


@pytest.fixture
def limited_sfu(tmp_path, netns):
    server = SfuProcess(tmp_path, "--max-pending-sessions", str(PENDING), "--max-room-tracks", str(ROOM_TRACKS),
                        "--max-session-tracks", str(SESSION_TRACKS)).start()
    yield server
    server.stop()


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def inbound(viewer: Viewer) -> dict[str, tuple[int, int]]:
    """kind -> (packets received, packets lost) as the viewer counts them."""
    return {s.kind: (s.packetsReceived, s.packetsLost)
            for s in (await viewer.pc.getStats()).values() if s.type == "inbound-rtp"}


async def post(url: str, offer: str, room: str) -> tuple[int, str, dict]:
    token = mint_test_token(room, "attacker", host=True)
    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=offer.encode(), headers={
                "Content-Type": "application/sdp", "Authorization": f"Bearer {token}"}) as r:
            return r.status, (await r.text()).strip(), dict(r.headers)


async def ws_offer(sfu, room: str, offer: str) -> dict:
    token = mint_test_token(room, "ws-attacker", host=True)
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(sfu.url.replace("http", "ws", 1) + "/ws", params={"token": token}) as ws:
            responses = {}
            for request in ({"id": 1, "type": "join"}, {"id": 2, "type": "offer", "sdp": offer}):
                await ws.send_str(json.dumps(request))
                while request["id"] not in responses:
                    message = json.loads((await ws.receive(timeout=15)).data)
                    if message.get("type") == "response":
                        responses[message["id"]] = message
            assert responses[1]["ok"], responses[1]
            return responses[2]


async def test_huge_offers_are_refused_while_another_room_plays(limited_sfu):
    sfu = limited_sfu
    pub = Publisher(sfu.url, "legit", token=mint_test_token("legit", "pub", host=True))
    viewer = Viewer(sfu.url, "legit", token=mint_test_token("legit", "viewer"))
    try:
        await pub.start()
        await viewer.start()
        assert await viewer.wait_frames("video", 30, timeout=30) >= 30, await viewer.report()
        rss0 = rss_mib(sfu.proc.pid)
        before = await inbound(viewer)
        t0 = time.monotonic()

        async def flood(until: float) -> list[tuple[int, str]]:
            answers = []
            offer = huge_offer(330)
            while time.monotonic() < until:
                room = f"flood-{len(answers)}"
                answers.append((await post(sfu.url + f"/whip/{room}", offer, room))[:2])
            return answers

        async def floods() -> list[tuple[int, str]]:
            until = time.monotonic() + FLOOD_SECONDS
            return [a for f in await asyncio.gather(*(flood(until) for _ in range(4))) for a in f]

        # 1. the offer of the issue (330 video sections in 58 KiB), from 4 clients at once
        answers = await floods()
        assert set(answers) == {(400, "offer has 330 media sections, at most 128 are allowed")}, set(answers)
        requests = len(answers)
        # over the meeting protocol too
        response = await ws_offer(sfu, "attack-ws", huge_offer(330, "recvonly"))
        assert (response["ok"], response["code"]) == (False, "bad_sdp"), response
        assert response["error"] == "offer has 330 media sections, at most 128 are allowed"
        response = await ws_offer(sfu, "attack-ws", huge_offer(100, "recvonly"))
        assert (response["ok"], response["code"]) == (False, "too_many_tracks"), response
        status, reason, _ = await post(sfu.url + "/whip/attack", huge_offer(17), "attack")
        assert (status, reason) == (400, "offer publishes 17 tracks, at most 16 are allowed per session")
        assert sfu.health()["transports"] == 2

        # 2. legal offers of 64 recvonly sections into one room until it is full
        accepted = 0
        while True:
            status, reason, _ = await post(sfu.url + "/whep/attack", huge_offer(SESSION_TRACKS, "recvonly"),
                                           "attack")
            if status != 201:
                break
            accepted += 1
        assert accepted == ROOM_TRACKS // SESSION_TRACKS
        assert status == 403 and reason == f"room attack is full: it has {accepted * SESSION_TRACKS} tracks, " \
                                          f"at most {ROOM_TRACKS} are allowed", reason

        # 3. then into new rooms until the sessions that never connect hit the cap
        rooms = 0
        while True:
            status, reason, headers = await post(sfu.url + f"/whip/attack-{rooms}", huge_offer(16), f"attack-{rooms}")
            if status != 201:
                break
            rooms += 1
        assert accepted + rooms == PENDING
        assert status == 503 and reason.startswith(f"{PENDING} sessions are still connecting"), reason
        assert 1 <= int(headers["Retry-After"]) <= 30
        health = sfu.health()
        assert health["transports"] == 2 + PENDING and health["connecting"] == PENDING
        assert health["stats"]["sessions_refused_server_busy"] >= 1

        # 4. and keeps posting: the cap of connecting sessions answers first
        answers = await floods()
        assert {status for status, _ in answers} == {503}
        requests += len(answers)
        attack_seconds = time.monotonic() - t0

        # the legitimate viewer kept its media; the server's memory stayed bounded
        await asyncio.sleep(1.0)
        after = await inbound(viewer)
        rss1 = rss_mib(sfu.proc.pid)
        received = sum(after[k][0] - before[k][0] for k in after)
        lost = sum(after[k][1] - before[k][1] for k in after)
        loss = lost / max(1, received + lost)
        print(f"attack took {attack_seconds:.1f} s ({requests} flood requests); legit viewer: {received} packets, loss {100 * loss:.2f}%; "
              f"RSS {rss0:.0f} -> {rss1:.0f} MiB; {health['producers']} producers, {health['consumers']} consumers")
        assert received > 0, await viewer.report()
        assert loss < 0.02, await viewer.report()
        assert rss1 - rss0 < 120, (rss0, rss1)
        status, _, _ = await post_sdp(sfu.url + "/whep/legit", "v=0", token=mint_test_token("legit", "x"))
        assert status == 503  # still full of connecting sessions: refused before the offer is parsed
    finally:
        await viewer.stop()
        await pub.stop()
