"""Keyframe-gated switching with real aiortc clients through an SFU process on loopback.

A WHEP viewer moved to another publisher, and a meeting viewer resumed after a
host mute, get no video packet of the new (or resumed) stream before a
keyframe, their sequence numbers continue without a gap, and they decode
without errors while frames keep coming.

A keyframe request reaches an aiortc publisher in well under a frame's time
on loopback, so with nothing else going on the next frame is a keyframe anyway
and nothing would be held. Each test therefore makes the switch's request
wait behind the SFU's throttle (one request per track per 0.5 s): a request
for the same track goes out just before the switch (a second viewer joins the
new publisher; a viewer sends a PLI), and the publisher's delta frames of the
next half second must be held back (``keyframe_waits`` grows).

aiortc's VP8 encoder makes a keyframe only at its start and when asked (its
GOP is 3000 frames), so a switch without the gate would hand the viewer delta
frames of a picture it never saw. Every RTP packet the viewers' receivers get
is logged (RTCRtpReceiver._handle_rtp_packet, after SRTP) and read with the
VP8 payload descriptor (RFC 7741 §4.2: the PictureID runs on by one per frame
within one encoder's stream, so a jump marks where the viewer's stream switched).
"""

from __future__ import annotations

import asyncio
import time

import pytest
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtcrtpreceiver import RTCRtpReceiver

from .clients import DECODE_FAILURES, Publisher, Viewer
from .test_meeting_ws import MEDIA_TIMEOUT, everyone_sees_everyone, matrix, start_meeting, wait_until
from .ws_client import MeetingClient

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


@pytest.fixture
def packet_log(monkeypatch):
    """receiver -> [(seq, timestamp, payload type, payload, ssrc)] of every video RTP packet it handles."""
    log: dict[RTCRtpReceiver, list[tuple[int, int, int, bytes, int]]] = {}
    original = RTCRtpReceiver._handle_rtp_packet

    async def logged(self, packet, arrival_time_ms):
        if self._RTCRtpReceiver__kind == "video":
            log.setdefault(self, []).append(
                (packet.sequence_number, packet.timestamp, packet.payload_type, bytes(packet.payload),
                 packet.ssrc))
        return await original(self, packet, arrival_time_ms)

    monkeypatch.setattr(RTCRtpReceiver, "_handle_rtp_packet", logged)
    return log


def switches(packets) -> list[dict]:
    """Where the stream starts and where its PictureID jumps, with what came just before.

    Retransmissions (RTX, another payload type) and padding-only packets (the server's
    probes of a new SSRC among them) are left out."""
    media_pt = max({p[2] for p in packets if p[3]}, key=lambda pt: sum(1 for p in packets if p[2] == pt))
    media = [p for p in packets if p[2] == media_pt and p[3]]
    out = []
    last_pid = None
    for i, (seq, ts, _pt, payload, _ssrc) in enumerate(media):
        descriptor, rest = VpxPayloadDescriptor.parse(payload)
        if not (descriptor.partition_start and descriptor.partition_id == 0):
            if last_pid is None:
                out.append({"index": i, "keyframe": False, "why": "the first packet does not start a frame"})
                last_pid = -1
            continue
        pid = descriptor.picture_id
        if last_pid is None or last_pid < 0 or pid not in (last_pid, (last_pid + 1) & 0x7FFF):
            before = media[i - 1] if i else None
            out.append({
                "index": i, "picture_id": pid, "previous_picture_id": last_pid,
                "keyframe": bool(rest) and not rest[0] & 0x01,  # RFC 7741 §4.3: P=0
                "seq_step": (seq - before[0]) & 0xFFFF if before else None,
                "ts_step": (ts - before[1]) & 0xFFFFFFFF if before else None,
            })
        last_pid = pid
    return out


def check_switches(found: list[dict], expected: int) -> None:
    assert len(found) >= expected, found
    for switch in found:
        assert switch["keyframe"], f"video resumed on a delta frame: {switch} (all: {found})"
        if switch["seq_step"] is not None:
            assert switch["seq_step"] == 1, f"sequence numbers jump at a switch: {found}"
            assert 0 < switch["ts_step"] < 0x80000000, f"timestamps go back at a switch: {found}"


