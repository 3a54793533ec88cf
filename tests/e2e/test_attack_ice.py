"""Issue 9, hostile ICE and DTLS input beside a legitimate publisher and viewer.

The attacker is a participant: an aiortc WHEP viewer that knows its own ICE
credentials (its offer's ufrag and password, the server's from the answer).
It sends valid Binding checks with USE-CANDIDATE from another loopback socket
(127.0.0.2: in the wild, a spoofed source address) to move its media there:

- the "victim" socket that never answers gets the answers to those checks and
  at most a few of the server's own verification requests, never media;
- a socket that answers the server's request properly (a real address move)
  gets media, and only after answering.

Also: checks with a wrong MESSAGE-INTEGRITY get a bounded number of 401s, and
short or forged DTLS records from the peer's address make the server resend
its final flight rarely or never (bytes out per byte in).
"""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest
from aioice import stun

from .clients import Publisher, Viewer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

VICTIM_HOST = "127.0.0.2"


class Sink(asyncio.DatagramProtocol):
    """A UDP socket that keeps what it receives (time, bytes)."""

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.on_datagram = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.received.append((time.monotonic(), data))
        if self.on_datagram is not None:
            self.on_datagram(data, addr)


async def open_sink(host: str = VICTIM_HOST) -> Sink:
    loop = asyncio.get_running_loop()
    _, sink = await loop.create_datagram_endpoint(Sink, local_addr=(host, 0), family=socket.AF_INET)
    return sink


def credentials(viewer: Viewer) -> dict:
    """The ICE credentials of a viewer's session and the server's address."""
    offer, answer = viewer.pc.localDescription.sdp, viewer.answer
    candidate = re.search(r"a=candidate:\S+ 1 udp \d+ (\S+) (\d+) typ host", answer)
    return {
        "peer_ufrag": re.search(r"a=ice-ufrag:(\S+)", offer).group(1),
        "peer_pwd": re.search(r"a=ice-pwd:(\S+)", offer).group(1),
        "sfu_ufrag": re.search(r"a=ice-ufrag:(\S+)", answer).group(1),
        "sfu_pwd": re.search(r"a=ice-pwd:(\S+)", answer).group(1),
        "server": (candidate.group(1), int(candidate.group(2))),
    }


def check(cred: dict, password: str | None = None) -> bytes:
    """A nominating Binding check as the full agent sends it (RFC 8445 §7.2.2)."""
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, attributes={
        "USERNAME": f"{cred['sfu_ufrag']}:{cred['peer_ufrag']}",
        "PRIORITY": 1853824767,
        "ICE-CONTROLLING": 0x1234567890,
        "USE-CANDIDATE": None,
    })
    request.add_message_integrity((password or cred["sfu_pwd"]).encode())
    return bytes(request)


def classify(data: bytes) -> str:
    first = data[0]
    if first < 4:
        message_type = (data[0] << 8) | data[1]
        return {0x0001: "stun_request", 0x0101: "stun_success", 0x0111: "stun_error"}.get(message_type, "stun")
    if 20 <= first <= 63:
        return "dtls"
    if 128 <= first <= 191:
        return "rtp"
    return "other"


def count(sink: Sink, kind: str, since: float = 0.0) -> tuple[int, int]:
    packets = [d for t, d in sink.received if t >= since and classify(d) == kind]
    return len(packets), sum(map(len, packets))


async def legit_session(sfu, room: str) -> tuple[Publisher, Viewer]:
    pub = Publisher(sfu.url, room)
    viewer = Viewer(sfu.url, room)
    await pub.start()
    await viewer.start()
    assert await viewer.wait_frames("video", 10, timeout=20) >= 10, await viewer.report()
    return pub, viewer


