"""RTP depacketizers for the recorder: RTP payloads in, coded frames out, never decoded.

Sans-I/O and sans-clock: ``FrameAssembler.push`` takes one received RTP packet (already
SRTP-unprotected) and returns the frames it completed. Packets are put back in sequence
order (a small reorder window; a hole still open after ``REORDER_WINDOW`` later packets
is given up: the frame it belongs to is dropped and counted), grouped into frames by RTP
timestamp (a frame ends at the marker bit or when the timestamp changes), and handed to
the codec's depacketizer, which strips the payload descriptors:

- Opus (RFC 7587 §4.2): one packet is one frame, the payload as is.
- VP8 (RFC 7741 §4.2): the payload descriptor is removed, partitions concatenated; the
  frame must begin with S=1, PID=0; a keyframe has P=0 in the payload header (§4.3),
  its size in the keyframe header (RFC 6386 §9.1).
- VP9 (RFC 9628 §4.2): the descriptor (with its flexible- or non-flexible-mode fields
  and the scalability structure, §4.2.1) is removed; the frame runs from B=1 to E=1.
  Only the base spatial layer (SID 0) is kept, which decodes on its own; the size comes
  from the scalability structure or the uncompressed header (VP9 bitstream §6.2).
- H.264 (RFC 6184 §5.6-5.8): single NAL units, STAP-A and FU-A become an Annex B access
  unit (start codes); a keyframe holds an IDR slice; the size comes from the SPS
  (H.264 §7.3.2.1.1).
- AV1 (AV1 RTP payload format §4.3-4.4): the OBU elements (fragments joined across
  packets: Z, Y) become a temporal unit in the low-overhead bitstream format, every OBU
  with its size field (AV1 §5.2), temporal delimiters and tile lists dropped (as Matroska's
  AV1 mapping wants); a keyframe is a temporal unit with a sequence header, whose
  maximum frame size is the size (AV1 §5.5).

The assembler asks each codec whether a packet starts a frame, so a frame that lost its
first packet is dropped rather than written truncated.
"""

from __future__ import annotations

from dataclasses import dataclass

from .rtp import SeqUnwrapper, parse_rtp_header

REORDER_WINDOW = 64  # packets held behind a hole before the hole is given up
MAX_FRAME_BYTES = 4 << 20  # a frame larger than this is dropped (counted "oversized")

START_CODE = b"\x00\x00\x00\x01"


@dataclass(slots=True)
class Frame:
    timestamp: int  # extended RTP timestamp (not wrapped at 2^32)
    data: bytes
    keyframe: bool
    size: tuple[int, int] | None = None  # (width, height) of a video keyframe, when known


# -- codecs ------------------------------------------------------------------------------


class Depacketizer:
    """One codec: ``starts_frame(payload)`` and ``frame(payloads) -> (data, keyframe, size)``
    (None: not a usable frame). ``single_packet``: every packet is a whole frame."""

    name = ""
    kind = "video"
    single_packet = False

    def starts_frame(self, payload: bytes) -> bool:
        return True

    def frame(self, payloads: list[bytes]) -> tuple[bytes, bool, tuple[int, int] | None] | None:
        raise NotImplementedError


class OpusDepacketizer(Depacketizer):
    name = "opus"
    kind = "audio"
    single_packet = True

    def frame(self, payloads):
        data = payloads[0]
        return (data, True, None) if data else None


def _vp8_descriptor_length(p: bytes) -> int:
    """The length of the VP8 payload descriptor (RFC 7741 §4.2); ValueError if truncated."""
    n = len(p)
    if n < 1:
        raise ValueError("empty VP8 payload")
    i = 1
    if p[0] & 0x80:  # X
        if n < 2:
            raise ValueError("VP8 descriptor truncated")
        x = p[1]
        i = 2
        if x & 0x80:  # I: PictureID, 7 or 15 bits (M)
            if i >= n:
                raise ValueError("VP8 descriptor truncated")
            i += 2 if p[i] & 0x80 else 1
        if x & 0x40:  # L: TL0PICIDX
            i += 1
        if x & 0x30:  # T or K: TID|Y|KEYIDX
            i += 1
    if i >= n:
        raise ValueError("VP8 descriptor without payload")
    return i


