"""Limits on what one offer, session, room and server may hold (issue 9, "Huge
offers"), and the cap on sessions that have not connected yet. The engine only
negotiates (not started), on both data paths: the pure-Python one and the C one,
whose producers and consumers own C streams and subscriptions."""

from __future__ import annotations

import random

import pytest

from sfu import sdp
from sfu.config import Config
from sfu.engine import MediaEngine
from sfu.limits import LimitExceeded
from sfu.router import Consumer, Producer, Router
from sfu.signaling import Signaling

from .sdp_offers import OfferPeer
from .test_signaling import Client, FakeMeetings

FINGERPRINT = ":".join(["AB"] * 32)


def huge_offer(sections: int, direction: str = "sendonly", kind: str = "video") -> str:
    """A compact offer with ``sections`` BUNDLEd sections (ICE and DTLS at session
    level): 330 video sections fit in a 64 KiB WHIP body, as in the issue."""
    ufrag = "h%06d" % random.randrange(10**6)
    mids = [str(i) for i in range(sections)]
    lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE " + " ".join(mids),
             f"a=ice-ufrag:{ufrag}", "a=ice-pwd:" + "p" * 24, f"a=fingerprint:sha-256 {FINGERPRINT}",
             "a=setup:actpass"]
    pt, rtpmap = ("111", "opus/48000/2") if kind == "audio" else ("96", "VP8/90000")
    for mid in mids:
        lines += [f"m={kind} 9 UDP/TLS/RTP/SAVPF {pt}", "c=IN IP4 0.0.0.0", f"a=mid:{mid}", f"a={direction}",
                  "a=rtcp-mux", f"a=rtpmap:{pt} {rtpmap}", f"a=rtcp-fb:{pt} nack", f"a=rtcp-fb:{pt} nack pli"]
        if direction == "sendonly":
            lines.append(f"a=ssrc:{random.getrandbits(31) + 1} cname:c")
    return "\r\n".join(lines) + "\r\n"


AV_SEND = [("0", "audio", "sendonly"), ("1", "video", "sendonly")]
AV_RECV = [("0", "audio", "recvonly"), ("1", "video", "recvonly")]


@pytest.fixture(params=["pure", "c"])
def make_engine(request):
    engines = []

    def make(**limits) -> MediaEngine:
        engine = MediaEngine(Config(rtc_port=40000, **limits), pure_python=request.param == "pure")
        engines.append(engine)
        return engine

    yield make
    for engine in engines:  # close every session: C streams and peers are freed
        for transport in list(engine.transports.values()):
            transport.close("server stopped")
        assert engine.snapshot()["producers"] == engine.snapshot()["consumers"] == 0


def tracks(engine) -> int:
    snap = engine.snapshot()
    return snap["producers"] + snap["consumers"]


def assert_nothing_left(engine, transports=0, rooms=0, n_tracks=0) -> None:
    assert len(engine.transports) == transports
    assert len(engine.rooms) == rooms
    assert tracks(engine) == n_tracks
    assert len(engine.pending) == transports


# -- offers: media sections ---------------------------------------------------------------

def test_section_count_is_checked_before_parsing():
    text = huge_offer(330)
    assert len(text.encode()) <= 64 * 1024
    assert sdp.count_media_sections(text) == 330
    with pytest.raises(sdp.SdpError, match="offer has 330 media sections, at most 128 are allowed"):
        sdp.parse_sdp(text, max_sections=128)
    assert len(sdp.parse_sdp(text).media) == 330  # no limit given: parsed as before
    # counted on the raw text, so even garbage after v=0 is refused by count first
    with pytest.raises(sdp.SdpError, match="5 media sections, at most 4"):
        sdp.parse_sdp("v=0\n" + "m=x\n" * 5, max_sections=4)
    assert sdp.count_media_sections("m=audio 9 x 0\nm=video 9 x 0\n") == 2
    assert sdp.count_media_sections("v=0\r\nm=audio 9 x 0\r\na=x:m=y\r\n") == 1


