"""Answers to subscribers' NACKs are bounded (issue 9, "NACK amplification").

A subscriber that NACKs everything the packet cache holds, many times a
second, used to get every packet back each time (~2,000x by bytes). Now
(sfu.plane_py_state.NackBudget on the pure plane, Subscription.retransmit on the C plane):

- a parsed NACK expands at most rtcp.NACK_MAX_SEQS numbers ("nack_overflow");
- a number is answered at most once per round trip ("nack_repeat");
- retransmitted bytes come from a per-subscriber token bucket refilled with a
  share of the stream's received bytes ("nack_budget").

As tests/test_datapath.py does, one scripted session runs through the C plane
and the pure-Python reference: the datagrams sent must be byte-identical and
the counters equal, so the C policy is the Python policy.
"""

from __future__ import annotations

import struct

import pylibsrtp
import pytest

from sfu import rtcp
from sfu.plane_py_state import NackBudget
from sfu.router import (
    NACK_BUDGET_BURST, NACK_BUDGET_FLOOR, NACK_BUDGET_FRACTION, NACK_RTT_DEFAULT, NACK_RTT_MAX, NACK_RTT_MIN,
)
from tests.test_datapath import PROFILES, Harness, offer, rtp

pytestmark = pytest.mark.timeout(60)

RTX_PT = 97
COUNTED = ("nack_repeat", "nack_budget", "nack_overflow", "srtp_protect", "send_buffer_full")


def with_rtx(text: str) -> str:
    """A viewer's offer that also accepts RTX (RFC 4588) for VP8."""
    text = text.replace("m=video 9 UDP/TLS/RTP/SAVPF 96", f"m=video 9 UDP/TLS/RTP/SAVPF 96 {RTX_PT}")
    return text.replace("a=rtcp-fb:96 ccm fir", f"a=rtcp-fb:96 ccm fir\r\na=rtpmap:{RTX_PT} rtx/90000\r\n"
                                                  f"a=fmtp:{RTX_PT} apt=96")


def hostile_nack(sender: int, media: int, start: int, entries: int = 290) -> bytes:
    """~1.2 kB asking for 17 packets per entry (the attack of issue 9)."""
    fci = b"".join(struct.pack("!HH", (start + 17 * i) & 0xFFFF, 0xFFFF) for i in range(entries))
    return struct.pack("!BBHII", 0x81, 205, 2 + entries, sender, media) + fci


def script(h: Harness) -> dict:
    pub = h.join("pub", "room", "publish", 6000, audio_ssrc=1111, video_ssrc=2222)
    info = h.engine.create_session("room", "subscribe", with_rtx(offer("subscribe")))
    v1 = h.engine.transports[info.id]
    h.connect("v1", v1, 6001)
    v2 = h.join("v2", "room", "subscribe", 6002)
    h.advance(0.04)
    c1 = h.video_consumer(v1)
    c2 = h.video_consumer(v2)
    assert c1.rtx_ssrc is not None and c1.codec.rtx_payload_type == RTX_PT and c2.rtx_ssrc is None

    # 2 s of video, 1000-byte packets every 10 ms (~100 kB/s), one with padding
    seq, ts = 1000, 0
    for k in range(200):
        packet = rtp(96, seq, ts, 2222, size=1000, marker=k % 3 == 2)
        if k == 150:
            packet = bytearray(packet)
            packet[0] |= 0x20
            packet[-1] = 40  # 40 bytes of padding: RTX strips them (RFC 4588 §4)
            packet = bytes(packet)
        h.send_rtp("pub", packet)
        seq += 1
        ts += 3000 * (k % 3 == 2)
        h.advance(0.01, tick=k % 2 == 1)
    out = lambda c, s: (s + c.stats().seq_delta) & 0xFFFF  # noqa: E731

    # v1 (RTX): a legitimate NACK of 5 packets, the same again at once (within a round trip),
    # then again after the window: answered, not answered, answered
    lost = [out(c1, s) for s in (1100, 1101, 1102, 1150, 1199)]
    h.send_rtcp("v1", [rtcp.Nack(sender_ssrc=41, media_ssrc=c1.ssrc, lost=lost)])
    h.send_rtcp("v1", [rtcp.Nack(sender_ssrc=41, media_ssrc=c1.ssrc, lost=lost + lost)])
    h.advance(NACK_RTT_DEFAULT + 0.02)
    h.send_rtcp("v1", [rtcp.Nack(sender_ssrc=41, media_ssrc=c1.ssrc, lost=lost[:2])])
    # a number never received (cache miss) and one the publisher's numbering never had
    h.send_rtcp("v1", [rtcp.Nack(sender_ssrc=41, media_ssrc=c1.ssrc, lost=[out(c1, 5000)])])

    # v2 (no RTX): a storm of hostile NACKs, 100 per second for 1 s while the stream goes on
    for k in range(100):
        h.feed(h.clients["v2"].protect_rtcp(hostile_nack(42, c2.ssrc, out(c2, 1000 + (k * 7) % 200))),
               h.addrs["v2"])
        h.send_rtp("pub", rtp(96, seq, ts, 2222, size=1000))
        seq += 1
        ts += 3000 * (k % 3 == 2)
        h.advance(0.01, tick=k % 2 == 1)
    h.advance(0.5)
    return {"c1": c1, "c2": c2, "v1": v1, "v2": v2, "pub": pub}


