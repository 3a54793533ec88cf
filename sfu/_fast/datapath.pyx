# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The forwarding path of one worker in C: RTP in, RTP out, no Python per packet.

::

    UDP socket ──recvmmsg──► demux by first byte (RFC 7983 §7, RFC 5761 §4)
       0..3     STUN ─────────────────────────────► slow_path(data, addr)
       from an address no Peer has ──────────────► drop "unknown_source"
       20..63   DTLS ─────────────────────────────► slow_path(data, addr)
       128..191 RTCP (2nd byte 192..223) ─────────► slow_path(data, addr)
       128..191 RTP ─► Peer by source address (hash table of sockaddr)
                    ─► srtp_unprotect in place (libsrtp, direct call)
                    ─► header check ─► Stream by SSRC (unknown: unknown_ssrc callback)
                    ─► receive statistics, NACK gap log, packet cache
                    ─► for each Subscription of the stream (a tuple snapshot):
                          copy + rewrite (packet.Rewriter._rewrite) into a send slot
                          ─► srtp_protect with the subscriber's session ─► queue
       ──sendmmsg──► the queue, at the end of each receive batch (sooner once FLUSH_AT copies wait)

The Python side (``sfu.engine``, ``sfu.router``) owns the objects and changes
the tables through a small API: ``Datapath.new_peer(owner)`` -> ``Peer``
(``set_address``, ``set_srtp``, ``add_stream``, ``subscription``, ``close``),
``Stream`` (``set_subscriptions``, ``cached``, ``stats``, ``drain_events``,
``close``; its buffers are mapped on the first packet and unmapped on close)
and ``Subscription`` (the per-subscriber state, shared with a
``packet.Rewriter``; ``retransmit`` answers a parsed NACK from the stream's
cache within the subscriber's budget, in C, see sfu.router.NackBudget). Counters are C integers read with ``take_counters()``;
the latency of each forwarded packet -- from the kernel's receive timestamp
(SO_TIMESTAMPNS, so time queued in the socket counts) to the return of the
sendmmsg that sent its copies -- goes into a histogram (``latency()``).

It mirrors the Python path of ``sfu.engine.MediaEngine.forward`` and
``sfu.router.Producer.on_packet`` step by step, with the same drop reasons;
``tests/test_datapath.py`` feeds both the same packets and compares the
output byte for byte. ``feed(data, addr, now)`` is the sans-I/O entry used by
those tests; ``on_readable()`` is the socket entry (``loop.add_reader``).

libsrtp is called through function pointers taken from pylibsrtp's cffi
module (``ffi.addressof(lib, "srtp_protect")``); their C type is checked at
import. A Peer keeps the ``SrtpPair`` whose ``srtp_t`` it uses alive.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno  # EWOULDBLOCK == EAGAIN on Linux
from libc.math cimport fabs
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy, memmove, memset
from posix.mman cimport MAP_ANONYMOUS, MAP_FAILED, MAP_PRIVATE, PROT_READ, PROT_WRITE, mmap, munmap
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec
from posix.uio cimport iovec

from sfu._fast.includes.mmsg cimport (
    AF_INET, AF_INET6, CMSG_DATA, CMSG_FIRSTHDR, CMSG_NXTHDR, INET6_ADDRSTRLEN, MSG_DONTWAIT, MSG_TRUNC,
    SCM_TIMESTAMPNS, SO_TIMESTAMPNS, SOL_SOCKET, cmsghdr, htonl, htons, inet_ntop, inet_pton, mmsghdr, msghdr,
    ntohs, recvmmsg, sendmmsg, sendto, setsockopt, sockaddr, sockaddr_in, sockaddr_in6, socklen_t,
)
from sfu._fast.includes.srtp cimport (
    SFU_SRTP_FN_CTYPE, SFU_SRTP_REMOVE_FN_CTYPE, SRTP_ERR_STATUS_REPLAY_FAIL, SRTP_ERR_STATUS_REPLAY_OLD,
    SRTP_MAX_TRAILER_LEN, sfu_srtp_fn, sfu_srtp_remove_fn,
)
from sfu._fast.packet cimport Rewriter, _header_length, _is_keyframe, _rd16, _rd32, _wr16, _wr32

import logging

logger = logging.getLogger("sfu.datapath")

# -- tunables -------------------------------------------------------------------

cdef enum:
    RX_BATCH = 64          # datagrams per recvmmsg
    RX_SLOT = 2048         # bytes per receive buffer (larger datagrams: "too_long")
    RX_MAX = 1500          # longest SRTP packet unprotected (pylibsrtp's limit too)
    RX_ROUNDS = 16         # recvmmsg calls per readiness callback (then yield to the loop)
    TX_QUEUE = 1024        # packets queued for one sendmmsg (UIO_MAXIOV)
    TX_SLOT = 2048         # bytes per send slot (packet + SRTP trailer)
    EVENT_RING = 4096      # NACK log events kept between two drains
    LATENCY_RING = 4096    # raw latency samples kept between two drains (tests, diagnostics)
    RX_CTL = 64            # ancillary data bytes per received datagram (SCM_TIMESTAMPNS)
    FLUSH_AT = 32          # queued copies that make the receive loop send before the next datagram
    NACK_SLOTS = 1024      # sequence numbers answered recently, per subscriber (sfu.router.NACK_DEDUPE_SLOTS)

cdef enum:  # bytes of a stream's NACK event ring (Stream._alloc_events)
    _EV_MAP_SIZE = EVENT_RING * (3 * 8 + 1)

cdef enum:  # kinds of NACK log events
    EV_GAP = 0
    EV_RECOVERED = 1
    EV_CLEAR = 2

# -- counters -------------------------------------------------------------------

cdef enum:  # counters
    # statistics (MediaEngine.stats)
    C_RTP_FORWARDED
    C_RX_PACKETS
    C_RX_BYTES
    C_RX_RTP
    C_TX_PACKETS
    C_TX_BYTES
    C_SLOW_PATH
    C_RECV_CALLS
    C_SEND_CALLS
    C_BATCHES_FORWARDING
    C_RETRANSMISSIONS
    C_NACK_MISSES
    C_KEYFRAME_WAITS
    # drops (MediaEngine.drops), same names as the Python path
    D_UNKNOWN_SOURCE
    D_NOT_CONNECTED
    D_SRTP_AUTH
    D_SRTP_REPLAY
    D_MALFORMED
    D_UNKNOWN_SSRC
    D_UNKNOWN_PAYLOAD_TYPE
    D_NO_SUBSCRIBER
    D_SRTP_PROTECT
    D_SEND_BUFFER_FULL
    D_SEND_ERROR
    D_TOO_LONG
    D_INTERNAL_ERROR
    D_RECV_ERROR
    D_NACK_REPEAT
    D_NACK_BUDGET
    N_COUNTERS

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
assert len(STAT_NAMES) + len(DROP_NAMES) == N_COUNTERS

# a subscriber held by the keyframe gate asks again after this many seconds of waiting
# (sfu.router.KEYFRAME_RETRY)
cdef double KEYFRAME_RETRY = 1.0

# receive->send latency histogram: upper bounds in microseconds (last: +Inf), the
# same as sfu.metrics.LATENCY_BUCKETS, so the metric is this histogram as it is
LATENCY_BUCKETS_US = (20, 50, 100, 200, 500, 1000, 1500, 2000, 3000, 5000, 10000, 50000)
cdef enum:
    N_BUCKETS = 13
cdef double _BOUNDS[12]


cdef void _init_bounds():
    cdef int i
    for i in range(N_BUCKETS - 1):
        _BOUNDS[i] = LATENCY_BUCKETS_US[i] * 1e-6


_init_bounds()

# -- libsrtp ----------------------------------------------------------------------

cdef sfu_srtp_fn _srtp_protect = NULL
cdef sfu_srtp_fn _srtp_unprotect = NULL
cdef sfu_srtp_remove_fn _srtp_remove_stream = NULL


def _load_libsrtp():
    """Take srtp_protect/srtp_unprotect from pylibsrtp's cffi module; fail loudly if they changed."""
    global _srtp_protect, _srtp_unprotect, _srtp_remove_stream
    from pylibsrtp._binding import ffi, lib

    expected = SFU_SRTP_FN_CTYPE.decode()
    pointers = {}
    for name in ("srtp_protect", "srtp_unprotect"):
        fn = ffi.addressof(lib, name)
        ctype = ffi.typeof(fn).cname
        if ctype != expected:
            raise ImportError(
                f"pylibsrtp's {name} has type {ctype!r}, the fast path expects {expected!r}; "
                "use sfu serve --fast-path off or update sfu/_fast/includes/srtp.pxd"
            )
        pointers[name] = int(ffi.cast("uintptr_t", fn))
    _srtp_protect = <sfu_srtp_fn><uintptr_t>pointers["srtp_protect"]
    _srtp_unprotect = <sfu_srtp_fn><uintptr_t>pointers["srtp_unprotect"]
    fn = ffi.addressof(lib, "srtp_remove_stream")
    ctype = ffi.typeof(fn).cname
    if ctype != SFU_SRTP_REMOVE_FN_CTYPE.decode():
        raise ImportError(
            f"pylibsrtp's srtp_remove_stream has type {ctype!r}, the fast path expects "
            f"{SFU_SRTP_REMOVE_FN_CTYPE.decode()!r}; update sfu/_fast/includes/srtp.pxd"
        )
    _srtp_remove_stream = <sfu_srtp_remove_fn><uintptr_t>int(ffi.cast("uintptr_t", fn))


_load_libsrtp()


cdef uintptr_t _srtp_t(object session) except 0:
    """The srtp_t (struct srtp_ctx_t_ *) of a pylibsrtp.Session; its layout is checked there."""
    from sfu.srtp import srtp_session_pointer

    return <uintptr_t>srtp_session_pointer(session)

# -- addresses -------------------------------------------------------------------------


cdef struct AddrKey:
    uint32_t family
    uint32_t port     # host order
    uint32_t scope
    uint8_t addr[16]


cdef inline bint _key_from_sockaddr(const void* sa, AddrKey* k) noexcept nogil:
    memset(k, 0, sizeof(AddrKey))
    cdef const sockaddr_in* sin
    cdef const sockaddr_in6* sin6
    if (<const sockaddr*>sa).sa_family == AF_INET:
        sin = <const sockaddr_in*>sa
        k.family = AF_INET
        k.port = ntohs(sin.sin_port)
        memcpy(k.addr, &sin.sin_addr, 4)
        return True
    if (<const sockaddr*>sa).sa_family == AF_INET6:
        sin6 = <const sockaddr_in6*>sa
        k.family = AF_INET6
        k.port = ntohs(sin6.sin6_port)
        k.scope = sin6.sin6_scope_id
        memcpy(k.addr, &sin6.sin6_addr, 16)
        return True
    return False


cdef inline uint64_t _key_hash(const AddrKey* k) noexcept nogil:
    # FNV-1a over the key bytes
    cdef const uint8_t* p = <const uint8_t*>k
    cdef uint64_t h = 1469598103934665603ULL
    cdef size_t i
    for i in range(sizeof(AddrKey)):
        h = (h ^ p[i]) * 1099511628211ULL
    return h


cdef socklen_t _sockaddr_from_tuple(object addr, sockaddr_in6* out) except 0:
    """Fill ``out`` (large enough for either family) from a socket-module address tuple."""
    memset(out, 0, sizeof(sockaddr_in6))
    host = addr[0]
    port = int(addr[1])
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"bad port {port}")
    cdef bytes h = host.encode("ascii") if isinstance(host, str) else bytes(host)
    cdef sockaddr_in* sin = <sockaddr_in*>out
    if b":" not in h:
        if inet_pton(AF_INET, h, &sin.sin_addr) != 1:
            raise ValueError(f"bad IPv4 address {host!r}")
        sin.sin_family = AF_INET
        sin.sin_port = htons(<uint16_t>port)
        return sizeof(sockaddr_in)
    if b"%" in h:
        h = h.split(b"%")[0]
    if inet_pton(AF_INET6, h, &out.sin6_addr) != 1:
        raise ValueError(f"bad IPv6 address {host!r}")
    out.sin6_family = AF_INET6
    out.sin6_port = htons(<uint16_t>port)
    if len(addr) >= 4:
        out.sin6_scope_id = <uint32_t>int(addr[3])
    return sizeof(sockaddr_in6)


