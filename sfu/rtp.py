"""RTP header parsing, header extensions and per-subscriber rewrite.

This is the readable pure-Python reference (and benchmark baseline) of the
Cython fast path ``sfu._fast.packet``. Both modules expose the same names with
the same semantics; ``tests/test_rtp.py`` runs one suite against both plus a
randomized differential test. Change them together.

RTP fixed header, RFC 3550 §5.1::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |V=2|P|X|  CC   |M|     PT      |       sequence number         |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                           timestamp                           |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |           synchronization source (SSRC) identifier            |
    +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
    |            contributing source (CSRC) identifiers             |
    |                             ....                              |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |      defined by profile       |           length              |  RFC 3550 §5.3.1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |                        header extension                       |
    |                             ....                              |

Header extension elements, RFC 8285: profile 0xBEDE is the one-byte form
(§4.2: ID in 1..14 and L = length - 1 in one byte; ID 15, or ID 0 with a
non-zero L, stops processing as in libwebrtc),
profile 0x100X the two-byte form (§4.3: ID byte, length byte). Zero bytes
between elements are padding in both forms.

Rewrite rules (``Rewriter.rewrite``): SSRC replaced; sequence number and
timestamp shifted by ``seq_delta`` (mod 2**16) and ``ts_delta`` (mod 2**32);
payload type mapped through ``pt_map`` (unmapped PT: return -1); marker,
padding bit, CSRCs, payload and RTP padding copied; header extension elements
whose id maps to a non-zero id in ``ext_map`` are kept (renamed), all others
dropped; the one-byte form only admits output ids 1..14; the block keeps its
form and is re-padded with zero bytes to a multiple of 4 octets. When no
element is left, or the block has a profile other than RFC 8285's, the block
is removed and the X bit cleared.

Error order (both implementations): header validation (ValueError), then the
destination size (ValueError), then the payload type (-1), then the extension
elements (ValueError). After an error the content of ``dst`` is undefined.
``dst`` may be the very same bytearray as ``src`` (in-place rewrite).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping

Buffer = bytes | bytearray | memoryview

RTP_VERSION = 2
FIXED_HEADER_LENGTH = 12
ONE_BYTE_PROFILE = 0xBEDE  # RFC 8285 §4.2
TWO_BYTE_PROFILE = 0x1000  # RFC 8285 §4.3: 0x100 followed by 4 "appbits"
TWO_BYTE_PROFILE_MASK = 0xFFF0

_seq_ts_ssrc = struct.Struct("!HII")
_profile_length = struct.Struct("!HH")


def parse_rtp_header(buf: Buffer) -> tuple[int, bool, int, int, int, int]:
    """Return (payload_type, marker, sequence_number, timestamp, ssrc, header_length).

    ``header_length`` is the offset of the payload: fixed header, CSRC list and
    header extension block. Raises ValueError for anything that is not a
    well-formed RTP packet (RFC 3550 §5.1, §5.3.1; padding per §5.1 "P").
    """
    n = len(buf)
    if n < FIXED_HEADER_LENGTH:
        raise ValueError("RTP packet shorter than the fixed header")
    b0 = buf[0]
    if b0 >> 6 != RTP_VERSION:
        raise ValueError("RTP version is not 2")
    offset = FIXED_HEADER_LENGTH + 4 * (b0 & 0x0F)
    if offset > n:
        raise ValueError("RTP CSRC list is truncated")
    if b0 & 0x10:
        if offset + 4 > n:
            raise ValueError("RTP header extension is truncated")
        words = (buf[offset + 2] << 8) | buf[offset + 3]
        offset += 4 + 4 * words
        if offset > n:
            raise ValueError("RTP header extension is truncated")
    if b0 & 0x20:
        # The last octet counts the padding octets, itself included.
        padding = buf[n - 1]
        if padding == 0 or offset + padding > n:
            raise ValueError("RTP padding length is invalid")
    b1 = buf[1]
    seq, ts, ssrc = _seq_ts_ssrc.unpack_from(buf, 2)
    return (b1 & 0x7F, bool(b1 & 0x80), seq, ts, ssrc, offset)


def _extension_block(buf: Buffer) -> tuple[int, int, int] | None:
    """Return (profile, start, end) of the extension data, or None if X is clear."""
    parse_rtp_header(buf)
    b0 = buf[0]
    if not b0 & 0x10:
        return None
    start = FIXED_HEADER_LENGTH + 4 * (b0 & 0x0F)
    profile, words = _profile_length.unpack_from(buf, start)
    return profile, start + 4, start + 4 + 4 * words


def _elements(buf: Buffer, start: int, end: int, two_byte: bool) -> Iterator[tuple[int, int, int]]:
    """Yield (id, data_start, data_end) of each element of an RFC 8285 block.

    Raises ValueError when an element overruns the block.
    """
    i = start
    while i < end:
        b = buf[i]
        if b == 0:  # padding, §4.2 / §4.3
            i += 1
            continue
        if two_byte:
            if i + 2 > end:
                raise ValueError("RTP header extension element is truncated")
            ext_id = b
            length = buf[i + 1]
            i += 2
        else:
            ext_id = b >> 4
            if ext_id == 15 or ext_id == 0:
                # §4.2: 15 is reserved, stop processing the block; 0 is only
                # valid as the padding byte 0x00, so 0 with a length stops too.
                return
            length = (b & 0x0F) + 1
            i += 1
        if i + length > end:
            raise ValueError("RTP header extension element is truncated")
        yield ext_id, i, i + length
        i += length


def get_extension(buf: Buffer, ext_id: int) -> bytes | None:
    """Return the data of the first header extension element ``ext_id``, or None.

    Raises ValueError on a malformed packet or extension block.
    """
    block = _extension_block(buf)
    if block is None:
        return None
    profile, start, end = block
    if profile == ONE_BYTE_PROFILE:
        two_byte = False
    elif profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE:
        two_byte = True
    else:
        return None
    for element_id, s, e in _elements(buf, start, end, two_byte):
        if element_id == ext_id:
            return bytes(buf[s:e])
    return None


def rewrite_rtp(
    src: Buffer,
    dst: bytearray | memoryview,
    ssrc: int,
    seq_delta: int,
    ts_delta: int,
    pt_map: Mapping[int, int],
    ext_map: Mapping[int, int],
) -> int:
    """Write the rewritten ``src`` into ``dst``; return its length, or -1 if PT is unmapped.

    See the module docstring for the rules.
    """
    _pt, _marker, seq, ts, _ssrc, header_length = parse_rtp_header(src)
    n = len(src)
    if len(dst) < n:
        raise ValueError("destination buffer is shorter than the source packet")
    out_pt = pt_map.get(src[1] & 0x7F)
    if out_pt is None:
        return -1
    b0 = src[0]
    csrc_end = FIXED_HEADER_LENGTH + 4 * (b0 & 0x0F)

    extension = b""
    if b0 & 0x10:
        profile, words = _profile_length.unpack_from(src, csrc_end)
        start, end = csrc_end + 4, csrc_end + 4 + 4 * words
        parts = []
        if profile == ONE_BYTE_PROFILE:
            for ext_id, s, e in _elements(src, start, end, False):
                out_id = ext_map.get(ext_id, 0)
                if 1 <= out_id <= 14:
                    parts.append(bytes(((out_id << 4) | (e - s - 1),)) + bytes(src[s:e]))
        elif profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE:
            for ext_id, s, e in _elements(src, start, end, True):
                out_id = ext_map.get(ext_id, 0)
                if out_id:
                    parts.append(bytes((out_id, e - s)) + bytes(src[s:e]))
        body = b"".join(parts)
        if body:
            body += bytes(-len(body) % 4)
            extension = _profile_length.pack(profile, len(body) // 4) + body

    payload = bytes(src[header_length:n])  # a copy, so dst may be src
    dst[0] = (b0 & 0xEF) | (0x10 if extension else 0)
    dst[1] = (src[1] & 0x80) | out_pt
    _seq_ts_ssrc.pack_into(
        dst, 2, (seq + seq_delta) & 0xFFFF, (ts + ts_delta) & 0xFFFFFFFF, ssrc
    )
    dst[FIXED_HEADER_LENGTH:csrc_end] = src[FIXED_HEADER_LENGTH:csrc_end]
    offset = csrc_end
    dst[offset : offset + len(extension)] = extension
    offset += len(extension)
    dst[offset : offset + len(payload)] = payload
    return offset + len(payload)


def _check_pt_map(pt_map: Mapping[int, int]) -> dict[int, int]:
    checked = {}
    for pt, out in pt_map.items():
        if not (0 <= pt <= 127 and 0 <= out <= 127):
            raise ValueError(f"payload types must be in 0..127: {pt} -> {out}")
        checked[int(pt)] = int(out)
    return checked


def _check_ext_map(ext_map: Mapping[int, int]) -> dict[int, int]:
    checked = {}
    for ext_id, out in ext_map.items():
        if not (1 <= ext_id <= 255 and 0 <= out <= 255):
            raise ValueError(f"extension ids must be in 1..255 (0 = drop): {ext_id} -> {out}")
        checked[int(ext_id)] = int(out)
    return checked


class Rewriter:
    """Rewrite one published stream's packets for one subscriber.

    ``pt_map`` maps publisher payload types to the subscriber's (0..127);
    ``ext_map`` maps publisher header-extension ids (1..255) to the
    subscriber's, 0 meaning drop. ``seq_delta`` and ``ts_delta`` are reduced
    mod 2**16 and 2**32 when set (negative values are fine).
    """

    def __init__(self, ssrc: int, pt_map: Mapping[int, int], ext_map: Mapping[int, int]) -> None:
        self.ssrc = ssrc
        self.seq_delta = 0
        self.ts_delta = 0
        self.set_pt_map(pt_map)
        self.set_ext_map(ext_map)

    @property
    def ssrc(self) -> int:
        return self._ssrc

    @ssrc.setter
    def ssrc(self, value: int) -> None:
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError("SSRC must be an unsigned 32-bit integer")
        self._ssrc = int(value)

    @property
    def seq_delta(self) -> int:
        return self._seq_delta

    @seq_delta.setter
    def seq_delta(self, value: int) -> None:
        self._seq_delta = int(value) & 0xFFFF

    @property
    def ts_delta(self) -> int:
        return self._ts_delta

    @ts_delta.setter
    def ts_delta(self, value: int) -> None:
        self._ts_delta = int(value) & 0xFFFFFFFF

    @property
    def pt_map(self) -> dict[int, int]:
        return dict(self._pt_map)

    @property
    def ext_map(self) -> dict[int, int]:
        return {k: v for k, v in self._ext_map.items() if v}

    def set_pt_map(self, pt_map: Mapping[int, int]) -> None:
        self._pt_map = _check_pt_map(pt_map)

    def set_ext_map(self, ext_map: Mapping[int, int]) -> None:
        self._ext_map = _check_ext_map(ext_map)

    def rewrite(self, src: Buffer, dst: bytearray | memoryview) -> int:
        return rewrite_rtp(
            src, dst, self._ssrc, self._seq_delta, self._ts_delta, self._pt_map, self._ext_map
        )


class SeqUnwrapper:
    """Extend 16-bit RTP sequence numbers to unbounded ints (RFC 3550 Appendix A.1 idea).

    The first number is returned as is. Each later number is placed within
    half the sequence space (32768) of the highest number seen so far, so
    forward wraps add 65536 and late (reordered) packets map just below the
    highest. A packet reordered before the very first one yields a negative
    value.
    """

    __slots__ = ("_highest",)

    def __init__(self) -> None:
        self._highest: int | None = None

    @property
    def highest(self) -> int | None:
        """The highest extended sequence number seen, None before the first."""
        return self._highest

    def unwrap(self, seq: int) -> int:
        if not 0 <= seq <= 0xFFFF:
            raise ValueError("sequence number must be in 0..65535")
        highest = self._highest
        if highest is None:
            self._highest = seq
            return seq
        delta = (seq - highest) & 0xFFFF
        if delta < 0x8000:
            extended = highest + delta
            self._highest = extended
        else:
            extended = highest + delta - 0x10000
        return extended


# -- keyframes ------------------------------------------------------------------------
# A video subscriber that starts, resumes or moves to another track waits for the start
# of a keyframe (sfu.router.Consumer.keyframe_wait). The codec ids are shared with the
# C data path (sfu._fast.packet.is_keyframe, datapath.Subscription.keyframe_codec).

CODEC_OTHER = 0  # no detector: never gated
CODEC_VP8 = 1
CODEC_VP9 = 2
CODEC_H264 = 3
CODEC_AV1 = 4

_CODEC_IDS = {"vp8": CODEC_VP8, "vp9": CODEC_VP9, "h264": CODEC_H264, "av1": CODEC_AV1}


def codec_id(name: str) -> int:
    """The keyframe detector's id of an SDP codec name (CODEC_OTHER when there is none)."""
    return _CODEC_IDS.get(name.lower(), CODEC_OTHER)


