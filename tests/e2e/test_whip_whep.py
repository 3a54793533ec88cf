"""WHIP publishers and WHEP viewers (aiortc) through a real SFU process, over loopback."""

from __future__ import annotations

import asyncio
import random
import re
import time

import pytest

from .clients import Publisher, Viewer, delete

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def test_publisher_to_two_viewers(sfu):
    pub = Publisher(sfu.url, "room1")
    viewers = [Viewer(sfu.url, "room1"), Viewer(sfu.url, "room1")]
    try:
        await pub.start()
        for v in viewers:
            await v.start()
        for v in viewers:
            assert await v.wait_frames("video", 30, timeout=20) >= 30, v.frames
            assert await v.wait_frames("audio", 50, timeout=10) >= 50, v.frames
        await asyncio.sleep(2.5)  # let a few RTCP report intervals pass
        # sender reports translated for each viewer reach its receivers (remote-outbound-rtp
        # is built from SRs on the viewer's own SSRCs), receiver reports reach the publisher
        for v in viewers:
            kinds = {s.kind for s in (await v.pc.getStats()).values() if s.type == "remote-outbound-rtp"}
            assert kinds == {"audio", "video"}, kinds
        remote_inbound = [s for s in (await pub.pc.getStats()).values() if s.type == "remote-inbound-rtp"]
        assert {s.kind for s in remote_inbound} == {"audio", "video"}
        assert all(s.packetsLost == 0 for s in remote_inbound)
        health = sfu.health()
        assert health["rooms"] == 1
        assert health["producers"] == 2 and health["consumers"] == 4
        assert health["stats"]["rtp_forwarded"] > 0
    finally:
        for v in viewers:
            await v.stop()
        await pub.stop()
    # DELETE frees everything the sessions held
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and sfu.health()["transports"]:
        await asyncio.sleep(0.05)
    health = sfu.health()
    assert health["transports"] == 0 and health["rooms"] == 0
    assert health["producers"] == 0 and health["consumers"] == 0


async def test_viewer_before_publisher_gets_media_without_new_request(sfu):
    viewer = Viewer(sfu.url, "early")
    pub = Publisher(sfu.url, "early")
    try:
        await viewer.start()
        await asyncio.sleep(0.5)
        await pub.start()
        assert await viewer.wait_frames("video", 10, timeout=20) >= 10, viewer.frames
        assert await viewer.wait_frames("audio", 20, timeout=10) >= 20, viewer.frames
    finally:
        await viewer.stop()
        await pub.stop()


async def test_late_viewer_gets_keyframe_within_a_second(sfu):
    pub = Publisher(sfu.url, "late")
    first = Viewer(sfu.url, "late")
    late = Viewer(sfu.url, "late")
    try:
        await pub.start()
        await first.start()
        assert await first.wait_frames("video", 10, timeout=20) >= 10
        await asyncio.sleep(3)  # the publisher is mid-GOP now
        await late.start()
        assert await late.wait_frames("video", 1, timeout=10) >= 1
        assert late.connected_at is not None
        delay = late.first_frame_at["video"] - late.connected_at
        assert delay < 1.0, f"first video frame {delay:.2f}s after connecting"
        assert sfu.health()["stats"]["keyframe_requests_sent"] >= 2
    finally:
        await late.stop()
        await first.stop()
        await pub.stop()