cdef object _tuple_from_sockaddr(const void* sa):
    cdef char text[INET6_ADDRSTRLEN + 1]
    cdef const sockaddr_in* sin
    cdef const sockaddr_in6* sin6
    if (<const sockaddr*>sa).sa_family == AF_INET:
        sin = <const sockaddr_in*>sa
        inet_ntop(AF_INET, &sin.sin_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs(sin.sin_port))
    if (<const sockaddr*>sa).sa_family == AF_INET6:
        sin6 = <const sockaddr_in6*>sa
        inet_ntop(AF_INET6, &sin6.sin6_addr, text, sizeof(text))
        return (text.decode("ascii"), ntohs(sin6.sin6_port), sin6.sin6_flowinfo, sin6.sin6_scope_id)
    return None


cdef inline double _monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double _realtime() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double _kernel_rx_time(msghdr* hdr) noexcept nogil:
    """The SCM_TIMESTAMPNS of a received datagram (CLOCK_REALTIME seconds), 0 if none."""
    cdef cmsghdr* c = CMSG_FIRSTHDR(hdr)
    cdef timespec ts
    while c != NULL:
        if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPNS:
            memcpy(&ts, CMSG_DATA(c), sizeof(timespec))
            return ts.tv_sec + ts.tv_nsec * 1e-9
        c = CMSG_NXTHDR(hdr, c)
    return 0.0

# -- routing objects ---------------------------------------------------------------


