"""Meeting sessions in the media engine: one transport that publishes and
receives, recvonly sections bound to explicit producers, renegotiation on the
same transport (RFC 9429 §5.2.2, RFC 3264 §8). No sockets: the engine is not
started, only negotiated with. Every test runs on both data paths (C and pure
Python); an offer that is refused changes nothing on either."""

from __future__ import annotations

import pytest

from sfu import rtcp, sdp
from sfu.config import Config
from sfu.limits import LimitExceeded

from sfu.events import CloseReason, SessionClosed, TrackPublished, TrackUnpublished

from .conftest import new_engine
from .sdp_offers import OfferPeer


@pytest.fixture
def engine(datapath_mode):
    eng = new_engine(Config(rtc_port=40000), datapath_mode)
    eng.events = []
    eng.add_listener(eng.events.append)
    return eng


def sections_of(answer: str) -> list[dict]:
    parsed = sdp.parse_sdp(answer)
    return [{"mid": m.mid, "kind": m.kind, "port": m.port, "direction": m.direction, "ssrcs": m.ssrcs}
            for m in parsed.media]


def publish(engine, room="r"):
    peer = OfferPeer()
    info = engine.create_session(room, "meeting", peer.offer([("0", "audio", "sendonly"), ("1", "video", "sendonly")]))
    return peer, info


def test_meeting_session_publishes_both_tracks(engine):
    peer, info = publish(engine)
    desc = engine.describe_session(info.id)
    assert desc["role"] == "meeting"
    assert {mid: p["kind"] for mid, p in desc["producers"].items()} == {"0": "audio", "1": "video"}
    assert desc["consumers"] == {}
    assert [s["direction"] for s in sections_of(info.answer)] == ["recvonly", "recvonly"]
    published = [e for e in engine.events if isinstance(e, TrackPublished)]
    assert [e.producer for e in published] == [desc["producers"]["0"]["id"], desc["producers"]["1"]["id"]]


def test_recvonly_sections_receive_exactly_the_subscribed_producers(engine):
    _, a = publish(engine)
    _, b = publish(engine)
    a_video = engine.describe_session(a.id)["producers"]["1"]["id"]
    b_audio = engine.describe_session(b.id)["producers"]["0"]["id"]
    viewer = OfferPeer()
    info = engine.create_session("r", "meeting", viewer.offer(
        [("0", "video", "recvonly"), ("1", "audio", "recvonly"), ("2", "video", "recvonly")]),
        subscriptions={"0": a_video, "1": b_audio})
    consumers = engine.describe_session(info.id)["consumers"]
    # "2" is not mapped: it stays silent instead of getting "the newest video track"
    assert consumers == {"0": {"kind": "video", "producer": a_video},
                         "1": {"kind": "audio", "producer": b_audio},
                         "2": {"kind": "video", "producer": None}}
    answer = sections_of(info.answer)
    assert [s["direction"] for s in answer] == ["sendonly"] * 3
    assert all(s["ssrcs"] for s in answer)


def test_whep_viewer_still_gets_the_newest_track(engine):
    _, a = publish(engine)
    viewer = OfferPeer()
    info = engine.create_session("r", "subscribe", viewer.offer([("0", "audio", "recvonly"), ("1", "video", "recvonly")]))
    producers = engine.describe_session(a.id)["producers"]
    assert engine.describe_session(info.id)["consumers"] == {
        "0": {"kind": "audio", "producer": producers["0"]["id"]},
        "1": {"kind": "video", "producer": producers["1"]["id"]},
    }


