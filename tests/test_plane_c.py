"""The C forwarding plane (sfu.plane_c.CPlane) driven through the interface only:
integer ids in, plain data out, the C callbacks mapped back to ids."""

from __future__ import annotations

import hashlib
import struct

import pytest

from sfu import plane
from sfu.plane_c import CPlane
from sfu.rtp import CODEC_OTHER, codec_id
from sfu.srtp import PROFILES, SrtpPair

pytestmark = pytest.mark.timeout(30)

PROFILE = "SRTP_AES128_CM_SHA1_80"
PUB, VIEW = ("127.0.0.1", 40001), ("127.0.0.1", 40002)


def keys(name: str) -> tuple[bytes, bytes]:
    return hashlib.sha256(b"sfu" + name.encode()).digest()[:30], hashlib.sha256(b"cli" + name.encode()).digest()[:30]


def rtp(seq: int, ts: int, ssrc: int, pt: int = 96, keyframe: bool = True, mid: bytes | None = None) -> bytes:
    header = bytearray(struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc))
    if mid is not None:
        body = bytes([(1 << 4) | (len(mid) - 1)]) + mid
        body += b"\0" * (-len(body) % 4)
        header[0] |= 0x10
        header += struct.pack("!HH", 0xBEDE, len(body) // 4) + body
    payload = bytearray(b"\x10\x00" if keyframe else b"\x00\x01") + bytes(100)
    return bytes(header) + payload


class Listener:
    def __init__(self) -> None:
        self.slow: list = []
        self.unknown: list = []
        self.keyframes: list = []
        self.learn = None  # (plane, stream id) to add on an unknown SSRC

    def slow_path(self, data, addr) -> None:
        self.slow.append((data, addr))

    def unknown_ssrc(self, peer, ssrc, packet) -> bool:
        self.unknown.append((peer, ssrc, packet))
        if self.learn is None:
            return False
        p, stream = self.learn
        p.add_stream(stream, peer, ssrc, 96, 90000)
        return True

    def keyframe_needed(self, stream) -> None:
        self.keyframes.append(stream)


@pytest.fixture
def setup():
    listener = Listener()
    p = CPlane(listener, capture=True)
    clients = {}
    for peer, addr, name in ((1, PUB, "pub"), (2, VIEW, "view")):
        local, remote = keys(name)
        p.add_peer(peer)
        p.set_address(peer, addr)
        p.set_keys(peer, PROFILES[PROFILE], local, remote)
        clients[peer] = SrtpPair(PROFILE, remote, local)  # the client's side of the same keys
    return p, listener, clients


def sent_to(p, addr, client) -> list[bytes]:
    out = [client.unprotect(d) for d, a in p.captured if a == addr]
    p.captured.clear()
    return out


def test_forwards_rewritten_through_ids_with_the_gate_and_stats(setup):
    p, listener, clients = setup
    assert p.name == "c" and isinstance(p, plane.ForwardingPlane)
    p.add_stream(10, 1, 0x1111, 96, 90000, nack=True)
    p.add_subscription(20, 2, 0x2222, 90000, initial_seq=1000, initial_ts=5000)
    p.feed(clients[1].protect(rtp(1, 100, 0x1111)), PUB, 1.0)
    assert p.captured == []  # unbound: nothing sent
    p.bind(20, 10, {96: 100}, {}, codec_id("VP8"))
    p.feed(clients[1].protect(rtp(2, 200, 0x1111, keyframe=False)), PUB, 1.1)
    assert p.captured == []  # the keyframe gate holds delta frames
    assert p.subscription_stats(20).keyframe_wait
    p.feed(clients[1].protect(rtp(3, 300, 0x1111)), PUB, 1.2)
    out = sent_to(p, VIEW, clients[2])
    assert len(out) == 1
    pt, seq, ts, ssrc = out[0][1] & 0x7F, *struct.unpack("!HII", out[0][2:12])
    assert (pt, seq, ts, ssrc) == (100, 1000, 5000, 0x2222)
    stats = p.subscription_stats(20)
    assert stats.synced and not stats.keyframe_wait and stats.packets_sent == 1
    assert stats.seq_delta == (1000 - 3) & 0xFFFF and stats.ts_delta == (5000 - 300) & 0xFFFFFFFF
    s = p.stream_stats(10)
    assert (s.packets, s.base_ext_seq, s.highest_ext_seq, s.first_packet_time) == (3, 1, 3, 1.0)
    stats, drops = p.take_counters()
    assert stats["rtp_forwarded"] == 1 and drops["no_subscriber"] == 1
    # paused: nothing; resumed: numbering continues after the next keyframe
    p.set_paused(20, True)
    p.feed(clients[1].protect(rtp(4, 400, 0x1111)), PUB, 1.3)
    assert p.captured == []
    p.set_paused(20, False)
    assert p.subscription_stats(20).keyframe_wait
    p.feed(clients[1].protect(rtp(5, 500, 0x1111)), PUB, 1.4)
    out = sent_to(p, VIEW, clients[2])
    assert struct.unpack("!H", out[0][2:4])[0] == 1001
    # the NACK log, by stream id; the packet cache
    p.feed(clients[1].protect(rtp(8, 800, 0x1111)), PUB, 1.5)
    p.captured.clear()
    assert p.take_dirty() == [10]
    assert p.drain_events(10) == [(plane.GAP, 6, 8, 1.5)]
    assert p.cached(10, 8) == rtp(8, 800, 0x1111)
    # a NACK of the viewer, answered from the cache in its numbering (1004 is input 8, 1002 was lost)
    p.retransmit(20, [1002, 1004], 2.0, 0.1)
    out = sent_to(p, VIEW, clients[2])
    assert len(out) == 1 and struct.unpack("!H", out[0][2:4])[0] == 1004
    assert p.subscription_stats(20).retransmissions == 1
    assert p.take_counters()[0]["nack_misses"] == 1
    assert p.memory() > 0


def test_unknown_ssrc_and_keyframe_needed_name_ids(setup):
    p, listener, clients = setup
    p.feed(clients[1].protect(rtp(1, 100, 0x3333, mid=b"0")), PUB, 1.0)
    assert [(peer, ssrc) for peer, ssrc, _ in listener.unknown] == [(1, 0x3333)]
    assert listener.unknown[0][2] == rtp(1, 100, 0x3333, mid=b"0")  # plaintext
    assert p.take_counters()[1]["unknown_ssrc"] == 1
    listener.learn = (p, 11)
    p.add_subscription(21, 2, 0x4444, 90000, initial_seq=1, initial_ts=1)
    p.feed(clients[1].protect(rtp(2, 200, 0x3333, mid=b"0")), PUB, 2.0)
    assert p.stream_stats(11).packets == 1
    p.bind(21, 11, {96: 96}, {}, codec_id("VP8"))
    for i, t in enumerate((3.0, 3.5, 4.1)):
        p.feed(clients[1].protect(rtp(3 + i, 300, 0x3333, keyframe=False)), PUB, t)
    assert listener.keyframes == [11]  # held KEYFRAME_RETRY seconds: asked again, by stream id


def test_remove_stream_unbinds_and_remove_peer_forgets(setup):
    p, listener, clients = setup
    p.add_stream(10, 1, 0x1111, 96, 90000)
    p.add_subscription(20, 2, 0x2222, 90000, initial_seq=1, initial_ts=1)
    p.bind(20, 10, {96: 96}, {}, CODEC_OTHER)
    with pytest.raises(ValueError):
        p.add_stream(12, 1, 0x1111, 96, 90000)  # the SSRC has a stream on this peer
    with pytest.raises(KeyError):
        p.bind(20, 99, {}, {}, CODEC_OTHER)
    p.remove_stream(10)
    p.remove_stream(10)  # unknown: nothing
    assert not p.subscription_stats(20).synced
    p.feed(clients[1].protect(rtp(1, 100, 0x1111)), PUB, 1.0)
    assert p.captured == [] and p.take_counters()[1]["unknown_ssrc"] == 1
    p.add_stream(10, 1, 0x1111, 96, 90000)  # the id and SSRC are free again
    p.bind(20, 10, {96: 96}, {}, CODEC_OTHER)
    p.remove_peer(2)
    with pytest.raises(KeyError):
        p.subscription_stats(20)
    p.feed(clients[1].protect(rtp(2, 200, 0x1111)), PUB, 1.1)
    assert p.captured == [] and p.take_counters()[1]["no_subscriber"] == 1
    p.remove_peer(1)
    p.feed(b"\x80\x60" + bytes(40), PUB, 1.2)
    assert p.take_counters()[1]["unknown_source"] == 1
    p.remove_peer(1)
    assert p.memory() == 0 and p.datapath.peers == 0


def test_slow_path_and_send(setup):
    p, listener, clients = setup
    p.feed(b"\x00\x01" + bytes(18), VIEW, 1.0)  # STUN
    p.feed(b"\x16\xfe\xfd" + bytes(10), PUB, 1.0)  # DTLS from a known address
    assert [a for _, a in listener.slow] == [VIEW, PUB]
    p.send(b"hello", VIEW)
    assert p.captured == [(b"hello", VIEW)]


def test_numbering_continues_across_a_rebind_to_another_stream(setup):
    p, listener, clients = setup
    p.add_stream(10, 1, 0x1111, 96, 90000)
    p.add_stream(11, 1, 0x5555, 96, 90000)
    p.add_subscription(20, 2, 0x2222, 90000, initial_seq=65534, initial_ts=0xFFFFFF00)
    p.bind(20, 10, {96: 96}, {}, CODEC_OTHER)
    for seq in (100, 101):
        p.feed(clients[1].protect(rtp(seq, 9000 + seq, 0x1111)), PUB, 1.0 + seq / 1000)
    p.bind(20, 11, {96: 96}, {}, codec_id("VP8"))  # another publisher's stream, gated
    p.feed(clients[1].protect(rtp(7, 1, 0x1111)), PUB, 1.2)  # the old stream: not sent any more
    p.feed(clients[1].protect(rtp(40000, 5, 0x5555, keyframe=False)), PUB, 1.3)  # held
    p.feed(clients[1].protect(rtp(40001, 6, 0x5555)), PUB, 1.5)  # a keyframe
    out = sent_to(p, VIEW, clients[2])
    seqs = [struct.unpack("!H", o[2:4])[0] for o in out]
    stamps = [struct.unpack("!I", o[4:8])[0] for o in out]
    assert seqs == [65534, 65535, 0]  # across the wrap, one stream for the viewer
    assert stamps[1] == (0xFFFFFF00 + 1) & 0xFFFFFFFF
    assert stamps[2] == (stamps[1] + round((1.5 - 1.101) * 90000)) & 0xFFFFFFFF  # the time between
    assert {struct.unpack("!I", o[8:12])[0] for o in out} == {0x2222}