def sent_to(h: Harness, name: str) -> list[bytes]:
    """The RTP the SFU sent to a viewer, decrypted (retransmissions without RTX repeat an
    index, which the client's replay check refuses: those come back from a second session)."""
    return [data for data, addr in h.out if addr == h.addrs[name] and not 192 <= data[1] <= 223]


@pytest.mark.parametrize("profile", PROFILES)
def test_nack_policy_is_the_same_on_both_paths(profile):
    runs = {}
    for mode in ("c", "pure"):
        h = Harness(mode, profile)
        facts = script(h)
        h.engine._fold_counters()
        runs[mode] = (h, facts)
    fast = runs["c"][0]
    for mode in ("pure",):
        ref = runs[mode][0]
        assert len(fast.out) == len(ref.out), mode
        for i, (a, b) in enumerate(zip(fast.out, ref.out)):
            assert a == b, f"datagram {i} differs from the {mode} path"
        for reason in COUNTED:
            assert fast.engine.drops[reason] == ref.engine.drops[reason], (mode, reason)
        for name in ("retransmissions", "nack_misses", "nacks_received", "rtp_forwarded"):
            assert fast.engine.stats[name] == ref.engine.stats[name], (mode, name)
        for c in ("c1", "c2"):
            assert runs["c"][1][c].stats().retransmissions == runs[mode][1][c].stats().retransmissions, (mode, c)
    assert runs["c"][1]["c1"].stats().rtx_seq == runs["pure"][1]["c1"].stats().rtx_seq


def test_repeats_are_answered_once_per_round_trip_with_rtx():
    h = Harness("c", PROFILES[1])
    facts = script(h)
    h.engine._fold_counters()
    c1 = facts["c1"]
    e = h.engine
    # 5 answered, 10 repeats refused, 2 answered after the window, 1 miss
    assert c1.stats().retransmissions == 7
    assert e.stats["nack_misses"] >= 1
    # the RTX packets: PT 97 on the RTX SSRC, OSN = the viewer's original number, same payload
    client = h.clients["v1"]
    rtx, media = {}, {}
    for data in sent_to(h, "v1"):
        plain = client.unprotect(data)
        pt, ssrc = plain[1] & 0x7F, struct.unpack_from("!I", plain, 8)[0]
        if pt == RTX_PT:
            assert ssrc == c1.rtx_ssrc
            osn = struct.unpack_from("!H", plain, 12)[0]
            rtx.setdefault(osn, []).append(plain)
        elif pt == 96:
            media[struct.unpack_from("!H", plain, 2)[0]] = plain
    assert sorted(len(v) for v in rtx.values()) == [1, 1, 1, 2, 2]
    for osn, copies in rtx.items():
        original = media[osn]
        payload_end = len(original) - (original[-1] if original[0] & 0x20 else 0)
        for copy in copies:
            assert copy[0] & 0x20 == 0 and copy[1] & 0x80 == original[1] & 0x80
            assert copy[4:8] == original[4:8] and copy[14:] == original[12:payload_end]
    rtx_seqs = sorted(struct.unpack_from("!H", p, 2)[0] for v in rtx.values() for p in v)
    assert len(set(rtx_seqs)) == 7


