"""RTP header parsing, RFC 8285 header extensions and the per-subscriber rewrite.

One suite runs against the pure-Python reference (sfu.rtp) and its Cython
twin (sfu._fast.packet); a randomized differential test checks that both
give the same bytes or both raise ValueError.
"""

import random
import struct

import pytest

import sfu._fast.packet as fast
import sfu.rtp as reference
from sfu.rtp import SeqUnwrapper


@pytest.fixture(params=[reference, fast], ids=["python", "cython"])
def impl(request):
    return request.param


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


# RFC 3550 §5.1: V=2 P=0 X=0 CC=0 M=1 PT=96 seq=0x1234 ts=0x01020304 ssrc=0xdeadbeef
PLAIN = h("80e0 1234 01020304 deadbeef") + b"payload"

# RFC 3550 §5.1: CC=2, CSRCs 0x11111111 0x22222222, PT=111, M=0
WITH_CSRCS = h("826f 0001 00000064 cafebabe 11111111 22222222") + b"opus"

# RFC 8285 §4.2 one-byte form: profile 0xBEDE, 3 words:
#   ID=1 L=0 (1 byte data), ID=2 L=1 (2 bytes), two padding bytes, ID=3 L=3 (4 bytes)
ONE_BYTE = h(
    "9060 0007 00000010 11223344"
    "bede 0003"
    "10 aa  21 bbcc  00 00  33 01020304"
) + b"vp8"

# RFC 8285 §4.3 two-byte form: profile 0x1000 (appbits 0), 3 words:
#   ID=1 L=0 (empty), ID=2 L=1, one padding byte, ID=200 L=4
TWO_BYTE = h(
    "9060 0008 00000020 11223344"
    "1000 0003"
    "0100  0201 aa  00  c804 01020304"
) + b"h264"

# RFC 3550 §5.1 "P": payload followed by 3 padding octets (last one holds the count).
PADDED = h("a060 0009 00000030 11223344") + b"data" + h("000003")

# RFC 3550 §5.3.1: an extension block with a profile that is not RFC 8285.
OTHER_PROFILE = h("9060 000a 00000040 11223344 abcd 0001 01020304") + b"x"

# RFC 8285 §4.2: ID 15 stops the processing of the block; what follows is ignored.
ID15 = h("9060 000b 00000050 11223344 bede 0002 10aa f0 21bbcc 0000") + b"y"

# RFC 8285 §4.2: ID 0 is padding only as the byte 0x00; ID 0 with L != 0 stops
# the processing like ID 15 (as libwebrtc does).
ID0 = h("9060 000c 00000060 11223344 bede 0002 10aa 03 21bbcc 0000") + b"z"

INVALID = {
    "empty": b"",
    "short": PLAIN[:11],
    "version 1": bytes([0x40]) + PLAIN[1:],
    "version 3": bytes([0xC0]) + PLAIN[1:],
    "csrc truncated": WITH_CSRCS[:19],
    "extension header truncated": h("9060 0001 00000000 11223344 bede"),
    "extension body truncated": ONE_BYTE[: 12 + 4 + 11],
    "padding zero": h("a060 0001 00000000 11223344 0000"),
    "padding beyond payload": h("a060 0001 00000000 11223344 0005"),
}


# ---------------------------------------------------------------- parse_rtp_header


def test_parse_fixed_header(impl):
    assert impl.parse_rtp_header(PLAIN) == (96, True, 0x1234, 0x01020304, 0xDEADBEEF, 12)


def test_parse_csrcs(impl):
    assert impl.parse_rtp_header(WITH_CSRCS) == (111, False, 1, 100, 0xCAFEBABE, 20)


def test_parse_extension_and_padding(impl):
    assert impl.parse_rtp_header(ONE_BYTE)[5] == 12 + 4 + 12
    assert impl.parse_rtp_header(TWO_BYTE)[5] == 12 + 4 + 12
    assert impl.parse_rtp_header(PADDED)[5] == 12
    assert impl.parse_rtp_header(OTHER_PROFILE)[5] == 20


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_parse_accepts_buffers(impl, kind):
    assert impl.parse_rtp_header(kind(ONE_BYTE))[2] == 7


@pytest.mark.parametrize("name", sorted(INVALID))
def test_parse_invalid(impl, name):
    with pytest.raises(ValueError):
        impl.parse_rtp_header(INVALID[name])


