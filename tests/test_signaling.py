"""The meeting protocol core (sfu/signaling.py) without sockets: a real media
engine that only negotiates (not started), on each data path (C and pure Python),
a fake meeting service that records what it was asked, and participants whose
outgoing messages land in lists."""

from __future__ import annotations

import asyncio
import json

import pytest

from sfu.auth import AuthError, Claims, Grants
from sfu.config import Config
from sfu.events import EndReason, LeaveReason, MeetingEnded, ParticipantLeft
from sfu.history import Meeting
from sfu.meetings import can_end
from sfu.rooms import Rooms
from sfu.signaling import CLOSE_LEFT, CLOSE_MEETING_ENDED, CLOSE_SERVER_STOPPED, Signaling

from .conftest import new_engine
from .sdp_offers import OfferPeer
from .test_engine_meeting import engine_state, with_codec_changed

EVERYTHING = Grants(publish=True, subscribe=True)
HOST = Grants(publish=True, subscribe=True, host=True)


class FakeMeetings:
    """Implements what Signaling uses of sfu.meetings.MeetingService: its room registry
    (the real one, sfu/rooms.py), join, leave, end_meeting and typed events."""

    def __init__(self) -> None:
        self.rooms = Rooms()
        self.listeners = []
        self.calls: list[tuple] = []
        self.meetings: dict[str, Meeting] = {}
        self.sessions: dict[str, str] = {}  # session id -> meeting id
        self._n = 0

    def add_listener(self, cb) -> None:
        self.listeners.append(cb)

    def emit(self, ev) -> None:
        for cb in self.listeners:
            cb(ev)

    async def join(self, claims: Claims, room: str):
        live = self.rooms.live(room)
        if live is None:
            meeting = Meeting(f"m{len(self.meetings)}", room, "standup", claims.identity, claims.name, 100.0)
            self.meetings[meeting.meeting_id] = meeting
            live = self.rooms.start(meeting)
        self._n += 1
        session_id = f"s{self._n}"
        self.sessions[session_id] = live.meeting.meeting_id
        live.sessions.add(session_id)
        self.calls.append(("join", claims.identity, room, session_id))
        return live.meeting, session_id

    async def leave(self, session_id: str, reason: LeaveReason = LeaveReason.LEFT) -> None:
        meeting_id = self.sessions.pop(session_id, None)
        if meeting_id is not None:
            live = self.rooms.live_by_id(meeting_id)
            if live is not None:
                live.sessions.discard(session_id)
            self.calls.append(("leave", session_id, LeaveReason(reason)))

    def end(self, meeting_id: str, reason: EndReason) -> None:
        """The meeting ends (its sessions were closed): out of the registry, then the event."""
        meeting = self.meetings[meeting_id]
        meeting.ended_at = 200.0
        self.rooms.end(self.rooms.live_by_id(meeting_id))
        self.emit(MeetingEnded(meeting_id, meeting.room, reason))

    async def end_meeting(self, meeting_id: str, by: Claims) -> list[str]:
        meeting = self.meetings[meeting_id]
        if not can_end(meeting, by):
            raise AuthError(403, "only the meeting's host may end it")
        ids = sorted(s for s, m in self.sessions.items() if m == meeting_id)
        for session_id in ids:
            await self.leave(session_id, LeaveReason.KICKED)
            self.emit(ParticipantLeft(meeting_id, meeting.room, session_id, "", "", LeaveReason.KICKED))
        self.end(meeting_id, EndReason.ENDED_BY_HOST)
        return ids


class Client:
    """One participant's socket: what the server queued for it, and its offers."""

    def __init__(self, signaling: Signaling, identity: str, name: str, room: str = "r",
                 grants: Grants = EVERYTHING) -> None:
        self.signaling = signaling
        self.claims = Claims(identity, name, room, grants, 2**40)
        self.sent: list[dict] = []
        self.closed: tuple[int, str] | None = None
        self.participant = signaling.connect(self.claims, room, self.sent.append, self._close)
        self.peer = OfferPeer()
        self._ids = 0

    def _close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)
        self.sent.append({"type": "closed", "code": code})

    async def request(self, type_: str, **fields) -> dict:
        self._ids += 1
        response = await self.signaling.handle(self.participant, {"id": self._ids, "type": type_, **fields})
        assert response["id"] == self._ids and response["type"] == "response"
        return response

    def events(self, name: str | None = None) -> list[dict]:
        return [m for m in self.sent if m.get("type") == "event" and (name is None or m["event"] == name)]