async def test_spoofed_check_moves_no_media(sfu):
    pub, legit = await legit_session(sfu, "attacked")
    attacker = Viewer(sfu.url, "attacked")
    victim = await open_sink()
    try:
        await attacker.start()
        assert await attacker.wait_frames("video", 10, timeout=20) >= 10, await attacker.report()
        cred = credentials(attacker)
        frames_before = dict(legit.frames)
        attacker_before = attacker.frames["video"]
        # 4 s of valid nominations "from" the victim, 50 a second
        sent = 0
        for _ in range(200):
            victim.transport.sendto(check(cred), cred["server"])
            sent += 1
            await asyncio.sleep(0.02)
        await asyncio.sleep(1.0)
        answers, _ = count(victim, "stun_success")
        requests, request_bytes = count(victim, "stun_request")
        media, media_bytes = count(victim, "rtp")
        # no media, the answers to its checks (at most one each), a few verification requests
        assert media == 0 and count(victim, "dtls")[0] == 0, (media, media_bytes)
        assert answers <= sent
        assert 2 <= requests <= 6, requests  # one verification (3 sends on the timer) per 8.5 s
        assert request_bytes <= 6 * 120
        # the attacker's own media never left its real address; the legit viewer is fine
        assert attacker.frames["video"] > attacker_before
        assert legit.frames["video"] - frames_before["video"] >= 60, await legit.report()
        health = sfu.health()
        assert health["stats"].get("ice_address_changes", 0) == 0
        assert health["stats"]["ice_verification_requests_sent"] == requests

        # wrong MESSAGE-INTEGRITY on the known ufrag: 401s are rate-limited
        before = count(victim, "stun_error")[0]
        bad = check(cred, password="wrong-password-wrong-password")
        flood = 2000
        started = time.monotonic()
        for i in range(flood):
            victim.transport.sendto(bad, cred["server"])
            if i % 100 == 99:
                await asyncio.sleep(0.05)  # ~1 s in all
        await asyncio.sleep(0.5)
        took = time.monotonic() - started
        errors, error_bytes = count(victim, "stun_error")
        errors -= before
        assert errors <= 10 + 10 * took + 2, (errors, took)  # burst + 10/s for the time it took
        assert error_bytes / (flood * len(bad)) < 0.05
        health = sfu.health()
        assert health["drops"].get("stun_error_ratelimited", 0) >= flood - errors - 50
    finally:
        victim.transport.close()
        await attacker.stop()
        await legit.stop()
        await pub.stop()


async def test_real_move_after_answer_and_dtls_garbage(sfu):
    pub, legit = await legit_session(sfu, "moving")
    mover = Viewer(sfu.url, "moving")
    new_home = await open_sink()
    try:
        await mover.start()
        assert await mover.wait_frames("video", 10, timeout=20) >= 10, await mover.report()
        cred = credentials(mover)
        requests: list[tuple[float, bytes]] = []
        new_home.on_datagram = lambda data, addr: (
            requests.append((time.monotonic(), data)) if classify(data) == "stun_request" else None)
        new_home.transport.sendto(check(cred), cred["server"])
        deadline = time.monotonic() + 5
        while not requests and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert requests, "the server did not check the new address"
        request = stun.parse_message(requests[0][1])
        assert request.attributes["USERNAME"] == f"{cred['peer_ufrag']}:{cred['sfu_ufrag']}"
        assert request.check_message_integrity(cred["peer_pwd"].encode())
        await asyncio.sleep(0.3)
        assert count(new_home, "rtp")[0] == 0  # nothing before the answer
        # answer as the full agent at the new address does
        answered_at = time.monotonic()
        response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, request.transaction_id,
                                attributes={"XOR-MAPPED-ADDRESS": cred["server"]})
        response.add_message_integrity(cred["peer_pwd"].encode())
        new_home.transport.sendto(bytes(response), cred["server"])
        await asyncio.sleep(1.5)
        media, media_bytes = count(new_home, "rtp")
        assert media >= 20, (media, media_bytes)
        assert all(t >= answered_at for t, d in new_home.received if classify(d) == "rtp")
        assert sfu.health()["stats"]["ice_address_changes"] == 1

        # DTLS garbage from the (now selected) address: the server has its final
        # flight stored (released endpoint); short records get nothing back, a
        # forged ChangeCipherSpec gets it at most once per half second, 8 in all
        header = bytes([0xFE, 0xFD]) + bytes(8)
        short = bytes([22]) + header + b"\x00\x00"  # the 13-byte record
        ccs = bytes([20]) + header + b"\x00\x01\x01"
        mark = time.monotonic()
        sent_bytes = 0
        for i in range(1000):
            record = short if i % 2 else ccs
            new_home.transport.sendto(record, cred["server"])
            sent_bytes += len(record)
            if i % 100 == 99:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        flights, flight_bytes = count(new_home, "dtls", since=mark)
        assert flight_bytes <= 8 * 200, flight_bytes
        assert flight_bytes / sent_bytes < 0.2, (flight_bytes, sent_bytes)
        assert legit.frames["video"] > 0
        frames = legit.frames["video"]
        await asyncio.sleep(1.0)
        assert legit.frames["video"] - frames >= 15, await legit.report()
    finally:
        new_home.transport.close()
        await mover.stop()
        await legit.stop()
        await pub.stop()