@pytest.mark.parametrize("packet", [PLAIN, WITH_CSRCS, ONE_BYTE, TWO_BYTE, PADDED])
def test_parse_truncated(impl, packet):
    """Every truncation inside the header (or of the padding) is an error."""
    header_length = impl.parse_rtp_header(packet)[5]
    for cut in range(header_length):
        with pytest.raises(ValueError):
            impl.parse_rtp_header(packet[:cut])


# ---------------------------------------------------------------- get_extension


def test_get_extension_one_byte(impl):
    assert impl.get_extension(ONE_BYTE, 1) == b"\xaa"
    assert impl.get_extension(ONE_BYTE, 2) == b"\xbb\xcc"
    assert impl.get_extension(ONE_BYTE, 3) == h("01020304")
    assert impl.get_extension(ONE_BYTE, 4) is None
    assert impl.get_extension(ONE_BYTE, 0) is None


def test_get_extension_two_byte(impl):
    assert impl.get_extension(TWO_BYTE, 1) == b""
    assert impl.get_extension(TWO_BYTE, 2) == b"\xaa"
    assert impl.get_extension(TWO_BYTE, 200) == h("01020304")
    assert impl.get_extension(TWO_BYTE, 3) is None


def test_get_extension_none(impl):
    assert impl.get_extension(PLAIN, 1) is None
    assert impl.get_extension(OTHER_PROFILE, 1) is None


def test_get_extension_id15_stops(impl):
    assert impl.get_extension(ID15, 1) == b"\xaa"
    assert impl.get_extension(ID15, 2) is None


def test_get_extension_id0_with_length_stops(impl):
    assert impl.get_extension(ID0, 1) == b"\xaa"
    assert impl.get_extension(ID0, 2) is None
    assert impl.get_extension(ID0, 0) is None


def test_get_extension_element_overrun(impl):
    # ID=1 L=7 (8 bytes) in a 1-word block
    bad = h("9060 0001 00000000 11223344 bede 0001 17aabbcc")
    with pytest.raises(ValueError):
        impl.get_extension(bad, 1)
    # two-byte: ID byte alone at the very end of the block
    bad = h("9060 0001 00000000 11223344 1000 0001 000000 05")
    with pytest.raises(ValueError):
        impl.get_extension(bad, 5)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_get_extension_invalid(impl, name):
    with pytest.raises(ValueError):
        impl.get_extension(INVALID[name], 1)


# ---------------------------------------------------------------- Rewriter


def rewrite(impl, packet, ssrc=0x01020304, pt_map=None, ext_map=None, seq_delta=0, ts_delta=0):
    rw = impl.Rewriter(ssrc, {96: 100, 111: 109} if pt_map is None else pt_map, ext_map or {})
    rw.seq_delta = seq_delta
    rw.ts_delta = ts_delta
    dst = bytearray(len(packet))
    n = rw.rewrite(packet, dst)
    return None if n < 0 else bytes(dst[:n])


def test_rewrite_fixed_header(impl):
    out = rewrite(impl, PLAIN, seq_delta=10, ts_delta=1000)
    assert out == h("80e4 123e 010206ec 01020304") + b"payload"


def test_rewrite_wraps(impl):
    packet = h("8060 fffe fffffff0 11223344") + b"p"
    out = rewrite(impl, packet, seq_delta=3, ts_delta=0x20)
    assert impl.parse_rtp_header(out)[2:4] == (1, 0x10)


def test_rewrite_negative_deltas(impl):
    out = rewrite(impl, PLAIN, seq_delta=-0x1235, ts_delta=-0x01020305)
    assert impl.parse_rtp_header(out)[2:4] == (0xFFFF, 0xFFFFFFFF)


def test_rewrite_csrcs_and_marker(impl):
    out = rewrite(impl, WITH_CSRCS)
    assert out == h("826d 0001 00000064 01020304 11111111 22222222") + b"opus"


def test_rewrite_unmapped_payload_type(impl):
    assert rewrite(impl, PLAIN, pt_map={97: 97}) is None


def test_rewrite_padding_copied(impl):
    out = rewrite(impl, PADDED)
    assert out == h("a064 0009 00000030 01020304") + b"data" + h("000003")


def test_rewrite_one_byte_rename_and_drop(impl):
    # keep 1 -> 5 and 3 -> 14; drop 2 (absent from the map)
    out = rewrite(impl, ONE_BYTE, ext_map={1: 5, 3: 14})
    assert out == h("9064 0007 00000010 01020304 bede 0002 50aa e301020304 00") + b"vp8"
    assert impl.get_extension(out, 14) == h("01020304")