@pytest.fixture
def engine(datapath_mode):
    return new_engine(Config(), datapath_mode)


@pytest.fixture
def meetings():
    return FakeMeetings()


@pytest.fixture
def signaling(engine, meetings):
    return Signaling(engine, meetings, clock=lambda: 1234.5)


AV = [("0", "audio", "sendonly"), ("1", "video", "sendonly")]
SOURCES = {"0": {"source": "microphone"}, "1": {"source": "camera"}}


async def joined(signaling, identity, name, **kw) -> Client:
    client = Client(signaling, identity, name, **kw)
    response = await client.request("join")
    assert response["ok"], response
    return client


async def test_requests_before_join_are_refused_except_ping(signaling):
    c = Client(signaling, "alice@example.com", "Alice")
    response = await c.request("offer", sdp=c.peer.offer(AV))
    assert response == {"id": 1, "type": "response", "ok": False, "code": "not_joined", "error": "send join first"}
    pong = await c.request("ping")
    assert pong["ok"] and pong["pong"] is True and pong["time"] == 1234.5


async def test_join_returns_meeting_and_others_by_display_name_only(signaling, meetings):
    alice = await joined(signaling, "alice@example.com", "Alice")
    await alice.request("offer", sdp=alice.peer.offer(AV), tracks=SOURCES)
    bob = Client(signaling, "+15551234567", "Bob")
    response = await bob.request("join")
    assert response["ok"]
    assert response["meeting"] == {"id": "m0", "room": "r", "topic": "standup", "started_at": 100.0,
                                   "creator_name": "Alice"}
    assert response["participant_id"] == bob.participant.id and response["name"] == "Bob"
    assert response["permissions"] == {"publish": True, "subscribe": True, "end_meeting": False,
                                       "mute_others": False, "chat_enable": False, "polls": False,
                                       "record": False}
    [other] = response["participants"]
    assert other == {"id": alice.participant.id, "name": "Alice", "tracks": [
        {"id": f"{alice.participant.id}-0", "kind": "audio", "source": "microphone", "muted": False},
        {"id": f"{alice.participant.id}-1", "kind": "video", "source": "camera", "muted": False},
    ]}
    [ev] = alice.events("participant_joined")
    assert ev["participant"] == {"id": bob.participant.id, "name": "Bob", "tracks": []}
    # identities (e-mail, phone) never reach the other participant
    assert "alice@example.com" not in json.dumps(bob.sent + [response])
    assert "+15551234567" not in json.dumps(alice.sent)
    assert ("join", "+15551234567", "r", "s2") in meetings.calls
    again = await bob.request("join")
    assert again["code"] == "already_joined"


async def test_publish_subscribe_and_renegotiate(signaling, engine):
    alice = await joined(signaling, "a", "Alice")
    bob = await joined(signaling, "b", "Bob")
    published = await alice.request("offer", sdp=alice.peer.offer(AV), tracks=SOURCES)
    assert published["ok"], published
    a = alice.participant.id
    assert published["published"] == {"0": f"{a}-0", "1": f"{a}-1"}
    assert published["sdp"].startswith("v=0")
    announced = bob.events("track_published")
    assert [(e["participant_id"], e["track"]["id"], e["track"]["source"]) for e in announced] == [
        (a, f"{a}-0", "microphone"), (a, f"{a}-1", "camera")]
    assert alice.events("track_published") == []

    # Bob publishes and receives Alice's two tracks in one offer
    offer = bob.peer.offer(AV + [("2", "audio", "recvonly"), ("3", "video", "recvonly")])
    response = await bob.request("offer", sdp=offer, tracks=SOURCES, subscriptions={"2": f"{a}-0", "3": f"{a}-1"})
    assert response["ok"], response
    assert response["subscriptions"] == {"2": f"{a}-0", "3": f"{a}-1"}
    consumers = engine.describe_session(bob.participant.media_session)["consumers"]
    producers = engine.describe_session(alice.participant.media_session)["producers"]
    assert consumers["3"]["producer"] == producers["1"]["id"]
    transport = engine.transports[bob.participant.media_session]

    # Alice stops her camera: Bob is told, his section goes silent; same transports
    await alice.request("offer", sdp=alice.peer.offer([("0", "audio", "sendonly"), ("1", "video", "inactive")]))
    assert [e["track_id"] for e in bob.events("track_unpublished")] == [f"{a}-1"]
    assert engine.describe_session(bob.participant.media_session)["consumers"]["3"]["producer"] is None
    response = await bob.request("offer", sdp=bob.peer.offer(AV + [("2", "audio", "recvonly"), ("3", "video", "inactive")]),
                                 subscriptions={"2": f"{a}-0"})
    assert response["ok"] and response["subscriptions"] == {"2": f"{a}-0"}
    assert engine.transports[bob.participant.media_session] is transport
    # a screen share is a third track with its source label
    screen = await alice.request("offer", sdp=alice.peer.offer(
        [("0", "audio", "sendonly"), ("1", "video", "inactive"), ("2", "video", "sendonly")]),
        tracks={"2": {"source": "screen"}})
    assert screen["published"] == {"0": f"{a}-0", "2": f"{a}-2"}
    assert bob.events("track_published")[-1]["track"] == {"id": f"{a}-2", "kind": "video", "source": "screen",
                                                          "muted": False}


