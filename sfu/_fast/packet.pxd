# The C surface of sfu._fast.packet, shared with sfu._fast.datapath (which
# calls Rewriter._rewrite and _header_length directly, without Python).
# The inline helpers live here so that both modules compile the same code.

from libc.stdint cimport uint8_t, uint16_t, uint32_t

cdef enum:
    FIXED_HEADER_LENGTH = 12
    ONE_BYTE_PROFILE = 0xBEDE       # RFC 8285 §4.2
    TWO_BYTE_PROFILE = 0x1000       # RFC 8285 §4.3 (0x100 + 4 appbits)
    TWO_BYTE_PROFILE_MASK = 0xFFF0
    PT_UNMAPPED = 0xFF

# Error codes of the nogil helpers (turned into ValueError by packet._raise).
cdef enum:
    E_SHORT = -1
    E_VERSION = -2
    E_CSRC = -3
    E_EXTENSION = -4
    E_PADDING = -5
    E_ELEMENT = -6
    E_DST = -100  # also the offset added to the other codes by Rewriter._rewrite


cdef inline uint16_t _rd16(const uint8_t* p) noexcept nogil:
    return (<uint16_t>p[0] << 8) | p[1]


cdef inline uint32_t _rd32(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline void _wr16(uint8_t* p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef inline void _wr32(uint8_t* p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline Py_ssize_t _header_length(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """Offset of the payload, or a negative E_* code (RFC 3550 §5.1, §5.3.1)."""
    cdef Py_ssize_t offset
    cdef uint8_t padding
    if n < FIXED_HEADER_LENGTH:
        return E_SHORT
    if (p[0] >> 6) != 2:
        return E_VERSION
    offset = FIXED_HEADER_LENGTH + 4 * (p[0] & 0x0F)
    if offset > n:
        return E_CSRC
    if p[0] & 0x10:
        if offset + 4 > n:
            return E_EXTENSION
        offset += 4 + 4 * <Py_ssize_t>_rd16(p + offset + 2)
        if offset > n:
            return E_EXTENSION
    if p[0] & 0x20:
        padding = p[n - 1]
        if padding == 0 or offset + padding > n:
            return E_PADDING
    return offset


cdef class Rewriter:
    cdef uint32_t _ssrc
    cdef uint16_t _seq_delta
    cdef uint32_t _ts_delta
    cdef uint8_t _pt[128]   # publisher PT -> subscriber PT, PT_UNMAPPED = drop
    cdef uint8_t _ext[256]  # publisher ext id -> subscriber ext id, 0 = drop

    cdef Py_ssize_t _rewrite(self, const uint8_t* s, Py_ssize_t n, uint8_t* d, Py_ssize_t dn) noexcept nogil