@pytest.mark.parametrize("datapath", ["c", "pure"])
async def test_whep_viewer_moved_to_another_publisher_starts_at_a_keyframe(tmp_path, netns, packet_log, datapath):
    from ..conftest import SfuProcess

    server = SfuProcess(tmp_path, "--datapath", datapath).start()
    first = Publisher(server.url, "move")
    second = Publisher(server.url, "move")
    viewer = Viewer(server.url, "move")
    other = Viewer(server.url, "move")
    failures = DECODE_FAILURES.count
    try:
        await first.start()
        await viewer.start()
        assert await viewer.wait_frames("video", 20, timeout=20) >= 20, await viewer.report()
        await second.start()
        await asyncio.sleep(3)  # the second publisher is 90 frames past its only keyframe
        await other.start()  # gets the newest publisher: a keyframe request to the second
        assert await other.wait_frames("video", 1, timeout=20) >= 1, await other.report()
        waits = server.health()["stats"].get("keyframe_waits", 0)
        before = viewer.frames["video"]
        await first.stop()  # the viewer moves to the second publisher: its request is throttled
        assert await viewer.wait_frames("video", before + 45, timeout=20) >= before + 45, await viewer.report()
        receiver = next(r for r in viewer.pc.getReceivers() if r.track.kind == "video")
        check_switches(switches(packet_log[receiver]), expected=2)  # the start, the move
        assert DECODE_FAILURES.count == failures, await viewer.report()
        health = server.health()
        assert health["stats"].get("keyframe_waits", 0) > waits, health["stats"]
    finally:
        await viewer.stop()
        await other.stop()
        await second.stop()
        await first.pc.close()
        server.stop()


@pytest.fixture
def slow_answers(monkeypatch):
    """Meeting clients apply each answer ANSWER_DELAY seconds after they got it (a loaded
    machine): a subscription's media that the server forwarded at once would reach a
    client that drops it, keyframe included, and decodes the delta frames after it."""
    original = MeetingClient.request

    async def request(self, type_, timeout=15.0, **fields):
        response = await original(self, type_, timeout, **fields)
        if type_ == "offer":
            await asyncio.sleep(ANSWER_DELAY)
        return response

    monkeypatch.setattr(MeetingClient, "request", request)


ANSWER_DELAY = 0.5


async def test_meeting_viewer_resumed_after_a_host_mute_starts_at_a_keyframe(sfu, packet_log, slow_answers):
    failures = DECODE_FAILURES.count  # from the start: the subscriptions' starts are gated too
    clients = await start_meeting(sfu, "mutevideo", ["Host", "Ben", "Cat"], audio=False)
    host, ben, cat = clients
    try:
        assert await wait_until(lambda: everyone_sees_everyone(clients, video=20, audio=0), MEDIA_TIMEOUT), \
            matrix(clients)
        stats = sfu.health()["stats"]
        # the video SSRCs new to a connected client (Host gets Ben's and Cat's, Ben gets
        # Cat's by renegotiation; a joining client's first offer subscribes the others before
        # DTLS, no race there) were confirmed by the clients' receiver reports, not a timeout
        assert stats.get("consumers_confirmed", 0) >= 3 and stats.get("probes_sent", 0) > 0, stats
        assert stats.get("probe_timeouts", 0) == 0, stats
        ben_video = ben.published["0"]
        response = await host.request("mute_participant", participant_id=ben.participant_id, kind="video")
        assert response["track_ids"] == [ben_video]
        await asyncio.sleep(0.5)  # packets already on the way
        held = cat.received_kinds(ben.participant_id)["video"]
        await asyncio.sleep(2.0)  # Ben's encoder goes on: 60 delta frames the others never see
        assert cat.received_kinds(ben.participant_id)["video"] <= held + 2
        # Cat asks for a keyframe of Ben's track (RFC 4585 PLI): the unmute's request is throttled
        cat_receiver = next(r["transceiver"].receiver for r in cat.receivers if r["track_id"] == ben_video)
        ssrc = packet_log[cat_receiver][-1][4]
        waits = sfu.health()["stats"].get("keyframe_waits", 0)
        await cat_receiver._send_rtcp_pli(ssrc)
        await asyncio.sleep(0.05)
        await ben.request("mute", track_id=ben_video, muted=False)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and cat.received_kinds(ben.participant_id)["video"] < held + 45:
            await asyncio.sleep(0.1)
        assert cat.received_kinds(ben.participant_id)["video"] >= held + 45, matrix(clients)
        for viewer in (host, cat):
            receiver = next(r["transceiver"].receiver for r in viewer.receivers
                            if r["track_id"] == ben_video)
            # the start and the resume begin at a keyframe: the server holds a renegotiation's
            # new video SSRC until the client's receiver report names it (it probes with padding
            # on the RTX SSRC), so a client that applies the answer late loses no keyframe
            found = switches(packet_log[receiver])
            check_switches(found, expected=2)  # the start, the resume
        assert DECODE_FAILURES.count == failures, matrix(clients)
        assert sfu.health()["stats"].get("keyframe_waits", 0) > waits
    finally:
        for client in clients:
            await client.close()