class Vp8Depacketizer(Depacketizer):
    name = "vp8"

    def starts_frame(self, payload):
        return len(payload) > 0 and payload[0] & 0x1F == 0x10  # S=1, PID=0

    def frame(self, payloads):
        try:
            parts = [p[_vp8_descriptor_length(p):] for p in payloads]
        except ValueError:
            return None
        data = b"".join(parts)
        if len(data) < 3:
            return None
        keyframe = not data[0] & 0x01  # RFC 6386 §9.1: frame tag bit 0 is 0 for a key frame
        size = None
        if keyframe:
            # 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height (+2-bit scale)
            if len(data) < 10 or data[3:6] != b"\x9d\x01\x2a":
                return None
            size = ((data[6] | data[7] << 8) & 0x3FFF, (data[8] | data[9] << 8) & 0x3FFF)
        return data, keyframe, size


class Vp9Depacketizer(Depacketizer):
    name = "vp9"

    def starts_frame(self, payload):
        return len(payload) > 0 and bool(payload[0] & 0x08)  # B

    @staticmethod
    def descriptor(p: bytes) -> tuple[int, int, tuple[int, int] | None]:
        """(descriptor length, spatial layer id, (width, height) from the SS or None)."""
        n = len(p)
        if n < 1:
            raise ValueError("empty VP9 payload")
        d = p[0]
        i = 1
        sid = 0
        size = None
        if d & 0x80:  # I: picture ID, 7 or 15 bits
            if i >= n:
                raise ValueError("VP9 descriptor truncated")
            i += 2 if p[i] & 0x80 else 1
        if d & 0x20:  # L: TID|U|SID|D, then TL0PICIDX in non-flexible mode
            if i >= n:
                raise ValueError("VP9 descriptor truncated")
            sid = (p[i] >> 1) & 0x07
            i += 1 if d & 0x10 else 2
        if d & 0x10 and d & 0x40:  # F and P: up to 3 P_DIFF, N continues
            for _ in range(3):
                if i >= n:
                    raise ValueError("VP9 descriptor truncated")
                more = p[i] & 0x01
                i += 1
                if not more:
                    break
        if d & 0x02:  # V: scalability structure (§4.2.1)
            if i >= n:
                raise ValueError("VP9 SS truncated")
            ss = p[i]
            i += 1
            layers = (ss >> 5) + 1
            if ss & 0x10:  # Y: a resolution per spatial layer
                if i + 4 * layers > n:
                    raise ValueError("VP9 SS truncated")
                size = ((p[i] << 8) | p[i + 1], (p[i + 2] << 8) | p[i + 3])  # SID 0
                i += 4 * layers
            if ss & 0x08:  # G: picture group description
                if i >= n:
                    raise ValueError("VP9 SS truncated")
                groups = p[i]
                i += 1
                for _ in range(groups):
                    if i >= n:
                        raise ValueError("VP9 SS truncated")
                    refs = (p[i] >> 2) & 0x03
                    i += 1 + refs
        if i > n:
            raise ValueError("VP9 descriptor truncated")
        return i, sid, size

    def frame(self, payloads):
        parts = []
        size = None
        for k, p in enumerate(payloads):
            try:
                length, sid, ss_size = self.descriptor(p)
            except ValueError:
                return None
            if sid != 0:
                continue  # an upper spatial layer: the base layer decodes on its own
            if ss_size and size is None:
                size = ss_size
            parts.append(p[length:])
        data = b"".join(parts)
        if not data:
            return None
        header = _vp9_header(data)
        if header is None:
            return None
        keyframe, header_size = header
        if keyframe and size is None:
            size = header_size
        return data, keyframe, size if keyframe else None


