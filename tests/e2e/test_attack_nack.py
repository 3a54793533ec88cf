"""A NACK storm from a subscribe-only viewer, beside a legitimate publisher and viewer
(issue 9, "NACK amplification").

The attacker is a real WebRTC client (aiortc, WHEP with a token that may only
subscribe). Once it receives video it sends, through its own SRTP session,
NACKs of ~1.2 kB: 290 entries asking for 17 packets each, the most recent
sequence numbers first (the ones in the SFU's packet cache). It used to get
~2,000x its bytes back. Now each number is answered at most once per round
trip, a NACK expands at most 256 numbers and a viewer's retransmissions are
paid from a budget of a quarter of the stream's bitrate: the attacker must
send more bytes than it gets back, and the legitimate viewer keeps its stream.

The measures (printed with -s): bytes the attacker sent, the extra bytes it
received compared with the legitimate viewer over the same time, the SFU's
retransmission and drop counters, the legitimate viewer's video loss.
"""

from __future__ import annotations

import asyncio
import re
import struct
import time

import pytest

from .clients import Publisher, Viewer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ENTRIES = 290  # per NACK, each asking for 17 packets (PID + a full BLP)


def video_ssrc(answer: str) -> int:
    """The SFU's media SSRC in the video section of a WHEP answer (first of its FID group)."""
    section = answer[answer.index("m=video"):]
    match = re.search(r"a=ssrc-group:FID (\d+)", section) or re.search(r"a=ssrc:(\d+)", section)
    return int(match.group(1))


def hostile_nack(media_ssrc: int, highest: int) -> bytes:
    """RFC 4585 §6.2.1 generic NACK, newest numbers first: entry i asks for the 17 numbers
    ending 17 * i before ``highest``."""
    fci = b"".join(struct.pack("!HH", (highest - 17 * (i + 1) + 1) & 0xFFFF, 0xFFFF) for i in range(ENTRIES))
    return struct.pack("!BBHII", 0x81, 205, 2 + ENTRIES, 0x0BADBEEF, media_ssrc) + fci


class Attacker(Viewer):
    """A WHEP viewer that also sends NACK storms on its SRTP session."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.highest: int | None = None
        self.sent_bytes = 0
        self.sent_nacks = 0

    def watch(self) -> None:
        """Track the highest sequence number of the video received (the SFU's numbering)."""
        self.ssrc = video_ssrc(self.answer)
        receiver = next(r for r in self.pc.getReceivers() if r.track.kind == "video")
        original = receiver._handle_rtp_packet

        async def handle(packet, arrival_time_ms):
            if packet.ssrc == self.ssrc:
                if self.highest is None or ((packet.sequence_number - self.highest) & 0xFFFF) < 0x8000:
                    self.highest = packet.sequence_number
            return await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = handle
        self.dtls = receiver.transport

    def rx_bytes(self) -> int:
        return self.dtls._RTCDtlsTransport__rx_bytes

    async def storm(self, rate: float, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            data = self.dtls._tx_srtp.protect_rtcp(hostile_nack(self.ssrc, self.highest))
            await self.dtls.transport._send(data)
            self.sent_bytes += len(data)
            self.sent_nacks += 1
            await asyncio.sleep(1 / rate)


def rx_bytes(viewer: Viewer) -> int:
    receiver = next(r for r in viewer.pc.getReceivers() if r.track.kind == "video")
    return receiver.transport._RTCDtlsTransport__rx_bytes


async def video_inbound(viewer: Viewer) -> tuple[int, int]:
    """(packetsReceived, packetsLost) of the viewer's video."""
    for s in (await viewer.pc.getStats()).values():
        if s.type == "inbound-rtp" and s.kind == "video":
            return s.packetsReceived, s.packetsLost
    return 0, 0


async def test_nack_storm_costs_the_attacker_more_than_the_server(sfu):
    room = "storm"
    pub = Publisher(sfu.url, room)
    viewer = Viewer(sfu.url, room)
    attacker = Attacker(sfu.url, room, token=sfu.token(room, "mallory", publish=False))
    try:
        await pub.start()
        await viewer.start()
        await attacker.start()
        assert await viewer.wait_frames("video", 30, timeout=30) >= 30, await viewer.report()
        assert await attacker.wait_frames("video", 10, timeout=20) >= 10, await attacker.report()
        attacker.watch()
        while attacker.highest is None:
            await asyncio.sleep(0.05)
        results = {}
        for rate in (20, 100):  # NACKs per second, as in the issue
            health0 = sfu.health()
            legit0, attacker0 = rx_bytes(viewer), attacker.rx_bytes()
            sent0 = attacker.sent_bytes
            received0, lost0 = await video_inbound(viewer)
            frames0 = viewer.frames["video"]
            await attacker.storm(rate, 4.0)
            await asyncio.sleep(0.3)  # answers in flight land
            health = sfu.health()  # the server keeps answering during and after the storm
            received, lost = await video_inbound(viewer)
            stats = {k: health["stats"].get(k, 0) - health0["stats"].get(k, 0)
                     for k in ("retransmissions", "nacks_received", "nack_misses")}
            drops = {k: health["drops"].get(k, 0) - health0["drops"].get(k, 0)
                     for k in ("nack_repeat", "nack_budget", "nack_overflow")}
            sent = attacker.sent_bytes - sent0
            extra = (attacker.rx_bytes() - attacker0) - (rx_bytes(viewer) - legit0)
            results[rate] = r = {
                "nacks": stats["nacks_received"], "attacker_bytes_in": sent, "extra_bytes_out": extra,
                "ratio": extra / sent, "stats": stats, "drops": drops,
                "legit_video_packets": received - received0, "legit_video_lost": lost - lost0,
                "legit_frames": viewer.frames["video"] - frames0,
            }
            print(f"NACK storm at {rate}/s: {r}")
            assert stats["nacks_received"] >= sent // 1300, r  # the NACKs did reach the SFU
            assert drops["nack_overflow"] >= stats["nacks_received"] * (ENTRIES * 17 - 256) * 0.9, r
            assert drops["nack_budget"] > 0, r
            # the storm costs the attacker more bytes than the server sends it
            assert extra < sent, r
            # the legitimate viewer keeps its stream
            assert r["legit_video_packets"] > 0 and r["legit_frames"] > 0, r
            assert r["legit_video_lost"] <= 0.02 * r["legit_video_packets"] + 2, r
        assert sfu.health()["transports"] == 3
    finally:
        await attacker.stop()
        await viewer.stop()
        await pub.stop()