def test_renegotiation_adds_a_subscription_on_the_same_transport(engine):
    peer_a, a = publish(engine)
    transport = engine.transports[a.id]
    ufrag = transport.local_ufrag
    _, b = publish(engine)
    b_video = engine.describe_session(b.id)["producers"]["1"]["id"]
    answer = engine.update_session(a.id, peer_a.offer(
        [("0", "audio", "sendonly"), ("1", "video", "sendonly"), ("2", "video", "recvonly")]),
        {"2": b_video})
    assert engine.transports[a.id] is transport and transport.local_ufrag == ufrag
    parsed = sdp.parse_sdp(answer)
    assert parsed.media[0].ice_ufrag == ufrag and parsed.bundle == ["0", "1", "2"]
    assert parsed.origin.split()[1:3] == [str(transport.sdp_session_id), "3"]  # RFC 3264 §8: version +1
    desc = engine.describe_session(a.id)
    assert desc["consumers"] == {"2": {"kind": "video", "producer": b_video}}
    assert set(desc["producers"]) == {"0", "1"}
    # the producers were kept, not re-created
    assert [type(e) for e in engine.events].count(TrackPublished) == 4
    ssrc = parsed.media[2].ssrcs[0]
    # a second identical offer answers the same SSRC for the same mid
    again = sdp.parse_sdp(engine.update_session(a.id, peer_a.offer(
        [("0", "audio", "sendonly"), ("1", "video", "sendonly"), ("2", "video", "recvonly")]), {"2": b_video}))
    assert again.media[2].ssrcs[0] == ssrc


def test_inactive_or_rejected_section_unpublishes_and_detaches_subscribers(engine):
    peer_a, a = publish(engine)
    a_video = engine.describe_session(a.id)["producers"]["1"]["id"]
    a_audio = engine.describe_session(a.id)["producers"]["0"]["id"]
    viewer = OfferPeer()
    v = engine.create_session("r", "meeting", viewer.offer([("0", "video", "recvonly"), ("1", "audio", "recvonly")]),
                              subscriptions={"0": a_video, "1": a_audio})
    engine.events.clear()
    answer = engine.update_session(a.id, peer_a.offer([("0", "audio", "sendonly"), ("1", "video", "inactive")]), {})
    assert [s["direction"] for s in sections_of(answer)] == ["recvonly", "inactive"]
    gone = [e for e in engine.events if isinstance(e, TrackUnpublished)]
    assert [(e.producer, e.reason) for e in gone] == [(a_video, CloseReason.UNPUBLISHED)]
    assert engine.describe_session(v.id)["consumers"]["0"]["producer"] is None
    assert engine.describe_session(v.id)["consumers"]["1"]["producer"] == a_audio
    # port 0 (a stopped transceiver, RFC 3264 §8.2) unpublishes too and is answered with port 0
    answer = engine.update_session(a.id, peer_a.offer([("0", "audio", "sendonly", 0), ("1", "video", "inactive")]), {})
    assert sections_of(answer)[0]["port"] == 0
    assert engine.describe_session(a.id)["producers"] == {}
    assert engine.describe_session(v.id)["consumers"]["1"]["producer"] is None


def test_renegotiation_rebinds_and_unbinds_a_section(engine):
    _, a = publish(engine)
    _, b = publish(engine)
    a_video = engine.describe_session(a.id)["producers"]["1"]["id"]
    b_video = engine.describe_session(b.id)["producers"]["1"]["id"]
    viewer = OfferPeer()
    v = engine.create_session("r", "meeting", viewer.offer([("0", "video", "recvonly")]), {"0": a_video})
    engine.update_session(v.id, viewer.offer([("0", "video", "recvonly")]), {"0": b_video})
    assert engine.describe_session(v.id)["consumers"]["0"]["producer"] == b_video
    producer_a = engine.transports[a.id].producers_by_mid["1"]
    assert engine.router.subscribers(producer_a) == ()
    engine.update_session(v.id, viewer.offer([("0", "video", "recvonly")]), {})
    assert engine.describe_session(v.id)["consumers"]["0"]["producer"] is None
    # subscribing to an unknown producer or to one's own track leaves it silent
    engine.update_session(v.id, viewer.offer([("0", "video", "recvonly")]), {"0": "nope"})
    assert engine.describe_session(v.id)["consumers"]["0"]["producer"] is None


def test_own_track_is_never_forwarded_back(engine):
    peer_a, a = publish(engine)
    own = engine.describe_session(a.id)["producers"]["1"]["id"]
    engine.update_session(a.id, peer_a.offer(
        [("0", "audio", "sendonly"), ("1", "video", "sendonly"), ("2", "video", "recvonly")]), {"2": own})
    assert engine.describe_session(a.id)["consumers"]["2"]["producer"] is None


