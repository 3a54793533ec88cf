"""Meeting sessions in the media engine: one transport that publishes and
receives, recvonly sections bound to explicit producers, renegotiation on the
same transport (RFC 9429 §5.2.2, RFC 3264 §8). No sockets: the engine is not
started, only negotiated with."""

from __future__ import annotations

import pytest

from sfu import sdp
from sfu.config import Config
from sfu.engine import MediaEngine

from .sdp_offers import OfferPeer


@pytest.fixture
def engine():
    eng = MediaEngine(Config(rtc_port=40000), pure_python=True)
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
    published = [e for e in engine.events if e["type"] == "track_published"]
    assert [e["producer"] for e in published] == [desc["producers"]["0"]["id"], desc["producers"]["1"]["id"]]


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
    assert [e["type"] for e in engine.events].count("track_published") == 4
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
    gone = [e for e in engine.events if e["type"] == "track_unpublished"]
    assert [(e["producer"], e["reason"]) for e in gone] == [(a_video, "unpublished")]
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
    assert producer_a.consumers == ()
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
    assert [e["type"] for e in engine.events] == ["track_unpublished", "track_unpublished", "session_closed"]
    assert engine.snapshot()["producers"] == 0 and engine.rooms == {}
