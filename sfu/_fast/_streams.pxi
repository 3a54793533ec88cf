# Included by datapath.pyx (one extension module, so the hot path stays inlined).
#
# Streams and subscriptions: Subscription (one subscriber's copy of a stream:
# its Rewriter, destination Peer, send state, keyframe gate, NACK budget and
# retransmissions from the stream's cache) and Stream (one received SSRC:
# receive statistics, the NACK gap log and its event ring, the packet cache,
# its subscriptions).


@cython.final
cdef class Subscription:
    """One subscriber's copy of a stream: its Rewriter, destination Peer and send state.

    Named by an integer id through ``sfu.plane_c.CPlane`` (which keeps its
    Rewriter and RTX parameters); its statistics are read as
    ``sfu.plane.SubscriptionStats``.
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
    # keyframe gate (sfu.plane.ForwardingPlane.bind): nothing is sent, nor numbered,
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
        """Continue the output numbering where it left off (as the pure-Python plane does)."""
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
        """ForwardingPlane.retransmit in C: answer the sequence numbers ``lost`` (this
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
            slot = _tx_slot(dp)
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
            _tx_commit(dp, length, &dest._sa, dest._salen)
            self.retransmissions += 1
            dp._counters[C_RETRANSMISSIONS] += 1
        _tx_flush(dp)

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
    # NACK log: the events Producer.drain_nack_log applies to Producer.missing
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
        """Receive statistics, cache and NACK log, event for event as the pure-Python plane."""
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