def is_keyframe(codec: int, packet: Buffer) -> bool:
    """True if the RTP ``packet`` starts a keyframe of ``codec`` (a CODEC_* id).

    Reads only the payload descriptor and the first bytes of the payload; a
    malformed or truncated packet is not a keyframe (never an error):

    - VP8 (RFC 7741 §4.2, §4.3): S=1 and PID=0 (start of partition 0), then the
      first octet of the VP8 payload header has P (inverse key frame flag) = 0.
    - VP9 (RFC 9628 §4.2): B=1 (start of a frame) and P=0 (not inter-picture
      predicted), and when L is set, spatial layer SID=0 (the base layer).
    - H.264 (RFC 6184 §5.6-5.8): a single NAL unit of type 5 (IDR) or 7 (SPS),
      a STAP-A (24) containing one, or the start (S=1) of an FU-A (28) of one.
    - AV1 (AV1 RTP payload format §4.4): the aggregation header's N bit (first
      packet of a coded video sequence, which begins with a keyframe).
    """
    n = len(packet)
    if n < FIXED_HEADER_LENGTH:
        return False
    b0 = packet[0]
    if b0 >> 6 != RTP_VERSION:
        return False
    i = FIXED_HEADER_LENGTH + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if i + 4 > n:
            return False
        i += 4 + 4 * ((packet[i + 2] << 8) | packet[i + 3])
    if b0 & 0x20 and n:
        n -= packet[n - 1]
    if i >= n:
        return False
    d = packet[i]
    if codec == CODEC_VP8:
        if d & 0x1F != 0x10:  # S=1, PID=0
            return False
        i += 1
        if d & 0x80:  # X: extension octet I L T K
            if i >= n:
                return False
            x = packet[i]
            i += 1
            if x & 0x80:  # I: PictureID, 7 or 15 bits (M)
                if i >= n:
                    return False
                i += 2 if packet[i] & 0x80 else 1
            if x & 0x40:  # L: TL0PICIDX
                i += 1
            if x & 0x30:  # T or K: TID/Y/KEYIDX
                i += 1
        return i < n and not packet[i] & 0x01
    if codec == CODEC_VP9:
        if d & 0x48 != 0x08:  # P=0, B=1
            return False
        if not d & 0x20:  # L: no layer indices, one layer
            return True
        i += 1
        if d & 0x80:  # I: picture ID, 7 or 15 bits (M)
            if i >= n:
                return False
            i += 2 if packet[i] & 0x80 else 1
        return i < n and (packet[i] >> 1) & 0x07 == 0
    if codec == CODEC_H264:
        nal = d & 0x1F
        if nal == 5 or nal == 7:
            return True
        if nal == 28:  # FU-A: the FU header's S bit and type
            return i + 1 < n and packet[i + 1] & 0x80 != 0 and packet[i + 1] & 0x1F in (5, 7)
        if nal == 24:  # STAP-A: 16-bit size, NAL unit, ...
            i += 1
            while i + 2 < n:
                size = (packet[i] << 8) | packet[i + 1]
                if size == 0 or i + 2 + size > n:
                    return False
                if packet[i + 2] & 0x1F in (5, 7):
                    return True
                i += 2 + size
        return False
    if codec == CODEC_AV1:
        return d & 0x08 != 0
    return False