class _Bits:
    """MSB-first bit reader (VP9 headers, H.264 RBSP with exp-Golomb codes)."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def bit(self) -> int:
        byte = self.pos >> 3
        if byte >= len(self.data):
            raise ValueError("bitstream truncated")
        value = (self.data[byte] >> (7 - (self.pos & 7))) & 1
        self.pos += 1
        return value

    def bits(self, n: int) -> int:
        value = 0
        for _ in range(n):
            value = (value << 1) | self.bit()
        return value

    def ue(self) -> int:  # H.264 §9.1
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 31:
                raise ValueError("exp-Golomb code too long")
        return (1 << zeros) - 1 + self.bits(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _vp9_header(data: bytes) -> tuple[bool, tuple[int, int] | None] | None:
    """(keyframe, (width, height) of a keyframe) from a VP9 uncompressed header (VP9
    bitstream §6.2); a superframe index (Annex B) is read through its first frame. None if
    it is not a VP9 frame."""
    try:
        b = _Bits(data)
        if b.bits(2) != 2:  # frame_marker
            return None
        profile = b.bit() | (b.bit() << 1)
        if profile == 3:
            b.bit()  # reserved_zero
        if b.bit():  # show_existing_frame
            return False, None
        if b.bit():  # frame_type: 1 = NON_KEY_FRAME
            return False, None
        b.bits(2)  # show_frame, error_resilient_mode
        if b.bits(24) != 0x498342:  # frame_sync_code
            return None
        if profile >= 2:
            b.bit()  # ten_or_twelve_bit
        if b.bits(3) != 7:  # color_space != CS_RGB
            b.bit()  # color_range
            if profile in (1, 3):
                b.bits(3)  # subsampling_x, subsampling_y, reserved_zero
        elif profile in (1, 3):
            b.bit()
        width = b.bits(16) + 1
        height = b.bits(16) + 1
        return True, (width, height)
    except ValueError:
        return None


def _unescape(nal: bytes) -> bytes:
    """RBSP from a NAL unit: emulation prevention bytes (00 00 03) removed (H.264 §7.4.1)."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


def h264_sps_size(sps: bytes) -> tuple[int, int] | None:
    """(width, height) from an H.264 SPS NAL unit (H.264 §7.3.2.1.1, §7.4.2.1.1), or None."""
    try:
        b = _Bits(_unescape(sps[1:]))
        profile = b.bits(8)
        b.bits(16)  # constraint flags, level_idc
        b.ue()  # seq_parameter_set_id
        chroma = 1
        separate = 0
        if profile in _HIGH_PROFILES:
            chroma = b.ue()
            if chroma == 3:
                separate = b.bit()
            b.ue()  # bit_depth_luma_minus8
            b.ue()  # bit_depth_chroma_minus8
            b.bit()  # qpprime_y_zero_transform_bypass_flag
            if b.bit():  # seq_scaling_matrix_present_flag
                for k in range(8 if chroma != 3 else 12):
                    if b.bit():
                        last = nxt = 8
                        for _ in range(16 if k < 6 else 64):
                            if nxt:
                                nxt = (last + b.se()) % 256
                            last = nxt or last
        b.ue()  # log2_max_frame_num_minus4
        poc_type = b.ue()
        if poc_type == 0:
            b.ue()
        elif poc_type == 1:
            b.bit()
            b.se()
            b.se()
            for _ in range(b.ue()):
                b.se()
        b.ue()  # max_num_ref_frames
        b.bit()  # gaps_in_frame_num_value_allowed_flag
        width_mbs = b.ue() + 1
        height_units = b.ue() + 1
        frame_mbs_only = b.bit()
        if not frame_mbs_only:
            b.bit()  # mb_adaptive_frame_field_flag
        b.bit()  # direct_8x8_inference_flag
        width = width_mbs * 16
        height = height_units * 16 * (2 - frame_mbs_only)
        if b.bit():  # frame_cropping_flag
            left, right, top, bottom = b.ue(), b.ue(), b.ue(), b.ue()
            array_type = 0 if separate else chroma
            crop_x = 1 if array_type == 0 else (2 if array_type in (1, 2) else 1)
            crop_y = (1 if array_type in (0, 3) or array_type == 2 else 2) * (2 - frame_mbs_only)
            width -= crop_x * (left + right)
            height -= crop_y * (top + bottom)
        if width <= 0 or height <= 0:
            return None
        return width, height
    except ValueError:
        return None


