# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""A cheap sender for many synthetic publishers: one C thread, libsrtp, sendmmsg.

The Python publisher of bench/loadgen.py (``Participant._send_tick``) builds,
protects and sends each RTP packet on the asyncio loop: ~50-75 µs of CPU a
packet, so at a few thousand packets/s the load generator takes most of a
core from the SFU it measures. Once a publisher's handshake is done, its
``VideoSource``, its outbound libsrtp session and (a duplicate of) its socket
are handed to a Publisher: a thread without the GIL that ticks every
``interval`` (1 ms, absolute deadlines on CLOCK_MONOTONIC) and, for each
publisher that is sending, builds the packets due at its rate since its
pacing started (at most 0.1 s of them after a stall, like ``_send_tick``),
``srtp_protect``s them in place (through pylibsrtp's cffi function pointer,
as bench/floor.pyx and sfu/_fast/datapath.pyx) and sends them with one
``sendmmsg`` on the connected socket.

Packets are byte-for-byte what ``VideoSource.next_packet`` makes: the same
plaintext buffer patched in place (sequence number, timestamp, VP8 payload
descriptor, frame header, marker bit on the last packet of a frame, key
frames every ``frames_per_keyframe`` frames or on request) and the 16-byte
trailer that bench/sink.pyx and ``ReceiveStats`` read: "SFUB", the counter
of original packets (big-endian 32 bits) and the send time in CLOCK_MONOTONIC
ns (big-endian 64 bits), taken just before the packet is protected.

