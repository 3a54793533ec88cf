"""The C forwarding plane: :class:`sfu.plane.ForwardingPlane` over ``sfu._fast.datapath``.

A thin adapter: the control plane's integer ids name the C objects (``Peer``,
``Stream``, ``Subscription``; each made with ``owner=id`` so that the C callbacks
map back to ids), a subscription has its own ``sfu._fast.packet.Rewriter``, and
each stream's fan-out tuple (``Stream.set_subscriptions``) is kept here in bind
order. Per packet nothing here runs: the C path receives, rewrites and sends.

It owns the C objects and the libsrtp sessions it is given (``set_keys``; a
removed stream or subscription takes its SSRC's libsrtp state with it); the
control plane owns who they are for (sfu.router).
"""

from __future__ import annotations

from ._fast.datapath import Datapath
from ._fast.packet import Rewriter
from .plane import ForwardingPlane, PlaneListener, StreamStats, SubscriptionStats
from .tracks import NACK_BUDGET_BURST, NACK_BUDGET_FLOOR, NACK_BUDGET_FRACTION
from .rtp import CODEC_OTHER
from .srtp import PROFILES, SrtpPair

_PROFILE_NAMES = {number: name for name, number in PROFILES.items()}


class _Sub:
    """One subscription: the C object, its destination, what it is bound to, its RTX."""

    __slots__ = ("c", "peer", "stream", "rtx_ssrc", "rtx_pt")

    def __init__(self, c, peer: int, rtx_ssrc: int, rtx_pt: int) -> None:
        self.c = c
        self.peer = peer
        self.stream: int | None = None
        self.rtx_ssrc = rtx_ssrc
        self.rtx_pt = rtx_pt if rtx_ssrc else -1