async def test_unknown_or_own_track_subscriptions_stay_silent(signaling, engine):
    alice = await joined(signaling, "a", "Alice")
    a = alice.participant.id
    response = await alice.request("offer", sdp=alice.peer.offer(AV + [("2", "video", "recvonly")]),
                                   subscriptions={"2": f"{a}-1"})
    assert response["ok"] and response["subscriptions"] == {"2": None}
    response = await alice.request("offer", sdp=alice.peer.offer(AV + [("2", "video", "recvonly")]),
                                   subscriptions={"2": "nobody-1"})
    assert response["ok"] and response["subscriptions"] == {"2": None}


async def test_grants_are_enforced(signaling):
    viewer = await joined(signaling, "v", "Viewer", grants=Grants(subscribe=True))
    response = await viewer.request("offer", sdp=viewer.peer.offer(AV))
    assert (response["ok"], response["code"]) == (False, "forbidden")
    assert "publish" in response["error"]
    mute = await joined(signaling, "m", "Mute", grants=Grants(publish=True))
    response = await mute.request("offer", sdp=mute.peer.offer([("0", "video", "recvonly")]))
    assert (response["ok"], response["code"]) == (False, "forbidden")
    other_room = Client(signaling, "x", "X", room="r")
    response = await other_room.request("join", room="elsewhere")
    assert response["code"] == "forbidden"


async def test_mute_is_broadcast(signaling):
    alice = await joined(signaling, "a", "Alice")
    bob = await joined(signaling, "b", "Bob")
    await alice.request("offer", sdp=alice.peer.offer(AV), tracks={"0": {"source": "microphone", "muted": True}})
    a = alice.participant.id
    assert bob.events("track_published")[0]["track"]["muted"] is True
    response = await alice.request("mute", track_id=f"{a}-0", muted=False)
    assert response["ok"] and response["muted"] is False
    assert bob.events("mute_changed") == [{"type": "event", "event": "mute_changed", "participant_id": a,
                                           "track_id": f"{a}-0", "muted": False, "by_host": False}]
    assert (await alice.request("mute", track_id=f"{a}-0", muted=False))["ok"]
    assert len(bob.events("mute_changed")) == 1  # no change, no event
    assert (await bob.request("mute", track_id=f"{a}-0", muted=True))["code"] == "not_found"
    assert (await alice.request("mute", track_id=f"{a}-0", muted="yes"))["code"] == "bad_request"


