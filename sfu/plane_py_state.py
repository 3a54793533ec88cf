"""Peers, streams and subscriptions of the pure-Python forwarding plane (``sfu.plane_py``).

The state each object keeps, field for field as its C twin in ``sfu._fast``
(``datapath.pyx`` Peer, ``_streams.pxi`` Stream and Subscription): a stream's
receive statistics (RFC 3550 A.1, A.3, A.8), NACK log and packet cache; a
subscription's rewriter, numbering, keyframe gate and NACK budget. The plane
(``PythonPlane``) moves the packets; these objects do no I/O.
"""

from __future__ import annotations

import socket
import struct

from .plane import CLEAR, GAP, RECOVERED
from .rtp import CODEC_OTHER, Rewriter
from .srtp import SrtpPair
from .tracks import NACK_BUDGET_BURST, NACK_BUDGET_FLOOR, NACK_BUDGET_FRACTION, NACK_DEDUPE_SLOTS

EVENT_RING = 4096  # NACK log events kept per stream between two drains


def address(addr: tuple) -> tuple[tuple, tuple]:
    """(key, canonical tuple) of a socket-module address, as the C address table sees it:
    IPv4 (text, port); IPv6 (text, port, flowinfo 0, scope). ValueError when it is neither."""
    host = addr[0]
    port = int(addr[1])
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad port {port}")
    if isinstance(host, bytes):
        host = host.decode("ascii")
    if ":" not in host:
        try:
            text = socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, host))
        except OSError:
            raise ValueError(f"bad IPv4 address {host!r}") from None
        return (text, port), (text, port)
    host = host.split("%")[0]
    try:
        text = socket.inet_ntop(socket.AF_INET6, socket.inet_pton(socket.AF_INET6, host))
    except OSError:
        raise ValueError(f"bad IPv6 address {host!r}") from None
    scope = int(addr[3]) if len(addr) >= 4 else 0
    return (text, port, scope), (text, port, 0, scope)


class Peer:
    """One transport: its address (when known), SRTP sessions (when connected), streams by SSRC."""

    __slots__ = ("id", "key", "addr", "registered", "srtp", "protect", "unprotect", "streams")

    def __init__(self, peer: int) -> None:
        self.id = peer
        self.key = None
        self.addr = None  # where its copies go (kept when another peer takes the address)
        self.registered = False  # in the address table
        self.srtp: SrtpPair | None = None
        self.protect = None
        self.unprotect = None
        self.streams: dict[int, Stream] = {}