class H264Depacketizer(Depacketizer):
    name = "h264"

    def starts_frame(self, payload):
        if not payload:
            return False
        kind = payload[0] & 0x1F
        i = 1
        if kind == 28:  # FU-A: only its start
            if len(payload) < 3 or not payload[1] & 0x80:
                return False
            kind, i = payload[1] & 0x1F, 2
        if kind in (1, 5):  # a slice: the first of its picture has first_mb_in_slice = 0 (ue "1")
            return len(payload) > i and bool(payload[i] & 0x80)
        return True  # SPS, PPS, SEI, AUD, STAP-A: before the first slice

    def frame(self, payloads):
        nals: list[bytes] = []
        fragment: bytearray | None = None
        for p in payloads:
            if not p:
                return None
            kind = p[0] & 0x1F
            if 1 <= kind <= 23:  # single NAL unit packet (§5.6)
                nals.append(p)
            elif kind == 24:  # STAP-A (§5.7.1): 16-bit size, NAL unit, ...
                i = 1
                while i < len(p):
                    if i + 2 > len(p):
                        return None
                    size = (p[i] << 8) | p[i + 1]
                    if size == 0 or i + 2 + size > len(p):
                        return None
                    nals.append(p[i + 2:i + 2 + size])
                    i += 2 + size
            elif kind == 28:  # FU-A (§5.8): indicator, header S|E|R|type, fragment
                if len(p) < 3:
                    return None
                header = p[1]
                if header & 0x80:
                    fragment = bytearray([(p[0] & 0xE0) | (header & 0x1F)])
                elif fragment is None:
                    return None  # a fragment whose start was lost
                fragment += p[2:]
                if header & 0x40:
                    nals.append(bytes(fragment))
                    fragment = None
            else:
                return None  # STAP-B, MTAP, FU-B: not used by WebRTC (packetization-mode 1)
        if fragment is not None or not nals:
            return None  # an FU-A without its end
        keyframe = False
        size = None
        for nal in nals:
            kind = nal[0] & 0x1F
            if kind == 5:
                keyframe = True
            elif kind == 7 and size is None:
                size = h264_sps_size(nal)
        data = b"".join(START_CODE + nal for nal in nals)
        return data, keyframe, size


def _leb128(data: bytes, i: int) -> tuple[int, int]:
    """(value, next index) of an unsigned LEB128 at ``i`` (AV1 §4.10.5)."""
    value = 0
    for k in range(8):
        if i >= len(data):
            raise ValueError("LEB128 truncated")
        byte = data[i]
        value |= (byte & 0x7F) << (7 * k)
        i += 1
        if not byte & 0x80:
            return value, i
    raise ValueError("LEB128 too long")


