"""The pure-Python forwarding plane: :class:`sfu.plane.ForwardingPlane` in Python.

The reference and oracle of the C data path (``sfu.plane_c.CPlane`` over
``sfu._fast.datapath``): fed the same datagrams and commands, it sends the same
bytes, counts the same counters and keeps the same statistics and NACK log
(``tests/test_plane.py`` compares them). Each step mirrors its C twin::

    datagram ─► _datagram: demux by first byte (RFC 7983 §7, RFC 5761 §4)
       0..3     STUN ──────────────────────────────► listener.slow_path
       from an address no peer has ───────────────► drop "unknown_source"
       20..63   DTLS, 128..191 RTCP ──────────────► listener.slow_path
       128..191 RTP ─► _rtp: unprotect (the peer's SrtpPair), header check,
                     stream by SSRC (unknown: listener.unknown_ssrc)
                  ─► Stream.on_packet: statistics, NACK log, packet cache
                  ─► _forward: per subscription keyframe gate, sync, rewrite
                     (sfu.rtp.Rewriter), padding-only timestamp hold, protect, send

Subscriptions answer NACKs (``retransmit``) from the stream's cache within the
budget of ``sfu.plane_py_state.NackBudget``, as RTX (RFC 4588 §4) when negotiated
(the RTX payload type can change with ``bind``). It owns its peers, streams and
subscriptions with their state (sfu/plane_py_state.py) and their libsrtp
sessions; the control plane owns who they are for (sfu.router).

Sockets: ``open`` reads the non-blocking UDP socket with ``loop.add_reader`` and
sends with ``sendto``; when the kernel's buffer is full, datagrams wait in a
queue of at most ``SEND_QUEUE_LIMIT`` bytes, sent when the socket is writable
again (beyond it they are dropped, "send_buffer_full"). ``capture=True`` keeps
what would be sent in ``captured`` instead (tests).
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque

from pylibsrtp import Error as SrtpError

from .plane import CLEAR, LATENCY_BUCKETS, ForwardingPlane, PlaneListener, StreamStats, SubscriptionStats
from .plane_py_state import Peer, Stream, Sub, address, build_rtx
from .tracks import KEYFRAME_RETRY
from .rtp import CODEC_OTHER, is_keyframe, parse_rtp_header
from .srtp import PROFILES, SrtpPair

logger = logging.getLogger("sfu.plane_py")

_PROFILE_NAMES = {number: name for name, number in PROFILES.items()}

RX_SLOT = 2048  # longest datagram received (longer: "too_long"), as the C path's
RX_MAX = 1500  # longest SRTP packet unprotected (pylibsrtp's limit too)
RX_PER_CALL = 1024  # datagrams read per readiness callback (then yield to the loop)
SEND_QUEUE_LIMIT = 4 * 1024 * 1024  # bytes waiting for a full socket before sends are dropped
LATENCY_SAMPLE_MASK = 63  # 1 forwarded datagram in 64 is timed

# the counters, in the C path's order and with its names (take_counters)
STAT_NAMES = (
    "rtp_forwarded", "rx_packets", "rx_bytes", "rx_rtp", "tx_packets", "tx_bytes", "slow_path",
    "recv_calls", "send_calls", "batches_forwarding", "retransmissions", "nack_misses",
    "keyframe_waits",
)
DROP_NAMES = (
    "unknown_source", "not_connected", "srtp_auth", "srtp_replay", "malformed", "unknown_ssrc",
    "unknown_payload_type", "no_subscriber", "srtp_protect", "send_buffer_full", "send_error",
    "too_long", "internal_error", "recv_error", "nack_repeat", "nack_budget",
)
(C_RTP_FORWARDED, C_RX_PACKETS, C_RX_BYTES, C_RX_RTP, C_TX_PACKETS, C_TX_BYTES, C_SLOW_PATH, C_RECV_CALLS,
 C_SEND_CALLS, C_BATCHES_FORWARDING, C_RETRANSMISSIONS, C_NACK_MISSES, C_KEYFRAME_WAITS,
 D_UNKNOWN_SOURCE, D_NOT_CONNECTED, D_SRTP_AUTH, D_SRTP_REPLAY, D_MALFORMED, D_UNKNOWN_SSRC,
 D_UNKNOWN_PAYLOAD_TYPE, D_NO_SUBSCRIBER, D_SRTP_PROTECT, D_SEND_BUFFER_FULL, D_SEND_ERROR, D_TOO_LONG,
 D_INTERNAL_ERROR, D_RECV_ERROR, D_NACK_REPEAT, D_NACK_BUDGET) = range(len(STAT_NAMES) + len(DROP_NAMES))
_NAMES = STAT_NAMES + DROP_NAMES

_pack_ts = struct.Struct("!I").pack_into


class PythonPlane(ForwardingPlane):
    """The forwarding plane in pure Python (``sfu.rtp``, pylibsrtp): the oracle of the C one."""

    name = "pure"

    def __init__(self, listener: PlaneListener, *, capture: bool = False) -> None:
        self.listener = listener
        self.capture = capture
        self.captured: list = []
        self._peers: dict[int, Peer] = {}
        self._streams: dict[int, Stream] = {}
        self._subs: dict[int, Sub] = {}
        self._table: dict[tuple, Peer] = {}  # source address key -> peer
        self._targets: dict[tuple, tuple] = {}  # send(): address -> its canonical form (bounded)
        self._dirty: list[Stream] = []
        self._c = [0] * len(_NAMES)
        self._taken = [0] * len(_NAMES)
        self._buf = bytearray(RX_SLOT)  # a rewritten copy (never longer than its source, <= RX_MAX)
        self._view = memoryview(self._buf)
        self._sock = None
        self._loop = None
        self._fd = -1
        self._queue: deque[tuple[bytes, tuple]] = deque()
        self._queued = 0
        self._writing = False
        self._tick = 0
        self._hist = [0] * (len(LATENCY_BUCKETS) + 1)
        self._hist_sum = 0.0
        self._hist_count = 0

    # -- the socket ----------------------------------------------------------------------
    def open(self, sock, loop) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._loop = loop
        self._fd = sock.fileno()
        loop.add_reader(self._fd, self._on_readable)

    def close(self) -> None:
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
            if self._writing:
                self._loop.remove_writer(self._fd)
        self._writing = False
        self._sock = self._loop = None
        self._fd = -1
        self._queue.clear()
        self._queued = 0

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        recv = sock.recvfrom
        c = self._c
        datagram = self._datagram
        perf = time.perf_counter
        monotonic = time.monotonic
        forwarded_any = False
        for _ in range(RX_PER_CALL):
            try:
                data, addr = recv(RX_SLOT + 1)
            except BlockingIOError:
                break
            except OSError:
                c[D_RECV_ERROR] += 1
                break
            c[C_RECV_CALLS] += 1
            if len(data) > RX_SLOT:
                c[C_RX_PACKETS] += 1
                c[D_TOO_LONG] += 1
                continue
            before = c[C_RTP_FORWARDED]
            timed = not self._tick & LATENCY_SAMPLE_MASK
            t0 = perf() if timed else 0.0  # receive -> its copies sent (the next one if it forwards nothing)
            try:
                datagram(data, addr, monotonic())
            except Exception:  # never let one bad packet stop the worker
                c[D_INTERNAL_ERROR] += 1
                logger.exception("packet handling failed")
                continue
            if c[C_RTP_FORWARDED] != before:
                if timed:
                    self._record(perf() - t0)
                self._tick += 1
                forwarded_any = True
            elif not timed:
                self._tick += 1
        if forwarded_any:
            c[C_BATCHES_FORWARDING] += 1

    def _record(self, seconds: float) -> None:
        i = 0
        for bound in LATENCY_BUCKETS:
            if seconds <= bound:
                break
            i += 1
        self._hist[i] += 1
        self._hist_count += 1
        self._hist_sum += seconds

    def feed(self, data: bytes, addr: tuple, now: float) -> None:
        data = bytes(data)
        if len(data) > RX_SLOT:
            self._c[C_RX_PACKETS] += 1
            self._c[D_TOO_LONG] += 1
            return
        try:
            addr = address(addr)[1]
        except (ValueError, IndexError, TypeError):
            addr = None
        self._datagram(data, addr, now)

    def send(self, data: bytes, addr: tuple) -> None:
        data = bytes(data)
        if len(data) > RX_SLOT:
            self._c[D_SEND_ERROR] += 1
            return
        target = self._targets.get(addr)
        if target is None:
            if len(self._targets) >= 4096:
                self._targets.clear()
            target = self._targets[addr] = address(addr)[1]
        self._send(data, target)

    def _send(self, data: bytes, addr) -> None:
        c = self._c
        if self.capture:
            self.captured.append((data, addr))
            c[C_TX_PACKETS] += 1
            c[C_TX_BYTES] += len(data)
            return
        sock = self._sock
        if sock is None:
            return
        if addr is None:
            c[D_SEND_ERROR] += 1
            return
        if not self._queue:
            c[C_SEND_CALLS] += 1
            try:
                sock.sendto(data, addr)
            except BlockingIOError:
                pass  # the kernel's buffer is full: queue it
            except OSError:
                c[D_SEND_ERROR] += 1
                return
            else:
                c[C_TX_PACKETS] += 1
                c[C_TX_BYTES] += len(data)
                return
            self._wait_writable()
        if self._queued + len(data) > SEND_QUEUE_LIMIT:
            c[D_SEND_BUFFER_FULL] += 1
            return
        self._queue.append((data, addr))
        self._queued += len(data)

    def _wait_writable(self) -> None:
        if self._writing or self._loop is None:
            return
        try:
            self._loop.add_writer(self._fd, self._on_writable)
            self._writing = True
        except Exception:
            logger.exception("add_writer failed")

    def _on_writable(self) -> None:
        c = self._c
        queue = self._queue
        sock = self._sock
        while queue and sock is not None:
            data, addr = queue[0]
            c[C_SEND_CALLS] += 1
            try:
                sock.sendto(data, addr)
            except BlockingIOError:
                return
            except OSError:
                c[D_SEND_ERROR] += 1
            else:
                c[C_TX_PACKETS] += 1
                c[C_TX_BYTES] += len(data)
            queue.popleft()
            self._queued -= len(data)
        if self._writing and self._loop is not None:
            self._loop.remove_writer(self._fd)
        self._writing = False

    # -- peers ---------------------------------------------------------------------------
    def add_peer(self, peer: int) -> None:
        if peer in self._peers:
            raise ValueError(f"peer {peer} exists")
        self._peers[peer] = Peer(peer)

    def set_address(self, peer: int, addr: tuple) -> None:
        p = self._peers[peer]
        key, canonical = address(addr)
        if p.registered and self._table.get(p.key) is p:
            del self._table[p.key]
        other = self._table.get(key)
        if other is not None and other is not p:
            other.registered = False  # the newest binding of an address wins
        self._table[key] = p
        p.key = key
        p.addr = canonical
        p.registered = True

    def set_keys(self, peer: int, profile, local_key: bytes, remote_key: bytes) -> None:
        p = self._peers[peer]
        name = profile if isinstance(profile, str) else _PROFILE_NAMES[profile]
        pair = SrtpPair(name, local_key, remote_key)
        p.srtp = pair
        p.protect = pair.tx.protect
        p.unprotect = pair.rx.unprotect

    def remove_peer(self, peer: int) -> None:
        p = self._peers.get(peer)
        if p is None:
            return
        for sub_id in [s.id for s in self._subs.values() if s.peer is p]:
            self.remove_subscription(sub_id)
        for stream in list(p.streams.values()):
            self.remove_stream(stream.id)
        if p.registered and self._table.get(p.key) is p:
            del self._table[p.key]
        p.registered = False
        p.srtp = p.protect = p.unprotect = None
        del self._peers[peer]

    # -- streams ---------------------------------------------------------------------------
    def add_stream(self, stream: int, peer: int, ssrc: int, payload_type: int, clock_rate: int, *,
                   nack: bool = True, nack_max_gap: int = 256, cache_packets: int = 1024,
                   cache_bytes: int = 512 * 1024) -> None:
        if stream in self._streams:
            raise ValueError(f"stream {stream} exists")
        p = self._peers[peer]
        if cache_packets < 1 or cache_packets & (cache_packets - 1) or cache_packets > (1 << 20):
            raise ValueError("cache_packets must be a power of two")
        if not 0 <= ssrc <= 0xFFFFFFFF or not 0 <= payload_type <= 127:
            raise ValueError("bad SSRC or payload type")
        if ssrc in p.streams:
            raise ValueError(f"SSRC {ssrc} already has a stream on this peer")
        s = Stream(stream, p, ssrc, payload_type, clock_rate, nack, nack_max_gap, cache_packets, cache_bytes,
                   self._dirty)
        p.streams[ssrc] = s
        self._streams[stream] = s

    def remove_stream(self, stream: int) -> None:
        s = self._streams.pop(stream, None)
        if s is None:
            return
        if s.peer.streams.get(s.ssrc) is s:
            del s.peer.streams[s.ssrc]
            if s.peer.srtp is not None:  # libsrtp's replay state of the SSRC (~370 bytes)
                s.peer.srtp.remove_inbound_stream(s.ssrc)
        for sub in s.subs:
            self._unbind(sub)
        s.subs = ()
        s.c_seq = s.c_pos = s.c_data = None
        s.held = 0
        s.events = []

    # -- subscriptions ---------------------------------------------------------------------
    def add_subscription(self, sub: int, peer: int, ssrc: int, clock_rate: int, *, initial_seq: int,
                         initial_ts: int, rtx_ssrc: int = 0, rtx_payload_type: int = -1, rtx_seq: int = 0) -> None:
        if sub in self._subs:
            raise ValueError(f"subscription {sub} exists")
        p = self._peers[peer]
        self._subs[sub] = Sub(sub, p, ssrc, clock_rate, initial_seq, initial_ts, rtx_ssrc, rtx_payload_type,
                               rtx_seq)

    def bind(self, sub: int, stream: int | None, pt_map: dict[int, int], ext_map: dict[int, int],
             keyframe_codec: int, rtx_payload_type: int | None = None) -> None:
        s = self._subs[sub]
        target = self._streams[stream] if stream is not None else None
        if rtx_payload_type is not None:
            s.rtx_pt = rtx_payload_type if s.rtx_ssrc else -1
        if target is not None:  # checked before anything changes
            s.rewriter.set_pt_map(pt_map)
            s.rewriter.set_ext_map(ext_map)
        if s.stream is not target:
            if s.stream is not None:
                s.stream.subs = tuple(x for x in s.stream.subs if x is not s)
            s.stream = target
            if target is not None:
                target.subs = target.subs + (s,)
        s.synced = False
        s.keyframe_codec = keyframe_codec if target is not None else CODEC_OTHER
        s.keyframe_wait = s.keyframe_codec != CODEC_OTHER
        s.keyframe_since = 0.0

    @staticmethod
    def _unbind(s: Sub) -> None:
        s.stream = None
        s.synced = False
        s.keyframe_codec = CODEC_OTHER
        s.keyframe_wait = False
        s.keyframe_since = 0.0

    def set_paused(self, sub: int, paused: bool) -> None:
        s = self._subs[sub]
        if s.paused and not paused:
            s.synced = False
            s.keyframe_wait = s.keyframe_codec != CODEC_OTHER
            s.keyframe_since = 0.0
        s.paused = bool(paused)

    def remove_subscription(self, sub: int) -> None:
        s = self._subs.pop(sub, None)
        if s is None:
            return
        if s.stream is not None:
            s.stream.subs = tuple(x for x in s.stream.subs if x is not s)
            s.stream = None
        srtp = s.peer.srtp
        if srtp is not None:  # libsrtp's outbound state of its SSRCs (~370 bytes each)
            srtp.remove_outbound_stream(s.ssrc)
            if s.rtx_ssrc:
                srtp.remove_outbound_stream(s.rtx_ssrc)

    # -- per datagram ----------------------------------------------------------------------
    def _datagram(self, data: bytes, addr, now: float) -> None:
        """RFC 7983 §7 demux, then the RTP path or the slow path."""
        c = self._c
        n = len(data)
        c[C_RX_PACKETS] += 1
        c[C_RX_BYTES] += n
        if n and data[0] <= 3:
            self._slow(data, addr)  # STUN: ICE in the control plane (it learns addresses)
            return
        if addr is None:
            peer = None
        elif len(addr) == 2:  # IPv4, as the kernel spells it
            peer = self._table.get(addr)
        else:  # IPv6: a link-local host comes as "fe80::1%eth0", the scope is addr[3]
            peer = self._table.get((addr[0].split("%")[0], addr[1], addr[3]))
        if peer is None:
            c[D_UNKNOWN_SOURCE] += 1
            return
        if not n:
            c[D_MALFORMED] += 1
            return
        first = data[0]
        if 20 <= first <= 63:
            self._slow(data, addr)  # DTLS
        elif 128 <= first <= 191 and n >= 2:
            if 192 <= data[1] <= 223:
                self._slow(data, addr)  # RTCP (RFC 5761 §4)
            else:
                self._rtp(peer, data, n, now)
        else:
            c[D_MALFORMED] += 1

    def _slow(self, data: bytes, addr) -> None:
        self._c[C_SLOW_PATH] += 1
        try:
            self.listener.slow_path(data, addr)
        except Exception:
            self._c[D_INTERNAL_ERROR] += 1
            logger.exception("slow path failed")

    def _rtp(self, peer: Peer, data: bytes, n: int, now: float) -> None:
        c = self._c
        c[C_RX_RTP] += 1
        unprotect = peer.unprotect
        if unprotect is None:
            c[D_NOT_CONNECTED] += 1
            return
        if n > RX_MAX:
            c[D_TOO_LONG] += 1
            return
        try:
            plain = unprotect(data)
        except SrtpError as exc:
            c[D_SRTP_REPLAY if "replay" in str(exc) else D_SRTP_AUTH] += 1
            return
        except ValueError:
            c[D_TOO_LONG] += 1
            return
        try:
            _pt, _marker, seq, ts, ssrc, hlen = parse_rtp_header(plain)
        except ValueError:
            c[D_MALFORMED] += 1
            return
        stream = peer.streams.get(ssrc)
        if stream is None:
            if self._learn(peer, plain, ssrc):
                stream = peer.streams.get(ssrc)
            if stream is None:
                # libsrtp made an inbound stream for this SSRC when it authenticated the
                # packet: forget it, or a peer sending made-up SSRCs grows memory
                if peer.srtp is not None:
                    peer.srtp.remove_inbound_stream(ssrc)
                c[D_UNKNOWN_SSRC] += 1
                return
        if plain[1] & 0x7F != stream.payload_type:
            c[D_UNKNOWN_PAYLOAD_TYPE] += 1  # e.g. RTX or FEC we did not negotiate
            return
        n = len(plain)
        stream.on_packet(plain, n, seq, ts, now)
        self._forward(stream, plain, n, seq, ts, hlen, now)

    def _learn(self, peer: Peer, plain: bytes, ssrc: int) -> bool:
        try:
            return bool(self.listener.unknown_ssrc(peer.id, ssrc, plain))
        except Exception:
            self._c[D_INTERNAL_ERROR] += 1
            logger.exception("unknown_ssrc callback failed")
            return False

    def _keyframe_needed(self, st: Stream) -> None:
        if self._streams.get(st.id) is not st:
            return  # removed by a callback of this very packet
        try:
            self.listener.keyframe_needed(st.id)
        except Exception:
            self._c[D_INTERNAL_ERROR] += 1
            logger.exception("keyframe_needed callback failed")

    def _forward(self, st: Stream, plain: bytes, n: int, seq: int, ts: int, hlen: int, now: float) -> None:
        """The fan-out: one rewritten, protected copy per subscription."""
        subs = st.subs
        c = self._c
        if not subs:
            c[D_NO_SUBSCRIBER] += 1
            return
        # padding only (a bandwidth probe): sent with the subscriber's last timestamp, or a
        # receiver that assembles frames by timestamp (aiortc) decodes an empty frame
        hold_ts = plain[0] & 0x20 and hlen + plain[-1] == n
        buf = self._buf
        view = self._view
        key = None  # does this packet start a keyframe (looked at once, when someone waits)
        sent = 0
        for sub in subs:
            dest = sub.peer
            if dest.protect is None or sub.paused or not dest.registered:
                continue
            if sub.keyframe_wait:
                # the keyframe gate: nothing sent or numbered before the stream's next
                # keyframe; from it the numbering continues (sync)
                if key is None:
                    key = is_keyframe(sub.keyframe_codec, plain)
                if not key:
                    c[C_KEYFRAME_WAITS] += 1
                    if sub.keyframe_since == 0.0:
                        sub.keyframe_since = now
                    elif now - sub.keyframe_since >= KEYFRAME_RETRY:
                        sub.keyframe_since = now  # the request (or its keyframe) was lost: ask again
                        self._keyframe_needed(st)
                    continue
                sub.keyframe_wait = False
                sub.keyframe_since = 0.0
                sub.synced = False
            if not sub.synced:
                sub.sync(seq, ts, now)
            rw = sub.rewriter
            try:
                m = rw.rewrite(plain, buf)
            except ValueError:  # a header extension element overruns its block (RFC 8285)
                c[D_MALFORMED] += 1
                return
            if m < 0:
                continue  # payload type not mapped for this subscriber
            held = hold_ts and sub.last_seq is not None
            if held:
                _pack_ts(buf, 4, sub.last_ts)
            try:
                out = dest.protect(bytes(view[:m]))
            except SrtpError:
                c[D_SRTP_PROTECT] += 1
                continue
            self._send(out, dest.addr)
            sub.last_seq = (seq + rw._seq_delta) & 0xFFFF
            if not held:
                sub.last_ts = (ts + rw._ts_delta) & 0xFFFFFFFF
            sub.last_out_time = now
            sub.packets_sent += 1
            sub.octets_sent += m
            sent += 1
        c[C_RTP_FORWARDED] += sent

    # -- NACK answers ----------------------------------------------------------------------
    def retransmit(self, sub: int, seqs: list[int], now: float, window: float) -> None:
        s = self._subs[sub]
        st = s.stream
        dest = s.peer
        if st is None or dest.protect is None:
            return
        c = self._c
        budget = s.budget
        budget.refill(st.bytes, now)
        rw = s.rewriter
        rtx_pt = s.rtx_pt
        buf = bytearray(RX_SLOT)
        for value in seqs:
            out_seq = int(value) & 0xFFFF
            if s.keyframe_wait or not s.synced or s.sync_seq is None \
                    or (out_seq - s.sync_seq) & 0xFFFF >= 0x8000:
                # before this numbering started (before the keyframe gate opened, or of
                # another stream): the cache holds no packet of this subscriber for it
                c[C_NACK_MISSES] += 1
                continue
            if budget.repeated(out_seq, now, window):
                c[D_NACK_REPEAT] += 1
                continue
            plain = st.cached((out_seq - rw._seq_delta) & 0xFFFF)
            if plain is None:
                c[C_NACK_MISSES] += 1
                continue
            size = len(plain)
            if not budget.spend(size):
                c[D_NACK_BUDGET] += 1
                continue
            budget.answered(out_seq, now)
            try:
                m = rw.rewrite(plain, buf)
            except ValueError:  # a cached packet with a malformed RFC 8285 element
                c[D_MALFORMED] += 1
                continue
            if m < 0:
                continue  # payload type not mapped for this subscriber
            if s.last_seq is not None and plain[0] & 0x20 \
                    and parse_rtp_header(plain)[5] + plain[-1] == size:
                _pack_ts(buf, 4, s.last_ts)  # a padding-only packet, as _forward sent it
            if rtx_pt >= 0:
                s.rtx_seq = (s.rtx_seq + 1) & 0xFFFF
                data = build_rtx(buf, m, parse_rtp_header(buf[:m])[5], rtx_pt, s.rtx_seq, s.rtx_ssrc)
            else:
                data = bytes(buf[:m])
            try:
                out = dest.protect(data)
            except SrtpError:
                c[D_SRTP_PROTECT] += 1
                continue
            self._send(out, dest.addr)
            s.retransmissions += 1
            c[C_RETRANSMISSIONS] += 1

    # -- what comes back -------------------------------------------------------------------
    def take_dirty(self) -> list[int]:
        streams = self._streams
        out = [st.id for st in self._dirty if streams.get(st.id) is st]
        self._dirty.clear()  # (the list the streams append to)
        return out

    def drain_events(self, stream: int) -> list[tuple]:
        st = self._streams[stream]
        out = [(CLEAR, 0, 0, 0.0)] if st.overflow else []
        out.extend(st.events)
        st.events = []
        st.overflow = False
        st.dirty = False
        return out

    def stream_stats(self, stream: int) -> StreamStats:
        st = self._streams[stream]
        return StreamStats(st.packets, st.bytes, st.base, st.highest, st.jitter, st.first_time)

    def subscription_stats(self, sub: int) -> SubscriptionStats:
        s = self._subs[sub]
        rw = s.rewriter
        has_last = s.last_seq is not None
        return SubscriptionStats(
            packets_sent=s.packets_sent, octets_sent=s.octets_sent, retransmissions=s.retransmissions,
            synced=s.synced, seq_delta=rw.seq_delta, ts_delta=rw.ts_delta, last_out_seq=s.last_seq,
            last_out_ts=s.last_ts if has_last else None, last_out_time=s.last_out_time,
            first_packet_time=s.first_time, keyframe_wait=s.keyframe_wait, rtx_seq=s.rtx_seq,
            nack_tokens=s.budget.tokens if s.budget.started else None)

    def cached(self, stream: int, seq: int) -> bytes | None:
        return self._streams[stream].cached(int(seq) & 0xFFFF)

    def take_counters(self) -> tuple[dict[str, int], dict[str, int]]:
        stats: dict[str, int] = {}
        drops: dict[str, int] = {}
        c, taken = self._c, self._taken
        for i, name in enumerate(_NAMES):
            delta = c[i] - taken[i]
            if delta:
                taken[i] = c[i]
                (stats if i < D_UNKNOWN_SOURCE else drops)[name] = delta
        return stats, drops

    def latency(self) -> dict:
        out = []
        total = 0
        for i, count in enumerate(self._hist):
            total += count
            out.append((LATENCY_BUCKETS[i] if i < len(LATENCY_BUCKETS) else float("inf"), total))
        return {"buckets": out, "count": self._hist_count, "sum": self._hist_sum}

    def queued_bytes(self) -> int:
        return self._queued

    def memory(self) -> int:
        """Bytes of cached packets and logged events held now (approximate)."""
        return sum(st.held + 8 * st.cache_packets * (st.c_seq is not None) + 40 * len(st.events)
                   for st in self._streams.values())
