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


# Keyframe detector ids (sfu.rtp.CODEC_*): the codec of a subscription's producer.
cdef enum:
    CODEC_OTHER = 0
    CODEC_VP8 = 1
    CODEC_VP9 = 2
    CODEC_H264 = 3
    CODEC_AV1 = 4


cdef inline bint _is_keyframe(int codec, const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """sfu.rtp.is_keyframe in C (same decisions, byte for byte): does this RTP packet
    start a keyframe? A malformed or truncated packet is not one."""
    cdef Py_ssize_t i, size
    cdef uint8_t d, x, nal
    if n < FIXED_HEADER_LENGTH or (p[0] >> 6) != 2:
        return False
    i = FIXED_HEADER_LENGTH + 4 * (p[0] & 0x0F)
    if p[0] & 0x10:
        if i + 4 > n:
            return False
        i += 4 + 4 * <Py_ssize_t>_rd16(p + i + 2)
    if p[0] & 0x20:
        n -= p[n - 1]
    if i >= n:
        return False
    d = p[i]
    if codec == CODEC_VP8:  # RFC 7741 §4.2: S=1, PID=0; §4.3: P=0
        if (d & 0x1F) != 0x10:
            return False
        i += 1
        if d & 0x80:
            if i >= n:
                return False
            x = p[i]
            i += 1
            if x & 0x80:
                if i >= n:
                    return False
                i += 2 if p[i] & 0x80 else 1
            if x & 0x40:
                i += 1
            if x & 0x30:
                i += 1
        return i < n and not (p[i] & 0x01)
    if codec == CODEC_VP9:  # RFC 9628 §4.2: B=1, P=0, SID=0
        if (d & 0x48) != 0x08:
            return False
        if not (d & 0x20):
            return True
        i += 1
        if d & 0x80:
            if i >= n:
                return False
            i += 2 if p[i] & 0x80 else 1
        return i < n and ((p[i] >> 1) & 0x07) == 0
    if codec == CODEC_H264:  # RFC 6184 §5.6-5.8: IDR (5) or SPS (7)
        nal = d & 0x1F
        if nal == 5 or nal == 7:
            return True
        if nal == 28:
            return i + 1 < n and (p[i + 1] & 0x80) != 0 and ((p[i + 1] & 0x1F) == 5 or (p[i + 1] & 0x1F) == 7)
        if nal == 24:
            i += 1
            while i + 2 < n:
                size = _rd16(p + i)
                if size == 0 or i + 2 + size > n:
                    return False
                nal = p[i + 2] & 0x1F
                if nal == 5 or nal == 7:
                    return True
                i += 2 + size
        return False
    if codec == CODEC_AV1:  # AV1 RTP §4.4: N=1
        return (d & 0x08) != 0
    return False