async def test_leaving_unpublishes_then_announces_and_records(signaling, engine, meetings):
    alice = await joined(signaling, "a", "Alice")
    bob = await joined(signaling, "b", "Bob")
    await alice.request("offer", sdp=alice.peer.offer(AV))
    media = alice.participant.media_session
    response = await alice.request("leave")
    assert response["ok"] and alice.closed == (CLOSE_LEFT, "left")
    assert alice.sent[-2:] == [response, {"type": "closed", "code": CLOSE_LEFT}]
    names = [e["event"] for e in bob.events()][-3:]
    assert names == ["track_unpublished", "track_unpublished", "participant_left"]
    assert bob.events("participant_left")[0] == {"type": "event", "event": "participant_left",
                                                 "participant_id": alice.participant.id, "reason": "left"}
    assert not engine.has_session(media)
    assert ("leave", "s1", "left") in meetings.calls
    assert signaling.participants("r") == [bob.participant]
    assert (await alice.request("ping"))["code"] == "closed"
    # a socket that dies is recorded as timed out
    await signaling.disconnect(bob.participant, "timed out")
    assert ("leave", "s2", "timed out") in meetings.calls and len(signaling.rooms) == 1
    assert signaling.participants("r") == [] and signaling.rooms.live("r") is not None  # its meeting runs
    meetings.end("m0", EndReason.EMPTY)
    assert len(signaling.rooms) == 0 and signaling.rooms.get("r") is None


async def test_end_meeting_needs_a_host_and_ends_it_for_everyone(signaling, meetings):
    first = await joined(signaling, "f", "First")  # came first, no host grant: no host powers
    assert first.sent[0]["permissions"]["end_meeting"] is False and not first.participant.host
    alice = await joined(signaling, "a", "Alice", grants=HOST)
    assert alice.sent[0]["permissions"] == {"publish": True, "subscribe": True, "end_meeting": True,
                                            "mute_others": True, "chat_enable": True, "polls": True,
                                            "record": True}
    bob = await joined(signaling, "b", "Bob")
    for client in (first, bob):
        response = await client.request("end_meeting")
        assert (response["ok"], response["code"]) == (False, "forbidden")
        response = await client.request("mute_participant", participant_id=alice.participant.id)
        assert (response["ok"], response["code"]) == (False, "forbidden")
    await first.request("leave")
    response = await alice.request("end_meeting")
    assert response["ok"], response
    # the response reached Alice before her socket closed
    closed_at = next(i for i, m in enumerate(alice.sent) if m["type"] == "closed")
    assert alice.sent.index(response) < closed_at
    for client in (alice, bob):
        assert client.events("meeting_ended")[0]["reason"] == "ended by host"
        assert client.closed == (CLOSE_MEETING_ENDED, "meeting ended")
    await asyncio.sleep(0)  # the disconnects run as tasks
    for client in (alice, bob):
        assert client.participant.gone
    assert sorted(c for c in meetings.calls if c[0] == "leave") == [("leave", "s1", "left"), ("leave", "s2", "kicked"),
                                                                   ("leave", "s3", "kicked")]


async def test_media_session_loss_is_reported(signaling, engine):
    alice = await joined(signaling, "a", "Alice")
    bob = await joined(signaling, "b", "Bob")
    await alice.request("offer", sdp=alice.peer.offer(AV))
    engine.transports[alice.participant.media_session].close("ice consent timeout")
    assert alice.events("media_closed") == [{"type": "event", "event": "media_closed", "reason": "timed out"}]
    assert alice.participant.media_session is None and alice.participant.tracks == {}
    assert len(bob.events("track_unpublished")) == 2
    # a new peer connection can offer again
    alice.peer = alice.peer.__class__()
    assert (await alice.request("offer", sdp=alice.peer.offer(AV)))["ok"]


async def test_shutdown_closes_every_socket(signaling, meetings):
    alice = await joined(signaling, "a", "Alice")
    await signaling.shutdown()
    assert alice.events("server_stopping") and alice.closed == (CLOSE_SERVER_STOPPED, "server stopped")
    assert ("leave", "s1", "server stopped") in meetings.calls


@pytest.mark.parametrize("message, code", [
    ([1, 2], "bad_request"),
    ({"id": 1, "type": "dance"}, "unknown_type"),
    ({"id": True, "type": "ping"}, "bad_request"),
    ({"id": 1, "type": "offer", "sdp": ""}, "bad_request"),
    ({"id": 1, "type": "offer", "sdp": "v=0\r\nbogus"}, "bad_sdp"),
    ({"id": 1, "type": "offer", "sdp": "v=0\r\n", "subscriptions": []}, "bad_request"),
    ({"id": 1, "type": "mute", "track_id": 5, "muted": True}, "not_found"),
])
async def test_bad_requests(signaling, message, code):
    client = await joined(signaling, "a", "Alice")
    response = await signaling.handle(client.participant, message)
    assert response["ok"] is False and response["code"] == code, response
    assert response["id"] == (message.get("id") if isinstance(message, dict) and message.get("id") is not True else None)


