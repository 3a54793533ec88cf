"""An aiortc meeting participant speaking the WebSocket protocol (docs/protocol.md):
join, publish audio/video, subscribe to every track of the others (renegotiating
as they come and go), count what it decodes per remote participant, leave.

Confined to loopback like the WHIP/WHEP clients (importing .clients patches
aioice to gather 127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from collections import Counter

import aiohttp
from aiortc import RTCBundlePolicy, RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, MediaStreamError

from .clients import PatternVideoTrack

# max-bundle: with aiortc's default ("balanced") a recvonly video transceiver added
# in the same offer as a sendonly one stays on a transport that BUNDLE discards
# (aiortc only moves transceivers it did not already "bundle" by kind), and
# never receives anything. No STUN server either.
MEETING_RTC_CONFIG = RTCConfiguration(iceServers=[], bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


class PacedPatternTrack(PatternVideoTrack):
    """The moving test pattern at a chosen frame rate (aiortc's default is 30 fps)."""

    def __init__(self, width: int = 320, height: int = 240, fps: int = 30) -> None:
        super().__init__(width, height)
        self.fps = fps
        self._start: float | None = None
        self._n = 0

    async def next_timestamp(self):
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._n += 1
            wait = self._start + self._n / self.fps - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        return int(self._n * 90000 / self.fps), fractions.Fraction(1, 90000)


class MeetingError(RuntimeError):
    pass


class MeetingClient:
    def __init__(self, base_url: str, token: str, *, audio: bool = True, video: bool = True,
                 width: int = 320, height: int = 240, fps: int = 30, subscribe: bool = True) -> None:
        self.ws_url = base_url.replace("http", "ws", 1) + "/ws"
        self.token = token
        self.audio, self.video = audio, video
        self.width, self.height, self.fps = width, height, fps
        self.subscribe = subscribe
        self.pc = RTCPeerConnection(MEETING_RTC_CONFIG)
        self.http: aiohttp.ClientSession | None = None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.joined: dict | None = None
        self.participant_id: str | None = None
        self.participants: dict[str, dict] = {}  # id -> {"name", "tracks": {track id: track}}
        self.events: list[dict] = []  # merged bursts (batch_events) as the single events they stand for
        self.merged = 0  # merged bursts received
        self.published: dict[str, str] = {}  # mid -> own track id
        self.receivers: list[dict] = []  # {"transceiver", "kind", "track_id"}
        self.frames: Counter[str] = Counter()  # remote track id -> frames decoded
        self.closed: int | None = None
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = 0
        self._tasks: list[asyncio.Task] = []
        self._consumed: set[int] = set()
        self._lock = asyncio.Lock()
        self._again = False
        self._negotiation: asyncio.Task | None = None
        self.errors: list[str] = []

    # -- protocol --------------------------------------------------------------------------
    async def connect(self) -> None:
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.ws_url, params={"token": self.token}, heartbeat=None)
        self._tasks.append(asyncio.ensure_future(self._read()))

    async def request(self, type_: str, timeout: float = 15.0, **fields) -> dict:
        assert self.ws is not None
        self._ids += 1
        future = asyncio.get_running_loop().create_future()
        self._pending[self._ids] = future
        await self.ws.send_str(json.dumps({"id": self._ids, "type": type_, **fields}))
        response = await asyncio.wait_for(future, timeout)
        if not response["ok"]:
            raise MeetingError(f"{type_}: {response['code']}: {response['error']}")
        return response

    async def _read(self) -> None:
        assert self.ws is not None
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            message = json.loads(msg.data)
            if message.get("type") == "response":
                future = self._pending.pop(message.get("id"), None)
                if future is not None and not future.done():
                    future.set_result(message)
            elif message.get("type") == "event":
                self.merged += message["event"] in ("tracks_published", "tracks_unpublished")
                for ev in _unmerged(message):
                    self.events.append(ev)
                    self._on_event(ev)
        self.closed = self.ws.close_code
        for future in self._pending.values():
            if not future.done():
                future.set_exception(MeetingError("socket closed"))

    def _on_event(self, ev: dict) -> None:
        name = ev["event"]
        if name == "participant_joined":
            info = ev["participant"]
            self.participants[info["id"]] = {"name": info["name"], "tracks": {}}
        elif name == "participant_left":
            person = self.participants.pop(ev["participant_id"], None)
            for track_id in (person or {}).get("tracks", {}):
                self._release(track_id)
        elif name == "track_published":
            person = self.participants.get(ev["participant_id"])
            if person is not None:
                person["tracks"][ev["track"]["id"]] = ev["track"]
                self.renegotiate_soon()
        elif name == "track_unpublished":
            person = self.participants.get(ev["participant_id"])
            if person is not None:
                person["tracks"].pop(ev["track_id"], None)
            self._release(ev["track_id"])
            self.renegotiate_soon()

    def _release(self, track_id: str) -> None:
        for receiver in self.receivers:
            if receiver["track_id"] == track_id:
                receiver["track_id"] = None

    # -- life cycle --------------------------------------------------------------------------
    async def join(self) -> dict:
        if self.ws is None:
            await self.connect()
        self.joined = await self.request("join", batch_events=True)
        self.participant_id = self.joined["participant_id"]
        for info in self.joined["participants"]:
            self.participants[info["id"]] = {"name": info["name"],
                                             "tracks": {t["id"]: t for t in info["tracks"]}}
        return self.joined

    async def publish(self) -> None:
        if self.audio:
            self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        if self.video:
            self.pc.addTransceiver(PacedPatternTrack(self.width, self.height, self.fps), direction="sendonly")
        await self.negotiate()

    def renegotiate_soon(self) -> None:
        """Batch the events of one burst into one offer."""
        self._again = True
        if self._negotiation is None or self._negotiation.done():
            self._negotiation = asyncio.ensure_future(self._negotiate_loop())

    async def _negotiate_loop(self) -> None:
        await asyncio.sleep(0.05)
        while self._again and self.closed is None:
            self._again = False
            try:
                await self.negotiate()
            except Exception as exc:  # kept for the test's assertion message
                self.errors.append(repr(exc))

    async def negotiate(self) -> dict:
        async with self._lock:
            if self.subscribe:
                for person in self.participants.values():
                    for track in person["tracks"].values():
                        if any(r["track_id"] == track["id"] for r in self.receivers):
                            continue
                        idle = next((r for r in self.receivers if r["track_id"] is None
                                     and r["kind"] == track["kind"]), None)
                        if idle is None:
                            transceiver = self.pc.addTransceiver(track["kind"], direction="recvonly")
                            idle = {"transceiver": transceiver, "kind": track["kind"], "track_id": None}
                            self.receivers.append(idle)
                        idle["track_id"] = track["id"]
            await self.pc.setLocalDescription(await self.pc.createOffer())
            subscriptions = {r["transceiver"].mid: r["track_id"] for r in self.receivers}
            response = await self.request("offer", sdp=self.pc.localDescription.sdp,
                                          subscriptions=subscriptions)
            await self.pc.setRemoteDescription(RTCSessionDescription(response["sdp"], "answer"))
            self.published = response["published"]
            for receiver in self.receivers:
                track = receiver["transceiver"].receiver.track
                if track is not None and id(receiver["transceiver"]) not in self._consumed:
                    self._consumed.add(id(receiver["transceiver"]))
                    self._tasks.append(asyncio.ensure_future(self._consume(receiver, track)))
            return response

    async def _consume(self, receiver: dict, track) -> None:
        try:
            while True:
                await track.recv()
                if receiver["track_id"] is not None:
                    self.frames[receiver["track_id"]] += 1
        except (MediaStreamError, asyncio.CancelledError):
            pass

    # -- what was received -------------------------------------------------------------------
    def received_kinds(self, participant_id: str) -> dict[str, int]:
        person = self.participants.get(participant_id, {"tracks": {}})
        out = {"audio": 0, "video": 0}
        for track_id, track in person["tracks"].items():
            out[track["kind"]] += self.frames.get(track_id, 0)
        return out

    async def packets_received(self, track_id: str) -> int:
        """RTP packets received so far in the section carrying ``track_id`` (inbound-rtp
        packetsReceived of aiortc's receiver stats); 0 if no section carries it."""
        for receiver in self.receivers:
            if receiver["track_id"] == track_id:
                report = await receiver["transceiver"].receiver.getStats()
                return sum(s.packetsReceived for s in report.values() if s.type == "inbound-rtp")
        return 0

    def event_names(self) -> list[str]:
        return [e["event"] for e in self.events]

    async def leave(self) -> None:
        if self.ws is not None and not self.ws.closed:
            try:
                await self.request("leave", timeout=5)
            except (MeetingError, asyncio.TimeoutError, ConnectionError):
                pass
        await self.close()

    async def close(self) -> None:
        if self._negotiation is not None:
            self._negotiation.cancel()
        if self.ws is not None:
            await self.ws.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pc.close()
        if self.http is not None:
            await self.http.close()


def _unmerged(ev: dict) -> list[dict]:
    """tracks_published / tracks_unpublished (docs/protocol.md 5.1) as one event per track."""
    base = {"type": "event", "participant_id": ev.get("participant_id")}
    if ev["event"] == "tracks_published":
        return [{**base, "event": "track_published", "track": track} for track in ev["tracks"]]
    if ev["event"] == "tracks_unpublished":
        return [{**base, "event": "track_unpublished", "track_id": track_id} for track_id in ev["track_ids"]]
    return [ev]
