# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""RTP header parsing and per-subscriber rewrite: the Cython twin of sfu.rtp.

Same names, same semantics, same errors as the pure-Python reference in
``sfu/rtp.py`` (read its docstring for the rules: RFC 3550 §5.1, RFC 8285).
``tests/test_rtp.py`` runs one suite against both modules and a randomized
differential test; change them together.

The per-packet functions take any object with the buffer protocol and work on
raw pointers; the only Python object they create is the return value. They
read ``bytes`` and ``bytearray`` directly and use ``PyObject_GetBuffer`` for
anything else: acquiring a typed memoryview (``const unsigned char[:]``) costs
about 150 ns per argument here, more than the rest of the work. The rewrite works in place:
``dst`` may be the same bytearray as ``src`` (all moves are memmove and the
output never runs ahead of the input).
"""

from cpython.buffer cimport PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_CheckExact, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_CheckExact, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t
from libc.string cimport memcpy, memmove, memset

# Constants, the E_* error codes and the inline helpers (_rd16, _rd32, _wr16,
# _wr32, _header_length) are in packet.pxd, shared with datapath.pyx.


cdef int _raise(Py_ssize_t code) except -1:
    if code == E_SHORT:
        raise ValueError("RTP packet shorter than the fixed header")
    if code == E_VERSION:
        raise ValueError("RTP version is not 2")
    if code == E_CSRC:
        raise ValueError("RTP CSRC list is truncated")
    if code == E_EXTENSION:
        raise ValueError("RTP header extension is truncated")
    if code == E_PADDING:
        raise ValueError("RTP padding length is invalid")
    raise ValueError("RTP header extension element is truncated")


cdef inline Py_ssize_t _next_element(
    const uint8_t* p, Py_ssize_t i, Py_ssize_t end, bint two_byte,
    int* ext_id, Py_ssize_t* data, Py_ssize_t* length,
) noexcept nogil:
    """Find the element at or after ``i``; return the offset after it.

    Returns ``end`` when the block is exhausted (``ext_id`` set to 0), or
    E_ELEMENT when an element overruns the block (RFC 8285 §4.2, §4.3).
    """
    while i < end:
        if p[i] == 0:  # padding
            i += 1
            continue
        if two_byte:
            if i + 2 > end:
                return E_ELEMENT
            ext_id[0] = p[i]
            length[0] = p[i + 1]
            i += 2
        else:
            if (p[i] >> 4) == 15 or (p[i] >> 4) == 0:
                break  # §4.2: reserved id 15, or id 0 with a length: stop
            ext_id[0] = p[i] >> 4
            length[0] = (p[i] & 0x0F) + 1
            i += 1
        if i + length[0] > end:
            return E_ELEMENT
        data[0] = i
        return i + length[0]
    ext_id[0] = 0
    return end


cdef inline bint _acquire(object obj, Py_buffer* view, int flags) except -1:
    """Point ``view`` at the bytes of ``obj``; return True if it must be released.

    bytes (read) and bytearray (read/write) are used directly, without the
    buffer protocol; neither can change size while we hold the GIL.
    """
    if PyByteArray_CheckExact(obj):
        view.buf = PyByteArray_AS_STRING(obj)
        view.len = PyByteArray_GET_SIZE(obj)
        return False
    if not (flags & PyBUF_WRITABLE) and PyBytes_CheckExact(obj):
        view.buf = PyBytes_AS_STRING(obj)
        view.len = PyBytes_GET_SIZE(obj)
        return False
    PyObject_GetBuffer(obj, view, flags)
    return True


def parse_rtp_header(object buf):
    """Return (payload_type, marker, sequence_number, timestamp, ssrc, header_length)."""
    cdef Py_buffer view
    cdef bint release = _acquire(buf, &view, PyBUF_SIMPLE)
    cdef const uint8_t* p = <const uint8_t*>view.buf
    cdef Py_ssize_t offset = _header_length(p, view.len)
    if offset < 0:
        if release:
            PyBuffer_Release(&view)
        _raise(offset)
    result = (p[1] & 0x7F, (p[1] & 0x80) != 0, _rd16(p + 2), _rd32(p + 4), _rd32(p + 8), offset)
    if release:
        PyBuffer_Release(&view)
    return result


def get_extension(object buf, int ext_id):
    """Return the data of the first header extension element ``ext_id``, or None."""
    cdef Py_buffer view
    cdef bint release = _acquire(buf, &view, PyBUF_SIMPLE)
    try:
        return _get_extension(<const uint8_t*>view.buf, view.len, ext_id)
    finally:
        if release:
            PyBuffer_Release(&view)


cdef object _get_extension(const uint8_t* p, Py_ssize_t n, int ext_id):
    cdef Py_ssize_t offset = _header_length(p, n)
    if offset < 0:
        _raise(offset)
    if not p[0] & 0x10:
        return None
    cdef Py_ssize_t start = FIXED_HEADER_LENGTH + 4 * (p[0] & 0x0F)
    cdef uint16_t profile = _rd16(p + start)
    cdef bint two_byte
    if profile == ONE_BYTE_PROFILE:
        two_byte = False
    elif (profile & TWO_BYTE_PROFILE_MASK) == TWO_BYTE_PROFILE:
        two_byte = True
    else:
        return None
    cdef Py_ssize_t i = start + 4
    cdef Py_ssize_t end = offset
    cdef int element_id = 0
    cdef Py_ssize_t data = 0, length = 0
    while i < end:
        i = _next_element(p, i, end, two_byte, &element_id, &data, &length)
        if i < 0:
            _raise(i)
        if element_id == 0:
            break
        if element_id == ext_id:
            return (<const char*>p)[data:data + length]
    return None


cdef class Rewriter:
    """Rewrite one published stream's packets for one subscriber (see sfu.rtp.Rewriter).

    Its fields are declared in packet.pxd.
    """

    def __init__(self, ssrc, pt_map, ext_map):
        self.ssrc = ssrc
        self._seq_delta = 0
        self._ts_delta = 0
        self.set_pt_map(pt_map)
        self.set_ext_map(ext_map)

    @property
    def ssrc(self):
        return self._ssrc

    @ssrc.setter
    def ssrc(self, value):
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError("SSRC must be an unsigned 32-bit integer")
        self._ssrc = <uint32_t>int(value)

    @property
    def seq_delta(self):
        return self._seq_delta

    @seq_delta.setter
    def seq_delta(self, value):
        self._seq_delta = <uint16_t>(int(value) & 0xFFFF)

    @property
    def ts_delta(self):
        return self._ts_delta

    @ts_delta.setter
    def ts_delta(self, value):
        self._ts_delta = <uint32_t>(int(value) & 0xFFFFFFFF)

    @property
    def pt_map(self):
        return {pt: self._pt[pt] for pt in range(128) if self._pt[pt] != PT_UNMAPPED}

    @property
    def ext_map(self):
        return {i: self._ext[i] for i in range(1, 256) if self._ext[i]}

    def set_pt_map(self, pt_map):
        cdef uint8_t table[128]
        memset(table, PT_UNMAPPED, sizeof(table))
        for pt, out in pt_map.items():
            if not (0 <= pt <= 127 and 0 <= out <= 127):
                raise ValueError(f"payload types must be in 0..127: {pt} -> {out}")
            table[<int>pt] = <uint8_t>out
        memcpy(self._pt, table, sizeof(table))

    def set_ext_map(self, ext_map):
        cdef uint8_t table[256]
        memset(table, 0, sizeof(table))
        for ext_id, out in ext_map.items():
            if not (1 <= ext_id <= 255 and 0 <= out <= 255):
                raise ValueError(f"extension ids must be in 1..255 (0 = drop): {ext_id} -> {out}")
            table[<int>ext_id] = <uint8_t>out
        memcpy(self._ext, table, sizeof(table))

    def rewrite(self, object src, object dst):
        """Write the rewritten ``src`` into ``dst``; return its length, or -1 if PT is unmapped."""
        cdef Py_buffer src_view, dst_view
        cdef bint release_src = _acquire(src, &src_view, PyBUF_SIMPLE)
        cdef bint release_dst
        try:
            release_dst = _acquire(dst, &dst_view, PyBUF_WRITABLE)
        except BaseException:
            if release_src:
                PyBuffer_Release(&src_view)
            raise
        cdef Py_ssize_t result = self._rewrite(
            <const uint8_t*>src_view.buf, src_view.len, <uint8_t*>dst_view.buf, dst_view.len
        )
        if release_src:
            PyBuffer_Release(&src_view)
        if release_dst:
            PyBuffer_Release(&dst_view)
        if result < -1:
            if result == E_DST:
                raise ValueError("destination buffer is shorter than the source packet")
            _raise(result - E_DST)
        return result

    cdef Py_ssize_t _rewrite(self, const uint8_t* s, Py_ssize_t n, uint8_t* d, Py_ssize_t dn) noexcept nogil:
        """Return the output length, -1 for an unmapped PT, or E_DST (+ E_*) on error."""
        cdef Py_ssize_t header_length = _header_length(s, n)
        if header_length < 0:
            return header_length + E_DST
        if dn < n:
            return E_DST
        cdef uint8_t out_pt = self._pt[s[1] & 0x7F]
        if out_pt == PT_UNMAPPED:
            return -1
        cdef uint8_t b0 = s[0]
        cdef uint8_t b1 = s[1]
        cdef Py_ssize_t csrc_end = FIXED_HEADER_LENGTH + 4 * (b0 & 0x0F)
        cdef Py_ssize_t offset = csrc_end
        cdef Py_ssize_t i, end, data = 0, length = 0, body
        cdef int ext_id = 0
        cdef uint8_t out_id
        cdef uint16_t profile
        cdef bint two_byte
        cdef uint16_t seq = _rd16(s + 2)
        cdef uint32_t ts = _rd32(s + 4)

        if d != s:
            memcpy(d + FIXED_HEADER_LENGTH, s + FIXED_HEADER_LENGTH, csrc_end - FIXED_HEADER_LENGTH)

        if b0 & 0x10:
            profile = _rd16(s + csrc_end)
            if profile == ONE_BYTE_PROFILE or (profile & TWO_BYTE_PROFILE_MASK) == TWO_BYTE_PROFILE:
                two_byte = profile != ONE_BYTE_PROFILE
                i = csrc_end + 4
                end = header_length
                offset = csrc_end + 4  # elements are written here; the output never passes i
                while i < end:
                    i = _next_element(s, i, end, two_byte, &ext_id, &data, &length)
                    if i < 0:
                        return i + E_DST
                    if ext_id == 0:
                        break
                    out_id = self._ext[ext_id]
                    if two_byte:
                        if out_id == 0:
                            continue
                        d[offset] = out_id
                        d[offset + 1] = <uint8_t>length
                        offset += 2
                    else:
                        if out_id == 0 or out_id > 14:
                            continue
                        d[offset] = <uint8_t>((out_id << 4) | (length - 1))
                        offset += 1
                    memmove(d + offset, s + data, length)
                    offset += length
                body = offset - (csrc_end + 4)
                if body:
                    while body & 3:
                        d[offset] = 0
                        offset += 1
                        body += 1
                    _wr16(d + csrc_end, profile)
                    _wr16(d + csrc_end + 2, <uint16_t>(body >> 2))
                    b0 = b0 | 0x10
                else:
                    offset = csrc_end
                    b0 = b0 & 0xEF
            else:
                b0 = b0 & 0xEF  # not RFC 8285: the block is dropped

        memmove(d + offset, s + header_length, n - header_length)
        d[0] = b0
        d[1] = (b1 & 0x80) | out_pt
        _wr16(d + 2, <uint16_t>(seq + self._seq_delta))
        _wr32(d + 4, ts + self._ts_delta)
        _wr32(d + 8, self._ssrc)
        return offset + n - header_length


def is_keyframe(int codec, object packet):
    """True if the RTP ``packet`` starts a keyframe of ``codec`` (see sfu.rtp.is_keyframe)."""
    cdef Py_buffer view
    cdef bint release = _acquire(packet, &view, PyBUF_SIMPLE)
    cdef bint result = _is_keyframe(codec, <const uint8_t*>view.buf, view.len)
    if release:
        PyBuffer_Release(&view)
    return result


def codec_id(str name):
    """The keyframe detector's id of an SDP codec name (see sfu.rtp.codec_id)."""
    return {"vp8": CODEC_VP8, "vp9": CODEC_VP9, "h264": CODEC_H264, "av1": CODEC_AV1}.get(name.lower(), CODEC_OTHER)
