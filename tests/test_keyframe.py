"""Keyframe-gated switching: the keyframe detectors and the gate on both data paths.

The detectors (sfu.rtp.is_keyframe and its C twin sfu._fast.packet.is_keyframe)
are checked on real VP8 and H.264 payloads from aiortc's encoders, on VP9, H.264
and AV1 payloads built by the RFCs (the section beside each), and against each
other on random packets (the same decision, byte for byte).

The gate: one scripted session (a viewer that starts mid-stream, a late viewer,
a viewer paused and resumed, a host mute, a viewer moved to another publisher)
runs through the C path and both Python paths; every datagram must be
byte-identical, and each viewer must get no video before a keyframe, a
keyframe request at once, and sequence numbers without a gap.
"""

from __future__ import annotations

import fractions
import random
import struct

import pylibsrtp
import pytest

import sfu._fast.packet as fast
import sfu.rtp as reference
from sfu import rtcp
from sfu.rtp import CODEC_AV1, CODEC_H264, CODEC_OTHER, CODEC_VP8, CODEC_VP9, codec_id
from tests.test_datapath import PROFILES, Harness, rtp

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=[reference, fast], ids=["python", "cython"])
def impl(request):
    return request.param


def packet(payload: bytes, *, seq=1, csrcs=0, extension=b"", padding=0) -> bytes:
    """An RTP packet around ``payload`` (RFC 3550 §5.1), with CSRCs, an RFC 8285
    one-byte extension block and RTP padding if asked: the detector must skip them."""
    b0 = 0x80 | csrcs | (0x10 if extension else 0) | (0x20 if padding else 0)
    out = struct.pack("!BBHII", b0, 96, seq, 3000 * seq, 0xABCD) + bytes(4 * csrcs)
    if extension:
        extension += bytes(-len(extension) % 4)
        out += struct.pack("!HH", 0xBEDE, len(extension) // 4) + extension
    out += payload
    if padding:
        out += bytes(padding - 1) + bytes([padding])
    return out


# -- real payloads from aiortc's encoders ------------------------------------------------


def encode(mime: str, frames: int, keyframes: set[int]) -> list[list[bytes]]:
    """The RTP payloads of ``frames`` frames encoded by aiortc (frame 0 is a keyframe)."""
    import numpy as np
    from aiortc.codecs import get_encoder
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters
    from av import VideoFrame

    params = {"packetization-mode": "1", "profile-level-id": "42e01f"} if "264" in mime else {}
    encoder = get_encoder(RTCRtpCodecParameters(mimeType=mime, clockRate=90000, payloadType=96,
                                                parameters=params))
    rng = np.random.default_rng(7)
    image = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    out = []
    for i in range(frames):
        image = np.roll(image, 3, axis=1)  # motion: inter frames are small but real
        frame = VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = 3000 * i
        frame.time_base = fractions.Fraction(1, 90000)
        payloads, _ = encoder.encode(frame, force_keyframe=i in keyframes)
        out.append(payloads)
    return out


@pytest.mark.parametrize("mime, codec", [("video/VP8", CODEC_VP8), ("video/H264", CODEC_H264)])
def test_real_encoder_payloads(impl, mime, codec):
    frames = encode(mime, 6, keyframes={4})
    for i, payloads in enumerate(frames):
        decisions = [impl.is_keyframe(codec, packet(p, seq=k)) for k, p in enumerate(payloads)]
        if i in (0, 4):  # the first packet of a keyframe starts it, the rest do not
            assert decisions[0], (mime, i, payloads[0][:8].hex())
            assert not any(decisions[1:]) or codec == CODEC_H264, (mime, i)
        else:
            assert not any(decisions), (mime, i, [p[:8].hex() for p in payloads])
        # with CSRCs, a header extension and padding around the same payload
        assert impl.is_keyframe(codec, packet(payloads[0], csrcs=2, extension=b"\x10\x01", padding=3)) \
            == decisions[0]
        assert not impl.is_keyframe(CODEC_OTHER, packet(payloads[0]))


def test_real_h264_keyframe_is_sps_in_stap_a_then_idr(impl):
    """aiortc sends SPS+PPS in a STAP-A (RFC 6184 §5.7.1), then the IDR in FU-As (§5.8)."""
    first = encode("video/H264", 1, set())[0]
    assert first[0][0] & 0x1F == 24 and first[0][3] & 0x1F == 7
    assert impl.is_keyframe(CODEC_H264, packet(first[0]))


# -- payloads built by the RFCs ---------------------------------------------------------

# VP8, RFC 7741 §4.2 (descriptor X R N S R PID) and §4.3 (first octet: Size0 H VER P)
VP8_CASES = [
    ("10 00 9d012a", True),            # S=1 PID=0, P=0
    ("10 01", False),                  # P=1: an inter frame
    ("00 00", False),                  # S=0: a continuation
    ("11 00", False),                  # PID=1: not the first partition
    ("90 80 81 23 00", True),          # X, I, 15-bit PictureID (M=1)
    ("90 80 23 00", True),             # X, I, 7-bit PictureID
    ("90 e0 81 23 05 40 00", True),    # X, I L T: PictureID, TL0PICIDX, TID/Y/KEYIDX
    ("90 e0 81 23 05 40 01", False),   # the same, P=1
    ("90 80 81", False),               # truncated before the payload header
    ("10", False),                     # no payload header
]

# VP9, RFC 9628 §4.2: I P L F B E V Z, then PictureID (M: 15 bits), then layer indices
VP9_CASES = [
    ("88 12", True),                   # I, B: a 7-bit PictureID, no layer indices
    ("8e 81 23 00", True),             # I B E V (the scalability structure follows)
    ("ae 81 23 00 05", True),          # I L B E V, non-flexible: TID U SID=0 D, TL0PICIDX
    ("ac 81 23 03 05", False),         # SID=1 D=1: an upper spatial layer of the keyframe
    ("c8 12", False),                  # P=1: inter-picture predicted
    ("84 12", False),                  # B=0: not the start of the frame
    ("98 12", True),                   # flexible mode (F), P=0: no reference indices
    ("d8 12 02", False),               # flexible mode, P=1, a P_DIFF
    ("a8", False),                     # truncated PictureID
    ("28", False),                     # L without its octet
]

# H.264, RFC 6184: NAL header F NRI Type (§5.3); STAP-A (§5.7.1), FU-A (§5.8)
H264_CASES = [
    ("65 88 84", True),                           # single NAL unit: IDR slice (5)
    ("67 42 c0 1f", True),                        # single NAL unit: SPS (7)
    ("68 ce 3c 80", False),                       # PPS alone
    ("41 9a 02", False),                          # non-IDR slice (1)
    ("78 0004 6742c01f 0004 68ce3c80", True),     # STAP-A: SPS, PPS
    ("78 0004 68ce3c80 0003 658884", True),       # STAP-A: PPS, IDR
    ("78 0004 68ce3c80 0003 419a02", False),      # STAP-A: PPS, non-IDR
    ("78 0009 6742c01f", False),                  # STAP-A: a size beyond the packet
    ("78 0000 65", False),                        # STAP-A: a zero size
    ("7c 85 88 84", True),                        # FU-A start (S=1) of an IDR
    ("7c 05 88 84", False),                       # FU-A continuation of an IDR
    ("7c 45 88", False),                          # FU-A end (E=1) of an IDR
    ("5c 81 9a", False),                          # FU-A start of a non-IDR slice
    ("7c", False),                                # FU-A without its header
]

# AV1 RTP payload format §4.4, aggregation header Z Y W W N - - -
AV1_CASES = [
    ("18 0a0b", True),                 # W=1, N=1: the first packet of a coded video sequence
    ("08 0a0b", True),                 # W=0, N=1
    ("10 32", False),                  # W=1, N=0
    ("50 32", False),                  # Y=1 (continued), N=0
    ("80 32", False),                  # Z=1: continues an OBU
]


@pytest.mark.parametrize("codec, payload, expected", [
    *((CODEC_VP8, p, e) for p, e in VP8_CASES),
    *((CODEC_VP9, p, e) for p, e in VP9_CASES),
    *((CODEC_H264, p, e) for p, e in H264_CASES),
    *((CODEC_AV1, p, e) for p, e in AV1_CASES),
])
def test_rfc_payloads(impl, codec, payload, expected):
    data = bytes.fromhex(payload.replace(" ", ""))
    assert impl.is_keyframe(codec, packet(data)) is expected
    assert impl.is_keyframe(codec, packet(data, csrcs=1, extension=b"\x22\xaa\xbb\xcc", padding=4)) is expected
    # the payload cut short: never an error, and a prefix is a keyframe only when the
    # detector did not need the rest
    for cut in range(len(data)):
        impl.is_keyframe(codec, packet(data[:cut]))


def test_malformed_packets_are_not_keyframes(impl):
    good = packet(bytes.fromhex("1000"))
    assert impl.is_keyframe(CODEC_VP8, good)
    assert not impl.is_keyframe(CODEC_VP8, good[:12])       # no payload
    assert not impl.is_keyframe(CODEC_VP8, b"\x00" + good[1:])  # version 0
    assert not impl.is_keyframe(CODEC_VP8, good[:11])       # shorter than the header
    assert not impl.is_keyframe(CODEC_VP8, bytes([0x9F]) + good[1:])  # 15 CSRCs, not there
    padded = bytearray(packet(bytes.fromhex("1000"), padding=2))
    padded[-1] = 200  # padding longer than the packet
    assert not impl.is_keyframe(CODEC_VP8, bytes(padded))
    padded[-1] = 3  # padding that eats the payload header
    assert not impl.is_keyframe(CODEC_VP8, bytes(padded))
    ext = bytearray(packet(bytes.fromhex("1000"), extension=b"\x10\x01"))
    ext[15] = 0xFF  # extension length beyond the packet
    assert not impl.is_keyframe(CODEC_VP8, bytes(ext))


def test_codec_ids():
    assert [codec_id(n) for n in ("VP8", "vp9", "H264", "AV1", "opus", "red")] == \
        [CODEC_VP8, CODEC_VP9, CODEC_H264, CODEC_AV1, CODEC_OTHER, CODEC_OTHER]
    assert [fast.codec_id(n) for n in ("VP8", "vp9", "H264", "AV1", "opus")] == \
        [CODEC_VP8, CODEC_VP9, CODEC_H264, CODEC_AV1, CODEC_OTHER]


def test_both_detectors_decide_alike_on_random_packets():
    rng = random.Random(20261130)
    prefixes = [bytes.fromhex(h) for h, _ in VP8_CASES + VP9_CASES + H264_CASES + AV1_CASES]
    for i in range(30000):
        size = rng.randrange(0, 24)
        payload = bytearray(rng.randbytes(size))
        if i % 2 and payload:  # start like a real descriptor, then mutate a bit
            base = rng.choice(prefixes)
            payload[:len(base)] = base
            payload[rng.randrange(len(payload))] ^= 1 << rng.randrange(8)
        data = packet(bytes(payload), csrcs=rng.choice((0, 0, 1)),
                      extension=rng.choice((b"", b"", b"\x10\x01")), padding=rng.choice((0, 0, 1, 2)))
        if i % 7 == 0:  # a mangled header too
            data = bytearray(data)
            data[rng.randrange(len(data))] = rng.randrange(256)
            data = bytes(data[:rng.randrange(len(data) + 1)])
        for codec in range(6):
            assert reference.is_keyframe(codec, data) == fast.is_keyframe(codec, data), (codec, data.hex())


# -- the gate on both data paths ----------------------------------------------------------

VIDEO_PT = 96


def video(seq: int, ssrc: int, key: bool, size=600) -> bytes:
    """A VP8 packet: a keyframe's first packet (RFC 7741 S=1 PID=0 P=0) or an inter frame's."""
    packet = bytearray(rtp(VIDEO_PT, seq, 3000 * (seq // 2), ssrc, size=size, keyframe=key))
    if not key:
        packet[12:14] = b"\x10\x01"  # the start of an inter frame (P=1)
    return bytes(packet)


class Received:
    """What each client got from the SFU so far: decrypted once (libsrtp's replay check
    refuses a second time), as h.out grows."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.done = 0
        self.rtp: dict[str, list[bytes]] = {}
        self.feedback: dict[str, list] = {}

    def update(self) -> None:
        h = self.h
        names = {addr: name for name, addr in h.addrs.items()}
        for data, addr in h.out[self.done:]:
            name = names.get(addr)
            if name is None or not 128 <= data[0] <= 191:
                continue
            client = h.clients[name]
            try:
                if 192 <= data[1] <= 223:
                    self.feedback.setdefault(name, []).extend(rtcp.parse_compound(client.unprotect_rtcp(data)))
                else:
                    self.rtp.setdefault(name, []).append(client.unprotect(data))
            except pylibsrtp.Error:  # a retransmission (no RTX): the same index again
                pass
        self.done = len(h.out)


def plis_to(h: Harness, name: str, media_ssrc: int) -> int:
    h.received.update()
    return sum(1 for p in h.received.feedback.get(name, ())
               if isinstance(p, rtcp.Pli) and p.media_ssrc == media_ssrc
               or isinstance(p, rtcp.Fir) and any(e[0] == media_ssrc for e in p.entries))


def rtp_to(h: Harness, name: str) -> list[bytes]:
    h.received.update()
    return h.received.rtp.get(name, [])


def video_to(h: Harness, name: str, ssrc: int) -> list[bytes]:
    return [p for p in rtp_to(h, name) if struct.unpack_from("!I", p, 8)[0] == ssrc]


def gate_script(h: Harness) -> dict:
    """Returns what each step saw; the datagrams are h.out."""
    facts = {}
    h.received = Received(h)
    pub = h.join("pub", "room", "publish", 5000, audio_ssrc=1111, video_ssrc=2222)
    h.advance(1.0)
    seq = 1000
    # a viewer that starts mid-stream (joined between keyframes)
    v1 = h.join("v1", "room", "subscribe", 5001)
    c1 = h.video_consumer(v1)
    facts["v1_pli_at_join"] = plis_to(h, "pub", 2222)
    for _ in range(5):
        h.send_rtp("pub", video(seq, 2222, key=False))
        h.send_rtp("pub", rtp(111, seq, 960 * seq, 1111, size=100))  # audio: never gated
        seq += 1
        h.advance(0.02)
    facts["v1_before_key"] = len(video_to(h, "v1", c1.ssrc))
    facts["v1_audio_before_key"] = sum(1 for p in rtp_to(h, "v1") if p[1] & 0x7F == 111)
    # a NACK before the gate opened is not answered
    h.send_rtcp("v1", [rtcp.Nack(sender_ssrc=4242, media_ssrc=c1.ssrc, lost=[c1.initial_seq, 7])])
    h.advance(0.02)
    facts["v1_retransmissions_before_key"] = c1.stats().retransmissions
    for k in range(8):
        h.send_rtp("pub", video(seq, 2222, key=k == 0))
        seq += 1
        h.advance(0.02)
    facts["v1_after_key"] = len(video_to(h, "v1", c1.ssrc))

    # a late viewer: nothing until the next keyframe, which it asks for at once
    h.advance(1.0)
    before = plis_to(h, "pub", 2222)
    v2 = h.join("v2", "room", "subscribe", 5002)
    c2 = h.video_consumer(v2)
    facts["v2_pli_at_once"] = plis_to(h, "pub", 2222) - before
    for _ in range(4):
        h.send_rtp("pub", video(seq, 2222, key=False))
        seq += 1
        h.advance(0.02)
    facts["v2_before_key"] = len(video_to(h, "v2", c2.ssrc))

    # v1 paused and resumed: nothing until a keyframe, asked for at once on resume
    h.engine.set_paused(v1.id, True)
    for _ in range(3):
        h.send_rtp("pub", video(seq, 2222, key=False))
        seq += 1
        h.advance(0.05)
    h.advance(1.0)
    before = plis_to(h, "pub", 2222)
    h.engine.set_paused(v1.id, False)
    facts["v1_resume_pli"] = plis_to(h, "pub", 2222) - before
    sent = len(video_to(h, "v1", c1.ssrc))
    for _ in range(3):
        h.send_rtp("pub", video(seq, 2222, key=False))
        seq += 1
        h.advance(0.02)
    facts["v1_after_resume_before_key"] = len(video_to(h, "v1", c1.ssrc)) - sent
    for k in range(4):
        h.send_rtp("pub", video(seq, 2222, key=k == 0))
        seq += 1
        h.advance(0.02)

    # a host mute of the track and its end: both viewers wait for a keyframe again
    producer = next(p for p in pub.producers if p.kind == "video")
    h.engine.pause_producer(producer.id, True)
    h.send_rtp("pub", video(seq, 2222, key=False))
    seq += 1
    h.advance(1.0)
    before = plis_to(h, "pub", 2222)
    h.engine.pause_producer(producer.id, False)
    facts["unmute_pli"] = plis_to(h, "pub", 2222) - before
    sent = (len(video_to(h, "v1", c1.ssrc)), len(video_to(h, "v2", c2.ssrc)))
    for _ in range(3):
        h.send_rtp("pub", video(seq, 2222, key=False))
        seq += 1
        h.advance(0.02)
    facts["after_unmute_before_key"] = (len(video_to(h, "v1", c1.ssrc)) - sent[0],
                                        len(video_to(h, "v2", c2.ssrc)) - sent[1])
    for k in range(4):
        h.send_rtp("pub", video(seq, 2222, key=k == 0))
        seq += 1
        h.advance(0.02)

    # a second publisher; the first leaves: the WHEP viewers move to it, keyframe-gated
    h.join("pub2", "room", "publish", 5004, audio_ssrc=3331, video_ssrc=3333)
    for k in range(3):
        h.send_rtp("pub2", video(500 + k, 3333, key=False))
        h.advance(0.02)
    h.advance(1.0)
    sent = (len(video_to(h, "v1", c1.ssrc)), len(video_to(h, "v2", c2.ssrc)))
    h.engine.close_session(pub.id)
    facts["moved_pli"] = plis_to(h, "pub2", 3333)
    for k in range(3, 6):
        h.send_rtp("pub2", video(500 + k, 3333, key=False))
        h.advance(0.02)
    facts["moved_before_key"] = (len(video_to(h, "v1", c1.ssrc)) - sent[0],
                                 len(video_to(h, "v2", c2.ssrc)) - sent[1])
    for k in range(6, 12):
        h.send_rtp("pub2", video(500 + k, 3333, key=k == 6))
        h.advance(0.02)
    # a NACK of the last packet of the first publisher, after the move: not answered
    facts["retransmissions_before_nack"] = c1.stats().retransmissions
    last_of_pub = (sent[0] and struct.unpack_from("!H", video_to(h, "v1", c1.ssrc)[sent[0] - 1], 2)[0])
    h.send_rtcp("v1", [rtcp.Nack(sender_ssrc=4242, media_ssrc=c1.ssrc, lost=[last_of_pub])])
    h.advance(0.02)
    facts["retransmissions_after_old_nack"] = c1.stats().retransmissions
    # and one of the new publisher's: answered
    first_of_pub2 = struct.unpack_from("!H", video_to(h, "v1", c1.ssrc)[sent[0]], 2)[0]
    h.send_rtcp("v1", [rtcp.Nack(sender_ssrc=4242, media_ssrc=c1.ssrc, lost=[first_of_pub2])])
    h.advance(0.02)
    facts["retransmissions_after_new_nack"] = c1.stats().retransmissions

    # a viewer whose keyframe does not come (the request or the keyframe lost): it asks
    # again after each KEYFRAME_RETRY seconds of waiting, and no more often
    h.advance(1.0)
    before = plis_to(h, "pub2", 3333)
    v3 = h.join("v3", "room", "subscribe", 5003)
    c3 = h.video_consumer(v3)
    asked = []
    for k in range(12, 62):  # 2.5 s of delta frames
        h.send_rtp("pub2", video(500 + k, 3333, key=False))
        h.advance(0.05)
        asked.append(plis_to(h, "pub2", 3333) - before)
    facts["v3_asked"] = asked
    facts["v3_before_key"] = len(video_to(h, "v3", c3.ssrc))
    h.send_rtp("pub2", video(562, 3333, key=True))
    h.advance(2.0)
    facts["v3_asked_after_key"] = plis_to(h, "pub2", 3333) - before
    facts["v3_after_key"] = len(video_to(h, "v3", c3.ssrc))
    facts["c1"], facts["c2"] = c1.ssrc, c2.ssrc
    return facts


@pytest.mark.parametrize("profile", PROFILES)
def test_gate_output_is_byte_identical_on_both_paths(profile):
    results = {}
    for mode in ("c", "pure"):
        h = Harness(mode, profile)
        results[mode] = (h, gate_script(h))
    fast_h, fast_facts = results["c"]
    for mode in ("pure",):
        ref_h, ref_facts = results[mode]
        assert ref_facts == fast_facts, mode
        assert len(fast_h.out) == len(ref_h.out), mode
        for i, (a, b) in enumerate(zip(fast_h.out, ref_h.out)):
            assert a == b, f"datagram {i} differs from the {mode} path"
        for name in ("rtp_forwarded", "retransmissions", "nack_misses", "keyframe_requests_sent",
                     "keyframe_waits"):
            fast_h.engine._fold_counters()
            assert fast_h.engine.stats[name] == ref_h.engine.stats[name], (mode, name)


@pytest.mark.parametrize("mode", ["c", "pure"])
def test_gate_holds_until_a_keyframe_and_numbering_stays_continuous(mode):
    h = Harness(mode, "SRTP_AEAD_AES_128_GCM")
    f = gate_script(h)
    # a viewer that starts mid-stream
    assert f["v1_pli_at_join"] >= 1
    assert f["v1_before_key"] == 0
    assert f["v1_audio_before_key"] == 5  # audio is never gated
    assert f["v1_retransmissions_before_key"] == 0
    assert f["v1_after_key"] == 8
    # a late viewer asks at once, and waits
    assert f["v2_pli_at_once"] == 1
    assert f["v2_before_key"] == 0
    # resumed, unmuted, moved: a keyframe request at once, nothing before the keyframe
    assert f["v1_resume_pli"] == 1
    assert f["v1_after_resume_before_key"] == 0
    assert f["unmute_pli"] == 1
    assert f["after_unmute_before_key"] == (0, 0)
    assert f["moved_pli"] >= 1
    assert f["moved_before_key"] == (0, 0)
    # asked at once, then again after each second of waiting (1.05 s, 2.1 s: the clock's
    # 50 ms steps), not after the keyframe came
    assert f["v3_asked"][0] == 1 and f["v3_asked"][-1] == 3, f["v3_asked"]
    first, second = f["v3_asked"].index(2), f["v3_asked"].index(3)
    assert 20 <= first <= 21 and 40 <= second <= 42, f["v3_asked"]
    assert f["v3_before_key"] == 0 and f["v3_after_key"] == 1
    assert f["v3_asked_after_key"] == 3
    # a NACK from before the move is not answered from the new publisher's cache; after it, it is
    assert f["retransmissions_after_old_nack"] == f["retransmissions_before_nack"]
    assert f["retransmissions_after_new_nack"] == f["retransmissions_before_nack"] + 1
    h.engine._fold_counters()
    assert h.engine.stats["keyframe_waits"] > 0

    for name, ssrc in (("v1", f["c1"]), ("v2", f["c2"])):
        packets = video_to(h, name, ssrc)
        seqs = [struct.unpack_from("!H", p, 2)[0] for p in packets]
        # retransmissions (no RTX negotiated here) repeat a number: the sent order otherwise
        firsts = list(dict.fromkeys(seqs))
        assert all((b - a) & 0xFFFF == 1 for a, b in zip(firsts, firsts[1:])), (name, seqs)
        # every switch starts at a keyframe: the first packet, and each after a time jump
        assert reference.is_keyframe(CODEC_VP8, packets[0])
        stamps = [struct.unpack_from("!I", p, 4)[0] for p in packets]
        for i in range(1, len(packets)):
            step = (stamps[i] - stamps[i - 1]) & 0xFFFFFFFF
            assert step < 0x80000000, (name, i)  # never backwards
            if step > 90000 // 2:  # a jump of more than half a second: after a pause or a move
                assert reference.is_keyframe(CODEC_VP8, packets[i]), (name, i)