async def test_bad_offer_changes_nothing(signaling, engine):
    alice = await joined(signaling, "a", "Alice")
    await alice.request("offer", sdp=alice.peer.offer(AV))
    restart = OfferPeer(ssrcs=alice.peer.ssrcs)
    response = await alice.request("offer", sdp=restart.offer(AV))
    assert response["code"] == "bad_sdp" and "ICE restart" in response["error"]
    assert len(alice.participant.tracks) == 2


async def test_a_refused_renegotiation_changes_nothing_and_the_retry_publishes(signaling, engine):
    """The issue's sequence through the protocol: a new camera (mid 2) offered before
    mid 1, whose codec changed: bad_sdp and nothing changes (no track announced, no C
    stream left); the correct offer then publishes the new track (not internal_error)."""
    alice = await joined(signaling, "a", "Alice")
    bob = await joined(signaling, "b", "Bob")
    assert (await alice.request("offer", sdp=alice.peer.offer(AV), tracks=SOURCES))["ok"]
    a = alice.participant.id
    before = engine_state(engine)
    announced = len(bob.events("track_published"))
    bad = with_codec_changed(alice.peer.offer(
        [("0", "audio", "sendonly"), ("2", "video", "sendonly"), ("1", "video", "sendonly")]), "1")
    response = await alice.request("offer", sdp=bad, tracks={"2": {"source": "screen"}})
    assert (response["ok"], response["code"]) == (False, "bad_sdp"), response
    assert "cannot change codec" in response["error"]
    assert engine_state(engine) == before
    assert len(bob.events("track_published")) == announced and len(alice.participant.tracks) == 2
    response = await alice.request("offer", sdp=alice.peer.offer(AV + [("2", "video", "sendonly")]),
                                   tracks={"2": {"source": "screen"}})
    assert response["ok"], response
    assert response["published"] == {"0": f"{a}-0", "1": f"{a}-1", "2": f"{a}-2"}
    assert bob.events("track_published")[-1]["track"]["id"] == f"{a}-2"
    response = await bob.request("offer", sdp=bob.peer.offer([("0", "video", "recvonly")]),
                                 subscriptions={"0": f"{a}-2"})
    assert response["ok"] and response["subscriptions"] == {"0": f"{a}-2"}


async def test_garbage_never_escapes_as_an_exception(signaling):
    """Like h11's fuzzer: any JSON value gets a response (ok or an error code), never an exception."""
    import random

    rng = random.Random(7)
    values = [None, True, 0, -1, 1.5, "", "x", "v=0\r\n", [], {}, {"0": "x"}, {"0": {"source": 5}}, [1, "a"]]
    alice = await joined(signaling, "a", "Alice")
    await alice.request("offer", sdp=alice.peer.offer(AV))
    for _ in range(500):
        message = {k: rng.choice(values) for k in rng.sample(
            ["id", "type", "sdp", "tracks", "subscriptions", "track_id", "muted", "room"], rng.randint(0, 8))}
        if rng.random() < 0.8:
            message["type"] = rng.choice(["join", "offer", "mute", "ping", "end_meeting", "nope"])
        response = await signaling.handle(alice.participant, message)
        assert response["type"] == "response" and isinstance(response["ok"], bool)
        if not response["ok"]:
            assert response["code"] != "internal_error", (message, response)


# -- host mute: the engine holds a producer's forwarding ------------------------------------