The last ``RING`` (512) protected packets of each publisher are kept, so that
a NACK can be answered with the packet as it was sent. The asyncio side
still receives RTCP on the socket: it calls ``request_keyframe`` and
``resend``, which only queue a request under a mutex; the thread applies
the requests at its next tick. Only the thread ever touches a publisher's
libsrtp session, its ring and its packet state (libsrtp sessions are not
thread-safe); Python reads the counters, which only the thread writes.
"""

from libc.errno cimport EINTR, errno
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.uio cimport iovec

from sfu._fast.includes.mmsg cimport mmsghdr, sendmmsg_all
from sfu._fast.includes.srtp cimport SRTP_MAX_TRAILER_LEN, sfu_srtp_fn

import os
import threading

cdef extern from "<time.h>" nogil:
    int clock_nanosleep(int clockid, int flags, const timespec* request, timespec* remain)
    enum:
        TIMER_ABSTIME
        CLOCK_THREAD_CPUTIME_ID

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t* mutex, const void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* mutex)
    int pthread_mutex_lock(pthread_mutex_t* mutex)
    int pthread_mutex_unlock(pthread_mutex_t* mutex)

cdef enum:
    RING = 512             # protected packets kept per publisher, for NACKs
    BATCH = 64             # datagrams per sendmmsg
    QUEUE = 1024           # resend requests waiting for the thread, per publisher
    MAX_PUBLISHERS = 4096
    HEADER = 12            # RTP fixed header (RFC 3550 §5.1)
    FRAME_HEADER = 10      # VP8 frame header written at the start of a frame (loadgen._vp8_*_header)
    TRAILER = 16           # "SFUB", counter (4), send time ns (8): bench.loadgen.TRAILER
    MIN_SIZE = 12 + 4 + 10 + 16

cdef enum:
    RUN_NONE = 0
    RUN_START = 1
    RUN_STOP = 2


cdef struct Pub:
    # fixed at add()
    int fd                  # our own duplicate of the publisher's connected UDP socket
    void* tx                # srtp_t of the publisher's outbound session
    int size                # plaintext packet size
    int stride              # ring slot size: size + room for the SRTP tag
    uint8_t pt
    uint32_t ts_step
    int64_t packets_per_frame
    int64_t frames_per_keyframe
    uint8_t key[FRAME_HEADER]
    uint8_t inter[FRAME_HEADER]
    # packet state (the thread's): VideoSource's, continued
    uint8_t* buf            # the plaintext packet, patched in place
    uint16_t seq
    uint32_t timestamp
    uint16_t picture_id
    uint32_t counter
    uint64_t frame
    int64_t in_frame
    bint keyframe_requested
    uint8_t* ring           # RING slots of `stride` bytes, slot = seq % RING
    int ring_len[RING]      # 0: empty
    uint16_t ring_seq[RING]
    uint16_t todo[QUEUE]    # resends taken from the request queue this tick
    int ntodo
    # pacing (the thread's)
    bint active
    double rate
    int64_t start_ns
    int64_t done            # packets due since start_ns that were built
    bint closed
    # counters: written by the thread only
    uint64_t sent           # original packets the kernel accepted
    uint64_t built          # original packets built (sent + send errors)
    uint64_t keyframes
    uint64_t resends
    uint64_t resend_misses  # NACKed sequence numbers no longer (or never) in the ring
    uint64_t errors         # datagrams the kernel refused (originals and resends)
    uint64_t protect_errors
    # requests from Python: under the Publisher's mutex
    int req_run
    bint req_rate_set
    double req_rate
    bint req_keyframe
    bint req_remove
    uint16_t req_seqs[QUEUE]
    int req_nseqs
    uint64_t req_dropped    # resend requests beyond QUEUE in one tick


cdef inline int64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline int64_t _thread_cpu_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline void _sleep_until(int64_t t) noexcept nogil:
    cdef timespec due
    due.tv_sec = t // 1000000000
    due.tv_nsec = t % 1000000000
    while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL) == EINTR:
        pass


from bench.floor import _pointer, _protect_pointer  # libsrtp's srtp_protect, its C type checked


cdef class Publisher:
    """Send for many publishers in one native thread (start/stop); see the module docstring.

    Indexes come from ``add``. Requests (``start_sending``, ``stop_sending``,
    ``set_rate``, ``request_keyframe``, ``resend``, ``remove``) take effect at
    the thread's next tick.
    """

    cdef Pub** pubs
    cdef int count
    cdef pthread_mutex_t lock
    cdef bint lock_ready
    cdef bint running
    cdef int64_t interval_ns
    cdef sfu_srtp_fn protect
    cdef uint64_t ticks
    cdef int64_t cpu_ns
    cdef object thread
    cdef list keepalive

    def __cinit__(self):
        self.pubs = <Pub**>calloc(MAX_PUBLISHERS, sizeof(Pub*))
        if self.pubs == NULL:
            raise MemoryError()
        if pthread_mutex_init(&self.lock, NULL) != 0:
            raise OSError("pthread_mutex_init failed")
        self.lock_ready = True
        self.keepalive = []

    def __init__(self, double interval=0.001):
        """``interval``: seconds between two ticks of the sending thread."""
        if not 0.0001 <= interval <= 0.1:
            raise ValueError("interval must be within 0.1 ms .. 100 ms")
        self.interval_ns = <int64_t>(interval * 1e9)
        self.protect = <sfu_srtp_fn><uintptr_t>_protect_pointer()

    def __dealloc__(self):
        cdef int i
        if self.pubs != NULL:
            for i in range(self.count):
                if self.pubs[i] != NULL:
                    if not self.pubs[i].closed:
                        close(self.pubs[i].fd)
                    free(self.pubs[i].buf)
                    free(self.pubs[i].ring)
                    free(self.pubs[i])
            free(self.pubs)
        if self.lock_ready:
            pthread_mutex_destroy(&self.lock)

    # -- set-up -------------------------------------------------------------------

    def add(self, int fd, session, source):
        """Take over a publisher: ``fd`` its connected UDP socket (duplicated here, so the
        caller may close its own), ``session`` its outbound pylibsrtp Session, ``source`` its
        bench.loadgen.VideoSource, whose state is continued (the caller must not use the
        session's protect or the source any more). Returns the publisher's index; it does
        not send before ``start_sending``."""
        if self.count >= MAX_PUBLISHERS:
            raise ValueError("too many publishers for one Publisher")
        buf = bytes(source._buf)
        key = bytes(source._key)
        inter = bytes(source._inter)
        cdef int size = source.size
        if len(buf) != size or size < MIN_SIZE:
            raise ValueError(f"bad source packet size {size}")
        if len(key) != FRAME_HEADER or len(inter) != FRAME_HEADER:
            raise ValueError("VP8 frame headers must be 10 bytes")
        if source.packets_per_frame < 1 or source.frames_per_keyframe < 1:
            raise ValueError("packets_per_frame and frames_per_keyframe must be positive")
        if not 0 <= source._in_frame < source.packets_per_frame:
            raise ValueError("source is in the middle of an impossible frame")
        cdef uintptr_t ctx = _pointer(session._srtp[0])
        cdef int stride = (size + SRTP_MAX_TRAILER_LEN + 15) & ~15
        cdef Pub* p = <Pub*>calloc(1, sizeof(Pub))
        if p == NULL:
            raise MemoryError()
        p.buf = <uint8_t*>malloc(size)
        p.ring = <uint8_t*>malloc(<size_t>RING * stride)
        if p.buf == NULL or p.ring == NULL:
            free(p.buf); free(p.ring); free(p)
            raise MemoryError()
        memcpy(p.buf, <const char*>buf, size)
        memcpy(p.key, <const char*>key, FRAME_HEADER)
        memcpy(p.inter, <const char*>inter, FRAME_HEADER)
        p.size = size
        p.stride = stride
        p.tx = <void*>ctx
        p.pt = <uint8_t>source.pt
        p.ts_step = <uint32_t>source.ts_step
        p.packets_per_frame = source.packets_per_frame
        p.frames_per_keyframe = source.frames_per_keyframe
        p.seq = <uint16_t>source.seq
        p.timestamp = <uint32_t>source.timestamp
        p.picture_id = <uint16_t>source.picture_id
        p.counter = <uint32_t>source.counter
        p.frame = <uint64_t>source.frame
        p.in_frame = source._in_frame
        p.keyframe_requested = bool(source._keyframe_requested)
        p.rate = 100.0
        try:
            p.fd = os.dup(fd)
        except BaseException:
            free(p.buf); free(p.ring); free(p)
            raise
        self.keepalive.append(session)
        pthread_mutex_lock(&self.lock)
        self.pubs[self.count] = p
        self.count += 1
        index = self.count - 1
        pthread_mutex_unlock(&self.lock)
        return index

    cdef Pub* _pub(self, int index) except NULL:
        if not 0 <= index < self.count:
            raise IndexError(f"no publisher {index}")
        return self.pubs[index]

    def remove(self, int index):
        """Stop sending for good and close our socket (at the next tick, or now if the
        thread is not running)."""
        cdef Pub* p = self._pub(index)
        pthread_mutex_lock(&self.lock)
        if self.running:
            p.req_remove = True
        elif not p.closed:
            p.active = False
            p.closed = True
            close(p.fd)
        pthread_mutex_unlock(&self.lock)

    # -- requests ---------------------------------------------------------------------

    def start_sending(self, int index, rate=None):
        """Send at ``rate`` packets/s (default: the last rate set), paced from the next tick."""
        cdef Pub* p = self._pub(index)
        if rate is not None and not rate > 0:
            raise ValueError("rate must be positive")
        pthread_mutex_lock(&self.lock)
        if rate is not None:
            p.req_rate = rate
            p.req_rate_set = True
        p.req_run = RUN_START
        pthread_mutex_unlock(&self.lock)

    def stop_sending(self, int index):
        cdef Pub* p = self._pub(index)
        pthread_mutex_lock(&self.lock)
        p.req_run = RUN_STOP
        pthread_mutex_unlock(&self.lock)

    def set_rate(self, int index, double rate):
        """Change the packet rate; a sending publisher's pacing restarts from the next tick."""
        cdef Pub* p = self._pub(index)
        if not rate > 0:
            raise ValueError("rate must be positive")
        pthread_mutex_lock(&self.lock)
        p.req_rate = rate
        p.req_rate_set = True
        pthread_mutex_unlock(&self.lock)

    def request_keyframe(self, int index):
        """The next frame this publisher starts is a key frame (PLI, FIR)."""
        cdef Pub* p = self._pub(index)
        pthread_mutex_lock(&self.lock)
        p.req_keyframe = True
        pthread_mutex_unlock(&self.lock)

    def resend(self, int index, seqs):
        """Resend the stored protected packets of these sequence numbers (an int or an
        iterable: a NACK's lost packets), at the next tick."""
        cdef Pub* p = self._pub(index)
        cdef list wanted = [seqs] if isinstance(seqs, int) else list(seqs)
        cdef uint16_t s
        values = [int(x) & 0xFFFF for x in wanted]
        pthread_mutex_lock(&self.lock)
        for v in values:
            s = <uint16_t>v
            if p.req_nseqs < QUEUE:
                p.req_seqs[p.req_nseqs] = s
                p.req_nseqs += 1
            else:
                p.req_dropped += 1
        pthread_mutex_unlock(&self.lock)

    # -- the thread -----------------------------------------------------------------------

    def start(self):
        if self.running:
            return
        self.running = True
        self.thread = threading.Thread(target=self._run, name="bench-publisher", daemon=True)
        self.thread.start()

    def stop(self):
        """Stop the thread and wait for it (pending requests are applied at its last tick)."""
        self.running = False
        if self.thread is not None:
            self.thread.join(5.0)
            if self.thread.is_alive():
                raise RuntimeError("the publisher thread did not stop")
            self.thread = None

    @property
    def is_running(self):
        return self.running

    # -- counters -----------------------------------------------------------------------

    def __len__(self):
        return self.count

    def sent(self, int index):
        """Original packets of this publisher that the kernel accepted."""
        return self._pub(index).sent

    def stats(self, int index):
        cdef Pub* p = self._pub(index)
        return {"sent": p.sent, "built": p.built, "keyframes": p.keyframes, "resends": p.resends,
                "resend_misses": p.resend_misses, "errors": p.errors, "protect_errors": p.protect_errors,
                "requests_dropped": p.req_dropped, "sending": bool(p.active), "rate": p.rate,
                "seq": p.seq, "counter": p.counter}

    def totals(self):
        """Sums over all publishers, plus the thread's ticks and CPU seconds."""
        cdef int i
        cdef uint64_t s = 0, b = 0, k = 0, r = 0, m = 0, e = 0, pe = 0
        for i in range(self.count):
            s += self.pubs[i].sent
            b += self.pubs[i].built
            k += self.pubs[i].keyframes
            r += self.pubs[i].resends
            m += self.pubs[i].resend_misses
            e += self.pubs[i].errors
            pe += self.pubs[i].protect_errors
        return {"sent": s, "built": b, "keyframes": k, "resends": r, "resend_misses": m, "errors": e,
                "protect_errors": pe, "ticks": self.ticks, "cpu_seconds": self.cpu_ns / 1e9}

    def _run(self):
        cdef mmsghdr* msgs = <mmsghdr*>calloc(BATCH, sizeof(mmsghdr))
        cdef iovec* iov = <iovec*>calloc(BATCH, sizeof(iovec))
        cdef int i, n
        cdef bint busy
        cdef int64_t deadline, now, cpu0
        if msgs == NULL or iov == NULL:
            free(msgs); free(iov)
            raise MemoryError()
        for i in range(BATCH):
            msgs[i].msg_hdr.msg_iov = &iov[i]
            msgs[i].msg_hdr.msg_iovlen = 1
        try:
            with nogil:
                cpu0 = _thread_cpu_ns()
                deadline = _now_ns()
                while True:
                    n = self._apply_requests()
                    busy = False
                    for i in range(n):
                        if self._serve(self.pubs[i], msgs, iov):
                            busy = True
                    self.ticks += 1
                    self.cpu_ns = _thread_cpu_ns() - cpu0
                    if not self.running:
                        break
                    now = _now_ns()
                    if busy:
                        deadline += self.interval_ns
                        if deadline < now - self.interval_ns:
                            deadline = now  # a stall: no catching up tick by tick (pacing is per publisher)
                    else:
                        deadline = now + 10 * self.interval_ns  # nobody sending: tick slower
                    _sleep_until(deadline)
                # the last tick applied the requests made before stop(): close what was removed
                self._apply_requests()
        finally:
            free(msgs)
            free(iov)

    cdef int _apply_requests(self) noexcept nogil:
        """Move the requests made from Python into the thread's state; returns the count."""
        cdef int i, n, j
        cdef Pub* p
        cdef int64_t now = _now_ns()
        pthread_mutex_lock(&self.lock)
        n = self.count
        for i in range(n):
            p = self.pubs[i]
            if p.closed:
                continue
            if p.req_remove:
                p.active = False
                p.closed = True
                p.ntodo = 0
                close(p.fd)
                continue
            if p.req_rate_set:
                p.rate = p.req_rate
                p.req_rate_set = False
                p.start_ns = now
                p.done = 0
            if p.req_run == RUN_START:
                if not p.active:
                    p.start_ns = now
                    p.done = 0
                p.active = True
            elif p.req_run == RUN_STOP:
                p.active = False
            p.req_run = RUN_NONE
            if p.req_keyframe:
                p.keyframe_requested = True
                p.req_keyframe = False
            for j in range(p.req_nseqs):
                if p.ntodo < QUEUE:
                    p.todo[p.ntodo] = p.req_seqs[j]
                    p.ntodo += 1
            p.req_nseqs = 0
        pthread_mutex_unlock(&self.lock)
        return n

    cdef bint _serve(self, Pub* p, mmsghdr* msgs, iovec* iov) noexcept nogil:
        """Resends, then the packets due; True if the publisher is sending."""
        cdef int i, k, slot
        cdef int64_t due, limit
        cdef uint16_t s
        if p.closed:
            return False
        if p.ntodo:
            k = 0
            for i in range(p.ntodo):
                s = p.todo[i]
                slot = s % RING
                if p.ring_len[slot] == 0 or p.ring_seq[slot] != s:
                    p.resend_misses += 1
                    continue
                iov[k].iov_base = p.ring + <size_t>slot * p.stride
                iov[k].iov_len = p.ring_len[slot]
                k += 1
                if k == BATCH:
                    p.resends += self._flush(p.fd, msgs, k, &p.errors)
                    k = 0
            if k:
                p.resends += self._flush(p.fd, msgs, k, &p.errors)
            p.ntodo = 0
        if not p.active:
            return False
        due = <int64_t>((_now_ns() - p.start_ns) * 1e-9 * p.rate) + 1
        # after a stall, do not burst more than 0.1 s of packets
        limit = <int64_t>(p.rate * 0.1)
        if limit < 1:
            limit = 1
        if due - p.done > limit:
            p.done = due - limit
        k = 0
        while p.done < due:
            slot = self._build(p)
            p.done += 1
            p.built += 1
            if slot < 0:
                continue
            iov[k].iov_base = p.ring + <size_t>slot * p.stride
            iov[k].iov_len = p.ring_len[slot]
            k += 1
            if k == BATCH:
                p.sent += self._flush(p.fd, msgs, k, &p.errors)
                k = 0
        if k:
            p.sent += self._flush(p.fd, msgs, k, &p.errors)
        return True

    cdef int _flush(self, int fd, mmsghdr* msgs, int n, uint64_t* errors) noexcept nogil:
        """sendmmsg of msgs[0:n] on the connected socket; returns how many the kernel took
        (a refused datagram is lost, but kept in the ring for a NACK)."""
        return sendmmsg_all(fd, msgs, n, errors)

    cdef int _build(self, Pub* p) noexcept nogil:
        """The next packet, as VideoSource.next_packet builds it, protected into its ring
        slot; returns the slot, or -1 if libsrtp refused it."""
        cdef uint8_t* buf = p.buf
        cdef int64_t i = p.in_frame
        cdef bint last, key
        cdef uint16_t seq = p.seq
        cdef uint32_t counter = p.counter
        cdef int64_t sent_ns
        cdef int t, slot, length
        cdef uint8_t* out
        if i == 0:
            key = p.keyframe_requested or p.frame % <uint64_t>p.frames_per_keyframe == 0
            if key:
                p.keyframe_requested = False
                p.keyframes += 1
            memcpy(buf + HEADER + 4, <uint8_t*>p.key if key else <uint8_t*>p.inter, FRAME_HEADER)
            buf[12] = 0x90  # X=1, S=1, PID 0 (RFC 7741 §4.2)
        else:
            buf[12] = 0x80
        last = i == p.packets_per_frame - 1
        buf[1] = (0x80 if last else 0) | p.pt  # marker on the last packet of a frame
        buf[2] = <uint8_t>(seq >> 8)
        buf[3] = <uint8_t>seq
        buf[4] = <uint8_t>(p.timestamp >> 24)
        buf[5] = <uint8_t>(p.timestamp >> 16)
        buf[6] = <uint8_t>(p.timestamp >> 8)
        buf[7] = <uint8_t>p.timestamp
        buf[13] = 0x80  # I=1: a PictureID follows
        buf[14] = <uint8_t>(0x80 | (p.picture_id >> 8))  # M=1: 15 bits
        buf[15] = <uint8_t>(p.picture_id & 0xFF)
        out = buf + p.size - TRAILER
        out[0] = 83; out[1] = 70; out[2] = 85; out[3] = 66  # "SFUB"
        out[4] = <uint8_t>(counter >> 24)
        out[5] = <uint8_t>(counter >> 16)
        out[6] = <uint8_t>(counter >> 8)
        out[7] = <uint8_t>counter
        p.seq = <uint16_t>(seq + 1)
        p.counter = counter + 1
        if last:
            p.in_frame = 0
            p.frame += 1
            p.timestamp = p.timestamp + p.ts_step
            p.picture_id = (p.picture_id + 1) & 0x7FFF
        else:
            p.in_frame = i + 1
        slot = seq % RING
        sent_ns = _now_ns()
        for t in range(8):
            out[8 + t] = <uint8_t>(sent_ns >> (56 - 8 * t))
        memcpy(p.ring + <size_t>slot * p.stride, buf, p.size)
        length = p.size
        if self.protect(p.tx, p.ring + <size_t>slot * p.stride, &length) != 0:
            p.protect_errors += 1
            p.ring_len[slot] = 0
            return -1
        p.ring_len[slot] = length
        p.ring_seq[slot] = seq
        return slot