def test_ice_restart_and_new_fingerprint_are_refused_without_changes(engine):
    peer_a, a = publish(engine)
    before = engine.describe_session(a.id)
    restart = OfferPeer(ice_ufrag="other", ssrcs=peer_a.ssrcs)
    with pytest.raises(sdp.SdpError, match="ICE restart"):
        engine.update_session(a.id, restart.offer([("0", "audio", "sendonly"), ("1", "video", "inactive")]), {})
    refingered = OfferPeer(ice_ufrag=peer_a.ice_ufrag, fingerprint=":".join(["CD"] * 32), ssrcs=peer_a.ssrcs)
    with pytest.raises(sdp.SdpError, match="fingerprint"):
        engine.update_session(a.id, refingered.offer([("0", "audio", "sendonly"), ("1", "video", "inactive")]), {})
    assert engine.describe_session(a.id) == before


def test_update_errors(engine):
    with pytest.raises(KeyError):
        engine.update_session("missing", OfferPeer().offer([("0", "audio", "sendonly")]), {})
    viewer = OfferPeer()
    whep = engine.create_session("r", "subscribe", viewer.offer([("0", "audio", "recvonly")]))
    with pytest.raises(sdp.SdpError, match="meeting"):
        engine.update_session(whep.id, viewer.offer([("0", "audio", "recvonly")]), {})
    peer = OfferPeer()
    with pytest.raises(sdp.SdpError, match="send or receive"):
        engine.create_session("r", "meeting", peer.offer([("0", "audio", "inactive")]))
    with pytest.raises(sdp.SdpError, match="mid"):
        engine.create_session("r", "meeting", peer.offer([("0", "audio", "sendonly")]).replace("a=mid:0\r\n", ""))


def test_all_sections_inactive_is_a_valid_update(engine):
    peer_a, a = publish(engine)
    engine.update_session(a.id, peer_a.offer([("0", "audio", "inactive"), ("1", "video", "inactive")]), {})
    assert engine.describe_session(a.id)["producers"] == {}
    assert engine.has_session(a.id)
    # and a track can be published again in a new section
    engine.update_session(a.id, peer_a.offer(
        [("0", "audio", "inactive"), ("1", "video", "inactive"), ("2", "video", "sendonly")]), {})
    assert list(engine.describe_session(a.id)["producers"]) == ["2"]


def test_closing_a_meeting_session_unpublishes_its_tracks(engine):
    _, a = publish(engine)
    engine.events.clear()
    engine.close_session(a.id)
    assert [type(e) for e in engine.events] == [TrackUnpublished, TrackUnpublished, SessionClosed]
    assert engine.events[-1].reason is CloseReason.CLIENT
    assert engine.snapshot()["producers"] == 0 and engine.rooms == {}


# -- a refused offer changes nothing, on either data path -------------------------------------


def with_codec_changed(offer: str, mid: str) -> str:
    """``offer`` with the video section ``mid`` offering VP9 instead of VP8 (another codec)."""
    head, *sections = offer.split("m=")
    out = []
    for section in sections:
        if f"a=mid:{mid}\r\n" in section:
            section = (section.replace("SAVPF 96 97", "SAVPF 98 99").replace("a=rtpmap:96 VP8/", "a=rtpmap:98 VP9/")
                       .replace("a=rtcp-fb:96 ", "a=rtcp-fb:98 ").replace("a=rtpmap:97 rtx/", "a=rtpmap:99 rtx/")
                       .replace("a=fmtp:97 apt=96", "a=fmtp:99 apt=98"))
            assert "VP8" not in section
        out.append(section)
    return "m=".join([head] + out)


def plane_objects(engine) -> tuple[list[int], list[int]]:
    """(streams, subscriptions): the plane ids the forwarding plane has, asked through
    the interface (an unknown id is a KeyError) for every id the engine gave out."""
    plane = engine.plane
    streams, subs = [], []
    for i in range(1, next(engine._plane_ids)):
        for table, ask in ((streams, plane.stream_stats), (subs, plane.subscription_stats)):
            try:
                ask(i)
            except KeyError:
                continue
            table.append(i)
    return streams, subs


def plane_ssrcs(engine, transport) -> list[int]:
    """The SSRCs the plane receives from this transport (its producers' streams)."""
    streams, _ = plane_objects(engine)
    return sorted(p.ssrc for p in transport.producers if p.plane_id in streams)