def _leb128_bytes(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


OBU_SEQUENCE_HEADER = 1
OBU_TEMPORAL_DELIMITER = 2
OBU_TILE_LIST = 8
OBU_PADDING = 15
_AV1_DROPPED = (OBU_TEMPORAL_DELIMITER, OBU_TILE_LIST, OBU_PADDING)


def av1_sequence_size(obu_payload: bytes) -> tuple[int, int] | None:
    """(max_frame_width, max_frame_height) of a sequence header OBU's payload (AV1 §5.5.1)."""
    try:
        b = _Bits(obu_payload)
        b.bits(3)  # seq_profile
        b.bit()  # still_picture
        if b.bit():  # reduced_still_picture_header
            b.bits(5)  # seq_level_idx[0]
        else:
            decoder_model = False
            delay_bits = 0
            if b.bit():  # timing_info_present_flag
                b.bits(32)
                b.bits(32)
                if b.bit():  # equal_picture_interval: num_ticks_per_picture_minus_1, uvlc()
                    zeros = 0
                    while not b.bit():
                        zeros += 1
                        if zeros >= 32:
                            raise ValueError("uvlc too long")
                    b.bits(zeros)
                if b.bit():  # decoder_model_info_present_flag
                    decoder_model = True
                    delay_bits = b.bits(5) + 1
                    b.bits(32)
                    b.bits(10)  # buffer_removal_time_length_minus_1, frame_presentation_time_length_minus_1
            display_delay = b.bit()
            for _ in range(b.bits(5) + 1):  # operating points
                b.bits(12)  # operating_point_idc
                if b.bits(5) > 7:  # seq_level_idx
                    b.bit()  # seq_tier
                if decoder_model and b.bit():  # decoder_model_present_for_this_op
                    b.bits(2 * delay_bits + 1)
                if display_delay and b.bit():
                    b.bits(4)
        width_bits = b.bits(4) + 1
        height_bits = b.bits(4) + 1
        return b.bits(width_bits) + 1, b.bits(height_bits) + 1
    except ValueError:
        return None


class Av1Depacketizer(Depacketizer):
    name = "av1"

    def starts_frame(self, payload):
        return len(payload) > 1 and not payload[0] & 0x80  # Z=0: begins with a whole OBU's start

    def frame(self, payloads):
        obus: list[bytes] = []
        fragment: bytearray | None = None
        for p in payloads:
            if not p:
                return None
            aggregation = p[0]
            z, y, w = aggregation & 0x80, aggregation & 0x40, (aggregation >> 4) & 0x03
            elements: list[bytes] = []
            i = 1
            try:
                while i < len(p):
                    if w and len(elements) == w - 1:
                        size = len(p) - i  # the last of W elements has no length field
                    else:
                        size, i = _leb128(p, i)
                    if i + size > len(p):
                        return None
                    elements.append(p[i:i + size])
                    i += size
            except ValueError:
                return None
            for k, element in enumerate(elements):
                if k == 0 and z:
                    if fragment is None:
                        return None  # the start of this OBU was lost
                    fragment += element
                else:
                    if fragment is not None:
                        obus.append(bytes(fragment))
                    fragment = bytearray(element)
                if k == len(elements) - 1 and not y:
                    obus.append(bytes(fragment))
                    fragment = None
        if fragment is not None:
            return None  # the temporal unit ends inside an OBU
        out = bytearray()
        keyframe = False
        size = None
        for obu in obus:
            if not obu:
                return None
            header = obu[0]
            kind = (header >> 3) & 0x0F
            i = 2 if header & 0x04 else 1  # the extension byte
            if i > len(obu):
                return None
            if header & 0x02:  # has its size field: the payload is that long
                try:
                    length, start = _leb128(obu, i)
                except ValueError:
                    return None
                payload = obu[start:start + length]
            else:
                payload = obu[i:]
            if kind in _AV1_DROPPED:
                continue
            if kind == OBU_SEQUENCE_HEADER:
                keyframe = True
                size = size or av1_sequence_size(payload)
            out += bytes([header | 0x02]) + obu[1:i] + _leb128_bytes(len(payload)) + payload
        if not out:
            return None
        return bytes(out), keyframe, size


DEPACKETIZERS: dict[str, type[Depacketizer]] = {
    "opus": OpusDepacketizer,
    "vp8": Vp8Depacketizer,
    "vp9": Vp9Depacketizer,
    "h264": H264Depacketizer,
    "av1": Av1Depacketizer,
}


def depacketizer(codec: str) -> Depacketizer:
    """The depacketizer of an SDP codec name; ValueError for a codec the recorder cannot write."""
    try:
        return DEPACKETIZERS[codec.lower()]()
    except KeyError:
        raise ValueError(f"the recorder cannot write {codec!r}") from None


# -- ordering and framing ----------------------------------------------------------------


class FrameAssembler:
    """Received RTP packets of one stream in, whole coded frames out (see the module doc)."""

    def __init__(self, codec: Depacketizer, *, window: int = REORDER_WINDOW) -> None:
        self.codec = codec
        self.window = window
        self._seqs = SeqUnwrapper()
        self._next: int | None = None  # the extended seq expected next
        self._held: dict[int, tuple[int, bool, bytes]] = {}  # ext seq -> (ext ts, marker, payload)
        self._ts_high: int | None = None  # the extended timestamp of the newest packet
        self._frame_ts: int | None = None
        self._parts: list[bytes] = []
        self._bytes = 0
        self._broken = False
        self.counters = {"packets": 0, "frames": 0, "frames_dropped": 0, "late": 0, "lost": 0,
                         "malformed": 0, "oversized": 0}

    def _extend_ts(self, ts: int) -> int:
        high = self._ts_high
        if high is None:
            self._ts_high = ts
            return ts
        delta = (ts - high) & 0xFFFFFFFF
        if delta < 0x80000000:
            self._ts_high = high + delta
            return high + delta
        return high + delta - 0x100000000

    def push(self, packet: bytes) -> list[Frame]:
        """One plaintext RTP packet; the frames it completed, in order."""
        try:
            _pt, marker, seq, ts, _ssrc, offset = parse_rtp_header(packet)
        except ValueError:
            self.counters["malformed"] += 1
            return []
        end = len(packet) - (packet[-1] if packet[0] & 0x20 else 0)
        self.counters["packets"] += 1
        ext = self._seqs.unwrap(seq)
        if self._next is None:
            self._next = ext
        if ext < self._next or ext in self._held:
            self.counters["late"] += 1
            return []
        self._held[ext] = (self._extend_ts(ts), marker, packet[offset:end])
        out: list[Frame] = []
        self._drain(out)
        if len(self._held) > self.window:  # a hole that will not be filled: give it up
            first = min(self._held)
            self.counters["lost"] += first - self._next
            self._next = first
            self._broken = True
            self._drain(out, after_gap=True)
        return out

    def flush(self) -> list[Frame]:
        """The frames still held (the recording stops): what is complete is kept."""
        out: list[Frame] = []
        while self._held:
            first = min(self._held)
            if first != self._next:
                self.counters["lost"] += first - self._next
                self._next = first
                self._broken = True
                self._drain(out, after_gap=True)
            else:
                self._drain(out)
        self._finish(out, complete=False)
        return out

    def _drain(self, out: list[Frame], after_gap: bool = False) -> None:
        while self._next in self._held:
            ts, marker, payload = self._held.pop(self._next)
            self._next += 1
            if self._frame_ts is not None and ts != self._frame_ts:
                self._finish(out, complete=False)
            if self._frame_ts is None:
                self._frame_ts = ts
                self._broken = not self.codec.starts_frame(payload)
            elif after_gap:
                self._broken = True  # the hole was inside this frame
            after_gap = False
            self._parts.append(payload)
            self._bytes += len(payload)
            if self._bytes > MAX_FRAME_BYTES:
                self.counters["oversized"] += 1
                self._broken = True
                self._parts = []
                self._bytes = 0
            if marker or self.codec.single_packet:
                self._finish(out, complete=True)

    def _finish(self, out: list[Frame], complete: bool) -> None:
        if self._frame_ts is None:
            return
        parts, ts, broken = self._parts, self._frame_ts, self._broken
        self._parts, self._bytes, self._frame_ts, self._broken = [], 0, None, False
        if broken or not parts:
            self.counters["frames_dropped"] += 1
            return
        result = self.codec.frame(parts)
        if result is None:
            self.counters["frames_dropped"] += 1
            return
        data, keyframe, size = result
        self.counters["frames"] += 1
        out.append(Frame(ts, data, keyframe, size))