@pytest.mark.parametrize("mode", ["c", "pure"])
def test_paused_producer_forwards_nothing_and_resumes_where_it_stopped(mode):
    """MediaEngine.pause_producer: every subscriber of the track (also one that
    subscribes while it is held) gets nothing; on resume, output numbering
    continues without a jump in sequence numbers (RFC 3550 §5.1)."""
    from .test_datapath import Harness, rtp

    h = Harness(mode, "SRTP_AEAD_AES_128_GCM")
    pub = h.join("pub", "room", "publish", 5000, audio_ssrc=1111)
    h.join("v1", "room", "subscribe", 5001)
    producer = next(p for p in pub.producers if p.kind == "audio")
    seq = 100

    def send(n: int) -> None:
        nonlocal seq
        for _ in range(n):
            h.send_rtp("pub", rtp(111, seq, 960 * seq, 1111, size=120))
            seq += 1
            h.advance(0.02, tick=False)

    def received(name: str) -> list[int]:
        """Output sequence numbers of the RTP packets sent to ``name`` so far (RTCP skipped)."""
        out = []
        for data, addr in h.out:
            if addr == h.addrs[name] and 128 <= data[0] < 192 and not 192 <= data[1] <= 223:
                out.append(int.from_bytes(data[2:4], "big"))
        return out

    send(5)
    assert len(received("v1")) == 5
    assert h.engine.pause_producer(producer.id, True) is True
    send(5)
    assert len(received("v1")) == 5  # held
    h.join("v2", "room", "subscribe", 5002)  # subscribes while held: starts paused
    send(3)
    assert len(received("v1")) == 5 and received("v2") == []
    assert h.engine.pause_producer(producer.id, False) is True
    send(4)
    v1 = received("v1")
    assert len(v1) == 9 and len(received("v2")) == 4
    assert [(b - a) & 0xFFFF for a, b in zip(v1, v1[1:])] == [1] * 8  # no gap for the held packets
    assert h.engine.pause_producer("nope:0", True) is False
    # the subscriber-side pause (set_paused) and the producer hold combine
    v2 = h.engine.transports[next(t for t in h.engine.transports if h.engine.transports[t].addr == h.addrs["v2"])]
    h.engine.set_paused(v2.id, True)
    h.engine.pause_producer(producer.id, True)
    h.engine.set_paused(v2.id, False)  # still held by the producer
    send(2)
    assert len(received("v2")) == 4
    h.engine.pause_producer(producer.id, False)
    send(2)
    assert len(received("v2")) == 6


async def test_host_mutes_a_participant_the_sfu_holds_its_media_until_it_unmutes(signaling, engine):
    alice = await joined(signaling, "a", "Alice", grants=HOST)
    bob = await joined(signaling, "b", "Bob")
    carol = await joined(signaling, "c", "Carol", grants=Grants(subscribe=True, host=True))
    await bob.request("offer", sdp=bob.peer.offer(AV), tracks=SOURCES)
    b = bob.participant.id
    await carol.request("offer", sdp=carol.peer.offer([("0", "audio", "recvonly"), ("1", "video", "recvonly")]),
                        subscriptions={"0": f"{b}-0", "1": f"{b}-1"})
    producers = {p.mid: p for p in engine.transports[bob.participant.media_session].producers}
    carol_audio = next(c for c in engine.transports[carol.participant.media_session].consumers if c.kind == "audio")
    assert alice.participant.host and carol.participant.host and not bob.participant.host

    # a participant without the host grant may not mute others
    denied = await bob.request("mute_participant", participant_id=alice.participant.id)
    assert (denied["ok"], denied["code"]) == (False, "forbidden")

    response = await alice.request("mute_participant", participant_id=b)  # kind: audio by default
    assert response["ok"] and response["track_ids"] == [f"{b}-0"] and response["kind"] == "audio"
    assert producers["0"].paused and carol_audio.paused and not producers["1"].paused
    expected = {"type": "event", "event": "mute_changed", "participant_id": b, "track_id": f"{b}-0",
                "muted": True, "by_host": True}
    assert alice.events("mute_changed") == [expected] and carol.events("mute_changed") == [expected]
    assert bob.events("mute_changed") == []
    assert bob.events("muted_by_host") == [{"type": "event", "event": "muted_by_host", "track_ids": [f"{b}-0"],
                                            "kind": "audio", "by": {"id": alice.participant.id, "name": "Alice"}}]
    # the track is muted for whoever joins later
    dave = await joined(signaling, "d", "Dave")
    joined_bob = next(p for p in dave.sent[0]["participants"] if p["id"] == b)
    assert joined_bob["tracks"][0]["muted"] is True
    # muting again changes nothing; a second host can mute the camera
    assert (await alice.request("mute_participant", participant_id=b))["ok"]
    assert len(carol.events("mute_changed")) == 1
    assert (await carol.request("mute_participant", participant_id=b, kind="video"))["track_ids"] == [f"{b}-1"]
    assert producers["1"].paused

    # Bob muting himself again keeps the hold; unmuting lifts it
    await bob.request("mute", track_id=f"{b}-0", muted=True)
    assert producers["0"].paused
    response = await bob.request("mute", track_id=f"{b}-0", muted=False)
    assert response["ok"] and not producers["0"].paused and not carol_audio.paused
    assert carol.events("mute_changed")[-1] == {"type": "event", "event": "mute_changed", "participant_id": b,
                                                "track_id": f"{b}-0", "muted": False, "by_host": False}
    assert producers["1"].paused  # the camera stays held until Bob turns it on

    for message, code in [({"participant_id": b, "muted": False}, "bad_request"),
                          ({"participant_id": b, "kind": "screen"}, "bad_request"),
                          ({"participant_id": "nobody"}, "not_found"),
                          ({"participant_id": 7}, "not_found")]:
        response = await alice.request("mute_participant", **message)
        assert (response["ok"], response["code"]) == (False, code), message