def engine_state(engine) -> dict:
    """Everything an offer could change: sessions, rooms, counts, the transports' tables
    and what the forwarding plane has (its streams and subscriptions; on the C plane
    its peers in the address table too)."""
    transports = engine.transports.values()
    return {
        "sessions": {t.id: engine.describe_session(t.id) for t in transports},
        "rooms": {name: (list(room.producers), sorted(c.id for c in room.consumers))
                  for name, room in engine.rooms.items()},
        "totals": dict(engine.track_totals),
        "transports": {t.id: (t.sdp_version, t.mid_ext_id, sorted(t.producers_by_ssrc), sorted(t.producers_by_mid),
                              sorted(t.consumers_by_ssrc)) for t in transports},
        "peers": engine.plane.datapath.peers if engine.plane.name == "c" else None,
        "plane": plane_objects(engine),
        "streams": {t.id: plane_ssrcs(engine, t) for t in transports},
    }


def connect(engine, info, port: int):
    """As if ICE selected an address: on the C path the peer enters the address table."""
    transport = engine.transports[info.id]
    transport.addr = ("127.0.0.1", port)
    engine.address_changed(transport, None, transport.addr)
    return transport


AV_NEW_VIDEO_BEFORE_1 = [("0", "audio", "sendonly"), ("2", "video", "sendonly"), ("1", "video", "sendonly")]
AV_NEW_VIDEO = [("0", "audio", "sendonly"), ("1", "video", "sendonly"), ("2", "video", "sendonly")]


def test_refused_renegotiation_leaves_nothing_and_the_retry_publishes(engine, datapath_mode):
    """The issue's case: mids 0, a new sendonly video 2, then 1 with its codec changed is
    refused (bad_sdp) after mid 2 was negotiated; the C stream of mid 2 must not stay
    registered, or the correct retry fails with "SSRC ... already has a stream"."""
    peer, info = publish(engine)
    viewer_peer, viewer = publish(engine)
    connect(engine, info, 5000)
    connect(engine, viewer, 5001)
    engine.events.clear()
    before = engine_state(engine)
    assert before["peers"] == (2 if datapath_mode == "c" else None)
    with pytest.raises(sdp.SdpError, match="cannot change codec"):
        engine.update_session(info.id, with_codec_changed(peer.offer(AV_NEW_VIDEO_BEFORE_1), "1"), {})
    assert engine_state(engine) == before
    assert engine.events == []

    answer = engine.update_session(info.id, peer.offer(AV_NEW_VIDEO), {})
    assert [s["direction"] for s in sections_of(answer)] == ["recvonly"] * 3
    producers = engine.describe_session(info.id)["producers"]
    assert list(producers) == ["0", "1", "2"]
    transport = engine.transports[info.id]
    assert plane_ssrcs(engine, transport) == sorted(peer.ssrcs.values())  # the new track is received
    if datapath_mode == "c":  # the C peer has exactly these streams (the refused offer left none)
        assert sorted(s.ssrc for s in engine.plane._peers[transport.plane_id].streams) == sorted(peer.ssrcs.values())
    assert transport.producers_by_ssrc[peer.ssrcs["2"]].mid == "2"
    # and another participant can receive it
    v = engine.update_session(viewer.id, viewer_peer.offer(
        [("0", "audio", "sendonly"), ("1", "video", "sendonly"), ("2", "video", "recvonly")]),
        {"2": producers["2"]["id"]})
    assert sdp.parse_sdp(v).media[2].ssrcs
    assert engine.describe_session(viewer.id)["consumers"]["2"]["producer"] == producers["2"]["id"]