def test_rewrite_one_byte_out_of_range_id_dropped(impl):
    # output id 15 or 200 cannot be written in the one-byte form: element dropped
    out = rewrite(impl, ONE_BYTE, ext_map={1: 15, 2: 200, 3: 3})
    assert out == h("9064 0007 00000010 01020304 bede 0002 3301020304 000000") + b"vp8"


def test_rewrite_one_byte_exact_multiple_of_four(impl):
    out = rewrite(impl, ONE_BYTE, ext_map={2: 2, 1: 1})
    assert out == h("9064 0007 00000010 01020304 bede 0002 10aa 21bbcc 000000") + b"vp8"
    out = rewrite(impl, ONE_BYTE, ext_map={3: 3})
    assert out == h("9064 0007 00000010 01020304 bede 0002 3301020304 000000") + b"vp8"
    out = rewrite(impl, ONE_BYTE, ext_map={2: 2})
    assert out == h("9064 0007 00000010 01020304 bede 0001 21bbcc 00") + b"vp8"


def test_rewrite_removes_empty_block(impl):
    for ext_map in ({}, {1: 0, 2: 0, 3: 0}, {7: 7}):
        out = rewrite(impl, ONE_BYTE, ext_map=ext_map)
        assert out == h("8064 0007 00000010 01020304") + b"vp8"


def test_rewrite_two_byte(impl):
    out = rewrite(impl, TWO_BYTE, ext_map={1: 1, 200: 201})
    assert out == h("9064 0008 00000020 01020304 1000 0002 0100 c904 01020304") + b"h264"
    out = rewrite(impl, TWO_BYTE, ext_map={2: 100})
    assert out == h("9064 0008 00000020 01020304 1000 0001 6401 aa 00") + b"h264"


def test_rewrite_two_byte_appbits_kept(impl):
    packet = h("9060 0008 00000020 11223344 100f 0001 0201 aa 00") + b"z"
    out = rewrite(impl, packet, ext_map={2: 2})
    assert out == h("9064 0008 00000020 01020304 100f 0001 0201 aa 00") + b"z"


def test_rewrite_other_profile_dropped(impl):
    out = rewrite(impl, OTHER_PROFILE, ext_map={1: 1})
    assert out == h("8064 000a 00000040 01020304") + b"x"


def test_rewrite_id15_stops(impl):
    out = rewrite(impl, ID15, ext_map={1: 1, 2: 2})
    assert out == h("9064 000b 00000050 01020304 bede 0001 10aa 0000") + b"y"


def test_rewrite_id0_with_length_stops(impl):
    out = rewrite(impl, ID0, ext_map={1: 1, 2: 2})
    assert out == h("9064 000c 00000060 01020304 bede 0001 10aa 0000") + b"z"


def test_rewrite_element_overrun(impl):
    bad = h("9060 0001 00000000 11223344 bede 0001 17aabbcc")
    with pytest.raises(ValueError):
        rewrite(impl, bad, ext_map={1: 1})


@pytest.mark.parametrize("name", sorted(INVALID))
def test_rewrite_invalid(impl, name):
    with pytest.raises(ValueError):
        rewrite(impl, INVALID[name])


def test_rewrite_destination_too_small(impl):
    rw = impl.Rewriter(1, {96: 96}, {})
    with pytest.raises(ValueError):
        rw.rewrite(PLAIN, bytearray(len(PLAIN) - 1))
    with pytest.raises(ValueError):
        rw.rewrite(PLAIN, bytearray())


def test_rewrite_buffer_kinds(impl):
    """src: bytes, bytearray, memoryview; dst: bytearray, memoryview slice of a bigger buffer."""
    expected = rewrite(impl, ONE_BYTE, ext_map={1: 1})
    rw = impl.Rewriter(0x01020304, {96: 100}, {1: 1})
    big = bytearray(2000)
    for src in (ONE_BYTE, bytearray(ONE_BYTE), memoryview(ONE_BYTE), memoryview(b"??" + ONE_BYTE)[2:]):
        n = rw.rewrite(src, memoryview(big)[100:])
        assert bytes(big[100 : 100 + n]) == expected


def test_rewrite_in_place(impl):
    for packet, ext_map in ((ONE_BYTE, {3: 4}), (TWO_BYTE, {200: 1}), (PADDED, {}), (ID15, {2: 2})):
        expected = rewrite(impl, packet, ext_map=ext_map, seq_delta=5)
        buf = bytearray(packet)
        rw = impl.Rewriter(0x01020304, {96: 100}, ext_map)
        rw.seq_delta = 5
        n = rw.rewrite(buf, buf)
        assert bytes(buf[:n]) == expected


