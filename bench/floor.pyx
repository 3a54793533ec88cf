# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The floor: what forwarding one packet to N subscribers cannot avoid.

Per tick (``rate`` ticks per second, like the publishers' packets): for each of
``fanout`` destinations, copy the packet into its send slot, set a sequence
number, ``srtp_protect`` it with that destination's own libsrtp session, then
one ``sendmmsg`` for all of them -- exactly the unavoidable part of the SFU's
fan-out. With more destinations than ``fanout`` (two webinar rooms of 50, an
N-by-N meeting), successive ticks take successive windows of ``fanout``
destinations, so every destination (socket and libsrtp session) is served as
often as the SFU serves its subscribers
(sfu/_fast/datapath.pyx), without receiving, parsing, routing or Python.
It runs without the GIL (in a thread of the benchmark, so the destinations'
sockets can be read by the same process's event loop) and measures its own
thread CPU time (CLOCK_THREAD_CPUTIME_ID), which on loopback includes the
kernel's delivery of each packet to the destination socket.

libsrtp is called through the same cffi function pointer as the data path
(sfu/_fast/includes/srtp.pxd); the sessions are pylibsrtp Sessions made by
the caller (one per destination, like one SrtpPair per subscriber).
"""

from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport uint8_t, uint16_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec
from posix.uio cimport iovec

from sfu._fast.includes.mmsg cimport (
    AF_INET, htons, inet_pton, mmsghdr, sendmmsg_all, sockaddr_in, socklen_t,
)
from sfu._fast.includes.srtp cimport SFU_SRTP_FN_CTYPE, SRTP_MAX_TRAILER_LEN, sfu_srtp_fn

cdef extern from "<time.h>" nogil:
    int clock_nanosleep(int clockid, int flags, const timespec* request, timespec* remain)
    enum:
        TIMER_ABSTIME
        CLOCK_THREAD_CPUTIME_ID

cdef enum:
    SLOT = 2048


cdef double _now(int clock) noexcept nogil:
    cdef timespec ts
    clock_gettime(clock, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef void _sleep_until(double t) noexcept nogil:
    """Sleep until ``t`` seconds of CLOCK_MONOTONIC (an absolute deadline: no drift)."""
    cdef timespec due
    due.tv_sec = <long>t
    due.tv_nsec = <long>((t - due.tv_sec) * 1e9)
    while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL) == EINTR:
        pass


def _pointer(obj):
    from pylibsrtp._binding import ffi
    return int(ffi.cast("uintptr_t", obj))


def _protect_pointer():
    from pylibsrtp._binding import ffi, lib
    fn = ffi.addressof(lib, "srtp_protect")
    if ffi.typeof(fn).cname != SFU_SRTP_FN_CTYPE.decode():
        raise ImportError(f"srtp_protect has type {ffi.typeof(fn).cname!r}")
    return _pointer(fn)


def run(int fd, destinations, sessions, bytes packet, double rate, double seconds, int fanout=0):
    """Send ``packet`` (plaintext RTP) to ``fanout`` destinations (0: all) ``rate``
    times a second for ``seconds`` (rate 0: back to back, ``seconds`` of ticks),
    rotating over the destinations. Returns
    {"packets", "sent", "errors", "ticks", "cpu_seconds", "wall_seconds", "us_per_packet"}.
    """
    cdef Py_ssize_t n = len(destinations)
    cdef Py_ssize_t size = len(packet)
    if n == 0 or n != len(sessions):
        raise ValueError("one session per destination")
    cdef Py_ssize_t f = n if fanout <= 0 or fanout > n else fanout
    cdef Py_ssize_t start = 0, d
    if size < 12 or size + SRTP_MAX_TRAILER_LEN > SLOT:
        raise ValueError("bad packet size")
    cdef sfu_srtp_fn protect = <sfu_srtp_fn><uintptr_t>_protect_pointer()
    cdef mmsghdr* msgs = <mmsghdr*>calloc(f, sizeof(mmsghdr))
    cdef iovec* iov = <iovec*>calloc(f, sizeof(iovec))
    cdef sockaddr_in* addrs = <sockaddr_in*>calloc(n, sizeof(sockaddr_in))
    cdef void** ctx = <void**>calloc(n, sizeof(void*))
    cdef uint8_t* bufs = <uint8_t*>malloc(f * SLOT)
    cdef const uint8_t* src = <const uint8_t*><const char*>packet
    cdef Py_ssize_t i
    cdef int length, rc, k
    cdef uint64_t ticks = 0, total = 0, sent = 0, errors = 0
    cdef uint16_t seq = 1
    cdef double period = 1.0 / rate if rate > 0 else 0.0
    cdef double t0, t_end, cpu0, cpu1, wall0, wall1, t_next
    try:
        if msgs == NULL or iov == NULL or addrs == NULL or ctx == NULL or bufs == NULL:
            raise MemoryError()
        for i in range(n):
            host, port = destinations[i]
            addrs[i].sin_family = AF_INET
            addrs[i].sin_port = htons(<uint16_t>port)
            if inet_pton(AF_INET, host.encode(), &addrs[i].sin_addr) != 1:
                raise ValueError(f"IPv4 only: {host!r}")
            ctx[i] = <void*><uintptr_t>_pointer(sessions[i]._srtp[0])
        for i in range(f):
            iov[i].iov_base = bufs + i * SLOT
            msgs[i].msg_hdr.msg_iov = &iov[i]
            msgs[i].msg_hdr.msg_iovlen = 1
            msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
        with nogil:
            wall0 = _now(CLOCK_MONOTONIC)
            cpu0 = _now(CLOCK_THREAD_CPUTIME_ID)
            t_end = wall0 + seconds
            t_next = wall0
            while True:
                if period > 0:
                    t_next += period
                    if t_next > t_end:
                        break
                    _sleep_until(t_next)
                elif _now(CLOCK_MONOTONIC) > t_end:
                    break
                for i in range(f):
                    d = start + i
                    if d >= n:
                        d -= n
                    memcpy(bufs + i * SLOT, src, size)
                    bufs[i * SLOT + 2] = <uint8_t>(seq >> 8)
                    bufs[i * SLOT + 3] = <uint8_t>seq
                    length = <int>size
                    if protect(ctx[d], bufs + i * SLOT, &length) != 0:
                        errors += 1
                        length = 0
                    iov[i].iov_len = length
                    msgs[i].msg_hdr.msg_name = &addrs[d]
                start += f
                if start >= n:
                    start -= n
                sent += sendmmsg_all(fd, msgs, <int>f, &errors)  # a refused packet is lost, go on
                total += f
                ticks += 1
                seq = <uint16_t>(seq + 1)
            cpu1 = _now(CLOCK_THREAD_CPUTIME_ID)
            wall1 = _now(CLOCK_MONOTONIC)
    finally:
        free(msgs)
        free(iov)
        free(addrs)
        free(ctx)
        free(bufs)
    return {
        "packets": total,
        "sent": sent,
        "errors": errors,
        "ticks": ticks,
        "cpu_seconds": cpu1 - cpu0,
        "wall_seconds": wall1 - wall0,
        "us_per_packet": (cpu1 - cpu0) * 1e6 / total if total else None,
    }


def protect_loop(session, bytes packet, int iterations):
    """``iterations`` x (copy ``packet`` into a buffer, srtp_protect it with ``session``), in C:
    the Cython side of the "protect" microbenchmark (bench/test_bench_datapath.py)."""
    cdef sfu_srtp_fn protect = <sfu_srtp_fn><uintptr_t>_protect_pointer()
    cdef void* ctx = <void*><uintptr_t>_pointer(session._srtp[0])
    cdef uint8_t buf[SLOT]
    cdef Py_ssize_t size = len(packet)
    cdef const uint8_t* src = <const uint8_t*><const char*>packet
    cdef int i, length, errors = 0
    if size + SRTP_MAX_TRAILER_LEN > SLOT:
        raise ValueError("packet too long")
    with nogil:
        for i in range(iterations):
            memcpy(buf, src, size)
            buf[2] = <uint8_t>(i >> 8)
            buf[3] = <uint8_t>i
            length = <int>size
            if protect(ctx, buf, &length) != 0:
                errors += 1
    return errors


def wakeup_lateness(double seconds, double period=0.001):
    """How late this machine wakes a sleeping thread: sleep ``period`` (absolute
    deadlines on CLOCK_MONOTONIC) for ``seconds``, without the GIL; returns the
    lateness of each wake-up in seconds. Run beside a load step, it shows the
    scheduling noise every latency figure of that step includes (on a shared VM:
    the hypervisor's, the other processes')."""
    cdef Py_ssize_t cap = <Py_ssize_t>(seconds / period) + 16
    cdef double* late = <double*>malloc(cap * sizeof(double))
    cdef Py_ssize_t n = 0
    cdef double t_end, t_next
    if late == NULL:
        raise MemoryError()
    try:
        with nogil:
            t_next = _now(CLOCK_MONOTONIC)
            t_end = t_next + seconds
            while n < cap:
                t_next += period
                if t_next > t_end:
                    break
                _sleep_until(t_next)
                late[n] = _now(CLOCK_MONOTONIC) - t_next
                n += 1
        return [late[i] for i in range(n)]
    finally:
        free(late)
