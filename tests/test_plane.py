"""The forwarding-plane interface (sfu.plane), one conformance suite for every plane.

Each scenario is a script that drives a plane through the interface only: real
SRTP (a publisher's SrtpPair protects what goes in, a subscriber's unprotects
what comes out), datagrams fed with ``feed`` at scripted times, commands with
plain ids. A script returns what it saw; the tests assert on it for each plane
("pure": sfu.plane_py.PythonPlane, "c": sfu.plane_c.CPlane), and the cross-plane
test runs every script on both planes and asserts the same captured bytes, the
same counters, statistics and NACK logs: the pure-Python plane is the oracle.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import random
import socket
import struct

import pylibsrtp
import pytest

from sfu.plane import CLEAR, GAP, RECOVERED
from sfu.plane_py import PythonPlane
from sfu.router import NACK_BUDGET_BURST
from sfu.rtp import CODEC_H264, CODEC_OTHER, CODEC_VP8, get_extension, parse_rtp_header
from sfu.srtp import PROFILES, SrtpPair

pytestmark = pytest.mark.timeout(120)

from sfu.plane_c import CPlane  # the C extension is built by `make install` (a missing one fails here)

PLANES = {"pure": PythonPlane, "c": CPlane}
KINDS = sorted(PLANES)

GCM = "SRTP_AEAD_AES_128_GCM"
CM = "SRTP_AES128_CM_SHA1_80"
KEY_LENGTH = {GCM: 28, CM: 30}
VP8_PT = 96
OUT_PT = 100
RTX_PT = 101
LEVEL_ID, MID_ID = 1, 9  # publisher's extension ids (audio level, MID)
OUT_LEVEL_ID = 3  # the subscriber's id for the audio level


def rtp(pt: int, seq: int, ts: int, ssrc: int, *, size: int = 200, payload: bytes = b"\x10\x00",
        extensions=(), padding: int = 0, marker: bool = False) -> bytes:
    """An RTP packet (RFC 3550 §5.1), RFC 8285 one-byte extension elements, ``padding``
    bytes of RTP padding; the payload starts with ``payload`` (default: a VP8 keyframe's
    descriptor S=1 PID=0 then P=0), then deterministic bytes up to ``size``."""
    header = bytearray(struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                                   ts & 0xFFFFFFFF, ssrc))
    if extensions:
        body = bytearray()
        for ext_id, data in extensions:
            body += bytes([(ext_id << 4) | (len(data) - 1)]) + data
        body += bytes(-len(body) % 4)
        header[0] |= 0x10
        header += struct.pack("!HH", 0xBEDE, len(body) // 4) + body
    fill = random.Random(seq * 7919 + ssrc).randbytes(max(0, size - len(header) - len(payload) - padding))
    body = bytes(payload) + fill
    if padding:
        header[0] |= 0x20
        body += bytes(padding - 1) + bytes([padding])
    return bytes(header) + body


def vp8(seq: int, ssrc: int, key: bool, size: int = 600) -> bytes:
    """A VP8 packet: the first of a keyframe (S=1 PID=0, P=0) or of an inter frame (P=1)."""
    return rtp(VP8_PT, seq, 3000 * (seq // 2), ssrc, size=size, payload=b"\x10\x00" if key else b"\x10\x01")


def keys(tag: str, profile: str) -> tuple[bytes, bytes]:
    n = KEY_LENGTH[profile]
    return hashlib.sha256(b"sfu-" + tag.encode()).digest()[:n], hashlib.sha256(b"client-" + tag.encode()).digest()[:n]


class Listener:
    """Records what the plane reports; ``learn(peer, ssrc, packet)`` decides unknown SSRCs."""

    def __init__(self) -> None:
        self.slow: list[tuple[bytes, tuple]] = []
        self.unknown: list[tuple[int, int, bytes]] = []
        self.keyframes: list[int] = []
        self.learn = None

    def slow_path(self, data: bytes, addr: tuple) -> None:
        self.slow.append((data, addr))

    def unknown_ssrc(self, peer: int, ssrc: int, packet: bytes) -> bool:
        self.unknown.append((peer, ssrc, packet))
        return bool(self.learn(peer, ssrc, packet)) if self.learn is not None else False

    def keyframe_needed(self, stream: int) -> None:
        self.keyframes.append(stream)


class World:
    """One plane (capture=True), its listener, and the SRTP sessions of the clients."""

    def __init__(self, kind: str, profile: str = CM) -> None:
        self.kind = kind
        self.profile = profile
        self.listener = Listener()
        self.plane = PLANES[kind](self.listener, capture=True)
        self.clients: dict[int, SrtpPair] = {}
        self.addrs: dict[int, tuple] = {}
        self.seen: dict[int, int] = {}  # peer -> captured datagrams already decrypted

    def peer(self, peer: int, port: int, *, keyed: bool = True) -> None:
        self.plane.add_peer(peer)
        self.addrs[peer] = ("127.0.0.1", port)
        self.plane.set_address(peer, self.addrs[peer])
        if keyed:
            self.key(peer)

    def key(self, peer: int) -> None:
        server, client = keys(f"{peer}", self.profile)
        self.plane.set_keys(peer, PROFILES[self.profile], server, client)
        self.clients[peer] = SrtpPair(self.profile, client, server)

    def send(self, peer: int, packet: bytes, now: float) -> None:
        self.plane.feed(self.clients[peer].protect(packet), self.addrs[peer], now)

    def raw(self, peer: int, data: bytes, now: float) -> None:
        self.plane.feed(data, self.addrs[peer], now)

    def received(self, peer: int) -> list[bytes]:
        """RTP the plane sent to ``peer`` since the last call, decrypted."""
        out = [d for d, a in self.plane.captured if a == self.addrs[peer]]
        new = out[self.seen.get(peer, 0):]
        self.seen[peer] = len(out)
        return [self.clients[peer].unprotect(d) for d in new]

    def counters(self) -> dict[str, int]:
        stats, drops = self.plane.take_counters()
        return {**stats, **drops}


def header(packet: bytes) -> tuple[int, bool, int, int, int, int]:
    return parse_rtp_header(packet)


def payload(packet: bytes) -> bytes:
    return packet[header(packet)[5]:]


# -- scripts: each returns what it saw (compared across planes) --------------------------------


def s_forward(w: World) -> dict:
    """Forward with the payload type and an extension id rewritten, others removed."""
    f = {}
    w.peer(1, 5000)
    w.peer(2, 6000)
    w.plane.add_stream(10, 1, 1111, VP8_PT, 90000)
    w.plane.add_subscription(20, 2, 2222, 90000, initial_seq=1000, initial_ts=5000)
    w.plane.bind(20, 10, {VP8_PT: OUT_PT}, {LEVEL_ID: OUT_LEVEL_ID}, CODEC_OTHER)
    sent = []
    for i in range(3):
        p = rtp(VP8_PT, 65534 + i, 90000 * 7 + 3000 * i, 1111, extensions=[(LEVEL_ID, b"\x7f"), (MID_ID, b"1")],
                marker=i == 2)
        sent.append(p)
        w.send(1, p, 10.0 + 0.01 * i)
    out = w.received(2)
    f["headers"] = [header(p)[:5] for p in out]
    f["levels"] = [get_extension(p, OUT_LEVEL_ID) for p in out]
    f["mids"] = [get_extension(p, MID_ID) for p in out]
    f["payloads_equal"] = [payload(o) == payload(s) for o, s in zip(out, sent)]
    f["counters"] = w.counters()
    f["stream"] = tuple(w.plane.stream_stats(10))
    f["sub"] = tuple(w.plane.subscription_stats(20))
    f["cached"] = w.plane.cached(10, 65535) == sent[1] and w.plane.cached(10, 1) is None
    return f


def s_unknown_ssrc(w: World) -> dict:
    """An SSRC no stream has: the listener learns it (add_stream from the callback) or not."""
    f = {}
    w.peer(1, 5000)
    w.peer(2, 6000)
    w.plane.add_subscription(20, 2, 2222, 90000, initial_seq=7, initial_ts=70)

    def learn(peer, ssrc, packet):
        if ssrc == 3333:
            w.plane.add_stream(11, peer, ssrc, VP8_PT, 90000)
            w.plane.bind(20, 11, {VP8_PT: OUT_PT}, {}, CODEC_OTHER)
            return True
        if ssrc == 5555:
            raise RuntimeError("a listener that fails")
        return False

    w.listener.learn = learn
    learnt = rtp(VP8_PT, 1, 0, 3333, extensions=[(MID_ID, b"0")])
    w.send(1, learnt, 1.0)
    w.send(1, rtp(VP8_PT, 2, 0, 3333), 1.01)  # known now: no callback
    w.send(1, rtp(VP8_PT, 1, 0, 4444), 1.02)  # refused
    w.send(1, rtp(VP8_PT, 2, 0, 4444), 1.03)  # asked again
    w.send(1, rtp(VP8_PT, 1, 0, 5555), 1.04)  # the listener raises: dropped, counted
    f["asked"] = [(peer, ssrc) for peer, ssrc, _ in w.listener.unknown]
    f["plaintext"] = w.listener.unknown[0][2] == learnt
    f["out"] = [header(p)[2:5] for p in w.received(2)]
    f["counters"] = w.counters()
    return f


def s_drops(w: World) -> dict:
    """Every drop of the receive path, and the slow path (STUN, DTLS, RTCP)."""
    f = {}
    w.peer(1, 5000)
    w.peer(3, 7000, keyed=False)  # an address, no keys yet
    w.plane.add_stream(10, 1, 1111, VP8_PT, 90000)
    steps = {}

    def step(name, fn):
        fn()
        steps[name] = w.counters()

    step("wrong_pt", lambda: w.send(1, rtp(97, 1, 0, 1111), 1.0))
    step("no_subscriber", lambda: w.send(1, rtp(VP8_PT, 2, 0, 1111), 1.0))
    step("not_connected", lambda: w.raw(3, rtp(VP8_PT, 1, 0, 9), 1.0))
    step("unknown_source", lambda: w.plane.feed(w.clients[1].protect(rtp(VP8_PT, 3, 0, 1111)),
                                               ("127.0.0.1", 5999), 1.0))
    step("stun_unknown_source", lambda: w.plane.feed(b"\x00\x01\x00\x00" + bytes(16), ("127.0.0.1", 5999), 1.0))
    step("dtls", lambda: w.raw(1, b"\x16\xfe\xfd" + bytes(20), 1.0))
    step("rtcp", lambda: w.raw(1, b"\x80\xc9\x00\x01" + bytes(4), 1.0))
    step("empty", lambda: w.raw(1, b"", 1.0))
    step("first_byte", lambda: w.raw(1, b"\x46" + bytes(30), 1.0))
    step("one_byte_rtp", lambda: w.raw(1, b"\x80", 1.0))
    step("too_long_srtp", lambda: w.raw(1, b"\x80\x60" + bytes(1600), 1.0))
    step("too_long_datagram", lambda: w.raw(1, b"\x80\x60" + bytes(3000), 1.0))
    good = w.clients[1].protect(rtp(VP8_PT, 4, 0, 1111))
    step("auth", lambda: w.raw(1, good[:-1] + bytes([good[-1] ^ 1]), 1.0))
    step("first", lambda: w.raw(1, good, 1.0))
    step("replay", lambda: w.raw(1, good, 1.0))
    step("short", lambda: w.raw(1, w.clients[1].protect(rtp(VP8_PT, 5, 0, 1111))[:20], 1.0))
    f["steps"] = steps
    f["slow"] = [(d[:1], a) for d, a in w.listener.slow]
    f["stream"] = tuple(w.plane.stream_stats(10))
    return f


def s_keyframe_gate(w: World) -> dict:
    """VP8 and H.264: nothing before a keyframe, a new request every KEYFRAME_RETRY."""
    f = {}
    w.peer(1, 5000)
    w.peer(2, 6000)
    w.plane.add_stream(10, 1, 1111, VP8_PT, 90000)
    w.plane.add_stream(11, 1, 1112, 102, 90000)
    w.plane.add_subscription(20, 2, 2222, 90000, initial_seq=500, initial_ts=9000)
    w.plane.add_subscription(21, 2, 2223, 90000, initial_seq=600, initial_ts=9100)
    w.plane.bind(20, 10, {VP8_PT: OUT_PT}, {}, CODEC_VP8)
    w.plane.bind(21, 11, {102: 102}, {}, CODEC_H264)
    f["gated"] = (w.plane.subscription_stats(20).keyframe_wait, w.plane.subscription_stats(21).keyframe_wait)
    t = 5.0
    for seq in range(100, 160):  # 1.2 s of inter frames
        w.send(1, vp8(seq, 1111, key=False), t)
        w.send(1, rtp(102, seq, 3000 * seq, 1112, payload=b"\x41"), t)  # H.264 non-IDR slice
        t += 0.02
    f["before"] = len(w.received(2))
    f["asked"] = list(w.listener.keyframes)
    f["waits"] = w.counters().get("keyframe_waits")
    w.send(1, vp8(160, 1111, key=True), t)
    w.send(1, vp8(161, 1111, key=False), t + 0.01)
    w.send(1, rtp(102, 160, 3000 * 160, 1112, payload=b"\x65"), t)  # an IDR slice
    out = w.received(2)
    f["out"] = [header(p)[2:5] for p in out]
    f["open"] = (w.plane.subscription_stats(20).keyframe_wait, w.plane.subscription_stats(21).keyframe_wait)
    f["sub"] = tuple(w.plane.subscription_stats(20))
    return f


def s_pause_resume(w: World) -> dict:
    """Pause holds; resume re-arms the gate and the numbering continues."""
    f = {}
    w.peer(1, 5000)
    w.peer(2, 6000)
    w.plane.add_stream(10, 1, 1111, VP8_PT, 90000)
    w.plane.add_subscription(20, 2, 2222, 90000, initial_seq=65530, initial_ts=0xFFFFFF00)
    w.plane.bind(20, 10, {VP8_PT: OUT_PT}, {}, CODEC_VP8)
    t = 1.0
    seq = 10
    for k in range(8):
        w.send(1, vp8(seq, 1111, key=k == 0), t)
        seq += 1
        t += 0.02
    first = w.received(2)
    w.plane.set_paused(20, True)
    for k in range(5):
        w.send(1, vp8(seq, 1111, key=k == 0), t)  # a keyframe while paused: not sent
        seq += 1
        t += 0.02
    f["paused_out"] = len(w.received(2))
    w.plane.set_paused(20, False)
    f["rearmed"] = w.plane.subscription_stats(20).keyframe_wait
    for k in range(3):
        w.send(1, vp8(seq, 1111, key=False), t)
        seq += 1
        t += 0.02
    f["resumed_before_key"] = len(w.received(2))
    resume_t = t
    for k in range(3):
        w.send(1, vp8(seq, 1111, key=k == 0), t)
        seq += 1
        t += 0.02
    second = w.received(2)
    a, b = header(first[-1]), header(second[0])
    f["first"] = [header(p)[2:4] for p in first]
    f["second"] = [header(p)[2:4] for p in second]
    f["seq_continuous"] = b[2] == (a[2] + 1) & 0xFFFF
    f["ts_step"] = (b[3] - a[3]) & 0xFFFFFFFF
    f["ts_expected"] = int((resume_t - (1.0 + 7 * 0.02)) * 90000)
    f["sub"] = tuple(w.plane.subscription_stats(20))
    return f


def s_rebind(w: World) -> dict:
    """A subscription moved to another stream: one continuous numbering, gated."""
    f = {}
    w.peer(1, 5000)
    w.peer(3, 5001)
    w.peer(2, 6000)
    w.plane.add_stream(10, 1, 1111, VP8_PT, 90000)
    w.plane.add_stream(12, 3, 3333, 98, 90000)
    w.plane.add_subscription(20, 2, 2222, 90000, initial_seq=100, initial_ts=1000)
    w.plane.bind(20, 10, {VP8_PT: OUT_PT}, {}, CODEC_VP8)
    t = 2.0
    for seq in range(5):
        w.send(1, vp8(seq, 1111, key=seq == 0), t)
        w.send(3, rtp(98, 40000 + seq, 777777 + 3000 * seq, 3333, payload=b"\x10\x01"), t)
        t += 0.03
    w.plane.bind(20, 12, {98: OUT_PT}, {}, CODEC_VP8)
    for seq in range(5, 10):
        w.send(1, vp8(seq, 1111, key=True), t)  # the old stream: not forwarded any more
        w.send(3, rtp(98, 40000 + seq, 777777 + 3000 * seq, 3333, payload=b"\x10\x01"), t)
        t += 0.03
    w.send(3, rtp(98, 40010, 777777 + 30000, 3333), t)  # a keyframe of the new stream
    w.send(3, rtp(98, 40011, 777777 + 33000, 3333, payload=b"\x10\x01"), t + 0.01)
    out = w.received(2)
    f["out"] = [header(p)[:5] for p in out]
    f["payload_from_new"] = payload(out[-1])[:2] == b"\x10\x01"
    f["asked"] = list(w.listener.keyframes)
    w.plane.bind(20, None, {}, {}, CODEC_OTHER)
    w.send(3, rtp(98, 40012, 777777 + 36000, 3333), t + 0.02)
    f["unbound_out"] = len(w.received(2))
    f["counters"] = w.counters()
    return f


def s_padding(w: World) -> dict:
    """A padding-only packet (a bandwidth probe) goes out with the last timestamp."""
    f = {}
    w.peer(1, 5000)
    w.peer(2, 6000)
    w.plane.add_stream(10, 1, 1111, VP8_PT, 90000)
    w.plane.add_subscription(20, 2, 2222, 90000, initial_seq=1, initial_ts=1000,
                             rtx_ssrc=2223, rtx_payload_type=RTX_PT, rtx_seq=50)
    w.plane.bind(20, 10, {VP8_PT: OUT_PT}, {}, CODEC_OTHER)
    w.send(1, rtp(VP8_PT, 10, 90000, 1111), 1.0)
    w.send(1, rtp(VP8_PT, 11, 123456, 1111, size=12 + 200, payload=b"", padding=200), 1.01)  # padding only
    w.send(1, rtp(VP8_PT, 12, 90000 + 3000, 1111, size=300, padding=4), 1.02)  # media with padding
    w.plane.retransmit(20, [2], 1.05, 0.1)  # the probe again, as RTX: still the held timestamp
    out = w.received(2)
    f["out"] = [header(p)[:5] for p in out]
    f["sizes"] = [len(p) for p in out]
    return f


def s_nack_log(w: World) -> dict:
    """Gaps, recoveries, a restart (CLEAR), and a ring that overflows (CLEAR first)."""
    f = {}
    w.peer(1, 5000)
    w.plane.add_stream(10, 1, 1111, VP8_PT, 90000, nack_max_gap=100)
    w.plane.add_stream(11, 1, 1112, VP8_PT, 90000, nack=False)
    t = 10.0
    for seq in (65534, 65535, 2, 1, 500):  # wrap, gap of 2 (0, 1), 1 recovered, then a restart
        w.send(1, rtp(VP8_PT, seq, 0, 1111), t)
        w.send(1, rtp(VP8_PT, seq, 0, 1112), t)
        t += 0.01
    f["dirty"] = w.plane.take_dirty()
    f["dirty_again"] = w.plane.take_dirty()
    f["events"] = w.plane.drain_events(10)
    f["events_again"] = w.plane.drain_events(10)
    f["no_nack"] = w.plane.drain_events(11)
    f["stream"] = tuple(w.plane.stream_stats(10))
    seq = 1000
    for _ in range(4100):  # one gap each: more events than the ring keeps
        w.send(1, rtp(VP8_PT, seq, 0, 1111, size=40), t)
        seq += 2
    events = w.plane.drain_events(10)
    f["overflow"] = (len(events), events[0], events[1][0], events[-1][0])
    f["dirty_after"] = w.plane.take_dirty()
    return f


def s_retransmit(w: World) -> dict:
    """NACK answers: RTX, the repeat window, misses, the byte budget; and plain resends."""
    f = {}
    w.peer(1, 5000)
    w.peer(2, 6000)
    w.peer(4, 6001)
    w.plane.add_stream(10, 1, 1111, VP8_PT, 90000)
    w.plane.add_subscription(20, 2, 2222, 90000, initial_seq=300, initial_ts=1000,
                             rtx_ssrc=2229, rtx_payload_type=RTX_PT, rtx_seq=65535)
    w.plane.add_subscription(21, 4, 4444, 90000, initial_seq=0, initial_ts=0)  # no RTX
    w.plane.bind(20, 10, {VP8_PT: OUT_PT}, {}, CODEC_OTHER)
    w.plane.bind(21, 10, {VP8_PT: OUT_PT}, {}, CODEC_OTHER)
    f["tokens_before"] = w.plane.subscription_stats(20).nack_tokens
    t = 1.0
    for seq in range(40):
        w.send(1, rtp(VP8_PT, 7000 + seq, 3000 * seq, 1111, size=1200), t)
        t += 0.01
    originals = w.received(2)
    plain_copies = [d for d, a in w.plane.captured if a == w.addrs[4]]
    w.received(4)
    w.plane.retransmit(20, [301, 302, 299, 5000], t, 0.1)  # 299 and 5000: before the numbering
    rtx = w.received(2)
    f["rtx_headers"] = [header(p)[:5] for p in rtx]
    f["rtx_osn"] = [struct.unpack("!H", payload(p)[:2])[0] for p in rtx]
    f["rtx_payload"] = [payload(p)[2:] == payload(originals[i]) for p, i in zip(rtx, (1, 2))]
    f["c1"] = w.counters()
    w.plane.retransmit(20, [301], t + 0.05, 0.1)  # within the window
    w.plane.retransmit(20, [301], t + 0.2, 0.1)  # after it
    f["c2"] = w.counters()
    f["tokens"] = w.plane.subscription_stats(20).nack_tokens
    w.plane.retransmit(20, list(range(300, 340)), t + 0.3, 0.1)  # more than the budget
    f["c3"] = w.counters()
    f["budget"] = (NACK_BUDGET_BURST, w.plane.subscription_stats(20).nack_tokens)
    # without RTX the very same datagram goes again (same SRTP index)
    w.plane.retransmit(21, [3, 4], t + 0.3, 0.1)
    resent = [d for d, a in w.plane.captured if a == w.addrs[4]][len(plain_copies):]
    f["plain_resend_identical"] = resent == plain_copies[3:5]
    f["sub"] = tuple(w.plane.subscription_stats(20))
    f["c4"] = w.counters()
    return f


def s_remove(w: World) -> dict:
    """remove_subscription / remove_stream / remove_peer stop forwarding; unknown ids."""
    f = {}
    w.peer(1, 5000)
    w.peer(2, 6000)
    w.peer(4, 6001)
    w.plane.add_stream(10, 1, 1111, VP8_PT, 90000)
    for sub, peer in ((20, 2), (21, 4), (22, 2)):
        w.plane.add_subscription(sub, peer, 2000 + sub, 90000, initial_seq=sub, initial_ts=sub)
        w.plane.bind(sub, 10, {VP8_PT: OUT_PT}, {}, CODEC_OTHER)
    seq = [0]

    def burst():
        seq[0] += 1
        w.send(1, rtp(VP8_PT, seq[0], 0, 1111), 1.0 + seq[0] * 0.01)
        return [header(p)[4] for p in w.received(2)] + [header(p)[4] for p in w.received(4)]

    f["all"] = burst()
    f["memory_with_packets"] = w.plane.memory()
    w.plane.remove_subscription(22)
    w.plane.remove_subscription(22)  # twice: nothing
    f["without_22"] = burst()
    w.plane.remove_peer(4)  # its subscription goes with it
    f["without_peer_4"] = burst()
    with pytest.raises(KeyError):
        w.plane.subscription_stats(21)
    w.plane.remove_stream(10)
    f["stream_gone"] = (burst(), w.counters())
    f["unbound"] = w.plane.subscription_stats(20).synced
    w.plane.remove_stream(10)
    w.plane.remove_peer(99)
    with pytest.raises(KeyError):
        w.plane.stream_stats(10)
    with pytest.raises(KeyError):
        w.plane.bind(20, 10, {}, {}, CODEC_OTHER)
    with pytest.raises(KeyError):
        w.plane.add_stream(30, 99, 1, VP8_PT, 90000)
    with pytest.raises(ValueError):
        w.plane.add_stream(30, 1, 1112, VP8_PT, 90000, cache_packets=12)
    w.plane.add_stream(30, 1, 1112, VP8_PT, 90000)
    with pytest.raises(ValueError):
        w.plane.add_stream(31, 1, 1112, VP8_PT, 90000)  # that SSRC has a stream on this peer
    w.plane.remove_peer(1)
    f["peer_gone"] = (w.send(1, rtp(VP8_PT, 99, 0, 1112), 2.0), w.counters())
    f["memory"] = w.plane.memory()
    return f


def s_srtp_forget(w: World) -> dict:
    """remove_stream / remove_subscription forget the libsrtp state of their SSRCs: a
    stream added again for the SSRC accepts a datagram its predecessor already received
    (fresh replay window), a subscription added again for the SSRC starts a fresh
    rollover counter (a subscriber with a fresh session decrypts it)."""
    f = {}
    w.peer(1, 5000)
    w.peer(2, 6000)
    w.plane.add_stream(10, 1, 1111, VP8_PT, 90000)
    w.plane.add_subscription(20, 2, 2222, 90000, initial_seq=65530, initial_ts=0, rtx_ssrc=2229,
                             rtx_payload_type=RTX_PT)
    w.plane.bind(20, 10, {VP8_PT: OUT_PT}, {}, CODEC_OTHER)
    datagrams = [w.clients[1].protect(rtp(VP8_PT, 500 + i, 3000 * i, 1111)) for i in range(10)]
    for i, d in enumerate(datagrams):
        w.raw(1, d, 1.0 + 0.01 * i)
    f["first"] = [header(p)[2] for p in w.received(2)]  # through the wrap: ROC 1 on the plane
    w.plane.retransmit(20, [65535], 1.2, 0.1)  # its RTX SSRC has outbound state too
    w.received(2)
    w.plane.remove_subscription(20)
    w.plane.remove_stream(10)
    w.plane.add_stream(11, 1, 1111, VP8_PT, 90000)
    w.plane.add_subscription(21, 2, 2222, 90000, initial_seq=100, initial_ts=0)
    w.plane.bind(21, 11, {VP8_PT: OUT_PT}, {}, CODEC_OTHER)
    w.raw(1, datagrams[-1], 2.0)  # a replay for the old stream, new to the new one
    out = [d for d, a in w.plane.captured if a == w.addrs[2]][w.seen[2]:]
    fresh = SrtpPair(w.profile, *reversed(keys("2", w.profile)))  # the subscriber's new session
    try:
        f["again"] = [header(fresh.unprotect(d))[2:5] for d in out]
    except pylibsrtp.Error as exc:
        f["again"] = str(exc)
    f["counters"] = w.counters()
    return f


def s_rtx_change(w: World) -> dict:
    """bind() changes the RTX payload type (a renegotiated codec) or turns RTX off."""
    f = {}
    w.peer(1, 5000)
    w.peer(2, 6000)
    w.plane.add_stream(10, 1, 1111, VP8_PT, 90000)
    w.plane.add_subscription(20, 2, 2222, 90000, initial_seq=10, initial_ts=0, rtx_ssrc=2229,
                             rtx_payload_type=RTX_PT, rtx_seq=7)
    w.plane.bind(20, 10, {VP8_PT: OUT_PT}, {}, CODEC_OTHER)
    for i in range(5):
        w.send(1, rtp(VP8_PT, 500 + i, 3000 * i, 1111), 1.0 + 0.01 * i)
    w.received(2)
    out = []
    for i, rtx_pt in enumerate((None, RTX_PT + 2, None, -1)):
        t = 1.1 + 0.2 * i
        w.plane.bind(20, 10, {VP8_PT: OUT_PT + 1}, {}, CODEC_OTHER, rtx_payload_type=rtx_pt)
        w.send(1, rtp(VP8_PT, 505 + i, 3000 * (5 + i), 1111), t)
        sent = header(w.received(2)[0])[2]
        before = len(w.plane.captured)
        w.plane.retransmit(20, [sent], t + 0.01, 0.1)
        if rtx_pt == -1:  # the very same datagram again (the client's replay check refuses it)
            out.append([w.plane.captured[-1] == w.plane.captured[before - 1], len(w.plane.captured) - before])
            w.seen[2] += 1
        else:
            out.append([(h[0], h[2], h[4]) for h in map(header, w.received(2))])
    f["out"] = out
    f["counters"] = w.counters()
    return f


def s_fuzz(w: World) -> dict:
    """Random and truncated datagrams never raise, and every one is counted once."""
    w.peer(1, 5000)
    w.peer(2, 6000)
    w.plane.add_stream(10, 1, 1111, VP8_PT, 90000, cache_packets=64, cache_bytes=8000)
    w.plane.add_subscription(20, 2, 2222, 90000, initial_seq=1, initial_ts=1,
                             rtx_ssrc=3, rtx_payload_type=RTX_PT)
    w.plane.bind(20, 10, {VP8_PT: OUT_PT}, {LEVEL_ID: OUT_LEVEL_ID}, CODEC_VP8)
    w.listener.learn = lambda peer, ssrc, packet: False
    rng = random.Random(1234)
    t = 1.0
    seq = 0
    for i in range(1500):
        r = rng.random()
        seq = (seq + rng.randrange(-3, 40)) & 0xFFFF  # within the publisher's SRTP window
        p = rtp(VP8_PT, seq, rng.getrandbits(32), 1111, size=rng.randrange(12, 1300),
                payload=rng.randbytes(rng.randrange(0, 4)),
                extensions=[(rng.randrange(1, 15), rng.randbytes(rng.randrange(1, 4)))] if rng.random() < 0.3 else (),
                padding=rng.randrange(0, 30) if rng.random() < 0.1 else 0)
        if r < 0.4:
            data = w.clients[1].protect(p)
        elif r < 0.6:
            data = w.clients[1].protect(p)[:rng.randrange(0, len(p))]
        elif r < 0.7:  # a plaintext header that lies (CSRCs, extension length, padding)
            q = bytearray(p)
            q[0] = 0x80 | rng.randrange(0x40)
            if len(q) > 15:
                q[rng.randrange(12, len(q))] = rng.randrange(256)
            try:
                data = w.clients[1].protect(bytes(q))
            except pylibsrtp.Error:  # libsrtp refuses to protect it: send it as it is
                data = bytes(q)
        elif r < 0.8:
            first = rng.choice((0, 1, 20, 63, 64, 127, 128, 191, 192, 255))
            data = bytes([first]) + rng.randbytes(rng.randrange(0, 80))
        elif r < 0.9:
            data = w.clients[1].protect(rtp(rng.choice((VP8_PT, 97)), seq, 0, rng.choice((1111, 1112))))
        else:
            data = rng.randbytes(rng.randrange(0, 2100))
        addr = w.addrs[1] if rng.random() < 0.9 else ("127.0.0.1", 4999)
        w.plane.feed(data, addr, t)
        if rng.random() < 0.05:
            w.plane.retransmit(20, [rng.randrange(65536) for _ in range(rng.randrange(0, 20))], t, 0.1)
        t += 0.003
    counters = w.counters()
    return {"counters": counters, "stream": tuple(w.plane.stream_stats(10)),
            "events": w.plane.drain_events(10), "slow": len(w.listener.slow)}


def s_addresses(w: World) -> dict:
    """IPv6 addresses in any spelling; an address taken by another peer; a peer that moves."""
    f = {}
    w.peer(1, 5000)
    w.plane.add_peer(2)
    w.addrs[2] = ("::1", 6000, 0, 0)
    w.plane.set_address(2, ("0:0::1", 6000))
    w.key(2)
    w.peer(3, 6001)
    w.plane.add_stream(10, 1, 1111, VP8_PT, 90000)
    for sub, peer in ((20, 2), (21, 3)):
        w.plane.add_subscription(sub, peer, 2000 + sub, 90000, initial_seq=sub, initial_ts=sub)
        w.plane.bind(sub, 10, {VP8_PT: OUT_PT}, {}, CODEC_OTHER)
    t = [1.0]

    def media():
        t[0] += 0.01
        w.send(1, rtp(VP8_PT, int(t[0] * 100), 0, 1111), t[0])
        out = [(len(d), a) for d, a in w.plane.captured]
        w.plane.captured.clear()
        return out

    f["both"] = media()
    w.plane.feed(b"\x16\xfe\xfd", ("::1", 6000, 0, 0), 2.0)  # DTLS from the IPv6 peer
    w.plane.set_address(3, ("0000:0000::0001", 6000))  # peer 3 takes peer 2's address
    f["taken"] = media()
    w.plane.set_address(2, ("127.0.0.1", 6002))  # peer 2 moves
    f["moved"] = media()
    w.plane.set_address(2, ("127.0.0.1", 6002))  # again: nothing changes
    f["again"] = media()
    w.plane.feed(b"\x16\xfe\xfd", ("127.0.0.1", 6001), 2.0)  # peer 3's old address: nobody's
    f["counters"] = w.counters()
    f["slow"] = list(w.listener.slow)
    return f


def s_random_commands(w: World) -> dict:
    """Random media and random commands in between (bind, pause, retransmit, removals,
    re-adds, moves): compared across planes, the strongest form of the oracle."""
    rng = random.Random(77)
    w.peer(1, 5000)
    w.peer(2, 5001)
    for p in range(3, 7):
        w.peer(p, 6000 + p)
    publishers = {1: [1111, 1112], 2: [2221]}
    streams: dict[int, tuple[int, int]] = {}  # stream id -> (peer, ssrc)
    next_id = [100]

    def new_stream(peer, ssrc):
        sid = next_id[0]
        next_id[0] += 1
        w.plane.add_stream(sid, peer, ssrc, VP8_PT, 90000, nack_max_gap=50, cache_packets=128, cache_bytes=40000)
        streams[sid] = (peer, ssrc)

    for peer, ssrcs in publishers.items():
        for ssrc in ssrcs:
            new_stream(peer, ssrc)
    subs: list[int] = []

    def new_sub():
        sid = next_id[0]
        next_id[0] += 1
        rtx = rng.random() < 0.5
        w.plane.add_subscription(sid, rng.randrange(3, 7), rng.getrandbits(32), 90000,
                                 initial_seq=rng.getrandbits(16), initial_ts=rng.getrandbits(32),
                                 rtx_ssrc=rng.getrandbits(32) | 1 if rtx else 0,
                                 rtx_payload_type=RTX_PT if rtx else -1, rtx_seq=rng.getrandbits(16))
        subs.append(sid)
        bind(sid)

    def bind(sid):
        target = rng.choice(sorted(streams) * 3 + [None])
        w.plane.bind(sid, target, {VP8_PT: OUT_PT}, {LEVEL_ID: OUT_LEVEL_ID} if rng.random() < 0.5 else {},
                     rng.choice((CODEC_OTHER, CODEC_VP8, CODEC_VP8)))

    for _ in range(6):
        new_sub()
    seqs = {ssrc: rng.getrandbits(16) for ssrcs in publishers.values() for ssrc in ssrcs}
    t = 100.0
    log = []
    for step in range(1500):
        r = rng.random()
        t += rng.choice((0.0, 0.001, 0.01, 0.02, 0.3))
        if r < 0.75:
            peer = rng.choice((1, 2))
            ssrc = rng.choice(publishers[peer])
            seqs[ssrc] = (seqs[ssrc] + rng.choice((1,) * 12 + (2, 3, -1, 0, 60))) & 0xFFFF
            key = rng.random() < 0.1
            pad = rng.random() < 0.05
            packet = rtp(VP8_PT, seqs[ssrc], int(t * 90000), ssrc, size=rng.randrange(60, 1200),
                         payload=b"" if pad else (b"\x10\x00" if key else b"\x10\x01"),
                         extensions=[(LEVEL_ID, b"\x33"), (MID_ID, b"1")] if rng.random() < 0.5 else (),
                         padding=rng.randrange(1, 200) if pad else 0)
            try:
                data = w.clients[peer].protect(packet)
            except pylibsrtp.Error:
                continue
            w.plane.feed(data, w.addrs[peer], t)
        elif r < 0.83 and subs:
            sid = rng.choice(subs)
            w.plane.retransmit(sid, [rng.getrandbits(16) for _ in range(3)]
                               + [w.plane.subscription_stats(sid).last_out_seq or 0] * 2,
                               t, rng.choice((0.05, 0.1)))
        elif r < 0.87 and subs:
            w.plane.set_paused(rng.choice(subs), rng.random() < 0.3)
        elif r < 0.9 and subs:
            bind(rng.choice(subs))
        elif r < 0.92 and subs:
            sid = subs.pop(rng.randrange(len(subs)))
            w.plane.remove_subscription(sid)
            new_sub()
        elif r < 0.93:
            sid = rng.choice(sorted(streams))
            peer, ssrc = streams.pop(sid)
            w.plane.remove_stream(sid)
            new_stream(peer, ssrc)
        elif r < 0.95:
            peer = rng.randrange(3, 7)
            w.addrs[peer] = ("127.0.0.1", rng.choice((6003, 6004, 6005, 6006, 7000 + step)))
            w.plane.set_address(peer, w.addrs[peer])
        else:
            log.append(("dirty", w.plane.take_dirty()))
            for sid in sorted(streams):
                log.append(("events", sid, w.plane.drain_events(sid)))
        if step % 100 == 0:
            log.append(("counters", w.counters()))
    return {
        "log": log,
        "subs": {sid: tuple(w.plane.subscription_stats(sid)) for sid in subs},
        "streams": {sid: tuple(w.plane.stream_stats(sid)) for sid in streams},
        "cached": {sid: [w.plane.cached(sid, (seqs[streams[sid][1]] - i) & 0xFFFF) for i in range(40)]
                   for sid in streams},
        "sent": len(w.plane.captured),
    }


SCRIPTS = {f.__name__[2:]: f for f in (s_forward, s_unknown_ssrc, s_drops, s_keyframe_gate, s_pause_resume,
                                       s_rebind, s_padding, s_nack_log, s_retransmit, s_remove, s_srtp_forget,
                                       s_rtx_change, s_fuzz, s_addresses, s_random_commands)}


def run(kind: str, script: str, profile: str = CM) -> tuple[World, dict]:
    w = World(kind, profile)
    return w, SCRIPTS[script](w)


# -- the behaviour, on each plane -------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_forward_rewrites_payload_type_extensions_and_numbering(kind):
    _, f = run(kind, "forward")
    assert f["headers"] == [(OUT_PT, False, 1000, 5000, 2222), (OUT_PT, False, 1001, 8000, 2222),
                            (OUT_PT, True, 1002, 11000, 2222)]
    assert f["levels"] == [b"\x7f"] * 3 and f["mids"] == [None] * 3 and all(f["payloads_equal"])
    c = f["counters"]
    assert (c["rx_packets"], c["rx_rtp"], c["rtp_forwarded"], c["tx_packets"]) == (3, 3, 3, 3)
    assert not set(c) & {"malformed", "unknown_ssrc", "no_subscriber"}
    packets, size, base, highest, jitter, first = f["stream"]
    assert (packets, size, base, highest, first) == (3, 600, 65534, 65536, 10.0)
    stats = f["sub"]
    assert (stats[0], stats[2], stats[3], stats[6], stats[7]) == (3, 0, True, 1002, 11000)
    assert f["cached"]


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_ssrc_is_learnt_by_the_listener_or_dropped(kind):
    _, f = run(kind, "unknown_ssrc")
    assert f["asked"] == [(1, 3333), (1, 4444), (1, 4444), (1, 5555)] and f["plaintext"]
    assert f["out"] == [(7, 70, 2222), (8, 70, 2222)]
    assert f["counters"]["unknown_ssrc"] == 3 and f["counters"]["internal_error"] == 1
    assert f["counters"]["rtp_forwarded"] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_each_drop_is_counted_under_its_name(kind):
    _, f = run(kind, "drops")
    s = f["steps"]
    assert s["wrong_pt"] == {"rx_packets": 1, "rx_bytes": 200 + 10, "rx_rtp": 1, "unknown_payload_type": 1}
    assert s["no_subscriber"]["no_subscriber"] == 1
    assert s["not_connected"]["not_connected"] == 1
    assert s["unknown_source"]["unknown_source"] == 1 and "rx_rtp" not in s["unknown_source"]
    for name in ("stun_unknown_source", "dtls", "rtcp"):
        assert s[name]["slow_path"] == 1, name
    assert s["empty"]["malformed"] == 1 and s["first_byte"]["malformed"] == 1
    assert s["one_byte_rtp"]["malformed"] == 1
    assert s["too_long_srtp"]["too_long"] == 1 and s["too_long_datagram"] == {"rx_packets": 1, "too_long": 1}
    assert s["auth"]["srtp_auth"] == 1 and s["short"]["srtp_auth"] == 1
    assert s["first"]["no_subscriber"] == 1 and s["replay"]["srtp_replay"] == 1
    assert f["slow"] == [(b"\x00", ("127.0.0.1", 5999)), (b"\x16", ("127.0.0.1", 5000)),
                         (b"\x80", ("127.0.0.1", 5000))]
    assert f["stream"][0] == 2  # the wrong payload type was not received as the stream's


@pytest.mark.parametrize("kind", KINDS)
def test_keyframe_gate_holds_until_a_keyframe_and_asks_again(kind):
    _, f = run(kind, "keyframe_gate")
    assert f["gated"] == (True, True) and f["before"] == 0
    # 60 inter frames over 1.18 s: held from 5.0, asked again once KEYFRAME_RETRY (1 s) passed
    assert f["asked"] == [10, 11] and f["waits"] == 120
    assert f["out"] == [(500, 9000, 2222), (501, 9000 + 0, 2222), (600, 9100, 2223)]
    assert f["open"] == (False, False)
    assert f["sub"][3] and f["sub"][9] == pytest.approx(5.0 + 60 * 0.02)


@pytest.mark.parametrize("kind", KINDS)
def test_pause_and_resume_rearm_the_gate_and_keep_numbering(kind):
    _, f = run(kind, "pause_resume")
    assert [s for s, _ in f["first"]] == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1]
    assert f["paused_out"] == 0 and f["rearmed"] and f["resumed_before_key"] == 0
    assert f["seq_continuous"] and [s for s, _ in f["second"]] == [2, 3, 4]
    assert abs(f["ts_step"] - f["ts_expected"]) <= 1


@pytest.mark.parametrize("kind", KINDS)
def test_bind_to_another_stream_keeps_one_numbering(kind):
    _, f = run(kind, "rebind")
    out = f["out"]
    assert [h[2] for h in out] == [100, 101, 102, 103, 104, 105, 106]
    assert {h[4] for h in out} == {2222} and {h[0] for h in out} == {OUT_PT}
    # the first five from the old stream; after the move its keyframes are not forwarded,
    # the new stream's inter frames are held until its keyframe
    # the timestamp goes on by the time between the last packet sent and the keyframe (0.18 s)
    assert out[5][3] - out[4][3] in (16199, 16200) and out[6][3] - out[5][3] == 3000
    assert f["payload_from_new"] and f["asked"] == []
    assert f["unbound_out"] == 0 and f["counters"]["keyframe_waits"] == 5


@pytest.mark.parametrize("kind", KINDS)
def test_padding_only_packet_keeps_the_last_timestamp(kind):
    _, f = run(kind, "padding")
    (pt0, _, s0, ts0, _), (pt1, _, s1, ts1, _), (_, _, s2, ts2, _), rtx = f["out"]
    assert (s0, s1, s2) == (1, 2, 3) and ts1 == ts0 == 1000 and ts2 == 1000 + 3000
    # the probe again as RTX: padding stripped, the subscriber's last timestamp (the one sent since)
    assert rtx == (RTX_PT, False, 51, 4000, 2223)
    assert f["sizes"][3] == 12 + 2


@pytest.mark.parametrize("kind", KINDS)
def test_nack_log_events(kind):
    _, f = run(kind, "nack_log")
    assert f["dirty"] == [10] and f["dirty_again"] == []
    assert f["events"] == [(GAP, 65536, 65538, pytest.approx(10.02)), (RECOVERED, 65537, None, pytest.approx(10.03)),
                           (CLEAR, 0, 0, pytest.approx(10.04))]
    assert f["events_again"] == [] and f["no_nack"] == []
    packets, nbytes, base, highest, jitter, first = f["stream"]
    assert (packets, nbytes, base, highest, first) == (5, 1000, 65534, 66036, 10.0) and jitter > 0
    n, head, second, last = f["overflow"]
    assert n == 4097 and head == (CLEAR, 0, 0, 0.0) and second == CLEAR and last == GAP
    assert f["dirty_after"] == [10]


@pytest.mark.parametrize("kind", KINDS)
def test_retransmit_with_rtx_repeat_window_and_budget(kind):
    _, f = run(kind, "retransmit")
    assert f["tokens_before"] is None
    assert f["rtx_headers"] == [(RTX_PT, False, 0, 1000 + 3000, 2229), (RTX_PT, False, 1, 1000 + 6000, 2229)]
    assert f["rtx_osn"] == [301, 302] and f["rtx_payload"] == [True, True]
    assert f["c1"]["retransmissions"] == 2 and f["c1"]["nack_misses"] == 2
    assert f["c2"]["nack_repeat"] == 1 and f["c2"]["retransmissions"] == 1
    c3 = f["c3"]
    answered = c3.get("retransmissions", 0)
    # the bucket: full, minus 3 packets of 1200 bytes, plus 4000 bytes/s for 0.2 s (no new media)
    assert f["tokens"] == NACK_BUDGET_BURST - 3 * 1200 + 4000 * 0.2
    assert answered == int((f["tokens"] + 4000 * 0.1) // 1200) == 25 and c3["nack_budget"] == 40 - answered
    assert f["budget"][1] == pytest.approx(f["tokens"] + 400 - 25 * 1200)
    assert f["plain_resend_identical"] and f["c4"]["retransmissions"] == 2
    assert f["sub"][2] == 2 + 1 + answered


@pytest.mark.parametrize("kind", KINDS)
def test_removals_stop_forwarding(kind):
    _, f = run(kind, "remove")
    assert sorted(f["all"]) == [2020, 2021, 2022]
    assert sorted(f["without_22"]) == [2020, 2021]
    assert f["without_peer_4"] == [2020]
    out, counters = f["stream_gone"]
    assert out == [] and counters["unknown_ssrc"] == 1
    assert not f["unbound"]
    assert f["peer_gone"][1] == {"rx_packets": 1, "rx_bytes": 210, "unknown_source": 1}
    assert f["memory_with_packets"] >= 200 and f["memory"] == 0


@pytest.mark.parametrize("kind", KINDS)
def test_removals_forget_the_srtp_state_of_their_ssrcs(kind):
    _, f = run(kind, "srtp_forget")
    assert f["first"] == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1, 2, 3]
    # the replayed datagram is received by the new stream and sent with a fresh ROC
    assert f["again"] == [(100, 0, 2222)], f["again"]  # (seq, timestamp, SSRC)
    assert "srtp_replay" not in f["counters"] and "srtp_protect" not in f["counters"]


@pytest.mark.parametrize("kind", KINDS)
def test_bind_changes_the_rtx_payload_type(kind):
    _, f = run(kind, "rtx_change")
    # (payload type, seq, SSRC) of each answer: RTX numbered 8, 9, 10, then a plain resend
    assert f["out"] == [[(RTX_PT, 8, 2229)], [(RTX_PT + 2, 9, 2229)], [(RTX_PT + 2, 10, 2229)],
                        [True, 1]], f["out"]


@pytest.mark.parametrize("kind", KINDS)
def test_fuzz_never_raises_and_counts_every_datagram_once(kind):
    _, f = run(kind, "fuzz")
    c = f["counters"]
    outcomes = c.get("slow_path", 0) + f["stream"][0] + sum(
        c.get(name, 0) for name in ("unknown_source", "not_connected", "srtp_auth", "srtp_replay", "too_long",
                                    "unknown_ssrc", "unknown_payload_type")) + c.get("malformed", 0)
    # a received packet is counted once (stream packets); "malformed" may also count a rewrite
    assert c["rx_packets"] == 1500 and outcomes >= 1500
    assert c.get("internal_error", 0) == 0 and c.get("srtp_protect", 0) == 0
    assert f["slow"] == c.get("slow_path", 0)


@pytest.mark.parametrize("kind", KINDS)
def test_addresses_of_either_family_rebind_and_move(kind):
    _, f = run(kind, "addresses")
    v6, v4 = ("::1", 6000, 0, 0), ("127.0.0.1", 6001)
    assert f["both"] == [(210, v6), (210, v4)]
    assert f["taken"] == [(210, v6)]  # peer 3 has it now; peer 2 has no address
    assert f["moved"] == f["again"] == [(210, ("127.0.0.1", 6002)), (210, v6)]
    assert f["slow"] == [(b"\x16\xfe\xfd", v6)] and f["counters"]["unknown_source"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_random_commands_never_raise(kind):
    _, f = run(kind, "random_commands")
    counters = [entry[1] for entry in f["log"] if entry[0] == "counters"]
    assert f["sent"] > 500 and sum(c.get("retransmissions", 0) for c in counters) > 0
    assert all("internal_error" not in c and "srtp_protect" not in c for c in counters)


# -- the planes against each other -------------------------------------------------------------


@pytest.mark.parametrize("profile", [CM, GCM])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_planes_send_the_same_bytes_and_count_the_same(script, profile):
    results = {}
    for kind in KINDS:
        w, facts = run(kind, script, profile)
        results[kind] = (facts, list(w.plane.captured), w.plane.take_counters(),
                         [(d, a) for d, a in w.listener.slow], w.listener.keyframes,
                         [(p, s, d) for p, s, d in w.listener.unknown])
    (fc, cc, kc, sc, kfc, uc), (fp, cp, kp, sp, kfp, up) = results["c"], results["pure"]
    facts_c = {k: v for k, v in fc.items() if not k.startswith("memory")}
    facts_p = {k: v for k, v in fp.items() if not k.startswith("memory")}
    assert facts_c == facts_p
    assert len(cc) == len(cp)
    for i, (a, b) in enumerate(zip(cc, cp)):
        assert a == b, f"datagram {i} differs"
    assert kc == kp and sc == sp and kfc == kfp and uc == up


# -- the socket ---------------------------------------------------------------------------------


def socket_run(kind: str):
    """200 packets from a publisher's socket through the plane to a viewer's socket."""

    async def main():
        loop = asyncio.get_running_loop()
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        pub = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        pub.bind(("127.0.0.1", 0))
        viewer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        viewer.bind(("127.0.0.1", 0))
        for s in (server, viewer):  # room for every datagram before anyone reads
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        viewer.settimeout(2.0)
        listener = Listener()
        plane = PLANES[kind](listener)
        try:
            plane.open(server, loop)
            plane.add_peer(1)
            plane.set_address(1, pub.getsockname())
            plane.add_peer(2)
            plane.set_address(2, viewer.getsockname())
            client = {}
            for peer in (1, 2):
                k_server, k_client = keys(f"sock{peer}", CM)
                plane.set_keys(peer, PROFILES[CM], k_server, k_client)
                client[peer] = SrtpPair(CM, k_client, k_server)
            plane.add_stream(10, 1, 1111, VP8_PT, 90000)
            plane.add_subscription(20, 2, 2222, 90000, initial_seq=1, initial_ts=1)
            plane.bind(20, 10, {VP8_PT: OUT_PT}, {}, CODEC_OTHER)
            plane.send(b"\x00\x01hello", viewer.getsockname())  # a control-plane datagram
            got = [viewer.recv(2048)]
            for seq in range(200):
                pub.sendto(client[1].protect(rtp(VP8_PT, seq, 0, 1111)), server.getsockname())
                if seq % 20 == 19:
                    await asyncio.sleep(0.01)
            while len(got) < 201:
                try:
                    got.append(await loop.run_in_executor(None, viewer.recv, 2048))
                except socket.timeout:
                    break
            pub.sendto(b"\x00\x01\x00\x00" + bytes(16), server.getsockname())
            for _ in range(100):
                if listener.slow:
                    break
                await asyncio.sleep(0.01)
            return got, plane.latency(), plane.take_counters(), listener.slow
        finally:
            plane.close()
            for s in (server, pub, viewer):
                s.close()

    return asyncio.run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_real_sockets_forward_and_sample_latency(kind):
    got, latency, (stats, drops), slow = socket_run(kind)
    assert got[0] == b"\x00\x01hello"
    out = got[1:]
    assert len(out) == 200 and stats["rtp_forwarded"] == 200 and stats["rx_rtp"] == 200
    assert latency["count"] >= 200 // 64 and latency["buckets"][-1] == (float("inf"), latency["count"])
    assert [b for b, _ in latency["buckets"][:3]] == pytest.approx([20e-6, 50e-6, 100e-6])
    assert len(slow) == 1 and slow[0][1][0] == "127.0.0.1"
    assert not drops


class FullSocket(socket.socket):
    """A real UDP socket whose next ``full`` sends find the kernel's buffer full (EAGAIN),
    which loopback never reports (the C path has Datapath.fail_sends for the same)."""

    full = 0

    def sendto(self, data, addr):
        if self.full > 0:
            self.full -= 1
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        return super().sendto(data, addr)


def test_pure_plane_queues_behind_a_full_socket_within_a_bound():
    from sfu.plane_py import SEND_QUEUE_LIMIT

    async def main():
        loop = asyncio.get_running_loop()
        server = FullSocket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        viewer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        viewer.bind(("127.0.0.1", 0))
        viewer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        viewer.setblocking(False)
        plane = PythonPlane(Listener())
        try:
            plane.open(server, loop)
            to = viewer.getsockname()
            server.full = 1
            for i in range(5):  # the first finds the buffer full; all wait, in order
                plane.send(b"\x00\x01" + bytes([i]) * 100, to)
            queued_small = plane._queued
            await asyncio.sleep(0.05)  # writable: the queue goes out
            got = []
            while True:
                try:
                    got.append(viewer.recv(2048))
                except BlockingIOError:
                    break
            first = plane.take_counters()
            server.full = 10 ** 9  # full for good: the queue stops at its bound
            for i in range(3200):
                plane.send(bytes(1400), to)
            await asyncio.sleep(0.01)
            bounded = plane._queued
            second = plane.take_counters()
            return queued_small, got, first, bounded, second
        finally:
            plane.close()
            server.close()
            viewer.close()

    queued_small, got, (stats, drops), bounded, (stats2, drops2) = asyncio.run(main())
    assert queued_small == 5 * 102
    assert [p[2] for p in got] == [0, 1, 2, 3, 4] and stats["tx_packets"] == 5 and not drops
    assert bounded <= SEND_QUEUE_LIMIT and drops2["send_buffer_full"] == 3200 - SEND_QUEUE_LIMIT // 1400
    assert "tx_packets" not in stats2


def test_planes_send_the_same_bytes_on_real_sockets():
    (got_c, *_), (got_pure, *_) = socket_run("c"), socket_run("pure")
    assert len(got_c) == 201 and got_c == got_pure