def test_a_nack_storm_costs_the_attacker_more_than_the_server():
    h = Harness("c", PROFILES[0])
    facts = script(h)
    h.engine._fold_counters()
    e = h.engine
    c2 = facts["c2"]
    retransmissions = c2.stats().retransmissions
    # 100 hostile NACKs, each 290 entries x 17 = 4,930 numbers: 256 parsed, the rest counted
    assert e.drops["nack_overflow"] == 100 * (4930 - rtcp.NACK_MAX_SEQS)
    # what v2 got back is bounded by the budget: the burst, a quarter of what the stream
    # received meanwhile, and the floor (each answered packet is ~1,000 bytes)
    answered_bytes = retransmissions * 1000
    received = 100 * 1000 + 200 * 1000
    bound = NACK_BUDGET_BURST + NACK_BUDGET_FRACTION * received + NACK_BUDGET_FLOOR * 3.5
    assert 0 < answered_bytes <= bound, (retransmissions, bound)
    assert e.drops["nack_budget"] > 0 and e.drops["nack_repeat"] > 0
    # bytes: the attacker sent 100 SRTCP datagrams of ~1.2 kB; the server sent back less
    nack_bytes = 100 * (len(hostile_nack(42, c2.ssrc, 0)) + 14)  # + SRTCP index and tag
    rtx_bytes = sum(len(d) for d in sent_to(h, "v2")) - 300 * (1000 + 16)
    assert rtx_bytes < nack_bytes, (rtx_bytes, nack_bytes)


def test_budget_arithmetic():
    b = NackBudget()
    b.refill(10_000, 1.0)
    assert b.tokens == NACK_BUDGET_BURST  # a full bucket on the first NACK
    assert b.spend(30_000) and not b.spend(5_000) and b.spend(2_768) and not b.spend(1)
    b.refill(110_000, 2.0)  # 100 kB received and 1 s passed since
    assert b.tokens == pytest.approx(NACK_BUDGET_FRACTION * 100_000 + NACK_BUDGET_FLOOR)
    b.refill(5_000, 2.0)  # another producer (fewer bytes): no refill, no negative one
    assert b.tokens == pytest.approx(NACK_BUDGET_FRACTION * 100_000 + NACK_BUDGET_FLOOR)
    b.refill(10_000_000, 9.0)
    assert b.tokens == NACK_BUDGET_BURST
    assert not b.repeated(7, 0.0, 1.0)
    b.answered(7, 3.0)
    assert b.repeated(7, 3.05, 0.1) and not b.repeated(7, 3.1, 0.1) and not b.repeated(7 + 1024, 3.05, 0.1)
    b.answered(7 + 1024, 3.06)  # the same slot: the older number is forgotten
    assert not b.repeated(7, 3.07, 0.1)


def test_window_follows_the_rtt_within_bounds():
    from sfu.router import Consumer
    from sfu.sdp import Codec

    class T:
        id = "t"
        cname = "c"

    c = Consumer(T(), "video", "1", Codec(96, "VP8", 90000, None), {})
    assert c.nack_window() == NACK_RTT_DEFAULT
    c.rtt = 0.0  # a subscriber's reports can claim anything
    assert c.nack_window() == NACK_RTT_MIN
    c.rtt = 0.2
    assert c.nack_window() == 0.2
    c.rtt = 30.0
    assert c.nack_window() == NACK_RTT_MAX


def test_parse_caps_the_numbers_of_a_nack():
    nack = rtcp.Nack.parse(hostile_nack(1, 2, 65530))
    assert len(nack.lost) == rtcp.NACK_MAX_SEQS and nack.ignored == 290 * 17 - rtcp.NACK_MAX_SEQS
    assert nack.lost[:3] == [65530, 65531, 65532] and nack.lost[6] == 0  # wraps
    small = rtcp.Nack.parse(bytes(rtcp.Nack(1, 2, [1, 2, 3])))
    assert small.lost == [1, 2, 3] and small.ignored == 0
    assert pylibsrtp  # (imported for the SRTP sessions of the harness)


def test_capped_parse_matches_a_full_expansion():
    import random

    rng = random.Random(4585)
    for _ in range(2000):
        k = rng.randrange(0, 300)
        entries = [(rng.randrange(65536), rng.choice([0, 0xFFFF, rng.randrange(65536)])) for _ in range(k)]
        data = struct.pack("!BBHII", 0x81, 205, 2 + k, 1, 2) + b"".join(struct.pack("!HH", *e) for e in entries)
        full = []
        for pid, blp in entries:
            full.append(pid)
            full.extend((pid + bit + 1) & 0xFFFF for bit in range(16) if blp >> bit & 1)
        nack = rtcp.Nack.parse(data)
        assert nack.lost == full[:rtcp.NACK_MAX_SEQS]
        assert nack.ignored == max(0, len(full) - rtcp.NACK_MAX_SEQS)