def test_two_sections_with_one_ssrc_are_refused_before_anything_is_built(engine, monkeypatch):
    """A refused create leaves nothing: no session, no room, and the peer it built (a C
    Peer on the C path) has no stream and is in no table of the data path."""
    import sfu.engine

    built = []

    class Spy(sfu.engine.Transport):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(sfu.engine, "Transport", Spy)
    before = engine_state(engine)
    same = OfferPeer(ssrcs={"0": 4242, "1": 4242})
    with pytest.raises(sdp.SdpError, match="SSRC 4242 is already sent in mid 0"):
        engine.create_session("r", "meeting", same.offer([("0", "video", "sendonly"), ("1", "video", "sendonly")]))
    # a refusal that comes after the transport was built: no codec the config allows
    engine.config.audio_codecs = ["PCMU"]
    with pytest.raises(sdp.SdpError, match="no audio or video section"):
        engine.create_session("r", "meeting", OfferPeer().offer([("0", "audio", "sendonly")]))
    assert len(built) == 2
    assert plane_objects(engine) == ([], [])  # the plane got nothing of them
    if engine.plane.name == "c":
        assert engine.plane.datapath.peers == 0
    assert engine_state(engine) == before and engine.rooms == {} and engine.pending == {}

    # in a renegotiation: a new section may not take the SSRC of a kept track, but may
    # take that of a track the same offer unpublishes
    engine.config.audio_codecs = Config().audio_codecs
    peer, info = publish(engine)
    connect(engine, info, 5000)
    before = engine_state(engine)
    peer.ssrcs["2"] = peer.ssrcs["1"]
    with pytest.raises(sdp.SdpError, match=f"SSRC {peer.ssrcs['1']} is already sent in mid 1"):
        engine.update_session(info.id, peer.offer(AV_NEW_VIDEO), {})
    assert engine_state(engine) == before
    engine.update_session(info.id, peer.offer(
        [("0", "audio", "sendonly"), ("1", "video", "inactive"), ("2", "video", "sendonly")]), {})
    transport = engine.transports[info.id]
    assert transport.producers_by_ssrc[peer.ssrcs["2"]].mid == "2"
    assert plane_ssrcs(engine, transport) == sorted({peer.ssrcs["0"], peer.ssrcs["2"]})
    assert len(plane_objects(engine)[0]) == 2


def test_an_update_refused_by_a_limit_changes_nothing(engine):
    engine.config.max_session_tracks = 3
    peer, info = publish(engine)
    _, other = publish(engine)
    connect(engine, info, 5000)
    other_video = engine.describe_session(other.id)["producers"]["1"]["id"]
    before = engine_state(engine)
    engine.events.clear()
    with pytest.raises(LimitExceeded) as refused:
        engine.update_session(info.id, peer.offer(AV_NEW_VIDEO + [("3", "video", "recvonly")]), {"3": other_video})
    assert refused.value.code == "too_many_tracks"
    assert engine_state(engine) == before and engine.events == []
    # within the limit it goes through
    engine.update_session(info.id, peer.offer(AV_NEW_VIDEO), {})
    assert list(engine.describe_session(info.id)["producers"]) == ["0", "1", "2"]


def test_after_a_refused_renegotiation_the_new_track_reaches_a_viewer(datapath_mode):
    """The same case driven with packets (tests/test_datapath.Harness): after the retry,
    RTP of the new track (mid 2) is forwarded to a participant who subscribed to it."""
    from .test_datapath import PROFILES, Harness, rtp

    h = Harness(datapath_mode, PROFILES[0])
    engine = h.engine
    peer = OfferPeer()
    info = engine.create_session("r", "meeting", peer.offer([("0", "audio", "sendonly"), ("1", "video", "sendonly")]))
    pub = h.connect("pub", engine.transports[info.id], 5000)
    with pytest.raises(sdp.SdpError, match="cannot change codec"):
        engine.update_session(info.id, with_codec_changed(peer.offer(AV_NEW_VIDEO_BEFORE_1), "1"), {})
    engine.update_session(info.id, peer.offer(AV_NEW_VIDEO), {})
    new_track = pub.producers_by_mid["2"].id
    viewer = OfferPeer()
    v = engine.create_session("r", "meeting", viewer.offer([("0", "video", "recvonly")]), {"0": new_track})
    h.connect("viewer", engine.transports[v.id], 5001)
    h.out.clear()
    for seq in range(10):
        h.send_rtp("pub", rtp(96, 100 + seq, 3000 * seq, peer.ssrcs["2"], size=300))
    to_viewer = [h.clients["viewer"].unprotect(data) for data, addr in h.out
                 if addr == h.addrs["viewer"] and not 192 <= data[1] <= 223]
    assert len(to_viewer) == 10
    consumer = engine.transports[v.id].consumers[0]
    assert {int.from_bytes(p[8:12], "big") for p in to_viewer} == {consumer.ssrc}
    assert engine.drops["unknown_ssrc"] == 0


