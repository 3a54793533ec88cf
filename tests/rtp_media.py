"""Synthetic media for the recorder tests: frames encoded with PyAV (libvpx, libx264,
libopus), packetized into RTP the way a browser does and the forwarding plane forwards
(RFC 7741, RFC 9628, RFC 6184 packetization-mode 1, RFC 7587), with a one-byte header
extension on some packets."""

from __future__ import annotations

import math
import struct
from fractions import Fraction

from sfu.depacketize import _leb128_bytes as leb128_bytes

MTU_PAYLOAD = 1100


def _frames(width: int, height: int, count: int, noise: bool = False):
    import av
    import numpy as np

    rng = np.random.default_rng(1)
    for i in range(count):
        img = np.zeros((height, width, 3), dtype=np.uint8)
        x = (i * 7) % max(width - 40, 1)
        img[:, :, 0] = (np.arange(width)[None, :] + i * 3) % 256
        img[20:60, x:x + 40, 1] = 255
        if noise:
            img[:] = rng.integers(0, 256, img.shape, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = i
        frame.time_base = Fraction(1, 30)
        yield frame


def encode_video(codec: str, seconds: float = 3.0, width: int = 320, height: int = 240,
                 fps: int = 30, noise: bool = False, bitrate: int = 300_000) -> list[tuple[int, bytes, bool]]:
    """[(frame index, coded frame, keyframe)], one keyframe a second."""
    import av

    name = {"vp8": "libvpx", "vp9": "libvpx-vp9", "h264": "libx264"}[codec]
    ctx = av.CodecContext.create(name, "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, fps)
    ctx.framerate = fps
    ctx.bit_rate = bitrate
    ctx.gop_size = fps
    ctx.max_b_frames = 0
    if codec == "h264":
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "profile": "baseline"}
    else:
        ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    out = []
    count = int(seconds * fps)
    for frame in _frames(width, height, count, noise):
        for packet in ctx.encode(frame):
            out.append((int(packet.pts), bytes(packet), packet.is_keyframe))
    for packet in ctx.encode(None):
        out.append((int(packet.pts), bytes(packet), packet.is_keyframe))
    return out


def encode_opus(seconds: float = 3.0) -> list[tuple[int, bytes]]:
    """[(sample offset, Opus packet)], 20 ms each."""
    import av
    import numpy as np

    ctx = av.CodecContext.create("libopus", "w")
    ctx.sample_rate = 48000
    ctx.layout = "stereo"
    ctx.format = "s16"
    ctx.time_base = Fraction(1, 48000)
    out = []
    n = int(seconds * 50)
    for i in range(n):
        t = (np.arange(960) + i * 960) / 48000
        tone = (np.sin(2 * math.pi * 440 * t) * 8000).astype(np.int16)
        data = np.repeat(tone, 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(data, format="s16", layout="stereo")
        frame.sample_rate = 48000
        frame.pts = i * 960
        frame.time_base = Fraction(1, 48000)
        for packet in ctx.encode(frame):
            out.append((int(packet.pts), bytes(packet)))
    for packet in ctx.encode(None):
        out.append((int(packet.pts), bytes(packet)))
    return out


def rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False,
        extension: bool = False) -> bytes:
    b0 = 0x80 | (0x10 if extension else 0)
    header = struct.pack("!BBHII", b0, pt | (0x80 if marker else 0), seq & 0xFFFF, ts & 0xFFFFFFFF, ssrc)
    if extension:  # RFC 8285 one-byte form: id 3, 3 bytes (abs-send-time), padded to 4
        header += struct.pack("!HH", 0xBEDE, 1) + bytes([0x32, 1, 2, 3])
    return header + payload


def _chunks(data: bytes, size: int = MTU_PAYLOAD) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)] or [b""]


def vp8_payloads(frame: bytes, picture_id: int) -> list[bytes]:
    """RFC 7741 §4.2 with X=1, I=1 (15-bit PictureID), as Chrome sends."""
    out = []
    for k, chunk in enumerate(_chunks(frame)):
        b0 = 0x80 | (0x10 if k == 0 else 0)  # X, S, PID=0
        out.append(bytes([b0, 0x80, 0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF]) + chunk)
    return out


def vp9_payloads(frame: bytes, picture_id: int, keyframe: bool, width: int, height: int) -> list[bytes]:
    """RFC 9628 §4.2, non-flexible mode without layer indices; the SS (with one picture
    group: TID 0, one reference) on the first packet of a keyframe."""
    chunks = _chunks(frame)
    out = []
    for k, chunk in enumerate(chunks):
        b0 = 0x80 | (0 if keyframe else 0x40) | (0x08 if k == 0 else 0) | (0x04 if k == len(chunks) - 1 else 0)
        desc = bytearray([b0, 0x80 | (picture_id >> 8) & 0x7F, picture_id & 0xFF])
        if keyframe and k == 0:
            desc[0] |= 0x02
            desc += bytes([0x18]) + struct.pack("!HH", width, height) + bytes([1, 0x04, 1])
        out.append(bytes(desc) + chunk)
    return out