def test_rewrite_read_only_destination(impl):
    rw = impl.Rewriter(1, {96: 96}, {})
    with pytest.raises((TypeError, ValueError, BufferError)):
        rw.rewrite(PLAIN, bytes(len(PLAIN)))


def test_rewriter_attributes(impl):
    rw = impl.Rewriter(7, {96: 100}, {1: 2, 3: 0})
    assert (rw.ssrc, rw.seq_delta, rw.ts_delta) == (7, 0, 0)
    assert rw.pt_map == {96: 100}
    assert rw.ext_map == {1: 2}
    rw.seq_delta = -1
    rw.ts_delta = -1
    assert (rw.seq_delta, rw.ts_delta) == (0xFFFF, 0xFFFFFFFF)
    rw.seq_delta = 0x12345
    assert rw.seq_delta == 0x2345
    rw.ssrc = 0xFFFFFFFF
    assert rw.ssrc == 0xFFFFFFFF
    rw.set_pt_map({0: 127})
    assert rw.pt_map == {0: 127}
    rw.set_ext_map({255: 14})
    assert rw.ext_map == {255: 14}
    assert rewrite(impl, PLAIN, pt_map={}) is None


@pytest.mark.parametrize("ssrc", [-1, 1 << 32])
def test_rewriter_bad_ssrc(impl, ssrc):
    with pytest.raises(ValueError):
        impl.Rewriter(ssrc, {}, {})


@pytest.mark.parametrize("pt_map", [{128: 1}, {1: 128}, {-1: 1}, {1: -1}])
def test_rewriter_bad_pt_map(impl, pt_map):
    with pytest.raises(ValueError):
        impl.Rewriter(1, pt_map, {})
    rw = impl.Rewriter(1, {96: 96}, {})
    with pytest.raises(ValueError):
        rw.set_pt_map(pt_map)
    assert rw.pt_map == {96: 96}  # a rejected map leaves the old one in place


@pytest.mark.parametrize("ext_map", [{0: 1}, {256: 1}, {1: 256}, {1: -1}])
def test_rewriter_bad_ext_map(impl, ext_map):
    with pytest.raises(ValueError):
        impl.Rewriter(1, {}, ext_map)
    rw = impl.Rewriter(1, {}, {1: 1})
    with pytest.raises(ValueError):
        rw.set_ext_map(ext_map)
    assert rw.ext_map == {1: 1}


def test_rewrite_rtp_function_matches_rewriter():
    dst = bytearray(len(ONE_BYTE))
    n = reference.rewrite_rtp(ONE_BYTE, dst, 0x01020304, 0, 0, {96: 100}, {3: 3})
    assert bytes(dst[:n]) == rewrite(reference, ONE_BYTE, ext_map={3: 3})


# ---------------------------------------------------------------- differential


