"""The C data path (sfu._fast.datapath) against the pure-Python reference.

The oracle: one scripted session -- publishers, viewers, loss, reordering,
duplicates, sequence and timestamp wrap, NACKs both ways, SR translation,
pause/resume, late joins, a publisher replaced by another, SSRC learning by
MID, hostile datagrams -- runs through two MediaEngines: on the C plane
(``datapath="c"``, sfu.plane_c) and on the pure-Python plane (``"pure"``,
sfu.plane_py). With the same seed and the same SRTP keys, every datagram the
SFU sends (forwarded RTP, RTCP, retransmissions) must be byte-identical, in the
same order, to the same addresses; drop counters must agree too.

Then the C path on its own: real sockets (recvmmsg/sendmmsg), hostile
traffic that costs no Python and no allocation, the address table, the packet
cache, the NACK log, counters and the latency histogram.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import random
import socket
import struct
import time
import tracemalloc
from types import SimpleNamespace

import pylibsrtp
import pytest

from bench.loadgen import build_offer
from sfu import rtcp
from sfu._fast import datapath as dp_module
from sfu._fast.datapath import Datapath
from sfu._fast.packet import Rewriter
from sfu.config import Config
from sfu.dtls import Certificate
from sfu.engine import MediaEngine
from sfu.plane_c import CPlane
from sfu.plane_py import PythonPlane
from sfu.srtp import SrtpPair

pytestmark = pytest.mark.timeout(60)

PROFILES = ["SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80"]
KEY_LENGTH = {"SRTP_AEAD_AES_128_GCM": 28, "SRTP_AES128_CM_SHA1_80": 30}
FINGERPRINT = Certificate.generate().fingerprint()

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
ORIENTATION_URI = "urn:3gpp:video-orientation"


# -- building blocks -------------------------------------------------------------------


def offer(role: str, *, audio_ssrc=None, video_ssrc=None, extensions=(), vp8_pt=96) -> str:
    """The load generator's offer, with RFC 8285 extmap lines and another VP8 PT if asked."""
    text = build_offer(role, "cliu", "c" * 24, FINGERPRINT, audio_ssrc=audio_ssrc, video_ssrc=video_ssrc)
    if vp8_pt != 96:
        text = text.replace("SAVPF 96", f"SAVPF {vp8_pt}").replace(":96 ", f":{vp8_pt} ")
    lines = text.split("\r\n")
    out = []
    kind = None
    for line in lines:
        if line.startswith("m="):
            kind = line[2:7]
        out.append(line)
        if line == "a=rtcp-rsize":
            for ext_id, uri, kinds in extensions:
                if kind in kinds:
                    out.append(f"a=extmap:{ext_id} {uri}")
    return "\r\n".join(out)


