"""The engine's transport timers: work proportional to what is due, same output.

MediaEngine.tick runs Transport.tick only for the transports whose
``next_timer`` has come or that ``schedule`` woke up (NACK log events, a
throttled keyframe request, DTLS, connection). tests/test_datapath.py checks
the output byte for byte on a recorded session; these tests check that idle
transports cost nothing between their deadlines and that each timer still
fires on the tick it did when every transport ticked every time.
"""

from __future__ import annotations

import pytest

from sfu import rtcp
from sfu.router import NACK_RETRY_INTERVAL
from sfu.transport import Transport
from tests.conftest import DATAPATHS
from tests.test_datapath import PROFILES, Harness, rtp

MODES = DATAPATHS  # every test on both data paths


@pytest.fixture
def ticks(monkeypatch):
    """Transport.tick calls, by transport id."""
    counts: dict[str, int] = {}
    original = Transport.tick

    def counting(self, now):
        counts[self.id] = counts.get(self.id, 0) + 1
        return original(self, now)

    monkeypatch.setattr(Transport, "tick", counting)
    return counts


def rtcp_sent_to(h: Harness, name: str) -> list:
    """The RTCP packets the SFU sent to a participant (each datagram decrypted once)."""
    addr = h.addrs[name]
    plain = h.__dict__.setdefault("rtcp_plain", {})
    packets = []
    for data, to in h.out:
        if to == addr and len(data) > 1 and 192 <= data[1] <= 223:  # RFC 5761 §4
            data = bytes(data)
            if data not in plain:
                plain[data] = rtcp.parse_compound(h.clients[name].unprotect_rtcp(data))
            packets += plain[data]
    return packets


@pytest.mark.parametrize("mode", MODES)
def test_idle_transports_tick_once_per_report_not_every_tick(mode, ticks):
    h = Harness(mode, PROFILES[0])
    h.join("pub", "room", "publish", 5000, audio_ssrc=1111, video_ssrc=2222)
    for i in range(20):
        h.join(f"v{i}", "room", "subscribe", 5001 + i)
    h.send_rtp("pub", rtp(96, 1, 0, 2222))
    h.advance(0.1)
    ticks.clear()
    h.advance(3.0)  # 150 engine ticks
    # each transport: about one tick a second (its reports; the publisher also a
    # throttled keyframe request), not 150
    assert len(ticks) == 21
    assert all(n <= 6 for n in ticks.values()), ticks
    assert sum(ticks.values()) <= 21 * 4
    # and the reports still go out once a second
    assert sum(isinstance(p, rtcp.ReceiverReport) for p in rtcp_sent_to(h, "pub")) >= 3


@pytest.mark.parametrize("mode", MODES)
def test_a_gap_is_nacked_on_the_next_tick_and_retried(mode, ticks):
    h = Harness(mode, PROFILES[0])
    pub = h.join("pub", "room", "publish", 5000, audio_ssrc=1111, video_ssrc=2222)
    h.join("v", "room", "subscribe", 5001)
    h.advance(0.5)
    for seq in (100, 101, 103):  # 102 is lost
        h.send_rtp("pub", rtp(96, seq, 3000 * seq, 2222, size=500))
    h.out.clear()
    ticks.clear()
    h.advance(0.02)  # the next engine tick
    assert ticks.get(pub.id) == 1
    nacks = [p for p in rtcp_sent_to(h, "pub") if isinstance(p, rtcp.Nack)]
    assert [n.lost for n in nacks] == [[102]]
    h.advance(NACK_RETRY_INTERVAL + 0.02)  # polled on every tick while missing: retried
    nacks = [p for p in rtcp_sent_to(h, "pub") if isinstance(p, rtcp.Nack)]
    assert [n.lost for n in nacks] == [[102], [102]]
    # recovered: the publisher's transport goes back to one tick a second
    h.send_rtp("pub", rtp(96, 102, 3000 * 102, 2222, size=500))
    h.advance(0.04)
    ticks.clear()
    h.advance(2.0)
    assert ticks.get(pub.id, 0) <= 3


@pytest.mark.parametrize("mode", MODES)
def test_a_throttled_keyframe_request_goes_out_when_the_throttle_ends(mode):
    h = Harness(mode, PROFILES[0])
    h.join("pub", "room", "publish", 5000, audio_ssrc=1111, video_ssrc=2222)
    v = h.join("v", "room", "subscribe", 5001)
    h.send_rtp("pub", rtp(96, 1, 0, 2222))
    h.advance(1.1)
    throttle = h.engine.config.keyframe_interval_min
    h.send_rtcp("v", [rtcp.Pli(sender_ssrc=1, media_ssrc=h.video_consumer(v).ssrc)])
    h.send_rtcp("v", [rtcp.Pli(sender_ssrc=1, media_ssrc=h.video_consumer(v).ssrc)])  # throttled
    sent_at = h.now
    plis = lambda: [p for p in rtcp_sent_to(h, "pub") if isinstance(p, rtcp.Pli)]  # noqa: E731
    first = len(plis())
    h.advance(throttle - 0.05)
    assert len(plis()) == first
    h.advance(0.1)  # the tick after the throttle ends
    assert len(plis()) == first + 1
    assert h.now - sent_at < throttle + 0.1


@pytest.mark.parametrize("mode", MODES)
def test_consent_expiry_closes_on_time(mode):
    h = Harness(mode, PROFILES[0])
    h.engine.config.consent_timeout = 2.0  # read by each new transport
    v = h.join("v", "room", "subscribe", 5001)
    v.ice.last_consent = h.now
    h.advance(1.96)
    assert v.state == "connected"
    h.advance(0.06)
    assert v.state == "closed" and h.engine.stats["consent_timeouts"] == 1


@pytest.mark.parametrize("mode", MODES)
def test_stale_timer_entries_never_tick_twice(mode, ticks):
    h = Harness(mode, PROFILES[0])
    v = h.join("v", "room", "subscribe", 5001)
    for _ in range(5):  # many wake-ups for the same tick
        h.engine.schedule(v, h.now)
    h.advance(0.02)
    assert ticks[v.id] == 1


@pytest.mark.parametrize("mode", MODES)
def test_a_track_added_by_renegotiation_is_nacked_like_the_first(mode):
    """A producer published by an update (committed after the answer) gets the same
    timers as one of the first offer: a gap in it is NACKed on the next tick."""
    from tests.sdp_offers import OfferPeer

    h = Harness(mode, PROFILES[0])
    peer = OfferPeer()
    info = h.engine.create_session("room", "meeting", peer.offer([("0", "audio", "sendonly")]))
    pub = h.connect("pub", h.engine.transports[info.id], 5000)
    h.engine.update_session(info.id, peer.offer([("0", "audio", "sendonly"), ("1", "video", "sendonly")]), {})
    h.advance(0.5)
    ssrc = peer.ssrcs["1"]
    for seq in (100, 101, 104):  # 102 and 103 are lost
        h.send_rtp("pub", rtp(96, seq, 3000 * seq, ssrc, size=500))
    h.out.clear()
    h.advance(0.02)
    nacks = [p for p in rtcp_sent_to(h, "pub") if isinstance(p, rtcp.Nack)]
    assert [(n.media_ssrc, n.lost) for n in nacks] == [(ssrc, [102, 103])]
    assert pub.producers_by_mid["1"].stats().packets == 3