async def test_a_whip_publisher_and_a_whep_viewer_are_participants(signaling, engine, meetings):
    alice = await joined(signaling, "alice@example.com", "Alice", grants=HOST)
    claims = Claims("cam@example.com", "Lobby camera", "r", Grants(publish=True), 2**40)
    whip = engine.create_session("r", "publish", OfferPeer().offer(AV))
    peer = signaling.add_http_peer(whip.id, claims, "publish", "m0")
    p = peer.id
    [joined_ev] = alice.events("participant_joined")
    assert joined_ev["participant"] == {"id": p, "name": "Lobby camera", "tracks": [], "via": "whip"}
    assert [e["track"] for e in alice.events("track_published")] == [
        {"id": f"{p}-0", "kind": "audio", "source": "microphone", "muted": False},
        {"id": f"{p}-1", "kind": "video", "source": "camera", "muted": False}]
    assert "cam@example.com" not in json.dumps(alice.sent)
    # Alice receives it like any participant's tracks, and a host can mute it
    response = await alice.request("offer", sdp=alice.peer.offer([("0", "video", "recvonly")]),
                                   subscriptions={"0": f"{p}-1"})
    assert response["subscriptions"] == {"0": f"{p}-1"}
    assert (await alice.request("mute_participant", participant_id=p, kind="video"))["track_ids"] == [f"{p}-1"]
    # a WHEP viewer appears without tracks
    viewer = signaling.add_http_peer(engine.create_session("r", "subscribe", OfferPeer().offer(
        [("0", "video", "recvonly")])).id, Claims("v", "Viewer", "r", Grants(subscribe=True), 2**40),
        "subscribe", "m0")
    assert alice.events("participant_joined")[-1]["participant"] == {"id": viewer.id, "name": "Viewer",
                                                                     "tracks": [], "via": "whep"}
    bob = await joined(signaling, "b", "Bob")
    assert {x["name"]: x.get("via") for x in bob.sent[0]["participants"]} == {
        "Alice": None, "Lobby camera": "whip", "Viewer": "whep"}
    # the publisher goes (WHIP DELETE): its tracks, then its leave
    engine.close_session(whip.id)
    names = [e["event"] for e in alice.events()][-3:]
    assert names == ["track_unpublished", "track_unpublished", "participant_left"]
    assert alice.events("participant_left")[-1] == {"type": "event", "event": "participant_left",
                                                    "participant_id": p, "reason": "left"}
    assert alice.events("mute_changed")[-1]["participant_id"] == p
    assert ("leave",) not in [c[:1] for c in meetings.calls]  # its history is the WHIP handler's
    # the meeting ends: the viewer's session is closed as kicked
    meetings.end("m0", EndReason.ENDED_BY_HOST)
    assert not engine.has_session(viewer.media_session or "gone") and viewer.gone
    assert {"type": "event", "event": "participant_left", "participant_id": viewer.id,
            "reason": "kicked"} in bob.events("participant_left")
    assert signaling.add_http_peer("no-such-session", claims, "publish", "m0") is None