def test_whip_offer_with_330_video_sections_is_refused_and_leaves_nothing(make_engine):
    engine = make_engine()
    with pytest.raises(sdp.SdpError, match="offer has 330 media sections, at most 128 are allowed"):
        engine.create_session("r", "publish", huge_offer(330))
    assert_nothing_left(engine)


def test_published_tracks_per_session(make_engine):
    engine = make_engine()
    with pytest.raises(LimitExceeded) as refused:
        engine.create_session("r", "publish", huge_offer(17))
    assert refused.value.status == 400 and refused.value.code == "too_many_tracks"
    assert str(refused.value) == "offer publishes 17 tracks, at most 16 are allowed per session"
    assert_nothing_left(engine)
    assert engine.stats["sessions_refused_too_many_tracks"] == 1
    engine.create_session("r", "publish", huge_offer(16))
    assert_nothing_left(engine, transports=1, rooms=1, n_tracks=16)


def test_tracks_per_session(make_engine):
    engine = make_engine(max_session_tracks=8)
    with pytest.raises(LimitExceeded, match="offer has 9 tracks to send or receive, at most 8") as refused:
        engine.create_session("r", "subscribe", huge_offer(9, "recvonly"))
    assert refused.value.status == 400
    # inactive and rejected sections make no track: they do not count
    offer = OfferPeer().offer([(str(i), "video", "recvonly") for i in range(8)]
                              + [("8", "video", "inactive"), ("9", "audio", "recvonly", 0)])
    engine.create_session("r", "subscribe", offer)
    assert tracks(engine) == 8


def test_room_limit_is_403_and_other_rooms_still_work(make_engine):
    engine = make_engine(max_room_tracks=10)
    engine.create_session("r", "publish", OfferPeer().offer(AV_SEND))
    viewers = [engine.create_session("r", "subscribe", OfferPeer().offer(AV_RECV)) for _ in range(4)]
    assert tracks(engine) == 10
    with pytest.raises(LimitExceeded, match="room r is full: it has 10 tracks, at most 10 are allowed") as refused:
        engine.create_session("r", "subscribe", OfferPeer().offer(AV_RECV))
    assert refused.value.status == 403 and refused.value.code == "room_full"
    assert refused.value.retry_after is None
    engine.create_session("other", "subscribe", OfferPeer().offer(AV_RECV))
    engine.close_session(viewers[0].id)
    engine.create_session("r", "subscribe", OfferPeer().offer(AV_RECV))  # room for one more again
    assert engine.rooms["r"].track_count == 10


def test_server_limit_is_503_with_retry_after(make_engine):
    engine = make_engine(max_server_tracks=5)
    engine.create_session("a", "publish", OfferPeer().offer(AV_SEND))
    engine.create_session("b", "subscribe", OfferPeer().offer(AV_RECV))
    with pytest.raises(LimitExceeded, match="server is full") as refused:
        engine.create_session("c", "subscribe", OfferPeer().offer(AV_RECV))
    assert refused.value.status == 503 and refused.value.code == "server_busy"
    assert refused.value.retry_after_header() == "30"
    assert_nothing_left(engine, transports=2, rooms=2, n_tracks=4)
    engine.create_session("c", "subscribe", OfferPeer().offer([("0", "audio", "recvonly")]))  # 5 fits


def test_limits_of_zero_mean_no_limit(make_engine):
    engine = make_engine(max_offer_sections=0, max_session_tracks=0, max_session_published=0,
                         max_room_tracks=0, max_server_tracks=0, max_pending_sessions=0)
    engine.create_session("r", "publish", huge_offer(200))
    assert tracks(engine) == 200


# -- sessions that have not connected -----------------------------------------------------