@cython.final
cdef class Subscription:
    """One subscriber's copy of a stream: its Rewriter, destination Peer and send state.

    Mirrors the fields of ``sfu.router.Consumer`` that the forwarding loop
    reads and writes (``FastConsumer`` exposes them as properties).
    """

    cdef readonly Peer peer
    cdef public Rewriter rewriter
    cdef public bint paused
    cdef public bint synced
    cdef public double clock_rate
    cdef public uint32_t initial_seq
    cdef public uint32_t initial_ts
    cdef public double last_out_time
    cdef public uint64_t packets_sent
    cdef public uint64_t octets_sent
    cdef bint _has_last
    cdef uint16_t _last_seq
    cdef uint32_t _last_ts
    cdef bint _has_first
    cdef double _first_time
    # keyframe gate (sfu.router.Consumer.keyframe_wait): nothing is sent, nor numbered,
    # until a packet of keyframe_codec starts a keyframe
    cdef public bint keyframe_wait
    cdef public int keyframe_codec
    cdef public double keyframe_since  # when it began to hold packets (0: not yet), or last asked again
    cdef bint _has_sync
    cdef uint16_t _sync_seq      # output seq of the first packet since the last _sync
    # answers to NACKs (sfu.router.NackBudget, field for field)
    cdef public uint16_t rtx_seq
    cdef public uint64_t retransmissions
    cdef bint _nack_started
    cdef double _nack_tokens
    cdef double _nack_last_time
    cdef uint64_t _nack_last_bytes
    cdef int32_t* _nack_seq      # NACK_SLOTS entries (allocated on the first NACK), -1: empty
    cdef double* _nack_time

    def __init__(self, Peer peer, Rewriter rewriter, clock_rate):
        self.peer = peer
        self.rewriter = rewriter
        self.clock_rate = clock_rate

    def __dealloc__(self):
        free(self._nack_seq)
        free(self._nack_time)

    @property
    def first_packet_time(self):
        """When the first packet was synced for sending (join-time metric)."""
        return self._first_time if self._has_first else None

    @first_packet_time.setter
    def first_packet_time(self, value):
        self._has_first = value is not None
        if value is not None:
            self._first_time = value

    @property
    def last_out_seq(self):
        return self._last_seq if self._has_last else None

    @last_out_seq.setter
    def last_out_seq(self, value):
        if value is None:
            self._has_last = False
        else:
            self._has_last = True
            self._last_seq = <uint16_t>(int(value) & 0xFFFF)

    @property
    def last_out_ts(self):
        return self._last_ts if self._has_last else None

    @last_out_ts.setter
    def last_out_ts(self, value):
        if value is not None:
            self._last_ts = <uint32_t>(int(value) & 0xFFFFFFFF)

    @property
    def sync_seq(self):
        """Output seq of the first packet since the numbering was last synced (None before)."""
        return self._sync_seq if self._has_sync else None

    @sync_seq.setter
    def sync_seq(self, value):
        self._has_sync = value is not None
        if value is not None:
            self._sync_seq = <uint16_t>(int(value) & 0xFFFF)

    cdef inline void _sync(self, uint16_t seq, uint32_t ts, double now) noexcept:
        """Continue the output numbering where it left off (sfu.router.Consumer.sync)."""
        cdef uint16_t out_seq
        cdef uint32_t out_ts
        cdef int64_t elapsed
        if not self._has_last:
            out_seq = <uint16_t>self.initial_seq
            out_ts = self.initial_ts
            self._has_first = True
            self._first_time = now
        else:
            out_seq = <uint16_t>(self._last_seq + 1)
            elapsed = <int64_t>((now - self.last_out_time) * self.clock_rate)
            if elapsed < 1:
                elapsed = 1
            out_ts = self._last_ts + <uint32_t>elapsed
        self.rewriter._seq_delta = <uint16_t>(out_seq - seq)
        self.rewriter._ts_delta = out_ts - ts
        self.synced = True
        self._has_sync = True
        self._sync_seq = out_seq

    @property
    def nack_tokens(self):
        """Bytes of retransmission the budget allows now (None before the first NACK)."""
        return self._nack_tokens if self._nack_started else None

    def retransmit(self, Stream stream, lost, double now, double window, int rtx_pt, uint32_t rtx_ssrc,
                   double fraction, double floor_rate, double burst):
        """sfu.engine.MediaEngine.retransmit in C: answer the sequence numbers ``lost`` (this
        subscriber's numbering) from ``stream``'s packet cache, with no Python per packet.

        The policy of sfu.router.NackBudget: a number answered less than ``window`` seconds
        ago is not answered again ("nack_repeat"); the budget (a token bucket of ``burst``
        bytes, refilled with ``fraction`` of the bytes ``stream`` received since the last
        NACK plus ``floor_rate`` bytes per second) pays for each cached packet (its size as
        received), and a packet it cannot pay for is dropped ("nack_budget") before any
        copy. Then rewrite, RTX (RFC 4588
        §4, when ``rtx_pt`` >= 0), srtp_protect (the session allows repeated indexes) and
        the send queue, flushed at the end."""
        cdef Peer dest = self.peer
        cdef Datapath dp = dest.dp
        cdef Rewriter rw = self.rewriter
        cdef uint64_t received = stream.bytes
        cdef double elapsed
        cdef long value
        cdef uint16_t out_seq, osn
        cdef size_t i
        cdef const uint8_t* plain
        cdef Py_ssize_t plain_len, m, hlen, end
        cdef uint8_t* slot
        cdef int length, rc
        if dest._tx == NULL or rw is None:
            return
        # refill (NackBudget.refill)
        if not self._nack_started:
            self._nack_started = True
            self._nack_tokens = burst
        else:
            elapsed = now - self._nack_last_time
            if elapsed < 0:
                elapsed = 0
            self._nack_tokens = min(burst, self._nack_tokens
                                    + fraction * <double>(received - self._nack_last_bytes
                                                          if received > self._nack_last_bytes else 0)
                                    + floor_rate * elapsed)
        self._nack_last_bytes = received
        self._nack_last_time = now
        for obj in lost:
            value = obj
            out_seq = <uint16_t>(value & 0xFFFF)
            i = out_seq & (NACK_SLOTS - 1)
            if self.keyframe_wait or not self.synced or not self._has_sync \
                    or <uint16_t>(out_seq - self._sync_seq) >= 0x8000:
                # before this numbering started (before the keyframe gate opened, or of
                # another producer): the cache holds no packet of this subscriber for it
                dp._counters[C_NACK_MISSES] += 1
                continue
            if self._nack_seq != NULL and self._nack_seq[i] == out_seq and now - self._nack_time[i] < window:
                dp._counters[D_NACK_REPEAT] += 1
                continue
            plain = stream._cached(<uint16_t>(out_seq - rw._seq_delta), &plain_len)
            if plain == NULL:
                dp._counters[C_NACK_MISSES] += 1
                continue
            if self._nack_tokens < <double>plain_len:
                dp._counters[D_NACK_BUDGET] += 1
                continue
            self._nack_tokens -= <double>plain_len
            if self._nack_seq == NULL:
                self._alloc_nack()
            self._nack_seq[i] = out_seq
            self._nack_time[i] = now
            slot = dp._slot()
            if slot == NULL:
                dp._counters[D_SEND_BUFFER_FULL] += 1
                continue
            m = rw._rewrite(plain, plain_len, slot, TX_SLOT - SRTP_MAX_TRAILER_LEN - 2)
            if m == -1:
                continue  # payload type not mapped for this subscriber
            if m < 0:  # a cached packet with a malformed RFC 8285 element
                dp._counters[D_MALFORMED] += 1
                continue
            if self._has_last and plain[0] & 0x20 and _header_length(plain, plain_len) + plain[plain_len - 1] == plain_len:
                _wr32(slot + 4, self._last_ts)  # a padding-only packet, as _forward sent it
            length = <int>m
            if rtx_pt >= 0:  # RFC 4588 §4: header, the original seq (OSN), payload without padding
                hlen = _header_length(slot, m)
                end = m
                if slot[0] & 0x20:
                    end -= slot[m - 1]
                    slot[0] &= 0xDF
                    if end < hlen:
                        end = hlen
                osn = _rd16(slot + 2)
                memmove(slot + hlen + 2, slot + hlen, end - hlen)
                _wr16(slot + hlen, osn)
                slot[1] = (slot[1] & 0x80) | <uint8_t>rtx_pt
                self.rtx_seq = <uint16_t>(self.rtx_seq + 1)
                _wr16(slot + 2, self.rtx_seq)
                _wr32(slot + 8, rtx_ssrc)
                length = <int>(end + 2)
            rc = _srtp_protect(dest._tx, slot, &length)
            if rc != 0:
                dp._counters[D_SRTP_PROTECT] += 1
                continue
            dp._commit(length, &dest._sa, dest._salen)
            self.retransmissions += 1
            dp._counters[C_RETRANSMISSIONS] += 1
        dp._flush()

    cdef int _alloc_nack(self) except -1:
        self._nack_seq = <int32_t*>malloc(NACK_SLOTS * sizeof(int32_t))
        self._nack_time = <double*>malloc(NACK_SLOTS * sizeof(double))
        if self._nack_seq == NULL or self._nack_time == NULL:
            free(self._nack_seq); self._nack_seq = NULL
            free(self._nack_time); self._nack_time = NULL
            raise MemoryError()
        memset(self._nack_seq, 0xFF, NACK_SLOTS * sizeof(int32_t))
        return 0


