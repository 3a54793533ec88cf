"""Real WebRTC clients for the end-to-end tests: aiortc publishers and viewers
speaking WHIP and WHEP to the SFU over loopback."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import aioice.ice
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError, VideoStreamTrack
from av import VideoFrame

from ..conftest import mint_test_token

NO_ICE_SERVERS = RTCConfiguration(iceServers=[])  # never ask a public STUN server


def _loopback_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else []


class _DecodeFailures(logging.Handler):
    """Counts aiortc's "failed to decode" warnings, for failure messages."""

    count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "failed to decode" in record.getMessage():
            type(self).count += 1


DECODE_FAILURES = _DecodeFailures()
logging.getLogger("aiortc.rtcrtpreceiver").addHandler(DECODE_FAILURES)

# aioice never gathers 127.0.0.1, and it gathers every other interface: the test
# clients gather exactly one host candidate, on loopback.
aioice.ice.get_host_addresses = _loopback_host_addresses


class PatternVideoTrack(VideoStreamTrack):
    """A small moving test pattern, so that every frame differs."""

    def __init__(self, width: int = 320, height: int = 240) -> None:
        super().__init__()
        self.width, self.height = width, height
        self.counter = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        img = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        x = (self.counter * 4) % self.width
        img[:, x : x + 16, :] = 255
        img[:, :, 1] = (self.counter * 3) % 256
        self.counter += 1
        frame = VideoFrame.from_ndarray(img, format="bgr24")
        frame.pts, frame.time_base = pts, time_base
        return frame


def _room_of(url: str) -> str | None:
    parts = url.split("?")[0].rstrip("/").split("/")
    return parts[-1] if len(parts) >= 2 and parts[-2] in ("whip", "whep") else None


class Publisher:
    def __init__(self, base_url: str, room: str, answer_filter=None, token: str | None = None) -> None:
        self.base_url, self.room = base_url, room
        self.token = token
        self.pc = RTCPeerConnection(NO_ICE_SERVERS)
        self.location: str | None = None
        self.answer_filter = answer_filter

    async def start(self, audio: bool = True, video: bool = True) -> None:
        if audio:
            self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        if video:
            self.pc.addTransceiver(PatternVideoTrack(), direction="sendonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        status, answer, self.location = await post_sdp(
            f"{self.base_url}/whip/{self.room}", self.pc.localDescription.sdp, token=self.token
        )
        assert status == 201, answer
        if self.answer_filter is not None:
            answer = self.answer_filter(answer)
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def stop(self) -> None:
        if self.location:
            await delete(self.base_url + self.location, token=self.token)
        await self.pc.close()


class Viewer:
    """A WHEP viewer that decodes what it receives and counts it."""

    def __init__(self, base_url: str, room: str, answer_filter=None, token: str | None = None) -> None:
        self.base_url, self.room = base_url, room
        self.token = token
        self.pc = RTCPeerConnection(NO_ICE_SERVERS)
        self.location: str | None = None
        self.frames = {"audio": 0, "video": 0}
        self.first_frame_at: dict[str, float] = {}
        self.connected_at: float | None = None
        self.answer_filter = answer_filter
        self._tasks: list[asyncio.Task] = []

        @self.pc.on("track")
        def on_track(track) -> None:
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState == "connected" and self.connected_at is None:
                self.connected_at = time.monotonic()

    async def _consume(self, track) -> None:
        try:
            while True:
                await track.recv()
                if track.kind not in self.first_frame_at:
                    self.first_frame_at[track.kind] = time.monotonic()
                self.frames[track.kind] += 1
        except (MediaStreamError, asyncio.CancelledError):
            pass

    async def start(self) -> None:
        self.pc.addTransceiver("audio", direction="recvonly")
        self.pc.addTransceiver("video", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        status, answer, self.location = await post_sdp(
            f"{self.base_url}/whep/{self.room}", self.pc.localDescription.sdp, token=self.token
        )
        assert status == 201, answer
        if self.answer_filter is not None:
            answer = self.answer_filter(answer)
        self.answer = answer
        await self.pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))

    async def report(self) -> str:
        """What this viewer saw, for a failing assertion's message."""
        inbound = [
            {k: getattr(s, k, None) for k in ("kind", "ssrc", "packetsReceived", "packetsLost", "jitter")}
            for s in (await self.pc.getStats()).values() if s.type == "inbound-rtp"
        ]
        return (f"viewer frames={self.frames} decode_failures={DECODE_FAILURES.count} "
                f"inbound={inbound}\nanswer:\n{getattr(self, 'answer', None)}")

    async def wait_frames(self, kind: str, count: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.frames[kind] < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.frames[kind]

    async def stop(self) -> None:
        if self.location:
            await delete(self.base_url + self.location, token=self.token)
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


async def post_sdp(url: str, sdp: str, content_type: str = "application/sdp",
                   token: str | None = None) -> tuple[int, str, str | None]:
    """POST an offer with ``Authorization: Bearer token``; with no token, one of the
    test servers' (tests/conftest.py) for the URL's room; ``token=""`` sends none."""
    if token is None:
        token = mint_test_token(_room_of(url))
    headers = {"Content-Type": content_type}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=sdp.encode(), headers=headers) as r:
            return r.status, await r.text(), r.headers.get("Location")


async def delete(url: str, token: str | None = None) -> int:
    """DELETE a WHIP/WHEP session URL with ``Authorization: Bearer token`` (the token
    that created it, or an admin's); with no token, the test servers' default one
    (identity "tester", as post_sdp uses); ``token=""`` sends none."""
    if token is None:
        token = mint_test_token(None)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession() as session:
        async with session.delete(url, headers=headers) as r:
            return r.status