async def _inbound_video(tab) -> dict:
    reports = (await tab.evaluate('window.sfuRtcStats(["inbound-rtp"])'))["play"]
    video = [r for r in reports if r.get("kind") == "video"]
    assert len(video) == 1, reports
    return video[0]


async def _frames(tab, more_than: int, timeout: float = 30, interval: float = 0.25) -> int:
    """Frames the page's player decoded, once more than ``more_than`` (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        frames = (await _inbound_video(tab)).get("framesDecoded", 0) if (await tab.evaluate(
            "window.sfuState.playing")) else 0
        if frames > more_than or time.monotonic() >= deadline:
            return frames
        await asyncio.sleep(interval)


@pytest.mark.browser
async def test_chromium_player_moved_to_another_publisher_drops_no_frame(sfu, chromium):
    """Chromium's player (sfu/static/whip.html) moved from one browser publisher to
    another: the gate held delta frames, and the player dropped no frame, sent no
    keyframe request of its own and kept decoding. (Chromium's frame buffer discards
    undecodable delta frames quietly, so without the gate these stats look the same:
    the aiortc tests above are the ones that see a delta frame at a switch.)"""
    from .test_browser import diagnose, open_page, started

    first = await open_page(chromium, sfu, "room=chmove&publish=1")
    await started(first, sfu, "publishing")
    player = await open_page(chromium, sfu, "room=chmove&play=1")
    await started(player, sfu, "playing")
    assert await _frames(player, 30) > 30, await diagnose(player, sfu)
    second = await open_page(chromium, sfu, "room=chmove&publish=1")
    await started(second, sfu, "publishing")
    await asyncio.sleep(3)  # the second publisher is well past its first keyframe
    # another player of the second publisher: a keyframe request just before the move,
    # so that the move's request is throttled and the gate holds delta frames meanwhile
    other = await open_page(chromium, sfu, "room=chmove&play=1")
    await started(other, sfu, "playing")
    assert await _frames(other, 0, interval=0.05) > 0, await diagnose(other, sfu)
    before = await _inbound_video(player)
    waits = sfu.health()["stats"].get("keyframe_waits", 0)
    await first.evaluate("document.getElementById('stop').click()")  # the player moves
    decoded = []
    for _ in range(12):  # 3 s: frames keep coming
        await asyncio.sleep(0.25)
        decoded.append((await _inbound_video(player)).get("framesDecoded", 0))
    after = await _inbound_video(player)
    keys = ("framesDecoded", "framesDropped", "keyFramesDecoded", "pliCount", "firCount", "freezeCount")
    report = {k: (before.get(k), after.get(k)) for k in keys}
    assert sfu.health()["stats"].get("keyframe_waits", 0) > waits, report
    assert after["framesDecoded"] >= before["framesDecoded"] + 45, (report, decoded)
    assert all(b > a for a, b in zip(decoded[4:], decoded[5:])), (report, decoded)  # no freeze after 1 s
    assert after["keyFramesDecoded"] > before["keyFramesDecoded"], report
    assert after.get("framesDropped", 0) == before.get("framesDropped", 0), report
    assert after.get("pliCount", 0) == before.get("pliCount", 0), report