@cython.final
cdef class Stream:
    """A published stream (one SSRC of one Peer): receive state, NACK log, packet cache."""

    cdef readonly Peer peer
    cdef readonly uint32_t ssrc
    cdef readonly int payload_type
    cdef readonly object owner
    cdef double clock_rate
    cdef bint nack
    cdef int64_t nack_max_gap
    cdef tuple subs
    cdef readonly bint closed
    # receive statistics (RFC 3550 A.1, A.3, A.8)
    cdef readonly uint64_t packets
    cdef readonly uint64_t bytes
    cdef bint _started
    cdef int64_t _unwrap_highest
    cdef bint _has_base
    cdef int64_t _base
    cdef int64_t _highest
    cdef readonly double jitter
    cdef double _first_time
    cdef bint _has_transit
    cdef double _last_transit
    # NACK log: what Producer.on_packet does to Producer.missing, as events
    cdef int64_t* _ev_a
    cdef int64_t* _ev_b
    cdef double* _ev_t
    cdef uint8_t* _ev_kind
    cdef size_t _ev_head
    cdef size_t _ev_len
    cdef bint _ev_overflow
    cdef bint _dirty             # in Datapath._dirty since the last drain_events
    # packet cache: an arena of bytes written as a log + an index by seq
    cdef uint8_t* _arena
    cdef size_t _arena_size
    cdef uint64_t _pos           # logical write position (RFC-free: see _store)
    cdef int32_t* _idx_seq
    cdef uint64_t* _idx_pos
    cdef uint16_t* _idx_len
    cdef size_t _idx_mask
    # the buffers are mapped on first use (a session that never sends costs nothing) and
    # unmapped when the stream closes (munmap gives the pages back to the kernel at once)
    cdef size_t _cache_packets
    cdef size_t _cache_bytes
    cdef void* _cache_map
    cdef size_t _cache_map_size
    cdef void* _ev_map
    cdef bint _no_memory         # a mapping failed: no cache (NACKs miss), no more tries

    def __cinit__(self):
        self.subs = ()

    def __dealloc__(self):
        self._free()

    cdef void _free(self) noexcept:
        if self._ev_map != NULL:
            munmap(self._ev_map, _EV_MAP_SIZE)
            self._ev_map = NULL
        self._ev_a = self._ev_b = NULL
        self._ev_t = NULL
        self._ev_kind = NULL
        self._ev_head = self._ev_len = 0
        if self._cache_map != NULL:
            munmap(self._cache_map, self._cache_map_size)
            self._cache_map = NULL
        self._arena = NULL
        self._idx_seq = NULL
        self._idx_pos = NULL
        self._idx_len = NULL

    cdef void* _map(self, size_t size) noexcept:
        cdef void* p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if p == MAP_FAILED:
            self._no_memory = True
            return NULL
        return p

    cdef bint _alloc_cache(self) noexcept:
        """Map the packet cache (index, then arena) on the first packet."""
        cdef size_t n = self._cache_packets
        cdef size_t size = n * (sizeof(uint64_t) + sizeof(int32_t) + sizeof(uint16_t)) + self._cache_bytes
        cdef uint8_t* p
        if self._no_memory or self.closed:
            return False
        p = <uint8_t*>self._map(size)
        if p == NULL:
            return False
        self._cache_map = p
        self._cache_map_size = size
        self._idx_pos = <uint64_t*>p
        self._idx_seq = <int32_t*>(p + n * sizeof(uint64_t))
        self._idx_len = <uint16_t*>(p + n * (sizeof(uint64_t) + sizeof(int32_t)))
        self._arena = p + n * (sizeof(uint64_t) + sizeof(int32_t) + sizeof(uint16_t))
        self._arena_size = self._cache_bytes
        memset(self._idx_seq, 0xFF, n * sizeof(int32_t))  # -1: empty
        self._idx_mask = n - 1
        return True

    cdef bint _alloc_events(self) noexcept:
        """Map the NACK event ring on the first event."""
        cdef uint8_t* p
        if self._no_memory or self.closed:
            return False
        p = <uint8_t*>self._map(_EV_MAP_SIZE)
        if p == NULL:
            return False
        self._ev_map = p
        self._ev_a = <int64_t*>p
        self._ev_b = <int64_t*>(p + EVENT_RING * sizeof(int64_t))
        self._ev_t = <double*>(p + 2 * EVENT_RING * sizeof(int64_t))
        self._ev_kind = p + 2 * EVENT_RING * sizeof(int64_t) + EVENT_RING * sizeof(double)
        return True

    # -- per packet (C only) --------------------------------------------------

    cdef inline void _event(self, uint8_t kind, int64_t a, int64_t b, double t) noexcept:
        cdef size_t i
        if not self._dirty and self.peer is not None:
            # first event since the last drain: tell the engine's timers (take_dirty)
            self._dirty = True
            self.peer.dp._dirty.append(self)
        if self._ev_len == EVENT_RING or (self._ev_map == NULL and not self._alloc_events()):
            self._ev_overflow = True
            return
        i = (self._ev_head + self._ev_len) % EVENT_RING
        self._ev_kind[i] = kind
        self._ev_a[i] = a
        self._ev_b[i] = b
        self._ev_t[i] = t
        self._ev_len += 1

    cdef inline void _store(self, uint16_t seq, const uint8_t* p, Py_ssize_t n) noexcept:
        """Cache the plaintext packet (sfu.router.Producer: the NACK cache).

        The arena is a log: logical position ``_pos`` grows forever, the
        bytes of logical position x live at x % size, and a packet never
        straddles the end (it skips to the next multiple of the size). A
        cached packet starting at logical s is intact while ``_pos <= s + size``.
        """
        cdef size_t slot = seq & self._idx_mask
        cdef uint64_t start
        if n > <Py_ssize_t>self._arena_size or n > 0xFFFF:
            self._idx_seq[slot] = -1
            return
        start = self._pos
        if (start % self._arena_size) + <uint64_t>n > self._arena_size:
            start = (start // self._arena_size + 1) * self._arena_size
        memcpy(self._arena + start % self._arena_size, p, n)
        self._pos = start + <uint64_t>n
        self._idx_seq[slot] = seq
        self._idx_pos[slot] = start
        self._idx_len[slot] = <uint16_t>n

    cdef inline void _on_packet(self, const uint8_t* p, Py_ssize_t n, uint16_t seq, uint32_t ts,
                                double now) noexcept:
        """sfu.router.Producer.on_packet, event for event."""
        cdef int64_t ext, gap
        cdef uint16_t delta
        cdef double transit, d
        if not self._started:
            self._started = True
            self._unwrap_highest = seq
            ext = seq
        else:
            delta = <uint16_t>(seq - self._unwrap_highest)
            if delta < 0x8000:
                ext = self._unwrap_highest + delta
                self._unwrap_highest = ext
            else:
                ext = self._unwrap_highest + delta - 0x10000
        self.packets += 1
        self.bytes += n
        if self._arena != NULL:
            self._store(seq, p, n)
        elif self._cache_bytes and self._alloc_cache():
            self._store(seq, p, n)
        if not self._has_base:
            self._has_base = True
            self._base = ext
            self._highest = ext
            self._first_time = now
        elif ext > self._highest:
            gap = ext - self._highest - 1
            if gap and self.nack:
                if gap > self.nack_max_gap:
                    self._event(EV_CLEAR, 0, 0, now)
                else:
                    self._event(EV_GAP, self._highest + 1, ext, now)
            self._highest = ext
        elif self.nack:
            self._event(EV_RECOVERED, ext, 0, now)
        # interarrival jitter, RFC 3550 A.8
        transit = now * self.clock_rate - <double>ts
        if self._has_transit:
            d = fabs(transit - self._last_transit)
            if d < self.clock_rate * 10:
                self.jitter += (d - self.jitter) / 16.0
        self._last_transit = transit
        self._has_transit = True

    # -- Python API --------------------------------------------------------------

    def set_subscriptions(self, subscriptions):
        """Replace the fan-out snapshot (called on every membership change)."""
        subs = tuple(subscriptions)
        for s in subs:
            if not isinstance(s, Subscription):
                raise TypeError("expected Subscription objects")
        self.subs = subs

    @property
    def subscriptions(self):
        return self.subs

    @property
    def first_packet_time(self):
        return self._first_time if self._has_base else None

    cdef inline const uint8_t* _cached(self, uint16_t seq, Py_ssize_t* n) noexcept:
        """The cached plaintext packet ``seq`` (its length in ``n``), or NULL."""
        if self._arena == NULL:
            return NULL
        cdef size_t slot = seq & self._idx_mask
        if self._idx_seq[slot] != <int32_t>seq:
            return NULL
        cdef uint64_t start = self._idx_pos[slot]
        if self._pos > start + self._arena_size:
            return NULL  # overwritten since
        n[0] = self._idx_len[slot]
        return self._arena + start % self._arena_size

    def cached(self, seq):
        """The cached plaintext packet with sequence number ``seq``, or None."""
        cdef Py_ssize_t n = 0
        cdef const uint8_t* p = self._cached(<uint16_t>(int(seq) & 0xFFFF), &n)
        return PyBytes_FromStringAndSize(<const char*>p, n) if p != NULL else None

    @property
    def mapped(self):
        """Bytes of buffers this stream has mapped now (0 before its first packet and once closed)."""
        return (self._cache_map_size if self._cache_map != NULL else 0) + (_EV_MAP_SIZE if self._ev_map != NULL else 0)

    def stats(self):
        """(packets, bytes, base_ext_seq or None, highest_ext_seq, jitter)."""
        return (self.packets, self.bytes, self._base if self._has_base else None,
                self._highest if self._has_base else -1, self.jitter)

    def drain_events(self):
        """The NACK log since the last call: ("gap", first, end, t) for missing
        extended seqs [first, end), ("recovered", ext, None, t), ("clear", ...)."""
        out = []
        cdef size_t i
        cdef uint8_t kind
        if self._ev_overflow:
            out.append(("clear", 0, 0, 0.0))
        while self._ev_len:
            i = self._ev_head
            kind = self._ev_kind[i]
            if kind == EV_GAP:
                out.append(("gap", self._ev_a[i], self._ev_b[i], self._ev_t[i]))
            elif kind == EV_RECOVERED:
                out.append(("recovered", self._ev_a[i], None, self._ev_t[i]))
            else:
                out.append(("clear", 0, 0, self._ev_t[i]))
            self._ev_head = (i + 1) % EVENT_RING
            self._ev_len -= 1
        self._ev_overflow = False
        self._dirty = False
        return out

    def close(self):
        """Stop receiving this SSRC in C (packets of it go to unknown_ssrc); unmap its buffers."""
        if self.closed:
            return
        self.closed = True
        self.subs = ()
        self._free()
        if self.peer is not None:
            self.peer._remove_stream(self)


@cython.final
cdef class Peer:
    """One transport: its address (when known), SRTP sessions (when connected), streams."""

    cdef Datapath dp
    cdef readonly object owner
    cdef AddrKey _key
    cdef sockaddr_in6 _sa
    cdef socklen_t _salen
    cdef readonly bint registered   # in the address table
    cdef void* _tx
    cdef void* _rx
    cdef object _srtp                # keep-alive of the libsrtp sessions
    cdef tuple _streams
    cdef readonly bint closed

    def __cinit__(self):
        self._streams = ()

    @property
    def connected(self):
        return self._tx != NULL

    @property
    def address(self):
        return _tuple_from_sockaddr(&self._sa) if self._salen else None

    @property
    def streams(self):
        return self._streams

    def set_address(self, addr):
        """(Re)bind this peer to the source address ``addr`` (ICE selected a pair)."""
        if self.closed:
            return
        cdef sockaddr_in6 sa
        cdef socklen_t n = _sockaddr_from_tuple(addr, &sa)
        cdef AddrKey key
        _key_from_sockaddr(&sa, &key)
        if self.registered:
            self.dp._table_remove(&self._key, self)
            self.registered = False
        memcpy(&self._sa, &sa, sizeof(sa))
        self._salen = n
        self._key = key
        self.dp._table_put(&self._key, self)
        self.registered = True

    def set_srtp(self, pair):
        """Use the libsrtp sessions of an ``sfu.srtp.SrtpPair`` (``.tx``, ``.rx``)."""
        if self.closed:
            return
        tx = _srtp_t(pair.tx)
        rx = _srtp_t(pair.rx)
        self._srtp = pair
        self._tx = <void*>tx
        self._rx = <void*>rx

    def add_stream(self, ssrc, payload_type, clock_rate, *, nack=True, nack_max_gap=256,
                   cache_packets=1024, cache_bytes=512 * 1024, owner=None):
        """Receive ``ssrc`` from this peer in C; ``cache_packets`` is a power of two."""
        if cache_packets < 1 or cache_packets & (cache_packets - 1) or cache_packets > (1 << 20):
            raise ValueError("cache_packets must be a power of two")
        if not 0 <= ssrc <= 0xFFFFFFFF or not 0 <= payload_type <= 127:
            raise ValueError("bad SSRC or payload type")
        for s in self._streams:
            if (<Stream>s).ssrc == ssrc:
                raise ValueError(f"SSRC {ssrc} already has a stream on this peer")
        cdef Stream stream = Stream.__new__(Stream)
        stream._cache_packets = cache_packets
        stream._cache_bytes = cache_bytes  # mapped on the first packet
        stream.peer = self
        stream.ssrc = ssrc
        stream.payload_type = payload_type
        stream.clock_rate = clock_rate
        stream.nack = nack
        stream.nack_max_gap = nack_max_gap
        stream.owner = owner
        self._streams = self._streams + (stream,)
        return stream

    cdef void _remove_stream(self, Stream stream):
        self._streams = tuple(s for s in self._streams if s is not stream)

    def subscription(self, Rewriter rewriter, clock_rate):
        """A Subscription that sends to this peer."""
        return Subscription(self, rewriter, clock_rate)

    def close(self):
        """Forget the address, the SRTP sessions and the streams."""
        if self.closed:
            return
        self.closed = True
        if self.registered:
            self.dp._table_remove(&self._key, self)
            self.registered = False
        self._tx = NULL
        self._rx = NULL
        self._srtp = None
        for s in self._streams:
            (<Stream>s).closed = True
            (<Stream>s).subs = ()
            (<Stream>s)._free()
        self._streams = ()

    cdef inline Stream _find(self, uint32_t ssrc):
        cdef tuple streams = self._streams
        for s in streams:
            if (<Stream>s).ssrc == ssrc:
                return <Stream>s
        return None

# -- the data path ------------------------------------------------------------------


@cython.final
cdef class Datapath:
    """The socket, the address table, the send queue and the counters of one worker."""

    cdef int fd
    cdef object slow_path
    cdef object unknown_ssrc
    cdef public object keyframe_needed  # (owner) -> None: a subscriber still waits (engine)
    cdef object _loop
    cdef bint _writing
    cdef readonly bint capture
    cdef public list captured
    cdef uint64_t _counters[N_COUNTERS]
    cdef uint64_t _taken[N_COUNTERS]
    # address table: open addressing, linear probing, backward-shift deletion
    cdef AddrKey* _keys
    cdef PyObject** _vals        # borrowed: _registered holds the references
    cdef size_t _cap
    cdef size_t _count
    cdef set _registered
    cdef list _dirty             # streams that logged NACK events since take_dirty()
    # receive batch
    cdef mmsghdr* _rx_msgs
    cdef iovec* _rx_iov
    cdef sockaddr_in6* _rx_addr
    cdef uint8_t* _rx_buf
    cdef uint8_t* _rx_ctl        # ancillary data (receive timestamps), RX_CTL bytes per slot
    cdef double _rx_fwd[RX_BATCH]  # receive time of each datagram of the batch that was forwarded
    # send queue: entries [_q_start, _q_len) wait for sendmmsg
    cdef mmsghdr* _tx_msgs
    cdef iovec* _tx_iov
    cdef sockaddr_in6* _tx_addr
    cdef uint8_t* _tx_buf
    cdef size_t _q_start
    cdef size_t _q_len
    cdef int _fail_sends         # tests: the next sendmmsg calls fail with _fail_errno
    cdef int _fail_errno
    # latency histogram (seconds)
    cdef uint64_t _hist[N_BUCKETS]
    cdef double _hist_sum
    cdef uint64_t _hist_count
    cdef double _lat_ring[LATENCY_RING]
    cdef size_t _lat_len

    def __cinit__(self):
        self.fd = -1
        self._cap = 64
        self._keys = <AddrKey*>calloc(self._cap, sizeof(AddrKey))
        self._vals = <PyObject**>calloc(self._cap, sizeof(PyObject*))
        self._rx_msgs = <mmsghdr*>calloc(RX_BATCH, sizeof(mmsghdr))
        self._rx_iov = <iovec*>calloc(RX_BATCH, sizeof(iovec))
        self._rx_addr = <sockaddr_in6*>calloc(RX_BATCH, sizeof(sockaddr_in6))
        self._rx_buf = <uint8_t*>malloc(RX_BATCH * RX_SLOT)
        self._rx_ctl = <uint8_t*>calloc(RX_BATCH, RX_CTL)
        self._tx_msgs = <mmsghdr*>calloc(TX_QUEUE, sizeof(mmsghdr))
        self._tx_iov = <iovec*>calloc(TX_QUEUE, sizeof(iovec))
        self._tx_addr = <sockaddr_in6*>calloc(TX_QUEUE, sizeof(sockaddr_in6))
        self._tx_buf = <uint8_t*>malloc(TX_QUEUE * TX_SLOT)
        if (self._keys == NULL or self._vals == NULL or self._rx_msgs == NULL or self._rx_iov == NULL
                or self._rx_addr == NULL or self._rx_buf == NULL or self._rx_ctl == NULL or self._tx_msgs == NULL
                or self._tx_iov == NULL or self._tx_addr == NULL or self._tx_buf == NULL):
            raise MemoryError()
        cdef size_t i
        for i in range(RX_BATCH):
            self._rx_iov[i].iov_base = self._rx_buf + i * RX_SLOT
            self._rx_iov[i].iov_len = RX_SLOT
            self._rx_msgs[i].msg_hdr.msg_iov = &self._rx_iov[i]
            self._rx_msgs[i].msg_hdr.msg_iovlen = 1
            self._rx_msgs[i].msg_hdr.msg_name = &self._rx_addr[i]
        for i in range(TX_QUEUE):
            self._tx_iov[i].iov_base = self._tx_buf + i * TX_SLOT
            self._tx_msgs[i].msg_hdr.msg_iov = &self._tx_iov[i]
            self._tx_msgs[i].msg_hdr.msg_iovlen = 1
            self._tx_msgs[i].msg_hdr.msg_name = &self._tx_addr[i]
        self._registered = set()
        self._dirty = []
        self.captured = []

    def __init__(self, slow_path, unknown_ssrc=None, *, capture=False):
        """``slow_path(data: bytes, addr)`` gets every datagram the C path does not
        forward or drop itself; ``unknown_ssrc(owner, plain: bytes, ssrc) -> bool``
        may register a stream for an SSRC (then the packet is forwarded). With
        ``capture=True`` nothing is sent: packets go to ``captured`` as
        ``(bytes, addr)`` (tests)."""
        self.slow_path = slow_path
        self.unknown_ssrc = unknown_ssrc
        self.capture = capture

    def __dealloc__(self):
        free(self._keys)
        free(self._vals)
        free(self._rx_msgs)
        free(self._rx_iov)
        free(self._rx_addr)
        free(self._rx_buf)
        free(self._rx_ctl)
        free(self._tx_msgs)
        free(self._tx_iov)
        free(self._tx_addr)
        free(self._tx_buf)

    # -- address table -------------------------------------------------------------

    cdef Peer _lookup(self, const AddrKey* key):
        cdef size_t mask = self._cap - 1
        cdef size_t i = _key_hash(key) & mask
        while self._vals[i] != NULL:
            if memcmp(&self._keys[i], key, sizeof(AddrKey)) == 0:
                return <Peer>self._vals[i]
            i = (i + 1) & mask
        return None

    cdef int _table_put(self, const AddrKey* key, Peer peer) except -1:
        cdef size_t mask, i
        if (self._count + 1) * 2 > self._cap:
            self._grow()
        mask = self._cap - 1
        i = _key_hash(key) & mask
        while self._vals[i] != NULL:
            if memcmp(&self._keys[i], key, sizeof(AddrKey)) == 0:
                # another peer had this address: it loses it (the newest binding wins)
                old = <Peer>self._vals[i]
                old.registered = False
                self._registered.discard(old)
                self._vals[i] = <PyObject*>peer
                self._registered.add(peer)
                return 0
            i = (i + 1) & mask
        memcpy(&self._keys[i], key, sizeof(AddrKey))
        self._vals[i] = <PyObject*>peer
        self._count += 1
        self._registered.add(peer)
        return 0

    cdef int _grow(self) except -1:
        cdef size_t old_cap = self._cap
        cdef AddrKey* old_keys = self._keys
        cdef PyObject** old_vals = self._vals
        cdef size_t new_cap = old_cap * 2
        cdef AddrKey* keys = <AddrKey*>calloc(new_cap, sizeof(AddrKey))
        cdef PyObject** vals = <PyObject**>calloc(new_cap, sizeof(PyObject*))
        cdef size_t i, j, mask = new_cap - 1
        if keys == NULL or vals == NULL:
            free(keys)
            free(vals)
            raise MemoryError()
        for i in range(old_cap):
            if old_vals[i] != NULL:
                j = _key_hash(&old_keys[i]) & mask
                while vals[j] != NULL:
                    j = (j + 1) & mask
                memcpy(&keys[j], &old_keys[i], sizeof(AddrKey))
                vals[j] = old_vals[i]
        self._keys = keys
        self._vals = vals
        self._cap = new_cap
        free(old_keys)
        free(old_vals)
        return 0

    cdef void _table_remove(self, const AddrKey* key, Peer peer):
        cdef size_t mask = self._cap - 1
        cdef size_t i = _key_hash(key) & mask
        cdef size_t j, k
        while self._vals[i] != NULL:
            if memcmp(&self._keys[i], key, sizeof(AddrKey)) == 0:
                break
            i = (i + 1) & mask
        else:
            return
        if self._vals[i] != <PyObject*>peer:
            return  # the address went to another peer meanwhile
        self._registered.discard(peer)
        self._count -= 1
        # backward-shift deletion keeps every probe chain unbroken
        j = i
        while True:
            j = (j + 1) & mask
            if self._vals[j] == NULL:
                break
            k = _key_hash(&self._keys[j]) & mask
            if (j > i and (k <= i or k > j)) or (j < i and (k <= i and k > j)):
                memcpy(&self._keys[i], &self._keys[j], sizeof(AddrKey))
                self._vals[i] = self._vals[j]
                i = j
        self._vals[i] = NULL

    # -- Python API ----------------------------------------------------------------------

    def new_peer(self, owner=None):
        """A Peer for one transport; it enters the address table with set_address()."""
        cdef Peer peer = Peer.__new__(Peer)
        peer.dp = self
        peer.owner = owner
        return peer

    def open(self, int fd, loop=None):
        """Use the non-blocking UDP socket ``fd``; ``loop`` gets add_writer when the
        kernel's send buffer is full. The caller registers ``on_readable`` with
        ``loop.add_reader(fd, datapath.on_readable)``. Turns on the socket's
        receive timestamps (SO_TIMESTAMPNS) for the latency histogram."""
        cdef int one = 1
        self.fd = fd
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one))  # best effort
        self._loop = loop

    def close(self):
        if self._writing and self._loop is not None and self.fd >= 0:
            self._loop.remove_writer(self.fd)
        self._writing = False
        self.fd = -1
        self._loop = None
        self._q_start = self._q_len = 0

    @property
    def peers(self):
        """Number of peers in the address table."""
        return self._count

    @property
    def queued(self):
        return self._q_len - self._q_start

    def take_dirty(self):
        """The streams that logged NACK log events (see Stream.drain_events) since the
        last call, each once per drain: the engine ticks only their transports."""
        out, self._dirty = self._dirty, []
        return out

    def take_counters(self):
        """(stats, drops): what each counter gained since the last call (non-zero only)."""
        stats = {}
        drops = {}
        cdef int i
        cdef uint64_t delta
        for i in range(N_COUNTERS):
            delta = self._counters[i] - self._taken[i]
            if delta:
                self._taken[i] = self._counters[i]
                if i < D_UNKNOWN_SOURCE:
                    stats[STAT_NAMES[i]] = delta
                else:
                    drops[DROP_NAMES[i - D_UNKNOWN_SOURCE]] = delta
        return stats, drops

    def counters(self):
        """All counters since start (stats and drops in one dict)."""
        names = STAT_NAMES + DROP_NAMES
        return {names[i]: self._counters[i] for i in range(N_COUNTERS)}

    def latency(self):
        """Latency of forwarded packets (kernel receive time -> their copies sent): Prometheus-style histogram
        {"buckets": [(upper bound s, cumulative count)...], "count", "sum"}."""
        out = []
        cdef uint64_t total = 0
        cdef int i
        for i in range(N_BUCKETS):
            total += self._hist[i]
            out.append((LATENCY_BUCKETS_US[i] * 1e-6 if i < N_BUCKETS - 1 else float("inf"), total))
        return {"buckets": out, "count": self._hist_count, "sum": self._hist_sum}

    def drain_latency(self):
        """The latency samples (seconds, one per forwarded packet) since the last call: the
        first LATENCY_RING of them (for tests and diagnostics; the histogram has them all)."""
        out = [self._lat_ring[i] for i in range(self._lat_len)]
        self._lat_len = 0
        return out

    def feed(self, data, addr, double now):
        """Process one datagram as if received from ``addr`` at ``now`` (sans-I/O entry), then flush."""
        cdef sockaddr_in6 sa
        cdef Py_ssize_t n = len(data)
        cdef bytes b = bytes(data)
        _sockaddr_from_tuple(addr, &sa)
        if n > RX_SLOT:
            self._counters[C_RX_PACKETS] += 1
            self._counters[D_TOO_LONG] += 1
            return
        memcpy(self._rx_buf, PyBytes_AS_STRING(b), n)
        self._datagram(self._rx_buf, n, &sa, now)
        self._flush()

    def sendto(self, data, addr):
        """Send one datagram from Python (STUN, DTLS, RTCP, retransmissions): at once
        when nothing is queued, else behind the queue."""
        cdef sockaddr_in6 sa
        cdef socklen_t salen = _sockaddr_from_tuple(addr, &sa)
        cdef bytes b = bytes(data)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
        cdef ssize_t rc
        cdef uint8_t* slot
        if n > TX_SLOT:
            self._counters[D_SEND_ERROR] += 1
            return
        if self._q_len == self._q_start and not self.capture and self.fd >= 0:
            rc = sendto(self.fd, PyBytes_AS_STRING(b), n, 0, <sockaddr*>&sa, salen)
            self._counters[C_SEND_CALLS] += 1
            if rc >= 0:
                self._counters[C_TX_PACKETS] += 1
                self._counters[C_TX_BYTES] += n
                return
            if errno != EAGAIN:
                self._counters[D_SEND_ERROR] += 1
                return
        slot = self._slot()
        if slot == NULL:
            self._counters[D_SEND_BUFFER_FULL] += 1
            return
        memcpy(slot, PyBytes_AS_STRING(b), n)
        self._commit(n, &sa, salen)
        if self.capture:
            self._flush()
        elif not self._writing:
            self._flush()

    def flush(self):
        self._flush()

    def fail_sends(self, int count, int err=EAGAIN):
        """Tests: make the next ``count`` sendmmsg calls fail with ``err`` (EAGAIN: the
        kernel's send buffer is full, which loopback never reports) without calling the kernel."""
        self._fail_sends = count
        self._fail_errno = err

    def on_readable(self):
        """Read and process datagrams until the socket is empty (or RX_ROUNDS batches)."""
        cdef int n, i, n_fwd, rounds = 0
        cdef double t_rx
        cdef uint64_t forwarded
        cdef mmsghdr* m
        if self.fd < 0:
            return
        while rounds < RX_ROUNDS:
            for i in range(RX_BATCH):
                self._rx_msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in6)
                self._rx_msgs[i].msg_hdr.msg_flags = 0
                self._rx_msgs[i].msg_hdr.msg_control = self._rx_ctl + i * RX_CTL
                self._rx_msgs[i].msg_hdr.msg_controllen = RX_CTL
            n = recvmmsg(self.fd, self._rx_msgs, RX_BATCH, MSG_DONTWAIT, NULL)
            if n < 0:
                if errno == EINTR:
                    continue
                if errno != EAGAIN:
                    self._counters[D_RECV_ERROR] += 1
                break
            self._counters[C_RECV_CALLS] += 1
            t_rx = _monotonic()
            n_fwd = 0
            for i in range(n):
                m = &self._rx_msgs[i]
                if m.msg_hdr.msg_flags & MSG_TRUNC:
                    self._counters[C_RX_PACKETS] += 1
                    self._counters[D_TOO_LONG] += 1
                    continue
                forwarded = self._counters[C_RTP_FORWARDED]
                self._datagram(self._rx_buf + i * RX_SLOT, m.msg_len, &self._rx_addr[i], t_rx)
                if self._counters[C_RTP_FORWARDED] != forwarded:
                    self._rx_fwd[n_fwd] = _kernel_rx_time(&m.msg_hdr)
                    n_fwd += 1
                    if self._q_len - self._q_start >= FLUSH_AT:
                        # a burst of video packets with a large fan-out: send these copies
                        # now rather than after the whole batch (latency of the first ones)
                        self._flush()
                        self._sent(n_fwd, t_rx)
                        n_fwd = 0
            self._flush()
            if n_fwd:
                self._sent(n_fwd, t_rx)
            if n < RX_BATCH:
                break
            rounds += 1

    def _on_writable(self):
        self._flush()
        if self._q_len == self._q_start and self._writing:
            self._writing = False
            if self._loop is not None and self.fd >= 0:
                self._loop.remove_writer(self.fd)

    # -- per datagram (C) ------------------------------------------------------------

    cdef void _sent(self, int n_fwd, double t_rx) noexcept:
        """The copies of the last ``n_fwd`` forwarded datagrams went to the kernel: one latency
        sample each, from its kernel receive time (else from the recvmmsg return, ``t_rx``)."""
        cdef double t_sent = _realtime()
        cdef double t_mono = _monotonic()
        cdef double t_kernel
        cdef int j
        for j in range(n_fwd):
            t_kernel = self._rx_fwd[j]
            self._record_latency(max(0.0, t_sent - t_kernel) if t_kernel > 0 else t_mono - t_rx)
        self._counters[C_BATCHES_FORWARDING] += 1

    cdef inline void _record_latency(self, double seconds) noexcept:
        cdef int i
        for i in range(N_BUCKETS - 1):
            if seconds <= _BOUNDS[i]:
                break
        else:
            i = N_BUCKETS - 1
        self._hist[i] += 1
        self._hist_count += 1
        self._hist_sum += seconds
        if self._lat_len < LATENCY_RING:
            self._lat_ring[self._lat_len] = seconds
            self._lat_len += 1

    cdef void _datagram(self, uint8_t* buf, Py_ssize_t n, const sockaddr_in6* sa, double now):
        """RFC 7983 §7 demux, then the RTP path or the slow path."""
        cdef AddrKey key
        cdef Peer peer
        cdef uint8_t first
        self._counters[C_RX_PACKETS] += 1
        self._counters[C_RX_BYTES] += n
        if n > 0 and buf[0] <= 3:
            self._slow(buf, n, sa)  # STUN: ICE-lite in Python (it learns addresses)
            return
        if not _key_from_sockaddr(sa, &key):
            self._counters[D_UNKNOWN_SOURCE] += 1
            return
        peer = self._lookup(&key)
        if peer is None:
            self._counters[D_UNKNOWN_SOURCE] += 1
            return
        if n == 0:
            self._counters[D_MALFORMED] += 1
            return
        first = buf[0]
        if 20 <= first <= 63:
            self._slow(buf, n, sa)  # DTLS
        elif 128 <= first <= 191 and n >= 2:
            if 192 <= buf[1] <= 223:
                self._slow(buf, n, sa)  # RTCP (RFC 5761 §4)
            else:
                self._rtp(peer, buf, n, now)
        else:
            self._counters[D_MALFORMED] += 1

    cdef void _slow(self, const uint8_t* buf, Py_ssize_t n, const sockaddr_in6* sa):
        self._counters[C_SLOW_PATH] += 1
        try:
            self.slow_path(PyBytes_FromStringAndSize(<const char*>buf, n), _tuple_from_sockaddr(sa))
        except Exception:
            self._counters[D_INTERNAL_ERROR] += 1
            logger.exception("slow path failed")

    cdef void _keyframe_needed(self, Stream stream):
        if self.keyframe_needed is None:
            return
        try:
            self.keyframe_needed(stream.owner)
        except Exception:
            self._counters[D_INTERNAL_ERROR] += 1
            logger.exception("keyframe_needed callback failed")

    cdef bint _learn(self, Peer peer, const uint8_t* buf, Py_ssize_t n, uint32_t ssrc):
        if self.unknown_ssrc is None:
            return False
        try:
            return bool(self.unknown_ssrc(peer.owner, PyBytes_FromStringAndSize(<const char*>buf, n), ssrc))
        except Exception:
            self._counters[D_INTERNAL_ERROR] += 1
            logger.exception("unknown_ssrc callback failed")
            return False

    cdef void _rtp(self, Peer peer, uint8_t* buf, Py_ssize_t n, double now):
        """transport.receive_rtp + producer.on_packet + engine.forward, in C."""
        cdef int length = <int>n
        cdef int rc
        cdef Py_ssize_t hlen
        cdef uint32_t ssrc
        cdef Stream stream
        self._counters[C_RX_RTP] += 1
        if peer._rx == NULL:
            self._counters[D_NOT_CONNECTED] += 1
            return
        if n > RX_MAX:
            self._counters[D_TOO_LONG] += 1
            return
        rc = _srtp_unprotect(peer._rx, buf, &length)
        if rc != 0:
            if rc == SRTP_ERR_STATUS_REPLAY_FAIL or rc == SRTP_ERR_STATUS_REPLAY_OLD:
                self._counters[D_SRTP_REPLAY] += 1
            else:
                self._counters[D_SRTP_AUTH] += 1
            return
        hlen = _header_length(buf, length)
        if hlen < 0:
            self._counters[D_MALFORMED] += 1
            return
        ssrc = _rd32(buf + 8)
        stream = peer._find(ssrc)
        if stream is None:
            if self._learn(peer, buf, length, ssrc):
                stream = peer._find(ssrc)
            if stream is None:
                # libsrtp made an inbound stream for this SSRC when it authenticated the
                # packet: forget it, or a peer sending made-up SSRCs grows memory (~370 B each)
                _srtp_remove_stream(peer._rx, htonl(ssrc))
                self._counters[D_UNKNOWN_SSRC] += 1
                return
        if (buf[1] & 0x7F) != stream.payload_type:
            self._counters[D_UNKNOWN_PAYLOAD_TYPE] += 1  # e.g. RTX or FEC we did not negotiate
            return
        stream._on_packet(buf, length, _rd16(buf + 2), _rd32(buf + 4), now)
        self._forward(stream, buf, length, now)

    cdef void _forward(self, Stream stream, const uint8_t* buf, Py_ssize_t n, double now):
        """sfu.engine.MediaEngine.forward, in C."""
        cdef tuple subs = stream.subs
        cdef Py_ssize_t count = PyTuple_GET_SIZE(subs)
        cdef Subscription sub
        cdef Peer dest
        cdef uint8_t* slot
        cdef Py_ssize_t m
        cdef int length, rc
        cdef uint64_t sent = 0
        cdef uint16_t seq = _rd16(buf + 2)
        cdef uint32_t ts = _rd32(buf + 4)
        cdef bint hold_ts = False, held
        cdef int key = -1            # does this packet start a keyframe (-1: not looked at)
        if count == 0:
            self._counters[D_NO_SUBSCRIBER] += 1
            return
        if buf[0] & 0x20:
            # padding only (a bandwidth probe): sent with the subscriber's last timestamp,
            # see MediaEngine._padding_only
            hold_ts = _header_length(buf, n) + buf[n - 1] == n
        for obj in subs:
            sub = <Subscription>obj
            dest = sub.peer
            if dest._tx == NULL or sub.paused or not dest.registered or sub.rewriter is None:
                continue
            if sub.keyframe_wait:  # sfu.engine.MediaEngine.forward: the keyframe gate
                if key < 0:
                    key = _is_keyframe(sub.keyframe_codec, buf, n)
                if not key:
                    self._counters[C_KEYFRAME_WAITS] += 1
                    if sub.keyframe_since == 0.0:
                        sub.keyframe_since = now
                    elif now - sub.keyframe_since >= KEYFRAME_RETRY:
                        sub.keyframe_since = now  # the request (or its keyframe) was lost: ask again
                        self._keyframe_needed(stream)
                    continue
                sub.keyframe_wait = False
                sub.keyframe_since = 0.0
                sub.synced = False
            if not sub.synced:
                sub._sync(seq, ts, now)
            slot = self._slot()
            if slot == NULL:
                self._counters[D_SEND_BUFFER_FULL] += 1
                continue
            m = sub.rewriter._rewrite(buf, n, slot, TX_SLOT - SRTP_MAX_TRAILER_LEN)
            if m == -1:
                continue  # payload type not mapped for this subscriber
            if m < 0:  # a header extension element overruns its block (RFC 8285)
                self._counters[D_MALFORMED] += 1  # once, as MediaEngine.forward
                return
            length = <int>m
            held = hold_ts and sub._has_last
            if held:
                _wr32(slot + 4, sub._last_ts)
            rc = _srtp_protect(dest._tx, slot, &length)
            if rc != 0:
                self._counters[D_SRTP_PROTECT] += 1
                continue
            self._commit(length, &dest._sa, dest._salen)
            sub._has_last = True
            sub._last_seq = <uint16_t>(seq + sub.rewriter._seq_delta)
            if not held:
                sub._last_ts = ts + sub.rewriter._ts_delta
            sub.last_out_time = now
            sub.packets_sent += 1
            sub.octets_sent += m
            sent += 1
        self._counters[C_RTP_FORWARDED] += sent

    # -- send queue ---------------------------------------------------------------------

    cdef inline uint8_t* _slot(self) noexcept:
        """The buffer of the next queue entry, or NULL when the queue stays full."""
        if self._q_len == TX_QUEUE:
            self._flush()
            if self._q_len == TX_QUEUE:
                self._compact()
                if self._q_len == TX_QUEUE:
                    return NULL
        return self._tx_buf + self._q_len * TX_SLOT

    cdef inline void _commit(self, int length, const sockaddr_in6* sa, socklen_t salen) noexcept:
        cdef size_t i = self._q_len
        self._tx_iov[i].iov_len = length
        memcpy(&self._tx_addr[i], sa, salen)
        self._tx_msgs[i].msg_hdr.msg_namelen = salen
        self._q_len = i + 1

    cdef void _compact(self) noexcept:
        """Move the entries still waiting (after EAGAIN) to the front of the queue."""
        cdef size_t i, k = 0
        if self._q_start == 0:
            return
        for i in range(self._q_start, self._q_len):
            memmove(self._tx_buf + k * TX_SLOT, self._tx_buf + i * TX_SLOT, self._tx_iov[i].iov_len)
            self._tx_iov[k].iov_len = self._tx_iov[i].iov_len
            memcpy(&self._tx_addr[k], &self._tx_addr[i], sizeof(sockaddr_in6))
            self._tx_msgs[k].msg_hdr.msg_namelen = self._tx_msgs[i].msg_hdr.msg_namelen
            k += 1
        self._q_start = 0
        self._q_len = k

    cdef void _flush(self):
        """sendmmsg the queue; on EAGAIN keep the rest and wait for writability."""
        cdef int rc
        cdef size_t i
        if self.capture:
            for i in range(self._q_start, self._q_len):
                self.captured.append((
                    PyBytes_FromStringAndSize(<char*>self._tx_buf + i * TX_SLOT, self._tx_iov[i].iov_len),
                    _tuple_from_sockaddr(&self._tx_addr[i]),
                ))
                self._counters[C_TX_PACKETS] += 1
                self._counters[C_TX_BYTES] += self._tx_iov[i].iov_len
            self._q_start = self._q_len = 0
            return
        if self.fd < 0:
            self._q_start = self._q_len = 0
            return
        cdef int err
        while self._q_start < self._q_len:
            if self._fail_sends > 0:  # tests: a full send buffer, which loopback never has
                self._fail_sends -= 1
                rc, err = -1, self._fail_errno
            else:
                rc = sendmmsg(self.fd, self._tx_msgs + self._q_start, <unsigned int>(self._q_len - self._q_start), 0)
                err = errno if rc < 0 else 0
            self._counters[C_SEND_CALLS] += 1
            if rc > 0:
                for i in range(self._q_start, self._q_start + rc):
                    self._counters[C_TX_BYTES] += self._tx_iov[i].iov_len
                self._counters[C_TX_PACKETS] += rc
                self._q_start += rc
                continue
            if rc < 0 and err == EINTR:
                continue
            if rc < 0 and err == EAGAIN:
                self._counters[D_SEND_BUFFER_FULL] += 1
                self._wait_writable()
                return
            # another error on the first message: drop it, go on with the rest
            self._counters[D_SEND_ERROR] += 1
            self._q_start += 1
        self._q_start = self._q_len = 0

    cdef void _wait_writable(self):
        if self._writing or self._loop is None:
            return
        try:
            self._loop.add_writer(self.fd, self._on_writable)
            self._writing = True
        except Exception:
            logger.exception("add_writer failed")