async def test_recording_state_reaches_everyone_and_later_joiners(signaling, meetings):
    alice = await joined(signaling, "a", "Alice")
    assert alice.sent[0]["recording"] is False
    assert signaling.set_recording("m0", True) is True
    assert alice.events("recording_changed") == [{"type": "event", "event": "recording_changed", "recording": True}]
    assert signaling.set_recording("m0", True) is False  # no change, no event
    bob = await joined(signaling, "b", "Bob")
    assert bob.sent[0]["recording"] is True
    signaling.set_recording("m0", False)
    assert [e["recording"] for e in bob.events("recording_changed")] == [False]
    signaling.set_recording("m0", True)
    live = signaling.rooms.live("r")
    assert live.recording is True
    meetings.end("m0", EndReason.EMPTY)
    assert signaling.rooms.live("r") is None and signaling.set_recording("m0", False) is False


# -- through the server: POST /api/meetings/{id}/recording, and WHIP into a meeting ----------


async def test_recording_api_and_whip_publisher_over_http(tmp_path, datapath_mode):
    import pathlib

    import aiohttp

    from sfu.auth import mint_token
    from sfu.server import Server

    secret = "signaling-test-secret"
    server = Server(Config(http_port=0, rtc_port=0, data_dir=str(tmp_path / "data"), auth_secret=secret,
                           grace_period=0.05, datapath=datapath_mode))
    await server.start()

    def tok(identity, **grants):
        return mint_token(secret, identity, identity.title(), "r1", Grants(**grants), ttl=600.0)

    try:
        async with aiohttp.ClientSession() as http:
            ws = await http.ws_connect(server.url.replace("http", "ws") + "/ws?token=" + tok("alice", subscribe=True))

            async def next_event(name):
                while True:
                    message = await asyncio.wait_for(ws.receive_json(), 5.0)
                    if message.get("event") == name or (name == "response" and message["type"] == "response"):
                        return message

            await ws.send_json({"id": 1, "type": "join"})
            joined_response = await next_event("response")
            assert joined_response["recording"] is False
            meeting_id = joined_response["meeting"]["id"]
            url = f"{server.url}/api/meetings/{meeting_id}/recording"

            async def post(token, body):
                async with http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
                    return r.status, await r.json()

            assert (await post(tok("bob", subscribe=True), {"active": True}))[0] == 403
            assert (await post(tok("alice"), {"active": "yes"}))[0] == 400
            async with http.post(url, json={"active": True}) as r:
                assert r.status == 401
            async with http.post(f"{server.url}/api/meetings/nope-nop-nop/recording", json={"active": True},
                                 headers={"Authorization": f"Bearer {tok('alice')}"}) as r:
                assert r.status == 404
            # alice came first but has no host grant: no say over the recording notice
            assert (await post(tok("alice"), {"active": True}))[0] == 403
            # a host of the room (or an admin) says a recorder started
            assert await post(tok("rec", host=True), {"active": True}) == (200, {"meeting_id": meeting_id,
                                                                                 "recording": True})
            assert (await next_event("recording_changed"))["recording"] is True
            assert (await post(tok("rec", host=True), {"active": False}))[0] == 200
            assert (await next_event("recording_changed"))["recording"] is False

            # a WHIP publisher with a token named "Cam" joins the meeting as a participant with tracks
            offer = (pathlib.Path(__file__).parent / "fixtures" / "sdp" / "aiortc_publish.sdp").read_text()
            async with http.post(f"{server.url}/whip/r1", data=offer, headers={
                    "Content-Type": "application/sdp", "Authorization": f"Bearer {tok('cam', publish=True)}"}) as r:
                assert r.status == 201
                location = r.headers["Location"]
            ev = await next_event("participant_joined")
            assert ev["participant"]["name"] == "Cam" and ev["participant"]["via"] == "whip"
            published = [await next_event("track_published") for _ in range(2)]
            assert sorted(e["track"]["source"] for e in published) == ["camera", "microphone"]
            async with http.delete(server.url + location, headers={"Authorization": f"Bearer {tok('cam')}"}) as r:
                assert r.status == 200
            left = await next_event("participant_left")
            assert left == {"type": "event", "event": "participant_left",
                            "participant_id": ev["participant"]["id"], "reason": "left"}
            await ws.close()
    finally:
        await server.stop()