def random_extension_block(rng: random.Random) -> bytes:
    form = rng.choice(["one", "one", "two", "other"])
    body = bytearray()
    for _ in range(rng.randrange(0, 6)):
        body += bytes(rng.choice([0, 0, 1, 2]))  # padding between elements
        if form == "one":
            length = rng.randrange(1, 17)
            ext_id = rng.choice([rng.randrange(1, 15), rng.randrange(1, 15), 15])
            body.append((ext_id << 4) | (length - 1))
        elif form == "two":
            length = rng.randrange(0, 20)
            body += bytes((rng.randrange(1, 256), length))
        else:
            length = rng.randrange(0, 8)
        body += rng.randbytes(length)
    body += bytes(-len(body) % 4)
    if form == "one":
        profile = 0xBEDE
    elif form == "two":
        profile = 0x1000 | rng.randrange(16)
    else:
        profile = rng.randrange(0x10000)
    return struct.pack("!HH", profile, len(body) // 4) + bytes(body)


def random_packet(rng: random.Random) -> bytes:
    cc = rng.choice([0, 0, 0, 1, 15])
    extension = random_extension_block(rng) if rng.random() < 0.8 else b""
    padding = rng.choice([0, 0, 1, 4, 255]) if rng.random() < 0.3 else 0
    b0 = 0x80 | (0x20 if padding else 0) | (0x10 if extension else 0) | cc
    b1 = rng.randrange(256)
    packet = bytes((b0, b1)) + rng.randbytes(10) + rng.randbytes(4 * cc) + extension
    packet += rng.randbytes(rng.randrange(0, 40))
    if padding:
        packet += bytes(padding - 1) + bytes((padding,))
    return packet


def mutate(rng: random.Random, packet: bytes) -> bytes:
    choice = rng.random()
    if choice < 0.5 or not packet:
        return packet
    if choice < 0.75:
        return packet[: rng.randrange(len(packet))]
    if choice < 0.95:
        data = bytearray(packet)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    return rng.randbytes(rng.randrange(0, 64))


def outcome(func, *args):
    try:
        return ("ok", func(*args))
    except ValueError:
        return ("ValueError", None)


def run_rewrite(impl, packet, ssrc, seq_delta, ts_delta, pt_map, ext_map):
    rw = impl.Rewriter(ssrc, pt_map, ext_map)
    rw.seq_delta = seq_delta
    rw.ts_delta = ts_delta
    dst = bytearray(b"\xee" * len(packet))
    n = rw.rewrite(packet, dst)
    return n if n < 0 else bytes(dst[:n])


def test_differential_random_packets():
    rng = random.Random(8285)
    counts = {"ok": 0, "ValueError": 0, "unmapped": 0}
    for _ in range(4000):
        packet = mutate(rng, random_packet(rng))
        pt_map = {pt: rng.randrange(128) for pt in rng.sample(range(128), rng.randrange(0, 128))}
        ext_map = {i: rng.randrange(256) for i in rng.sample(range(1, 256), rng.randrange(0, 30))}
        ext_map.update({i: rng.randrange(16) for i in range(1, 15) if rng.random() < 0.5})
        args = (packet, rng.randrange(1 << 32), rng.randrange(-70000, 70000),
                rng.randrange(-(1 << 33), 1 << 33), pt_map, ext_map)
        py = outcome(run_rewrite, reference, *args)
        cy = outcome(run_rewrite, fast, *args)
        assert py == cy, packet.hex()
        assert outcome(reference.parse_rtp_header, packet) == outcome(fast.parse_rtp_header, packet)
        for ext_id in (1, rng.randrange(1, 15), rng.randrange(256)):
            assert outcome(reference.get_extension, packet, ext_id) == outcome(
                fast.get_extension, packet, ext_id
            ), packet.hex()
        if py[0] == "ok":
            if py[1] == -1:
                counts["unmapped"] += 1
            else:
                counts["ok"] += 1
                # the rewritten packet is itself valid and no longer than the source
                assert len(py[1]) <= len(packet)
                fast.parse_rtp_header(py[1])
                # in place gives the same bytes
                for impl in (reference, fast):
                    rw = impl.Rewriter(args[1], pt_map, ext_map)
                    rw.seq_delta, rw.ts_delta = args[2], args[3]
                    buf = bytearray(packet)
                    assert bytes(buf[: rw.rewrite(buf, buf)]) == py[1]
        else:
            counts["ValueError"] += 1
    # the generator exercises every outcome
    assert min(counts.values()) > 200, counts


# ---------------------------------------------------------------- SeqUnwrapper


@pytest.mark.parametrize(
    "seqs, expected",
    [
        ([0, 1, 2], [0, 1, 2]),
        ([65534, 65535, 0, 1], [65534, 65535, 65536, 65537]),
        ([65535, 0, 65534, 1], [65535, 65536, 65534, 65537]),  # reordered across the wrap
        ([10, 5, 11], [10, 5, 11]),  # late packet
        ([0, 65535], [0, -1]),  # reordered before the first one
        ([0, 0x7FFF, 0xFFFE, 0], [0, 0x7FFF, 0xFFFE, 0x10000]),  # steps just under half
        ([0, 0x8000], [0, -0x8000]),  # exactly half: taken as late
        ([100, 100], [100, 100]),  # duplicate
    ],
)
def test_seq_unwrapper(seqs, expected):
    unwrapper = SeqUnwrapper()
    assert [unwrapper.unwrap(s) for s in seqs] == expected


def test_seq_unwrapper_many_cycles():
    unwrapper = SeqUnwrapper()
    for i in range(0, 5 * 65536, 1000):
        assert unwrapper.unwrap(i & 0xFFFF) == i
    assert unwrapper.highest == i


def test_seq_unwrapper_rejects_out_of_range():
    with pytest.raises(ValueError):
        SeqUnwrapper().unwrap(65536)
