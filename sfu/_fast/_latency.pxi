# Included by datapath.pyx (one extension module, so the hot path stays inlined).
#
# Clocks and the receive->send latency histogram of the data path: the bucket
# bounds (LATENCY_BUCKETS_US, the same as sfu.metrics.LATENCY_BUCKETS), the
# monotonic/realtime clocks and the kernel receive timestamp (SCM_TIMESTAMPNS)
# of a datagram, and the Datapath functions that record one sample per
# forwarded packet (_lat_sent, _lat_record) and read them back
# (_lat_histogram for Datapath.latency(), _lat_drain for drain_latency()).
# The histogram's fields (_hist, _hist_sum, _hist_count, _lat_ring, _lat_len)
# are declared in the Datapath class.


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


cdef void _lat_sent(Datapath self, int n_fwd, double t_rx) noexcept:
    """The copies of the last ``n_fwd`` forwarded datagrams went to the kernel: one latency
    sample each, from its kernel receive time (else from the recvmmsg return, ``t_rx``)."""
    cdef double t_sent = _realtime()
    cdef double t_mono = _monotonic()
    cdef double t_kernel
    cdef int j
    for j in range(n_fwd):
        t_kernel = self._rx_fwd[j]
        _lat_record(self, max(0.0, t_sent - t_kernel) if t_kernel > 0 else t_mono - t_rx)
    self._counters[C_BATCHES_FORWARDING] += 1


cdef inline void _lat_record(Datapath self, double seconds) noexcept:
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


cdef dict _lat_histogram(Datapath self):
    out = []
    cdef uint64_t total = 0
    cdef int i
    for i in range(N_BUCKETS):
        total += self._hist[i]
        out.append((LATENCY_BUCKETS_US[i] * 1e-6 if i < N_BUCKETS - 1 else float("inf"), total))
    return {"buckets": out, "count": self._hist_count, "sum": self._hist_sum}


cdef list _lat_drain(Datapath self):
    out = [self._lat_ring[i] for i in range(self._lat_len)]
    self._lat_len = 0
    return out