class LossyProxy(asyncio.DatagramProtocol):
    """A UDP relay between one viewer and the SFU that drops a share of the SFU's
    video RTP packets (the payload type is clear text in SRTP)."""

    def __init__(self, sfu_addr, loss: float, seed: int = 7, uplink: bool = False) -> None:
        self.sfu_addr = sfu_addr
        self.uplink = uplink  # drop what the client sends instead of what the SFU sends
        self.video_pt: int | None = None
        self.loss = loss
        self.random = random.Random(seed)
        self.client_addr = None
        self.downstream = None  # socket facing the viewer
        self.upstream = None  # socket facing the SFU
        self.dropped = 0
        self.forwarded = 0

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        proxy = self

        class Down(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                proxy.client_addr = addr
                if proxy.uplink and proxy.lose(data):
                    return
                proxy.upstream.sendto(data, proxy.sfu_addr)

        class Up(asyncio.DatagramProtocol):
            def datagram_received(self, data, addr):
                if proxy.client_addr is None:
                    return
                if not proxy.uplink and proxy.lose(data):
                    return
                proxy.forwarded += 1
                proxy.downstream.sendto(data, proxy.client_addr)

        self.downstream, _ = await loop.create_datagram_endpoint(Down, local_addr=("127.0.0.1", 0))
        self.upstream, _ = await loop.create_datagram_endpoint(Up, local_addr=("127.0.0.1", 0))
        return self.downstream.get_extra_info("sockname")[1]

    def lose(self, data: bytes) -> bool:
        is_video = 128 <= data[0] <= 191 and (data[1] & 0x7F) == self.video_pt
        if is_video and self.random.random() < self.loss:
            self.dropped += 1
            return True
        return False

    def via_proxy(self, answer: str) -> str:
        """Point the client at the proxy instead of the SFU's candidate."""
        self.video_pt = int(re.search(r"m=video \d+ \S+ (\d+)", answer).group(1))
        port = self.downstream.get_extra_info("sockname")[1]
        return re.sub(r"(a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 )\d+", rf"\g<1>{port}", answer)

    def close(self) -> None:
        self.downstream.close()
        self.upstream.close()


async def test_nack_repairs_five_percent_loss(sfu):
    proxy = LossyProxy(("127.0.0.1", sfu.rtc_port), loss=0.05)
    await proxy.start()
    pub = Publisher(sfu.url, "lossy")
    viewer = Viewer(sfu.url, "lossy", answer_filter=proxy.via_proxy)
    try:
        await pub.start()
        await viewer.start()
        assert await viewer.wait_frames("video", 10, timeout=20) >= 10, viewer.frames
        before = viewer.frames["video"]
        await asyncio.sleep(8)
        decoded = viewer.frames["video"] - before
        stats = sfu.health()["stats"]
        assert proxy.dropped >= 5, proxy.dropped
        # the viewer NACKs what the proxy dropped and the SFU resends it from its cache
        assert stats.get("retransmissions", 0) >= proxy.dropped // 2, (stats, proxy.dropped)
        # about 30 frames/s are sent; the viewer keeps decoding despite the loss
        print(f"decoded {decoded} frames in 8 s, dropped {proxy.dropped}, stats {stats}")
        assert decoded >= 150, f"only {decoded} frames decoded in 8 s with {proxy.dropped} packets dropped"
    finally:
        await viewer.stop()
        await pub.stop()
        proxy.close()


async def test_uplink_loss_is_nacked_to_the_publisher(sfu):
    proxy = LossyProxy(("127.0.0.1", sfu.rtc_port), loss=0.05, uplink=True)
    await proxy.start()
    pub = Publisher(sfu.url, "uplink", answer_filter=proxy.via_proxy)
    viewer = Viewer(sfu.url, "uplink")
    try:
        await pub.start()
        await viewer.start()
        assert await viewer.wait_frames("video", 10, timeout=20) >= 10, viewer.frames
        before = viewer.frames["video"]
        await asyncio.sleep(8)
        decoded = viewer.frames["video"] - before
        stats = sfu.health()["stats"]
        assert proxy.dropped >= 5, proxy.dropped
        # the SFU saw the gaps and asked the publisher to resend (RFC 4585 generic NACK)
        assert stats.get("nacks_sent", 0) >= 1, stats
        assert decoded >= 150, f"only {decoded} frames decoded in 8 s with {proxy.dropped} lost on the uplink"
    finally:
        await viewer.stop()
        await pub.stop()
        proxy.close()


async def test_delete_unknown_session_is_404(sfu):
    assert await delete(sfu.url + "/whip/room1/doesnotexist") == 404
    assert await delete(sfu.url + "/whep/room1/doesnotexist") == 404
    assert await delete(sfu.url + "/whip/room1/doesnotexist", token="") == 401  # a token first


async def test_silent_peer_is_dropped_after_consent_timeout(tmp_path, netns):
    from ..conftest import SfuProcess

    server = SfuProcess(tmp_path, "--consent-timeout", "8").start()
    proxy = LossyProxy(("127.0.0.1", server.rtc_port), loss=0.0)
    await proxy.start()
    pub = Publisher(server.url, "consent")
    viewer = Viewer(server.url, "consent", answer_filter=proxy.via_proxy)
    try:
        await pub.start()
        await viewer.start()
        assert await viewer.wait_frames("video", 5, timeout=20) >= 5
        proxy.close()  # the viewer vanishes without DELETE: no more STUN consent checks
        # aiortc checks consent every 4-6 s, so 8 s keeps the publisher alive
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and server.health()["transports"] > 1:
            await asyncio.sleep(0.1)
        health = server.health()
        assert health["transports"] == 1 and health["consumers"] == 0, health
        assert health["stats"]["consent_timeouts"] == 1
        assert health["producers"] == 2  # the publisher, still checking, stays
    finally:
        await viewer.stop()
        await pub.stop()
        server.stop()
