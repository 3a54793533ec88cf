# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A cheap receiver for many synthetic viewers: one C thread, epoll, recvmmsg.

The Python viewer of bench/loadgen.py unprotects and inspects every packet
(~20-40 µs each): at 100k packets/s the load generator, not the SFU, would be
the bottleneck. Once a viewer's handshake is done, its socket is handed to a
Sink: a thread without the GIL waits on all of them with epoll and reads
them with recvmmsg. Per RTP packet it only reads the clear header (RFC 3550
§5.1: SSRC and sequence number stay unencrypted in SRTP, RFC 3711 §3.1) and
marks the extended sequence number in a per-viewer window, so that distinct
packets, duplicates and loss are counted without decrypting. One packet in
``sample_every`` is unprotected with the viewer's libsrtp session to read the
publisher's send time from the payload trailer (bench.loadgen.TRAILER):
the latency samples, up to the kernel's receive timestamp of the datagram
(SO_TIMESTAMPNS), so the sink thread's own scheduling delays are not in them.

The thread does not wait in epoll_wait: it sleeps ``interval`` (1 ms), then
asks epoll which sockets are readable (timeout 0) and drains them. A datagram
arriving while it sleeps finds nobody waiting, so the sender (on loopback the
kernel charges the receiver's wake-up to the sending process: the SFU) does
not pay a wake-up per packet -- as when the viewers are other machines. The
receive buffers hold far more than 1 ms of packets.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec
from posix.uio cimport iovec

from sfu._fast.includes.mmsg cimport (
    CMSG_DATA, CMSG_FIRSTHDR, CMSG_NXTHDR, MSG_DONTWAIT, SCM_TIMESTAMPNS, SO_TIMESTAMPNS, SOL_SOCKET, cmsghdr,
    mmsghdr, msghdr, recvmmsg, setsockopt,
)
from sfu._fast.includes.srtp cimport SFU_SRTP_FN_CTYPE, sfu_srtp_fn

import threading

cdef extern from "<sys/epoll.h>" nogil:
    union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    enum:
        EPOLLIN
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<time.h>" nogil:
    int clock_nanosleep(int clockid, int flags, const timespec* request, timespec* remain)

cdef enum:
    BATCH = 32
    SLOT = 2048
    WINDOW = 4096          # bits of the per-viewer sequence window
    WINDOW_BYTES = 512
    MAX_TRACKS = 16        # SSRCs per viewer (N-by-N meetings: one per video section)
    MAX_VIEWERS = 8192
    MAX_SAMPLES = 1 << 20
    TRAILER = 16           # "SFUB", counter (4), send time ns (8)
    CTL = 64               # ancillary data bytes per datagram (SCM_TIMESTAMPNS)


cdef struct Track:          # one SSRC received by a viewer
    uint32_t ssrc
    bint started
    int64_t highest
    uint8_t window[WINDOW_BYTES]


cdef struct Viewer:
    int fd
    void* rx                # srtp_t of the viewer's inbound session (for samples)
    Track* tracks[MAX_TRACKS]
    int ntracks
    uint64_t packets        # RTP datagrams
    uint64_t distinct       # distinct extended sequence numbers
    uint64_t duplicates
    uint64_t late           # older than the window: not counted as distinct
    uint64_t bytes
    uint64_t rtcp
    uint64_t other
    uint64_t sample_errors
    uint64_t untracked      # RTP of more SSRCs than MAX_TRACKS
    uint32_t tick


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int64_t _realtime_minus_monotonic_ns() noexcept nogil:
    cdef timespec a, b
    clock_gettime(CLOCK_REALTIME, &a)
    clock_gettime(CLOCK_MONOTONIC, &b)
    return (<int64_t>a.tv_sec - b.tv_sec) * 1000000000 + (a.tv_nsec - b.tv_nsec)


cdef inline int64_t _arrival_ns(msghdr* hdr, int64_t offset) noexcept nogil:
    """The datagram's kernel receive time on CLOCK_MONOTONIC (ns), or now without a timestamp."""
    cdef cmsghdr* c = CMSG_FIRSTHDR(hdr)
    cdef timespec ts
    while c != NULL:
        if c.cmsg_level == SOL_SOCKET and c.cmsg_type == SCM_TIMESTAMPNS:
            memcpy(&ts, CMSG_DATA(c), sizeof(timespec))
            return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec - offset
        c = CMSG_NXTHDR(hdr, c)
    return _now_ns()


cdef class Sink:
    """Receive for many viewer sockets in one native thread (start/stop), count and sample."""

    cdef Viewer* viewers
    cdef int count
    cdef int epfd
    cdef int sample_every
    cdef bint running
    cdef bint recording
    cdef double* samples
    cdef size_t nsamples
    cdef sfu_srtp_fn unprotect
    cdef long interval_ns
    cdef object thread
    cdef list keepalive

    def __cinit__(self):
        self.viewers = <Viewer*>calloc(MAX_VIEWERS, sizeof(Viewer))
        self.samples = <double*>malloc(MAX_SAMPLES * sizeof(double))
        if self.viewers == NULL or self.samples == NULL:
            raise MemoryError()
        self.epfd = epoll_create1(0)
        if self.epfd < 0:
            raise OSError(errno, "epoll_create1")
        self.keepalive = []

    def __init__(self, int sample_every=16, double interval=0.001):
        """``interval``: seconds slept between two rounds of draining the readable sockets
        (0: block in epoll_wait instead, woken by each packet)."""
        from pylibsrtp._binding import ffi, lib

        fn = ffi.addressof(lib, "srtp_unprotect")
        if ffi.typeof(fn).cname != SFU_SRTP_FN_CTYPE.decode():
            raise ImportError(f"srtp_unprotect has type {ffi.typeof(fn).cname!r}")
        self.unprotect = <sfu_srtp_fn><uintptr_t>int(ffi.cast("uintptr_t", fn))
        self.sample_every = max(1, sample_every)
        self.interval_ns = <long>(max(0.0, interval) * 1e9)

    def __dealloc__(self):
        cdef int i, j
        if self.epfd >= 0:
            close(self.epfd)
        if self.viewers != NULL:
            for i in range(self.count):
                for j in range(self.viewers[i].ntracks):
                    free(self.viewers[i].tracks[j])
        free(self.viewers)
        free(self.samples)

    def add(self, int fd, session):
        """Watch ``fd`` (a viewer's connected, non-blocking UDP socket); ``session`` is its
        inbound pylibsrtp Session (the caller stops reading the socket itself). Returns an index."""
        from pylibsrtp._binding import ffi

        if self.count >= MAX_VIEWERS:
            raise ValueError("too many viewers for one Sink")
        cdef int index = self.count
        cdef Viewer* v = &self.viewers[index]
        memset(v, 0, sizeof(Viewer))
        v.fd = fd
        v.rx = <void*><uintptr_t>int(ffi.cast("uintptr_t", session._srtp[0]))
        cdef int one = 1
        if setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(one)) < 0:
            raise OSError(errno, "setsockopt SO_TIMESTAMPNS")
        self.keepalive.append(session)
        cdef epoll_event ev
        ev.events = EPOLLIN
        ev.data.u32 = <uint32_t>index
        if epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &ev) < 0:
            raise OSError(errno, "epoll_ctl")
        self.count = index + 1
        return index

    def start(self):
        if self.running:
            return
        self.running = True
        self.thread = threading.Thread(target=self._run, name="bench-sink", daemon=True)
        self.thread.start()

    def stop(self):
        self.running = False
        if self.thread is not None:
            self.thread.join(5.0)
            self.thread = None

    def record(self, bint on):
        """Keep latency samples (on) or not (off)."""
        self.recording = on

    def take_samples(self):
        """Latency samples in microseconds since the last call."""
        out = [self.samples[i] for i in range(self.nsamples)]
        self.nsamples = 0
        return out

    def stats(self, int index):
        cdef Viewer* v = &self.viewers[index]
        return {"packets": v.packets, "distinct": v.distinct, "duplicates": v.duplicates, "late": v.late,
                "bytes": v.bytes, "rtcp": v.rtcp, "other": v.other, "sample_errors": v.sample_errors}

    def totals(self):
        """Sums over all viewers: the same keys as stats()."""
        cdef int i
        cdef uint64_t p = 0, d = 0, dup = 0, late = 0, b = 0, r = 0, o = 0, e = 0
        for i in range(self.count):
            p += self.viewers[i].packets
            d += self.viewers[i].distinct
            dup += self.viewers[i].duplicates
            late += self.viewers[i].late
            b += self.viewers[i].bytes
            r += self.viewers[i].rtcp
            o += self.viewers[i].other
            e += self.viewers[i].sample_errors
        return {"packets": p, "distinct": d, "duplicates": dup, "late": late, "bytes": b, "rtcp": r,
                "other": o, "sample_errors": e}

    def _run(self):
        cdef mmsghdr* msgs = <mmsghdr*>calloc(BATCH, sizeof(mmsghdr))
        cdef iovec* iov = <iovec*>calloc(BATCH, sizeof(iovec))
        cdef uint8_t* bufs = <uint8_t*>malloc(BATCH * SLOT)
        cdef uint8_t* ctl = <uint8_t*>calloc(BATCH, CTL)
        cdef epoll_event events[256]
        cdef int i, j, n, k
        cdef timespec pause
        pause.tv_sec = self.interval_ns // 1000000000
        pause.tv_nsec = self.interval_ns % 1000000000
        if msgs == NULL or iov == NULL or bufs == NULL or ctl == NULL:
            free(msgs); free(iov); free(bufs); free(ctl)
            raise MemoryError()
        for i in range(BATCH):
            iov[i].iov_base = bufs + i * SLOT
            iov[i].iov_len = SLOT
            msgs[i].msg_hdr.msg_iov = &iov[i]
            msgs[i].msg_hdr.msg_iovlen = 1
            msgs[i].msg_hdr.msg_control = ctl + i * CTL
        try:
            with nogil:
                while self.running:
                    if self.interval_ns > 0:
                        clock_nanosleep(CLOCK_MONOTONIC, 0, &pause, NULL)
                        n = epoll_wait(self.epfd, events, 256, 0)
                    else:
                        n = epoll_wait(self.epfd, events, 256, 50)
                    while n > 0:
                        for j in range(n):
                            k = <int>events[j].data.u32
                            self._drain(&self.viewers[k], msgs, bufs)
                        # more readable sockets than one call returns: ask again at once
                        n = epoll_wait(self.epfd, events, 256, 0) if n == 256 else 0
        finally:
            free(msgs)
            free(iov)
            free(bufs)
            free(ctl)

    cdef void _drain(self, Viewer* v, mmsghdr* msgs, uint8_t* bufs) noexcept nogil:
        cdef int n, i
        cdef int64_t offset
        while True:
            for i in range(BATCH):
                msgs[i].msg_hdr.msg_controllen = CTL
            n = recvmmsg(v.fd, msgs, BATCH, MSG_DONTWAIT, NULL)
            if n <= 0:
                if n < 0 and errno == EINTR:
                    continue
                return
            offset = _realtime_minus_monotonic_ns() if self.recording else 0
            for i in range(n):
                self._packet(v, bufs + i * SLOT, msgs[i].msg_len, &msgs[i].msg_hdr, offset)
            if n < BATCH:
                return

    cdef Track* _track(self, Viewer* v, uint32_t ssrc) noexcept nogil:
        cdef int i
        cdef Track* t
        for i in range(v.ntracks):
            if v.tracks[i].ssrc == ssrc:
                return v.tracks[i]
        if v.ntracks == MAX_TRACKS:
            return NULL
        t = <Track*>calloc(1, sizeof(Track))
        if t == NULL:
            return NULL
        t.ssrc = ssrc
        v.tracks[v.ntracks] = t
        v.ntracks += 1
        return t

    cdef void _packet(self, Viewer* v, uint8_t* p, unsigned int n, msghdr* hdr, int64_t offset) noexcept nogil:
        cdef uint16_t seq, delta
        cdef int64_t ext, age
        cdef size_t bit
        cdef int length
        cdef int64_t sent_ns
        cdef int t
        cdef Track* tr
        if n < 12 or p[0] < 128 or p[0] > 191:
            v.other += 1
            return
        if 192 <= p[1] <= 223:
            v.rtcp += 1
            return
        v.packets += 1
        v.bytes += n
        tr = self._track(v, (<uint32_t>p[8] << 24) | (<uint32_t>p[9] << 16) | (<uint32_t>p[10] << 8) | p[11])
        if tr == NULL:
            v.untracked += 1
            return
        seq = (<uint16_t>p[2] << 8) | p[3]
        if not tr.started:
            tr.started = True
            tr.highest = seq
            ext = seq
        else:
            delta = <uint16_t>(seq - tr.highest)
            ext = tr.highest + delta if delta < 0x8000 else tr.highest + delta - 0x10000
        if ext > tr.highest:
            # clear the bits of the numbers the window slides over
            age = ext - tr.highest
            if age >= WINDOW:
                memset(tr.window, 0, WINDOW_BYTES)
            else:
                for t in range(1, <int>age + 1):
                    bit = <size_t>((tr.highest + t) % WINDOW)
                    tr.window[bit >> 3] &= ~(1 << (bit & 7))
            tr.highest = ext
        elif tr.highest - ext >= WINDOW:
            v.late += 1
            return
        bit = <size_t>(((ext % WINDOW) + WINDOW) % WINDOW)
        if tr.window[bit >> 3] & (1 << (bit & 7)):
            v.duplicates += 1
            return
        tr.window[bit >> 3] |= 1 << (bit & 7)
        v.distinct += 1
        v.tick += 1
        if self.recording and v.tick % self.sample_every == 0 and self.nsamples < MAX_SAMPLES:
            length = <int>n
            if self.unprotect(v.rx, p, &length) != 0 or length < 12 + TRAILER:
                v.sample_errors += 1
                return
            p += length - TRAILER
            if p[0] != 83 or p[1] != 70 or p[2] != 85 or p[3] != 66:  # "SFUB"
                v.sample_errors += 1
                return
            sent_ns = 0
            for t in range(8):
                sent_ns = (sent_ns << 8) | p[8 + t]
            self.samples[self.nsamples] = (_arrival_ns(hdr, offset) - sent_ns) / 1000.0
            self.nsamples += 1