def test_a_renegotiated_video_subscription_waits_for_the_subscribers_report(datapath_mode):
    """A video SSRC new to a connected client is held until the client's receiver of
    that section (the offer's a=ssrc) reports it: the plane sends nothing of it, the
    transport sends padding-only probes (RTX payload type, numbered just before the
    plane's numbering); once confirmed the rest of the probes go, then media from a
    keyframe on, gapless."""
    from .test_datapath import PROFILES, Harness, rtp

    h = Harness(datapath_mode, PROFILES[0])
    engine = h.engine
    publisher = OfferPeer()
    info = engine.create_session("r", "meeting", publisher.offer([("0", "video", "sendonly")]))
    h.connect("pub", engine.transports[info.id], 5000)
    track = engine.describe_session(info.id)["producers"]["0"]["id"]
    viewer = OfferPeer()
    v = engine.create_session("r", "meeting", viewer.offer([("0", "audio", "recvonly")]), {})
    transport = h.connect("viewer", engine.transports[v.id], 5001)
    offer = viewer.offer([("0", "audio", "recvonly"), ("1", "video", "recvonly")])
    offer = offer.replace("a=mid:1\r\n", "a=mid:1\r\na=ssrc:4242 cname:test\r\n")  # its receiver's reports
    engine.update_session(v.id, offer, {"1": track})
    consumer = h.video_consumer(transport)
    assert not consumer.confirmed and consumer.paused and consumer.report_ssrc == 4242
    h.out.clear()
    seq = iter(range(100, 200))

    def media(count: int) -> None:
        for _ in range(count):
            n = next(seq)
            h.send_rtp("pub", rtp(96, n, 3000 * n, publisher.ssrcs["0"], size=300))

    def to_viewer() -> list[bytes]:
        out = [h.clients["viewer"].unprotect(d) for d, a in h.out
               if a == h.addrs["viewer"] and not 192 <= d[1] <= 223]
        h.out.clear()
        return out

    media(5)
    h.advance(0.5)
    media(5)
    probes = to_viewer()
    assert 3 <= len(probes) <= 6, len(probes)
    first = consumer.initial_seq - 64
    for i, packet in enumerate(probes):  # V=2 P=1, RTX payload type, the consumer's SSRC, padding only
        assert packet[:2] == bytes([0xA0, 97]) and len(packet) == 12 + 32 and packet[-1] == 32
        assert (int.from_bytes(packet[2:4], "big"), int.from_bytes(packet[4:8], "big"),
                int.from_bytes(packet[8:12], "big")) == (first + i, consumer.initial_ts, consumer.ssrc)
    block = rtcp.ReportBlock(ssrc=consumer.ssrc, fraction_lost=0, packets_lost=0, highest_sequence=first,
                             jitter=0, lsr=0, dlsr=0)
    h.send_rtcp("viewer", [rtcp.ReceiverReport(ssrc=1111, reports=[block])])  # another receiver of it
    assert not consumer.confirmed and to_viewer() == []
    h.send_rtcp("viewer", [rtcp.ReceiverReport(ssrc=4242, reports=[block])])
    assert consumer.confirmed and not consumer.paused and engine.stats["consumers_confirmed"] == 1
    rest = to_viewer()
    assert [int.from_bytes(p[2:4], "big") for p in probes + rest] == list(range(first, consumer.initial_seq))
    media(3)
    forwarded = to_viewer()
    assert [(p[1] & 0x7F, int.from_bytes(p[2:4], "big")) for p in forwarded] == \
        [(96, consumer.initial_seq + i) for i in range(3)]
    assert {int.from_bytes(p[4:8], "big") for p in forwarded} == {consumer.initial_ts + 3000 * i for i in range(3)}


@pytest.mark.parametrize("bad", ["4617778433 80971137", "80971137 4294967296"])
def test_an_out_of_range_ssrc_group_is_refused_before_anything_is_built(engine, bad):
    """Found by the SDP fuzzer: an a=ssrc-group SSRC over 32 bits passed the decision and
    failed at the commit, half committed. The parser refuses it; the engine is unchanged."""
    text = OfferPeer().offer([("0", "video", "sendonly")])
    text = text.replace("a=mid:0\r\n", f"a=mid:0\r\na=ssrc-group:FID {bad}\r\n", 1)
    with pytest.raises(sdp.SdpError, match="malformed a=ssrc-group"):
        engine.create_session("r", "meeting", text, {})
    assert not engine.transports and not engine.rooms