def annexb_nals(data: bytes) -> list[bytes]:
    nals = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        start = i + 3
        j = data.find(b"\x00\x00\x01", start)
        end = len(data) if j < 0 else (j - 1 if data[j - 1] == 0 else j)
        nals.append(data[start:end])
        i = j
    return [n for n in nals if n]


def h264_payloads(frame: bytes) -> list[bytes]:
    """RFC 6184 packetization-mode 1: small NAL units (SPS, PPS) aggregated in a STAP-A,
    others as single NAL units or FU-A fragments."""
    out = []
    small: list[bytes] = []

    def flush_small():
        if len(small) == 1:
            out.append(small[0])
        elif small:
            nri = max(n[0] & 0x60 for n in small)
            out.append(bytes([nri | 24]) + b"".join(struct.pack("!H", len(n)) + n for n in small))
        small.clear()

    for nal in annexb_nals(frame):
        kind = nal[0] & 0x1F
        if kind in (7, 8) and len(nal) < 200:
            small.append(nal)
            continue
        flush_small()
        if len(nal) <= MTU_PAYLOAD:
            out.append(nal)
            continue
        indicator = (nal[0] & 0xE0) | 28
        pieces = _chunks(nal[1:])
        for k, piece in enumerate(pieces):
            header = kind | (0x80 if k == 0 else 0) | (0x40 if k == len(pieces) - 1 else 0)
            out.append(bytes([indicator, header]) + piece)
    flush_small()
    return out


PT = {"vp8": 96, "vp9": 98, "h264": 102, "av1": 45, "opus": 111}


def video_rtp(codec: str, frames, ssrc: int, *, fps: int = 30, seq0: int = 65000,
              ts0: int = 4294960000, width: int = 320, height: int = 240) -> list[bytes]:
    """RTP packets of coded ``frames`` ([(index, data, keyframe)]), numbering that wraps."""
    packets = []
    seq = seq0
    for n, (index, data, key) in enumerate(frames):
        if codec == "vp8":
            payloads = vp8_payloads(data, n & 0x7FFF)
        elif codec == "av1":
            payloads = av1_payloads(data, key)
        elif codec == "vp9":
            payloads = vp9_payloads(data, n & 0x7FFF, key, width, height)
        else:
            payloads = h264_payloads(data)
        ts = ts0 + index * (90000 // fps)
        for k, payload in enumerate(payloads):
            packets.append(rtp(PT[codec], seq, ts, ssrc, payload, marker=k == len(payloads) - 1,
                               extension=k == 0))
            seq += 1
    return packets


def opus_rtp(packets, ssrc: int, *, seq0: int = 100, ts0: int = 12345) -> list[bytes]:
    return [rtp(PT["opus"], seq0 + i, ts0 + offset, ssrc, data, extension=True)
            for i, (offset, data) in enumerate(packets)]


def encode_av1(seconds: float = 2.0, width: int = 320, height: int = 240, fps: int = 30):
    """[(frame index, temporal unit, keyframe)] from SVT-AV1 in low-delay mode (no reordering)."""
    import av

    ctx = av.CodecContext.create("libsvtav1", "w")
    ctx.width, ctx.height = width, height
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, fps)
    ctx.framerate = fps
    ctx.bit_rate = 300_000
    ctx.gop_size = fps
    ctx.options = {"preset": "11", "svtav1-params": "lookahead=0"}
    out = []
    for frame in _frames(width, height, int(seconds * fps)):
        for packet in ctx.encode(frame):
            out.append((int(packet.pts), bytes(packet), packet.is_keyframe))
    for packet in ctx.encode(None):
        out.append((int(packet.pts), bytes(packet), packet.is_keyframe))
    return out


def av1_obus(tu: bytes) -> list[bytes]:
    """The OBUs of a low-overhead temporal unit, each without its size field (as RTP carries
    them), temporal delimiters left out."""
    obus = []
    i = 0
    while i < len(tu):
        header = tu[i]
        ext = 1 if header & 0x04 else 0
        j = i + 1 + ext
        size = shift = 0
        while True:
            byte = tu[j]
            size |= (byte & 0x7F) << shift
            shift += 7
            j += 1
            if not byte & 0x80:
                break
        if (header >> 3) & 0x0F != 2:
            obus.append(bytes([header & ~0x02]) + tu[i + 1:i + 1 + ext] + tu[j:j + size])
        i = j + size
    return obus




def av1_payloads(tu: bytes, keyframe: bool, mtu: int = 600) -> list[bytes]:
    """AV1 RTP payload format §4.3: W=0 (every element with its length), OBUs fragmented
    across packets (Y on the packet an OBU continues from, Z on the one it continues in),
    N on the first packet of a keyframe's temporal unit."""
    packets: list[bytearray] = []
    current = bytearray([0])
    for obu in av1_obus(tu):
        rest = obu
        while rest:
            room = mtu - len(current) - 2
            if room <= 16:
                packets.append(current)
                current = bytearray([0])
                continue
            piece, rest = rest[:room], rest[room:]
            current += leb128_bytes(len(piece)) + piece
            if rest:  # continues in the next packet
                current[0] |= 0x40
                packets.append(current)
                current = bytearray([0x80])
    if len(current) > 1:
        packets.append(current)
    if keyframe and packets:
        packets[0][0] |= 0x08
    return [bytes(p) for p in packets]