def test_unconnected_sessions_are_capped_until_they_connect_or_are_reaped(make_engine):
    engine = make_engine(max_pending_sessions=3, consent_timeout=30.0)
    publisher = engine.create_session("r", "publish", OfferPeer().offer(AV_SEND))
    first = engine.transports[publisher.id].created
    for _ in range(2):
        engine.create_session("r", "subscribe", OfferPeer().offer(AV_RECV))
    with pytest.raises(LimitExceeded, match="3 sessions are still connecting, at most 3") as refused:
        engine.create_session("r", "subscribe", OfferPeer().offer(AV_RECV))
    assert refused.value.status == 503 and refused.value.code == "server_busy"
    assert 1 <= refused.value.retry_after <= 30  # when the oldest is reaped at the latest
    assert engine.stats["sessions_refused_server_busy"] == 1
    assert engine.snapshot()["connecting"] == 3
    # one connects: a slot is free (a connected session does not count)
    engine.transport_connected(engine.transports[publisher.id], first)
    assert engine.snapshot()["connecting"] == 2
    engine.create_session("r", "subscribe", OfferPeer().offer(AV_RECV))
    with pytest.raises(LimitExceeded):
        engine.create_session("r", "subscribe", OfferPeer().offer(AV_RECV))
    # the consent timeout reaps the ones that never connect (as without the cap)
    engine.tick(first + 31.0)
    assert engine.snapshot()["connecting"] == 0 and engine.transports == {}  # (no STUN came at all)
    engine.create_session("r", "subscribe", OfferPeer().offer(AV_RECV))


def test_unconnected_sessions_of_one_room_are_capped_apart(make_engine):
    engine = make_engine(max_pending_sessions=5, max_room_pending_sessions=2)
    a = [engine.create_session("a", "subscribe", OfferPeer().offer(AV_RECV)) for _ in range(2)]
    with pytest.raises(LimitExceeded, match="2 sessions in this room are still connecting, at most 2") as refused:
        engine.create_session("a", "subscribe", OfferPeer().offer(AV_RECV))
    assert refused.value.status == 503 and refused.value.retry_after_header() is not None
    for _ in range(2):  # other rooms still connect
        engine.create_session("b", "subscribe", OfferPeer().offer(AV_RECV))
    engine.transport_connected(engine.transports[a[0].id], engine.transports[a[0].id].created)
    engine.create_session("a", "subscribe", OfferPeer().offer(AV_RECV))
    assert {room: len(p) for room, p in engine.pending_by_room.items()} == {"a": 2, "b": 2}
    for info in list(engine.transports):
        engine.close_session(info)
    assert engine.pending == {} and engine.pending_by_room == {}


def test_closed_unconnected_session_frees_its_slot(make_engine):
    engine = make_engine(max_pending_sessions=1)
    info = engine.create_session("r", "publish", OfferPeer().offer(AV_SEND))
    with pytest.raises(LimitExceeded):
        engine.create_session("r", "publish", OfferPeer().offer(AV_SEND))
    engine.close_session(info.id)
    engine.create_session("r", "publish", OfferPeer().offer(AV_SEND))


# -- meeting sessions: renegotiation ------------------------------------------------------

def test_meeting_renegotiation_may_not_grow_past_the_limits_but_may_shrink(make_engine):
    engine = make_engine(max_session_tracks=4, max_room_tracks=5)
    other = engine.create_session("r", "meeting", OfferPeer().offer(AV_SEND))
    peer = OfferPeer()
    info = engine.create_session("r", "meeting", peer.offer([("0", "audio", "recvonly"), ("1", "video", "recvonly")]))
    transport = engine.transports[info.id]
    five = [(str(i), "video", "recvonly") for i in range(5)]
    with pytest.raises(LimitExceeded, match="5 tracks to send or receive, at most 4"):
        engine.update_session(info.id, peer.offer(five))
    assert len(transport.consumers) == 2 and tracks(engine) == 4  # unchanged
    four = [(str(i), "video" if i else "audio", "recvonly") for i in range(4)]
    with pytest.raises(LimitExceeded, match="room r is full") as refused:
        engine.update_session(info.id, peer.offer(four))  # the other's 2 + 4 of its own > 5
    assert refused.value.code == "room_full"
    engine.close_session(other.id)
    engine.update_session(info.id, peer.offer(four))
    assert len(transport.consumers) == 4
    engine.update_session(info.id, peer.offer([("0", "audio", "recvonly")]))  # shrinking is always fine
    assert len(transport.consumers) == 1