class CPlane(ForwardingPlane):
    """The C data path behind the forwarding-plane interface (``datapath`` for C-only tests)."""

    name = "c"

    def __init__(self, listener: PlaneListener, *, capture: bool = False) -> None:
        self.listener = listener
        self.datapath = Datapath(listener.slow_path, self._unknown_ssrc, capture=capture)
        self.datapath.keyframe_needed = self._keyframe_needed
        self._peers: dict[int, object] = {}  # id -> datapath.Peer
        self._streams: dict[int, object] = {}  # id -> datapath.Stream
        self._subs: dict[int, _Sub] = {}
        self._srtp: dict[int, SrtpPair] = {}  # peer id -> the pair its C Peer uses (stream removal)
        self._fanout: dict[int, dict[int, None]] = {}  # stream id -> its subscriptions, in bind order
        self._stream_peer: dict[int, int] = {}  # stream id -> its peer id
        self._sock = None
        self._loop = None

    @property
    def captured(self) -> list:
        return self.datapath.captured

    # -- the socket ------------------------------------------------------------------
    def open(self, sock, loop) -> None:
        self._sock = sock
        self._loop = loop
        self.datapath.open(sock.fileno(), loop)
        loop.add_reader(sock.fileno(), self.datapath.on_readable)

    def close(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self.datapath.close()
        self._sock = self._loop = None

    def feed(self, data: bytes, addr: tuple, now: float) -> None:
        self.datapath.feed(data, addr, now)

    def send(self, data: bytes, addr: tuple) -> None:
        self.datapath.sendto(data, addr)

    # -- peers -------------------------------------------------------------------------
    def add_peer(self, peer: int) -> None:
        if peer in self._peers:
            raise ValueError(f"peer {peer} exists")
        self._peers[peer] = self.datapath.new_peer(peer)

    def set_address(self, peer: int, addr: tuple) -> None:
        self._peers[peer].set_address(addr)

    def set_keys(self, peer: int, profile, local_key: bytes, remote_key: bytes) -> None:
        name = profile if isinstance(profile, str) else _PROFILE_NAMES[profile]
        pair = SrtpPair(name, local_key, remote_key)
        self._peers[peer].set_srtp(pair)
        self._srtp[peer] = pair

    def remove_peer(self, peer: int) -> None:
        c = self._peers.get(peer)
        if c is None:
            return
        for sub_id in [s for s, sub in self._subs.items() if sub.peer == peer]:
            self.remove_subscription(sub_id)
        for stream_id in [s for s, stream in self._streams.items() if stream.peer is c]:
            self.remove_stream(stream_id)
        c.close()
        del self._peers[peer]
        self._srtp.pop(peer, None)

    # -- streams -------------------------------------------------------------------------
    def add_stream(self, stream: int, peer: int, ssrc: int, payload_type: int, clock_rate: int, *,
                   nack: bool = True, nack_max_gap: int = 256, cache_packets: int = 1024,
                   cache_bytes: int = 512 * 1024) -> None:
        if stream in self._streams:
            raise ValueError(f"stream {stream} exists")
        self._streams[stream] = self._peers[peer].add_stream(
            ssrc, payload_type, clock_rate, nack=nack, nack_max_gap=nack_max_gap,
            cache_packets=cache_packets, cache_bytes=cache_bytes, owner=stream)
        self._fanout[stream] = {}
        self._stream_peer[stream] = peer

    def remove_stream(self, stream: int) -> None:
        c = self._streams.pop(stream, None)
        if c is None:
            return
        c.close()
        pair = self._srtp.get(self._stream_peer.pop(stream, None))
        if pair is not None:  # libsrtp's replay state of the SSRC (~370 bytes)
            pair.remove_inbound_stream(c.ssrc)
        for sub_id in self._fanout.pop(stream, {}):
            self._unbind(self._subs[sub_id])

    # -- subscriptions ---------------------------------------------------------------------
    def add_subscription(self, sub: int, peer: int, ssrc: int, clock_rate: int, *, initial_seq: int,
                         initial_ts: int, rtx_ssrc: int = 0, rtx_payload_type: int = -1, rtx_seq: int = 0) -> None:
        if sub in self._subs:
            raise ValueError(f"subscription {sub} exists")
        c = self._peers[peer].subscription(Rewriter(ssrc, {}, {}), clock_rate)
        c.initial_seq = initial_seq
        c.initial_ts = initial_ts
        c.rtx_seq = rtx_seq
        self._subs[sub] = _Sub(c, peer, rtx_ssrc, rtx_payload_type)

    def bind(self, sub: int, stream: int | None, pt_map: dict[int, int], ext_map: dict[int, int],
             keyframe_codec: int, rtx_payload_type: int | None = None) -> None:
        s = self._subs[sub]
        if stream is not None and stream not in self._streams:
            raise KeyError(stream)
        if rtx_payload_type is not None:
            s.rtx_pt = rtx_payload_type if s.rtx_ssrc else -1
        if s.stream != stream:
            if s.stream is not None:
                self._fanout[s.stream].pop(sub, None)
                self._push(s.stream)
            s.stream = stream
            if stream is not None:
                self._fanout[stream][sub] = None
        c = s.c
        c.synced = False
        c.keyframe_codec = keyframe_codec if stream is not None else CODEC_OTHER
        c.keyframe_wait = c.keyframe_codec != CODEC_OTHER
        c.keyframe_since = 0.0
        if stream is not None:
            c.rewriter.set_pt_map(pt_map)
            c.rewriter.set_ext_map(ext_map)
            self._push(stream)

    def _unbind(self, s: _Sub) -> None:
        s.stream = None
        c = s.c
        c.synced = False
        c.keyframe_codec = CODEC_OTHER
        c.keyframe_wait = False
        c.keyframe_since = 0.0

    def set_paused(self, sub: int, paused: bool) -> None:
        c = self._subs[sub].c
        if c.paused and not paused:
            c.synced = False
            c.keyframe_wait = c.keyframe_codec != CODEC_OTHER
            c.keyframe_since = 0.0
        c.paused = paused

    def remove_subscription(self, sub: int) -> None:
        s = self._subs.pop(sub, None)
        if s is None:
            return
        if s.stream is not None:
            self._fanout[s.stream].pop(sub, None)
            self._push(s.stream)
            s.stream = None
        pair = self._srtp.get(s.peer)
        if pair is not None:  # libsrtp's outbound state of its SSRCs (~370 bytes each)
            pair.remove_outbound_stream(s.c.rewriter.ssrc)
            if s.rtx_ssrc:
                pair.remove_outbound_stream(s.rtx_ssrc)

    def _push(self, stream: int) -> None:
        c = self._streams.get(stream)
        if c is not None and not c.closed:
            subs = self._subs
            c.set_subscriptions([subs[i].c for i in self._fanout[stream]])

    def retransmit(self, sub: int, seqs: list[int], now: float, window: float) -> None:
        s = self._subs[sub]
        if s.stream is None:
            return
        s.c.retransmit(self._streams[s.stream], seqs, now, window, s.rtx_pt, s.rtx_ssrc,
                       NACK_BUDGET_FRACTION, NACK_BUDGET_FLOOR, NACK_BUDGET_BURST)

    # -- what comes back -----------------------------------------------------------------------
    def _unknown_ssrc(self, peer: int, packet: bytes, ssrc: int) -> bool:
        if peer not in self._peers:
            return False
        return bool(self.listener.unknown_ssrc(peer, ssrc, packet))

    def _keyframe_needed(self, stream: int) -> None:
        if stream in self._streams:
            self.listener.keyframe_needed(stream)

    def take_dirty(self) -> list[int]:
        streams = self._streams
        return [s.owner for s in self.datapath.take_dirty() if streams.get(s.owner) is s]

    def drain_events(self, stream: int) -> list[tuple]:
        return self._streams[stream].drain_events()

    def stream_stats(self, stream: int) -> StreamStats:
        c = self._streams[stream]
        packets, size, base, highest, jitter = c.stats()
        return StreamStats(packets, size, base, highest, jitter, c.first_packet_time)

    def subscription_stats(self, sub: int) -> SubscriptionStats:
        c = self._subs[sub].c
        rw = c.rewriter
        return SubscriptionStats(
            packets_sent=c.packets_sent, octets_sent=c.octets_sent, retransmissions=c.retransmissions,
            synced=c.synced, seq_delta=rw.seq_delta, ts_delta=rw.ts_delta, last_out_seq=c.last_out_seq,
            last_out_ts=c.last_out_ts, last_out_time=c.last_out_time, first_packet_time=c.first_packet_time,
            keyframe_wait=c.keyframe_wait, rtx_seq=c.rtx_seq, nack_tokens=c.nack_tokens)

    def cached(self, stream: int, seq: int) -> bytes | None:
        return self._streams[stream].cached(seq)

    def take_counters(self) -> tuple[dict[str, int], dict[str, int]]:
        return self.datapath.take_counters()

    def latency(self) -> dict:
        return self.datapath.latency()

    def queued_bytes(self) -> int:
        return self.datapath.queued_bytes

    def memory(self) -> int:
        return sum(c.mapped for c in self._streams.values())
