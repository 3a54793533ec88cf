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

It is the C forwarding plane behind ``sfu.plane_c.CPlane`` (the interface is
``sfu.plane``) and mirrors the pure-Python plane (``sfu.plane_py.PythonPlane``)
step by step, with the same drop reasons; ``tests/test_plane.py`` and
``tests/test_datapath.py`` feed both the same packets and compare the output
byte for byte. ``feed(data, addr, now)`` is the sans-I/O entry used by
those tests; ``on_readable()`` is the socket entry (``loop.add_reader``).

libsrtp is called through function pointers taken from pylibsrtp's cffi
module (``ffi.addressof(lib, "srtp_protect")``); their C type is checked at
import. A Peer keeps the ``SrtpPair`` whose ``srtp_t`` it uses alive.

This file holds the tunables, the counters, libsrtp, ``Peer`` and ``Datapath``;
the rest is split by concern into files included here (one extension module, so
the per-packet calls stay inlined C calls):

- ``_latency.pxi``: clocks, kernel receive timestamps, the latency histogram;
- ``_addrtable.pxi``: ``AddrKey``, sockaddr conversions, the address table;
- ``_streams.pxi``: ``Subscription`` and ``Stream`` (NACK log, cache, keyframe gate);
- ``_sendqueue.pxi``: send slots, sendmmsg batching, the queue kept after EAGAIN.
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
    # drops (MediaEngine.drops), same names as the pure-Python plane
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

# -- clocks, latency histogram -------------------------------------------------------

include "_latency.pxi"

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

include "_addrtable.pxi"

# -- routing objects ---------------------------------------------------------------

include "_streams.pxi"


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
            _table_remove(self.dp, &self._key, self)
            self.registered = False
        memcpy(&self._sa, &sa, sizeof(sa))
        self._salen = n
        self._key = key
        _table_put(self.dp, &self._key, self)
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
            _table_remove(self.dp, &self._key, self)
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

    @property
    def queued_bytes(self):
        """Bytes of the entries waiting in the send queue."""
        cdef size_t i, total = 0
        for i in range(self._q_start, self._q_len):
            total += self._tx_iov[i].iov_len
        return total

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
        return _lat_histogram(self)

    def drain_latency(self):
        """The latency samples (seconds, one per forwarded packet) since the last call: the
        first LATENCY_RING of them (for tests and diagnostics; the histogram has them all)."""
        return _lat_drain(self)
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
        _tx_flush(self)

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
        slot = _tx_slot(self)
        if slot == NULL:
            self._counters[D_SEND_BUFFER_FULL] += 1
            return
        memcpy(slot, PyBytes_AS_STRING(b), n)
        _tx_commit(self, n, &sa, salen)
        if self.capture:
            _tx_flush(self)
        elif not self._writing:
            _tx_flush(self)

    def flush(self):
        _tx_flush(self)

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
                        _tx_flush(self)
                        _lat_sent(self, n_fwd, t_rx)
                        n_fwd = 0
            _tx_flush(self)
            if n_fwd:
                _lat_sent(self, n_fwd, t_rx)
            if n < RX_BATCH:
                break
            rounds += 1

    def _on_writable(self):
        _tx_flush(self)
        if self._q_len == self._q_start and self._writing:
            self._writing = False
            if self._loop is not None and self.fd >= 0:
                self._loop.remove_writer(self.fd)

    # -- per datagram (C) ------------------------------------------------------------

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
        peer = _table_lookup(self, &key)
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
        """PythonPlane._rtp (receive, statistics, cache, then the fan-out), in C."""
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
        """PythonPlane._forward, in C."""
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
            # see sfu.plane_py
            hold_ts = _header_length(buf, n) + buf[n - 1] == n
        for obj in subs:
            sub = <Subscription>obj
            dest = sub.peer
            if dest._tx == NULL or sub.paused or not dest.registered or sub.rewriter is None:
                continue
            if sub.keyframe_wait:  # the keyframe gate (sfu.plane.ForwardingPlane.bind)
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
            slot = _tx_slot(self)
            if slot == NULL:
                self._counters[D_SEND_BUFFER_FULL] += 1
                continue
            m = sub.rewriter._rewrite(buf, n, slot, TX_SLOT - SRTP_MAX_TRAILER_LEN)
            if m == -1:
                continue  # payload type not mapped for this subscriber
            if m < 0:  # a header extension element overruns its block (RFC 8285)
                self._counters[D_MALFORMED] += 1  # once, as PythonPlane._forward
                return
            length = <int>m
            held = hold_ts and sub._has_last
            if held:
                _wr32(slot + 4, sub._last_ts)
            rc = _srtp_protect(dest._tx, slot, &length)
            if rc != 0:
                self._counters[D_SRTP_PROTECT] += 1
                continue
            _tx_commit(self, length, &dest._sa, dest._salen)
            sub._has_last = True
            sub._last_seq = <uint16_t>(seq + sub.rewriter._seq_delta)
            if not held:
                sub._last_ts = ts + sub.rewriter._ts_delta
            sub.last_out_time = now
            sub.packets_sent += 1
            sub.octets_sent += m
            sent += 1
        self._counters[C_RTP_FORWARDED] += sent


# -- send queue (functions of the Datapath, in their own file) -----------------------

include "_sendqueue.pxi"
