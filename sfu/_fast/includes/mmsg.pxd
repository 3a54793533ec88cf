# Batched datagram I/O (Linux): recvmmsg(2), sendmmsg(2), and the socket
# address structures the data path reads and writes. Needs _GNU_SOURCE
# (setup.py defines it).

from libc.errno cimport EINTR, errno
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from posix.time cimport timespec
from posix.uio cimport iovec

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ctypedef unsigned short sa_family_t

    struct sockaddr:
        sa_family_t sa_family

    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags

    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len

    int recvmmsg(int sockfd, mmsghdr* msgvec, unsigned int vlen, int flags, timespec* timeout)
    int sendmmsg(int sockfd, mmsghdr* msgvec, unsigned int vlen, int flags)
    ssize_t sendto(int sockfd, const void* buf, size_t len, int flags,
                   const sockaddr* dest_addr, socklen_t addrlen)

    int setsockopt(int sockfd, int level, int optname, const void* optval, socklen_t optlen)

    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type

    cmsghdr* CMSG_FIRSTHDR(msghdr* msgh)
    cmsghdr* CMSG_NXTHDR(msghdr* msgh, cmsghdr* cmsg)
    unsigned char* CMSG_DATA(cmsghdr* cmsg)
    size_t CMSG_SPACE(size_t length)

    enum:
        AF_INET
        AF_INET6
        MSG_DONTWAIT
        MSG_TRUNC
        SOL_SOCKET
        SO_TIMESTAMPNS    # receive timestamps (CLOCK_REALTIME) as SCM_TIMESTAMPNS ancillary data
        SCM_TIMESTAMPNS

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr

    struct sockaddr_in:
        sa_family_t sin_family
        uint16_t sin_port
        in_addr sin_addr

    struct in6_addr:
        uint8_t s6_addr[16]

    struct sockaddr_in6:
        sa_family_t sin6_family
        uint16_t sin6_port
        uint32_t sin6_flowinfo
        in6_addr sin6_addr
        uint32_t sin6_scope_id

    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)
    uint32_t htonl(uint32_t)
    uint32_t ntohl(uint32_t)

cdef extern from "<arpa/inet.h>" nogil:
    int inet_pton(int af, const char* src, void* dst)
    const char* inet_ntop(int af, const void* src, char* dst, socklen_t size)
    enum:
        INET6_ADDRSTRLEN


cdef inline int sendmmsg_all(int fd, mmsghdr* msgs, int n, uint64_t* errors) noexcept nogil:
    """sendmmsg ``msgs[0:n]`` until each went or failed: a datagram the kernel refuses
    (EAGAIN, an error) is skipped and counted in ``errors[0]``; returns how many went.
    (The data path keeps refused datagrams queued instead: sfu/_fast/datapath.pyx.)"""
    cdef int k = 0, sent = 0, rc
    while k < n:
        rc = sendmmsg(fd, msgs + k, <unsigned int>(n - k), 0)
        if rc > 0:
            k += rc
            sent += rc
        elif rc < 0 and errno == EINTR:
            continue
        else:
            errors[0] += 1
            k += 1
    return sent