class Stream:
    """One received SSRC: statistics (RFC 3550 A.1, A.3, A.8), NACK log, packet cache, fan-out."""

    __slots__ = (
        "id", "peer", "ssrc", "payload_type", "clock_rate", "nack", "nack_max_gap", "subs",
        "packets", "bytes", "started", "unwrap_highest", "base", "highest", "jitter", "first_time",
        "last_transit", "events", "overflow", "dirty", "dirty_list",
        "cache_packets", "arena_size", "pos", "c_seq", "c_pos", "c_data", "held",
    )

    def __init__(self, stream: int, peer: Peer, ssrc: int, payload_type: int, clock_rate: int,
                 nack: bool, nack_max_gap: int, cache_packets: int, cache_bytes: int, dirty_list: list) -> None:
        self.id = stream
        self.peer = peer
        self.ssrc = ssrc
        self.payload_type = payload_type
        self.clock_rate = float(clock_rate)
        self.nack = nack
        self.nack_max_gap = nack_max_gap
        self.subs: tuple[Sub, ...] = ()
        self.packets = 0
        self.bytes = 0
        self.started = False
        self.unwrap_highest = 0
        self.base: int | None = None
        self.highest = -1
        self.jitter = 0.0
        self.first_time: float | None = None
        self.last_transit: float | None = None
        self.events: list[tuple] = []
        self.overflow = False
        self.dirty = False  # in dirty_list (the plane's take_dirty) since the last drain
        self.dirty_list = dirty_list
        # the packet cache, as the C arena: a log of cache_bytes at logical positions that
        # grow forever (a packet never straddles the end), indexed by the seq's low bits
        self.cache_packets = cache_packets
        self.arena_size = cache_bytes
        self.pos = 0
        self.c_seq: list[int] | None = None  # allocated on the first packet
        self.c_pos: list[int] | None = None
        self.c_data: list[bytes | None] | None = None
        self.held = 0  # bytes of c_data

    def on_packet(self, plain: bytes, n: int, seq: int, ts: int, now: float) -> None:
        """Receive statistics, the NACK log and the cache (sfu._fast.datapath Stream._on_packet)."""
        if not self.started:
            self.started = True
            self.unwrap_highest = ext = seq
        else:
            delta = (seq - self.unwrap_highest) & 0xFFFF
            if delta < 0x8000:
                ext = self.unwrap_highest + delta
                self.unwrap_highest = ext
            else:
                ext = self.unwrap_highest + delta - 0x10000
        self.packets += 1
        self.bytes += n
        self.store(seq, plain, n)
        if self.base is None:
            self.base = self.highest = ext
            self.first_time = now
        elif ext > self.highest:
            gap = ext - self.highest - 1
            if gap and self.nack:
                if gap > self.nack_max_gap:
                    self.event((CLEAR, 0, 0, now))
                else:
                    self.event((GAP, self.highest + 1, ext, now))
            self.highest = ext
        elif self.nack:
            self.event((RECOVERED, ext, None, now))
        # interarrival jitter, RFC 3550 A.8
        transit = now * self.clock_rate - ts
        last = self.last_transit
        if last is not None:
            d = abs(transit - last)
            if d < self.clock_rate * 10:  # ignore timestamp jumps
                self.jitter += (d - self.jitter) / 16.0
        self.last_transit = transit

    def event(self, event: tuple) -> None:
        if not self.dirty:  # first event since the last drain: tell the control plane (take_dirty)
            self.dirty = True
            self.dirty_list.append(self)
        if len(self.events) >= EVENT_RING:
            self.overflow = True
            return
        self.events.append(event)

    def store(self, seq: int, packet: bytes, n: int) -> None:
        c_seq = self.c_seq
        if c_seq is None:
            if not self.arena_size:
                return
            c_seq = self.c_seq = [-1] * self.cache_packets
            self.c_pos = [0] * self.cache_packets
            self.c_data = [None] * self.cache_packets
        slot = seq & (self.cache_packets - 1)
        size = self.arena_size
        old = self.c_data[slot]
        if old is not None:
            self.held -= len(old)
        if n > size or n > 0xFFFF:
            c_seq[slot] = -1
            self.c_data[slot] = None
            return
        start = self.pos
        if start % size + n > size:
            start = (start // size + 1) * size
        self.pos = start + n
        c_seq[slot] = seq
        self.c_pos[slot] = start
        self.c_data[slot] = packet
        self.held += n

    def cached(self, seq: int) -> bytes | None:
        if self.c_seq is None:
            return None
        slot = seq & (self.cache_packets - 1)
        if self.c_seq[slot] != seq or self.pos > self.c_pos[slot] + self.arena_size:
            return None  # another seq, or overwritten since
        return self.c_data[slot]


class Sub:
    """One subscriber's copy of a stream: rewriting, numbering, keyframe gate, NACK budget."""

    __slots__ = (
        "id", "peer", "ssrc", "clock_rate", "initial_seq", "initial_ts", "rtx_ssrc", "rtx_pt", "rtx_seq",
        "rewriter", "stream", "paused", "synced", "keyframe_codec", "keyframe_wait", "keyframe_since",
        "sync_seq", "last_seq", "last_ts", "last_out_time", "first_time", "packets_sent", "octets_sent",
        "retransmissions", "budget",
    )

    def __init__(self, sub: int, peer: Peer, ssrc: int, clock_rate: int, initial_seq: int, initial_ts: int,
                 rtx_ssrc: int, rtx_pt: int, rtx_seq: int) -> None:
        self.id = sub
        self.peer = peer
        self.ssrc = ssrc
        self.clock_rate = float(clock_rate)
        self.initial_seq = initial_seq & 0xFFFF
        self.initial_ts = initial_ts & 0xFFFFFFFF
        self.rtx_ssrc = rtx_ssrc
        self.rtx_pt = rtx_pt if rtx_ssrc else -1
        self.rtx_seq = rtx_seq & 0xFFFF
        self.rewriter = Rewriter(ssrc, {}, {})
        self.stream: Stream | None = None
        self.paused = False
        self.synced = False
        self.keyframe_codec = CODEC_OTHER
        self.keyframe_wait = False
        self.keyframe_since = 0.0  # when it began to hold packets (0: not yet), or last asked again
        self.sync_seq: int | None = None  # output seq of the first packet since the last sync
        self.last_seq: int | None = None
        self.last_ts = 0
        self.last_out_time = 0.0
        self.first_time: float | None = None
        self.packets_sent = 0
        self.octets_sent = 0
        self.retransmissions = 0
        self.budget = NackBudget()  # the C twin keeps the same fields in its Subscription

    def sync(self, seq: int, ts: int, now: float) -> None:
        """Continue the output numbering where it left off (or start at initial_seq/ts)."""
        if self.last_seq is None:
            out_seq = self.initial_seq
            out_ts = self.initial_ts
            self.first_time = now
        else:
            out_seq = (self.last_seq + 1) & 0xFFFF
            elapsed = max(1, int((now - self.last_out_time) * self.clock_rate))
            out_ts = (self.last_ts + elapsed) & 0xFFFFFFFF
        self.rewriter.seq_delta = out_seq - seq
        self.rewriter.ts_delta = out_ts - ts
        self.synced = True
        self.sync_seq = out_seq


def build_rtx(buf: bytearray, n: int, header_length: int, rtx_pt: int, rtx_seq: int, rtx_ssrc: int) -> bytes:
    """RFC 4588 §4: the retransmission of the rewritten packet ``buf[:n]`` on the RTX stream
    (its header, the original seq, the payload without padding)."""
    header = bytearray(buf[:header_length])
    osn = bytes(buf[2:4])
    end = n
    if header[0] & 0x20:  # strip padding: RTX carries the payload only
        end -= buf[n - 1]
        header[0] &= 0xDF
    header[1] = (header[1] & 0x80) | rtx_pt
    struct.pack_into("!H", header, 2, rtx_seq)
    struct.pack_into("!I", header, 8, rtx_ssrc)
    return bytes(header) + osn + bytes(buf[header_length:max(end, header_length)])


class NackBudget:
    """What one subscriber may get back for its NACKs (RFC 4585 §6.2.1 leaves it to us).

    - a sequence number answered less than a round trip ago (``window``) is not
      answered again ("nack_repeat"): the table remembers the last
      ``NACK_DEDUPE_SLOTS`` numbers, indexed by their low bits;
    - retransmissions are paid from a token bucket of bytes (at most
      ``NACK_BUDGET_BURST``), refilled on each NACK with ``NACK_BUDGET_FRACTION``
      of the bytes the stream received since the previous one plus
      ``NACK_BUDGET_FLOOR`` bytes per second; each cached packet costs its size as
      received, and one the bucket cannot pay for is not sent ("nack_budget").

    So a viewer gets back at most a quarter of the stream's bitrate (plus 32 kbit/s)
    however many NACKs it sends. The C twin keeps the same fields in
    ``Subscription`` and does the same arithmetic in the same order (the outputs
    of both paths are compared byte for byte).
    """

    __slots__ = ("started", "tokens", "last_time", "last_bytes", "seqs", "times")

    def __init__(self) -> None:
        self.started = False
        self.tokens = 0.0
        self.last_time = 0.0
        self.last_bytes = 0
        self.seqs: list[int] | None = None  # allocated on the first answer
        self.times: list[float] | None = None

    def refill(self, received_bytes: int, now: float) -> None:
        """Once per NACK, before its numbers: ``received_bytes`` is the stream's byte count."""
        if not self.started:
            self.started = True
            self.tokens = NACK_BUDGET_BURST
        else:
            elapsed = now - self.last_time
            if elapsed < 0:
                elapsed = 0.0
            received = received_bytes - self.last_bytes if received_bytes > self.last_bytes else 0
            self.tokens = min(NACK_BUDGET_BURST, self.tokens + NACK_BUDGET_FRACTION * float(received)
                              + NACK_BUDGET_FLOOR * elapsed)
        self.last_bytes = received_bytes
        self.last_time = now

    def repeated(self, seq: int, now: float, window: float) -> bool:
        if self.seqs is None:
            return False
        i = seq & (NACK_DEDUPE_SLOTS - 1)
        return self.seqs[i] == seq and now - self.times[i] < window

    def spend(self, size: int) -> bool:
        if self.tokens < size:
            return False
        self.tokens -= size
        return True

    def answered(self, seq: int, now: float) -> None:
        if self.seqs is None:
            self.seqs = [-1] * NACK_DEDUPE_SLOTS
            self.times = [0.0] * NACK_DEDUPE_SLOTS
        i = seq & (NACK_DEDUPE_SLOTS - 1)
        self.seqs[i] = seq
        self.times[i] = now