def rtp(pt, seq, ts, ssrc, *, size=200, marker=False, extensions=(), two_byte=False,
        keyframe=True) -> bytes:
    """An RTP packet (RFC 3550 §5.1) with RFC 8285 one-byte extension elements.

    ``keyframe``: the payload starts like a VP8 keyframe (RFC 7741 §4.2 descriptor
    0x10: S=1, PID=0; then P=0), so that a video subscriber's keyframe gate opens at
    any packet (tests/test_keyframe.py covers the gate itself)."""
    header = bytearray(struct.pack("!BBHII", 0x80, (0x80 if marker else 0) | pt, seq & 0xFFFF,
                                   ts & 0xFFFFFFFF, ssrc))
    if extensions:
        body = bytearray()
        for ext_id, data in extensions:
            body += bytes([(ext_id << 4) | (len(data) - 1)]) + data
        while len(body) % 4:
            body.append(0)
        header[0] |= 0x10
        header += struct.pack("!HH", 0xBEDE, len(body) // 4) + body
    payload = bytearray(random.Random(seq * 7919 + ssrc).randbytes(max(0, size - len(header))))
    if len(payload) >= 2:
        payload[0] = 0x10 if keyframe else 0x00  # VP8 descriptor: S=1 PID=0 (or S=0)
        payload[1] &= 0xFE  # VP8 payload header: P=0, a keyframe
    return bytes(header) + payload


def keys(port: int, profile: str) -> tuple[bytes, bytes]:
    n = KEY_LENGTH[profile]
    return (hashlib.sha256(b"sfu-%d" % port).digest()[:n], hashlib.sha256(b"client-%d" % port).digest()[:n])


class Harness:
    """A MediaEngine on a fake clock whose sends are recorded, driven like a socket would."""

    def __init__(self, mode: str, profile: str, capture: bool = True) -> None:
        random.seed(20261128)
        self.mode = mode
        self.profile = profile
        self.now = 1000.0
        # capture=False and no socket: everything sent is dropped (the microbenchmarks)
        self.engine = MediaEngine(Config(consent_timeout=1e9, datapath=mode), capture=capture)
        self.engine._loop = SimpleNamespace(time=lambda: self.now)
        self.out = self.engine.plane.captured
        self.clients: dict[str, SrtpPair] = {}
        self.addrs: dict[str, tuple] = {}

    def join(self, name: str, room: str, role: str, port: int, **offer_args):
        info = self.engine.create_session(room, role, offer(role, **offer_args))
        return self.connect(name, self.engine.transports[info.id], port)

    def connect(self, name: str, transport, port: int):
        """A created session through ICE and DTLS, as if ``name`` connected from ``port``."""
        addr = ("127.0.0.1", port)
        # what Transport.receive_stun and _drain_dtls_events do once ICE and DTLS are through
        transport.addr = addr
        self.engine.address_changed(transport, None, addr)
        local, remote = keys(port, self.profile)
        transport.connect_srtp(self.profile, local, remote, self.now)
        self.clients[name] = SrtpPair(self.profile, remote, local)
        self.addrs[name] = addr
        return transport

    def feed(self, data: bytes, addr) -> None:
        self.engine.plane.feed(data, addr, self.now)

    def send_rtp(self, name: str, packet: bytes) -> bytes:
        protected = self.clients[name].protect(packet)
        self.feed(protected, self.addrs[name])
        return protected

    def send_rtcp(self, name: str, packets: list) -> None:
        self.feed(self.clients[name].protect_rtcp(rtcp.serialize(packets)), self.addrs[name])

    def advance(self, seconds: float, tick: bool = True) -> None:
        end = self.now + seconds
        while tick and self.now + 0.02 <= end + 1e-9:
            self.now += 0.02
            self.engine.tick(self.now)
        self.now = end

    def video_consumer(self, transport):
        return next(c for c in transport.consumers if c.kind == "video")


PUBLISHER_EXTENSIONS = [(9, MID_URI, ("audio", "video")), (1, LEVEL_URI, ("audio",)),
                        (4, ORIENTATION_URI, ("video",))]


def script(h: Harness) -> dict:
    """The recorded session. Returns facts for sanity checks; the output is h.out."""
    facts = {}
    pub = h.join("pub", "room", "publish", 5000, audio_ssrc=1111, video_ssrc=2222,
                 extensions=PUBLISHER_EXTENSIONS)
    v1 = h.join("v1", "room", "subscribe", 5001,
                extensions=[(5, LEVEL_URI, ("audio",)), (6, ORIENTATION_URI, ("video",))])
    v2 = h.join("v2", "room", "subscribe", 5002, vp8_pt=100,
                extensions=[(12, ORIENTATION_URI, ("video",))])
    h.advance(0.04)

    # video across a sequence wrap and a timestamp wrap, with loss, reordering and a duplicate
    seqs = list(range(65500, 65536)) + list(range(0, 40))
    for lost in (65510, 65530, 65531, 65532, 7):
        seqs.remove(lost)
    i = seqs.index(65520)
    seqs[i], seqs[i + 1] = seqs[i + 1], seqs[i]  # reordered pair
    ts0 = 0xFFFFFFFF - 3000 * 8
    first_protected = {}
    audio_seq = 100
    for n, seq in enumerate(seqs):
        ext = (seq - 65500) & 0xFFFF
        packet = rtp(96, seq, ts0 + 3000 * (ext // 3), 2222, size=1100, marker=ext % 3 == 2,
                     extensions=[(9, b"1"), (4, b"\x01"), (3, b"\xaa\xbb\xcc")])
        first_protected[seq] = h.send_rtp("pub", packet)
        if n == 10:
            h.feed(first_protected[seq], h.addrs["pub"])  # duplicate: libsrtp replay check
        if n % 2 == 0:  # audio interleaved, with an audio-level element
            h.send_rtp("pub", rtp(111, audio_seq, 960 * audio_seq, 1111, size=120,
                                  extensions=[(9, b"0"), (1, b"\x85")]))
            audio_seq += 1
        h.advance(0.01, tick=n % 2 == 1)
    # a padding-only packet (a bandwidth probe) with a timestamp of its own, as libwebrtc
    # sends without RTX: forwarded with the viewer's last timestamp
    probe = bytearray(rtp(96, 40, ts0 + 3000 * 40, 2222, size=12))
    probe[0] |= 0x20
    h.send_rtp("pub", bytes(probe + bytes(99) + bytes([100])))
    h.advance(0.1)  # NACKs for the lost packets go to the publisher
    # the publisher resends two of them (as it sent them: same SRTP packet)
    for seq in (65510, 65531):
        ext = (seq - 65500) & 0xFFFF
        h.send_rtp("pub", rtp(96, seq, ts0 + 3000 * (ext // 3), 2222, size=1100,
                              extensions=[(9, b"1"), (4, b"\x01")]))
    h.advance(0.05)

    # a viewer NACKs two packets it did not get (one cached, one never received)
    c1 = h.video_consumer(v1)
    lost_out = [(s + c1.stats().seq_delta) & 0xFFFF for s in (65505, 7)]
    h.send_rtcp("v1", [rtcp.Nack(sender_ssrc=4242, media_ssrc=c1.ssrc, lost=lost_out)])
    # the publisher's sender report is translated for every viewer (RFC 3550 §6.4.1)
    h.send_rtcp("pub", [rtcp.SenderReport(ssrc=2222, ntp_timestamp=0x83AA7E80_00000000 + 12345,
                                          rtp_timestamp=ts0 + 5000, packet_count=70, octet_count=77000)])
    h.send_rtcp("v2", [rtcp.Pli(sender_ssrc=4343, media_ssrc=h.video_consumer(v2).ssrc)])

    # pause v2, keep sending, resume: its numbering continues, its timestamps jump by the pause
    h.engine.set_paused(v2.id, True)
    seq = 40
    for _ in range(6):
        h.send_rtp("pub", rtp(96, seq, ts0 + 3000 * (seq + 36) // 3, 2222, size=900,
                              extensions=[(9, b"1")]))
        seq += 1
        h.advance(0.033)
    h.engine.set_paused(v2.id, False)
    h.advance(0.5)

    # a late viewer, then hostile datagrams
    v3 = h.join("v3", "room", "subscribe", 5003)
    for _ in range(6):
        h.send_rtp("pub", rtp(96, seq, ts0 + 3000 * (seq + 36) // 3, 2222, size=1000, extensions=[(9, b"1")]))
        seq += 1
        h.advance(0.033)
    h.feed(h.clients["pub"].protect(rtp(96, seq, 0, 2222)), ("127.0.0.1", 6666))  # unknown source
    bad = bytearray(h.clients["pub"].protect(rtp(96, seq, 0, 2222)))
    bad[-1] ^= 1
    h.feed(bytes(bad), h.addrs["pub"])  # authentication failure
    h.send_rtp("pub", rtp(96, 7000, 0, 9999))  # unknown SSRC (no MID): dropped
    h.send_rtp("pub", rtp(97, seq + 1, 0, 2222))  # a payload type that was not negotiated
    h.feed(b"\x50garbage", h.addrs["pub"])  # neither STUN, DTLS nor RTP
    h.feed(b"", h.addrs["pub"])
    h.feed(b"\x17\xfe\xfd" + bytes(20), h.addrs["v1"])  # DTLS record: slow path

    # a second publisher without a=ssrc: its SSRC is learnt from the MID extension
    h.join("pub2", "room", "publish", 5004, extensions=PUBLISHER_EXTENSIONS)
    for k in range(5):
        h.send_rtp("pub2", rtp(96, 300 + k, 777000 + 3000 * k, 3333, size=800, extensions=[(9, b"1")]))
        h.advance(0.02)
    # the first publisher leaves: WHEP viewers move to the second, numbering continues
    h.engine.close_session(pub.id)
    h.advance(0.2)
    for k in range(5, 25):
        h.send_rtp("pub2", rtp(96, 300 + k, 777000 + 3000 * k, 3333, size=800 + k,
                               extensions=[(9, b"1"), (4, b"\x02")]))
        h.advance(0.02)
    h.advance(1.2)  # receiver reports with jitter and loss, REMB
    facts["v1_video_ssrc"] = c1.ssrc
    facts["v3"] = v3.id
    return facts


def decrypt_all(h: Harness, name: str) -> list[bytes]:
    client = h.clients[name]
    plain = []
    for data, addr in h.out:
        if addr == h.addrs[name] and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223:
            try:
                plain.append(client.unprotect(data))
            except pylibsrtp.Error:  # a retransmission (no RTX): the same index again
                pass
    return plain


COMMON_DROPS = ("unknown_source", "not_connected", "srtp_auth", "srtp_replay", "malformed",
                "unknown_ssrc", "unknown_payload_type", "no_subscriber", "srtp_protect")


@pytest.mark.parametrize("profile", PROFILES)
def test_fast_path_output_is_byte_identical_to_python_paths(profile):
    results = {}
    for mode in ("c", "pure"):
        h = Harness(mode, profile)
        facts = script(h)
        results[mode] = (h, facts)
    fast, _ = results["c"]
    assert isinstance(fast.engine.plane, CPlane)
    for mode in ("pure",):
        ref, _ = results[mode]
        assert len(fast.out) == len(ref.out), mode
        for i, (a, b) in enumerate(zip(fast.out, ref.out)):
            assert a == b, f"datagram {i} differs from the {mode} path"
        for reason in COMMON_DROPS:
            assert fast.engine.drops[reason] == ref.engine.drops[reason], (mode, reason)
        for name in ("rtp_forwarded", "retransmissions", "nack_misses", "nacks_sent",
                     "keyframe_requests_sent"):
            assert fast.engine.stats[name] == ref.engine.stats[name], (mode, name)

    # and the script did exercise what it claims
    e = fast.engine
    assert e.stats["rtp_forwarded"] > 250
    assert e.stats["retransmissions"] >= 1 and e.stats["nack_misses"] >= 1
    assert e.stats["nacks_sent"] >= 1
    for reason in ("unknown_source", "srtp_auth", "srtp_replay", "unknown_ssrc", "unknown_payload_type",
                   "malformed"):
        assert e.drops[reason] >= 1, reason
    v1 = decrypt_all(fast, "v1")
    video = [p for p in v1 if p[1] & 0x7F == 96]
    seqs = [struct.unpack_from("!H", p, 2)[0] for p in video]
    # one continuous numbering across the wrap, the pause and the publisher change: the only
    # holes are the three packets lost and never resent (7, 65530, 65532)
    offsets = sorted({(s - seqs[0]) & 0xFFFF for s in seqs})
    assert offsets[0] == 0 and offsets[-1] + 1 - len(offsets) == 3, offsets
    assert {struct.unpack_from("!I", p, 8)[0] for p in video} == {results["c"][1]["v1_video_ssrc"]}
    v2 = decrypt_all(fast, "v2")
    assert {p[1] & 0x7F for p in v2} == {100, 111}  # VP8 mapped to the viewer's PT 100
    # the probe went out with the timestamp of the video packet before it
    i = next(i for i, p in enumerate(video) if p[0] & 0x20)
    assert video[i][4:8] == video[i - 1][4:8]
    assert len(video[i]) == 12 + 100


# -- the C path on its own -------------------------------------------------------------


class Sockets:
    """A Datapath on a real loopback socket, a publisher and N viewers."""

    def __init__(self, viewers: int = 3, profile: str = PROFILES[0]) -> None:
        self.slow: list = []
        self.learn: list = []
        self.socks = []
        self.sfu = self._sock()
        self.dp = Datapath(lambda d, a: self.slow.append((d, a)),
                           lambda owner, plain, ssrc: self.learn.append(ssrc) or False)
        self.dp.open(self.sfu.fileno(), None)
        self.pub = self._sock()
        k1, k2 = keys(1, profile)
        self.pub_client = SrtpPair(profile, k1, k2)
        self.pub_peer = self.dp.new_peer("pub")
        self.pub_peer.set_address(self.pub.getsockname())
        self.pub_peer.set_srtp(SrtpPair(profile, k2, k1))
        self.stream = self.pub_peer.add_stream(1234, 96, 90000, cache_packets=64, cache_bytes=8192)
        self.viewers = []
        subs = []
        for i in range(viewers):
            sock = self._sock()
            a, b = keys(100 + i, profile)
            peer = self.dp.new_peer(i)
            peer.set_address(sock.getsockname())
            peer.set_srtp(SrtpPair(profile, a, b))
            sub = peer.subscription(Rewriter(5000 + i, {96: 96}, {}), 90000)
            sub.initial_seq, sub.initial_ts = 1000 * i, 7
            subs.append(sub)
            self.viewers.append((sock, SrtpPair(profile, b, a), sub))
        self.stream.set_subscriptions(subs)

    def _sock(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        self.socks.append(s)
        return s

    def publish(self, seq: int, **kw) -> None:
        self.pub.sendto(self.pub_client.protect(rtp(96, seq, seq * 3000, 1234, **kw)), self.sfu.getsockname())

    def close(self) -> None:
        self.dp.close()
        for s in self.socks:
            s.close()


@pytest.fixture
def sockets():
    s = Sockets()
    yield s
    s.close()


def drain(sock) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


def test_real_sockets_recvmmsg_to_sendmmsg(sockets):
    for seq in range(100, 300):  # more than one recvmmsg batch
        sockets.publish(seq)
    sockets.dp.on_readable()
    counters = sockets.dp.counters()
    assert counters["rx_packets"] == 200 and counters["rtp_forwarded"] == 600
    assert counters["recv_calls"] >= 4 and counters["send_calls"] >= 4
    # copies leave once 32 wait, not only at the end of each 64-datagram receive batch
    assert counters["send_calls"] >= 600 // 33
    assert counters["tx_packets"] == 600
    for i, (sock, client, sub) in enumerate(sockets.viewers):
        got = [client.unprotect(d) for d in drain(sock)]
        assert [struct.unpack_from("!H", p, 2)[0] for p in got] == [(1000 * i + k) & 0xFFFF for k in range(200)]
        assert {struct.unpack_from("!I", p, 8)[0] for p in got} == {5000 + i}
        assert sub.packets_sent == 200 and sub.last_out_seq == 1000 * i + 199
    assert sockets.slow == []
    lat = sockets.dp.latency()
    assert lat["count"] == 200 and lat["buckets"][-1][1] == lat["count"]  # one sample per forwarded packet
    assert len(sockets.dp.drain_latency()) == lat["count"] and sockets.dp.drain_latency() == []


def test_latency_counts_the_time_a_packet_waited_in_the_socket(sockets):
    # the kernel's receive timestamp starts the clock: a worker busy elsewhere shows as latency
    for seq in range(10, 13):
        sockets.publish(seq)
    time.sleep(0.05)
    sockets.dp.on_readable()
    samples = sockets.dp.drain_latency()
    assert len(samples) == 3
    assert all(0.05 <= s < 5.0 for s in samples), samples
    assert sockets.dp.latency()["buckets"][6][1] == 0  # nothing at or below 2 ms


async def test_full_send_buffer_keeps_the_queue_until_writable(sockets):
    # EAGAIN from sendmmsg (loopback never says it; fail_sends stands in for the kernel):
    # the copies wait in the queue, the loop's writer callback sends them, in order
    loop = asyncio.get_running_loop()
    sockets.dp.open(sockets.sfu.fileno(), loop)
    sockets.dp.fail_sends(1)
    for seq in range(100, 110):
        sockets.publish(seq)
    sockets.dp.on_readable()
    assert sockets.dp.queued == 30 and sockets.dp.counters()["send_buffer_full"] == 1
    assert all(drain(sock) == [] for sock, _, _ in sockets.viewers)
    for _ in range(100):  # the writer callback runs once the socket is writable (at once)
        if sockets.dp.queued == 0:
            break
        await asyncio.sleep(0.01)
    assert sockets.dp.queued == 0
    # more packets while nothing waits go straight out again
    for seq in range(110, 115):
        sockets.publish(seq)
    sockets.dp.on_readable()
    for i, (sock, client, _) in enumerate(sockets.viewers):
        got = [client.unprotect(d) for d in drain(sock)]
        assert [struct.unpack_from("!H", p, 2)[0] for p in got] == [1000 * i + k for k in range(15)]
    counters = sockets.dp.counters()
    assert counters["tx_packets"] == counters["rtp_forwarded"] == 45
    sockets.dp.close()  # removes the writer if one is left


def test_full_queue_drops_and_counts_instead_of_growing(sockets):
    # the kernel refuses every send: the queue (1024 copies) fills, then copies are dropped
    # and counted; once the kernel takes packets again, what waited goes out in order
    sockets.dp.fail_sends(10**6)
    for rnd in range(7):
        for seq in range(60):
            sockets.publish(1000 + rnd * 60 + seq)
        sockets.dp.on_readable()
    counters = sockets.dp.counters()
    assert sockets.dp.queued == 1024
    assert counters["rtp_forwarded"] + counters["send_buffer_full"] >= 420 * 3
    assert counters["tx_packets"] == 0
    sockets.dp.fail_sends(0)
    sockets.dp.flush()
    assert sockets.dp.queued == 0
    received = sum(len(drain(sock)) for sock, _, _ in sockets.viewers)
    assert received == 1024


def test_stun_goes_to_the_slow_path_with_the_source_address(sockets):
    stranger = sockets._sock()
    stranger.sendto(b"\x00\x01\x00\x00" + bytes(16), sockets.sfu.getsockname())
    sockets.pub.sendto(b"\x16\xfe\xfd" + bytes(10), sockets.sfu.getsockname())  # DTLS from a peer
    sockets.pub.sendto(b"\x80\xc8" + bytes(30), sockets.sfu.getsockname())  # RTCP from a peer
    sockets.dp.on_readable()
    assert [a for _, a in sockets.slow] == [stranger.getsockname(), sockets.pub.getsockname(),
                                            sockets.pub.getsockname()]
    assert sockets.slow[0][0][:2] == b"\x00\x01"


def test_hostile_traffic_costs_no_python_and_no_allocation(sockets):
    """RFC 7983 demux + address table + SRTP tag check drop it in C (DESIGN.md: data path)."""
    stranger = sockets._sock()
    good = sockets.pub_client.protect(rtp(96, 1, 0, 1234))
    forged = bytearray(good)
    forged[20] ^= 0xFF  # bad authentication tag / ciphertext
    to = sockets.sfu.getsockname()
    sockets.dp.on_readable()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _round in range(20):
            for _ in range(50):
                stranger.sendto(good, to)            # unknown source address
                sockets.pub.sendto(bytes(forged), to)  # known address, bad tag
                sockets.pub.sendto(b"\x50junk", to)    # not STUN/DTLS/RTP
            sockets.dp.on_readable()
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert sockets.slow == [] and sockets.learn == []
    counters = sockets.dp.counters()
    assert counters["unknown_source"] == 1000 and counters["srtp_auth"] == 1000
    assert counters["malformed"] == 1000 and counters["rtp_forwarded"] == 0
    assert allocated < 2048, allocated  # bytes sent in this loop: none kept by the data path


def test_unknown_ssrc_asks_python_and_forwards_once_learnt():
    learnt = []
    k1, k2 = keys(7, PROFILES[0])
    client = SrtpPair(PROFILES[0], k1, k2)

    def unknown(owner, plain, ssrc):  # what MediaEngine._unknown_ssrc does by MID
        learnt.append((owner, ssrc, plain[:2]))
        if ssrc != 4321:
            return False
        peer.add_stream(ssrc, 96, 90000).set_subscriptions([sub])
        return True

    dp = Datapath(lambda d, a: None, unknown, capture=True)
    peer = dp.new_peer("owner")
    peer.set_address(("127.0.0.1", 7000))
    peer.set_srtp(SrtpPair(PROFILES[0], k2, k1))
    viewer = dp.new_peer("v")
    viewer.set_address(("127.0.0.1", 7001))
    viewer.set_srtp(SrtpPair(PROFILES[0], *keys(8, PROFILES[0])))
    sub = viewer.subscription(Rewriter(1, {96: 96}, {}), 90000)
    for seq in (1, 2):
        dp.feed(client.protect(rtp(96, seq, 0, 4321)), ("127.0.0.1", 7000), 1.0)
    dp.feed(client.protect(rtp(96, 3, 0, 999)), ("127.0.0.1", 7000), 1.0)
    assert learnt == [("owner", 4321, b"\x80\x60"), ("owner", 999, b"\x80\x60")]  # once per SSRC
    assert [a for _, a in dp.captured] == [("127.0.0.1", 7001)] * 2
    assert dp.counters()["unknown_ssrc"] == 1


def test_address_table_rebinds_grows_and_forgets():
    dp = Datapath(lambda d, a: None, capture=True)
    peers = []
    for i in range(300):  # several growths of the table
        p = dp.new_peer(i)
        p.set_address(("127.0.0.1", 20000 + i))
        peers.append(p)
    assert dp.peers == 300
    assert peers[7].address == ("127.0.0.1", 20007)
    peers[7].set_address(("::1", 30000))  # the peer moved (ICE chose another pair)
    assert dp.peers == 300 and peers[7].address[:2] == ("::1", 30000)
    peers[8].set_address(("127.0.0.1", 20009))  # takes the address of peer 9
    assert peers[8].registered and not peers[9].registered and dp.peers == 299
    for p in peers[::2]:
        p.close()
    assert dp.peers == 149
    for i, p in enumerate(peers):
        assert p.registered == (i % 2 == 1 and i != 9)
    # every remaining peer is still found by the C lookup (backward-shift deletion kept the chains)
    k1, k2 = keys(3, PROFILES[0])
    for i, p in enumerate(peers):
        if p.registered:
            p.set_srtp(SrtpPair(PROFILES[0], k2, k1))
    client = SrtpPair(PROFILES[0], k1, k2)
    before = dp.counters()
    for i, p in enumerate(peers):
        if p.registered:
            dp.feed(client.protect(rtp(96, i, 0, 77)), p.address, 1.0)
    after = dp.counters()
    assert after["unknown_source"] == before["unknown_source"]
    assert after["no_subscriber"] == 0 and after["unknown_ssrc"] - before["unknown_ssrc"] == 149


def test_packet_cache_keeps_recent_packets_within_its_arena():
    dp = Datapath(lambda d, a: None, capture=True)
    peer = dp.new_peer()
    peer.set_address(("127.0.0.1", 9000))
    k1, k2 = keys(9, PROFILES[1])
    peer.set_srtp(SrtpPair(PROFILES[1], k2, k1))
    client = SrtpPair(PROFILES[1], k1, k2)
    stream = peer.add_stream(5, 96, 90000, cache_packets=16, cache_bytes=1000)
    sent = {}
    for seq in range(65530, 65546):
        packet = rtp(96, seq, 0, 5, size=100 + seq % 7)
        sent[seq & 0xFFFF] = packet
        dp.feed(client.protect(packet), ("127.0.0.1", 9000), 1.0)
    # 1000 bytes hold the last 9 packets of ~103 bytes (the arena wraps, packets never straddle)
    kept = [s for s in sent if stream.cached(s) is not None]
    assert all(stream.cached(s) == sent[s] for s in kept)
    assert 8 <= len(kept) <= 10 and (65545 & 0xFFFF) in kept and 65530 not in kept
    assert stream.cached(12345) is None
    with pytest.raises(ValueError):
        peer.add_stream(6, 96, 90000, cache_packets=12)
    with pytest.raises(ValueError):
        peer.add_stream(5, 96, 90000)  # that SSRC already has a stream


def test_nack_log_events_and_receive_statistics():
    dp = Datapath(lambda d, a: None, capture=True)
    peer = dp.new_peer()
    peer.set_address(("127.0.0.1", 9100))
    k1, k2 = keys(10, PROFILES[0])
    peer.set_srtp(SrtpPair(PROFILES[0], k2, k1))
    client = SrtpPair(PROFILES[0], k1, k2)
    stream = peer.add_stream(5, 96, 90000, nack_max_gap=100)
    t = 10.0
    for seq in (65534, 65535, 2, 1, 500):  # wrap, gap of 2 (0,1 -> 1 recovered), then a restart
        dp.feed(client.protect(rtp(96, seq, 0, 5)), ("127.0.0.1", 9100), t)
        t += 0.01
    events = stream.drain_events()
    assert events == [("gap", 65536, 65538, pytest.approx(10.02)), ("recovered", 65537, None, pytest.approx(10.03)),
                      ("clear", 0, 0, pytest.approx(10.04))]
    assert stream.drain_events() == []
    packets, nbytes, base, highest, jitter = stream.stats()
    assert (packets, base, highest) == (5, 65534, 66036) and nbytes == 5 * 200 and jitter > 0
    assert stream.first_packet_time == pytest.approx(10.0)


def test_libsrtp_entry_points_are_checked_at_import():
    from pylibsrtp._binding import ffi, lib

    assert ffi.typeof(ffi.addressof(lib, "srtp_protect")).cname == \
        "srtp_err_status_t(*)(struct srtp_ctx_t_ *, void *, int *)"
    dp_module._load_libsrtp()  # idempotent


def test_engine_takes_its_plane_from_the_datapath_setting():
    for mode, plane_class in (("c", CPlane), ("pure", PythonPlane)):
        engine = MediaEngine(Config(datapath=mode))
        assert isinstance(engine.plane, plane_class) and engine.plane.name == mode
        info = engine.create_session("r", "publish", offer("publish", audio_ssrc=1, video_ssrc=2))
        producer = engine.transports[info.id].producers[0]
        assert producer.streaming and engine.plane.stream_stats(producer.plane_id).packets == 0
    for mode in ("python", "fortran"):  # the in-between "python" mode is gone
        with pytest.raises(ValueError):
            MediaEngine(Config(datapath=mode))