def test_signaling_maps_limits_to_protocol_errors():
    async def run():
        engine = MediaEngine(Config(max_session_tracks=3, max_offer_sections=6), pure_python=True)
        signaling = Signaling(engine, FakeMeetings(), clock=lambda: 1.0)
        alice = Client(signaling, "a", "Alice")
        assert (await alice.request("join"))["ok"]
        response = await alice.request("offer", sdp=alice.peer.offer([(str(i), "video", "recvonly") for i in range(4)]))
        assert not response["ok"] and response["code"] == "too_many_tracks", response
        assert response["error"] == "offer has 4 tracks to send or receive, at most 3 are allowed per session"
        response = await alice.request("offer", sdp=huge_offer(7, "recvonly"))
        assert not response["ok"] and response["code"] == "bad_sdp"
        assert response["error"] == "offer has 7 media sections, at most 6 are allowed"
        assert engine.transports == {} and alice.participant.media_session is None
        response = await alice.request("offer", sdp=alice.peer.offer(AV_SEND))
        assert response["ok"], response

    import asyncio
    asyncio.run(run())


# -- the room's indexes -------------------------------------------------------------------

class _Transport:
    """What the router reads of a transport."""

    def __init__(self, name: str) -> None:
        self.id = self.cname = name
        self.room_name = "r"
        self.plane_id = 0
        self.rtcp_ssrc = 1
        self.tracks = None  # the router's SessionTracks (open_session)

    @property
    def consumers(self):
        return self.tracks.consumers

    def forget_ssrc(self, ssrc: int, inbound: bool) -> None:
        pass


class _NullPlane:
    """A forwarding plane that takes every command and does nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _codec(name: str, pt: int) -> sdp.Codec:
    return sdp.Codec(payload_type=pt, name=name, clock_rate=90000, channels=None, fmtp={}, rtcp_fb=["nack"])


def test_room_indexes_agree_with_a_scan_after_random_churn():
    """Random publishes, subscriptions and leaves: every consumer of an automatic
    viewer gets what a scan of the room would give it, the router's subscribers are exactly
    who is attached, and codec_preference is the newest-first scan."""

    rng = random.Random(7)
    router = Router(_NullPlane())
    producers: list[Producer] = []
    consumers: list[Consumer] = []
    for step in range(600):
        op = rng.random()
        if op < 0.3 or not producers:
            codec = _codec(rng.choice(["VP8", "vp8", "H264", "VP9"]), 96)
            t = _Transport(f"p{step}")
            router.open_session(t)
            p = Producer(t, "video", "0", codec, step + 1, {})
            router.add_tracks(t, [p], [], [])
            producers.append(p)
        elif op < 0.65:
            t = _Transport(f"v{step}")
            router.open_session(t)
            for mid in range(rng.randint(1, 3)):
                c = Consumer(t, "video", str(mid), _codec(rng.choice(["VP8", "H264"]), 100), {})
                router.add_tracks(t, [], [c], [])
                consumers.append(c)
        elif op < 0.85:
            p = producers.pop(rng.randrange(len(producers)))
            router.close_session(p.transport)
        elif consumers:  # a viewer leaves with all its consumers
            t = consumers[rng.randrange(len(consumers))].transport
            for c in t.consumers:
                consumers.remove(c)
            router.close_session(t)
        # invariants
        room = router.rooms.get("r")
        assert list(room.producers.values() if room else ()) == producers
        assert set(room.consumers if room else ()) == set(consumers)
        for p in producers:
            assert set(router.subscribers(p)) == {c for c in consumers if c.producer is p}
            assert len(router.subscribers(p)) == len(set(router.subscribers(p)))
        for c in consumers:
            if c.producer is None:  # waiting: no compatible track its transport does not have yet
                taken = {o.producer for o in c.transport.consumers if o is not c}
                assert not [p for p in producers if c.can_consume(p) and p not in taken]
        names = [p.codec.name for p in reversed(producers)]
        expected: list[str] = []
        for name in names + ["AV1"]:
            if name.lower() not in (n.lower() for n in expected):
                expected.append(name)
        assert router.codec_preference("r", "video", ["AV1"]) == expected
    assert router.totals["producers"] == len(producers) and router.totals["consumers"] == len(consumers)
