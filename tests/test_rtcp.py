"""RTCP packets: hand-built vectors (RFC sections beside them), round trips,
truncated and invalid twins, and aiortc as a cross-check oracle."""

import random

import aiortc.rtp as aiortc_rtp
import pytest

from sfu import rtcp
from sfu.rtcp import (
    Bye,
    Fir,
    Nack,
    Pli,
    ReceiverReport,
    Remb,
    ReportBlock,
    Sdes,
    SenderReport,
    TransportCC,
    Unknown,
    ntp_middle32,
    ntp_now,
    parse_compound,
    serialize,
)


def h(text: str) -> bytes:
    return bytes.fromhex("".join(text.split()))


BLOCK = ReportBlock(
    ssrc=0x22222222, fraction_lost=0x40, packets_lost=-2, highest_sequence=0x0001FFFF,
    jitter=17, lsr=0xAABBCCDD, dlsr=0x00010000,
)
BLOCK_HEX = "22222222 40 fffffe 0001ffff 00000011 aabbccdd 00010000"

# (bytes, parsed) pairs: one per packet type.
VECTORS = {
    # RFC 3550 §6.4.1: SR, RC=1, length 12 words
    "sr": (
        h("81c8000c 11111111 e1234567 89abcdef 00000100 00000010 00000800" + BLOCK_HEX),
        SenderReport(0x11111111, 0xE123456789ABCDEF, 0x100, 16, 2048, [BLOCK]),
    ),
    # RFC 3550 §6.4.1: SR without report blocks
    "sr-empty": (
        h("80c80006 11111111 e1234567 89abcdef 00000100 00000010 00000800"),
        SenderReport(0x11111111, 0xE123456789ABCDEF, 0x100, 16, 2048, []),
    ),
    # RFC 3550 §6.4.2: RR, RC=1
    "rr": (h("81c90007 11111111" + BLOCK_HEX), ReceiverReport(0x11111111, [BLOCK])),
    # RFC 3550 §6.4.2: empty RR (what a receive-only SFU leg sends)
    "rr-empty": (h("80c90001 11111111"), ReceiverReport(0x11111111, [])),
    # RFC 3550 §6.5: SDES, SC=2; CNAME "abcd" (2+4 octets, two null octets),
    # then CNAME "xy" + NAME(2) "z" (4+3 octets, one null octet)
    "sdes": (
        h("82ca0006 11111111 0104 61626364 0000  22222222 0102 7879 0201 7a 00"),
        Sdes([(0x11111111, [(1, b"abcd")]), (0x22222222, [(1, b"xy"), (2, b"z")])]),
    ),
    # RFC 3550 §6.6: BYE, SC=2, reason "bye" (length octet + 3 = one word)
    "bye": (h("82cb0003 11111111 22222222 03627965"), Bye([0x11111111, 0x22222222], b"bye")),
    "bye-no-reason": (h("81cb0001 11111111"), Bye([0x11111111])),
    # RFC 4585 §6.2.1: generic NACK, PID 0xfffe, BLP 0x0007 -> fffe ffff 0000 0001;
    # second entry PID 0x0014 BLP 0x8000 -> 0x14, 0x24
    "nack": (
        h("81cd0004 11111111 22222222 fffe0007 00148000"),
        Nack(0x11111111, 0x22222222, [0xFFFE, 0xFFFF, 0, 1, 0x14, 0x24]),
    ),
    # RFC 4585 §6.3.1: PLI, no FCI
    "pli": (h("81ce0002 11111111 22222222"), Pli(0x11111111, 0x22222222)),
    # RFC 5104 §4.3.1.1: FIR, media SSRC 0, two FCI entries (SSRC, seq nr, 3 reserved)
    "fir": (
        h("84ce0006 11111111 00000000 22222222 05000000 33333333 ff000000"),
        Fir(0x11111111, [(0x22222222, 5), (0x33333333, 255)]),
    ),
    # draft-alvestrand-rmcat-remb-03 §2.2: 'REMB', N=2, exp 4, mantissa 0x3d090
    # -> 0x3d090 << 4 = 4_000_000 bit/s
    "remb": (
        h("8fce0006 11111111 00000000 52454d42 02 13d090 22222222 33333333"),
        Remb(0x11111111, 4_000_000, [0x22222222, 0x33333333]),
    ),
    # draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1: base seq 0xfffe,
    # status count 5, reference time 0x000102 (x 64 ms), fb count 9;
    # one 2-bit status vector chunk (§3.1.4: 1 1 | 01 00 10 01 00 00 00 = 0xd240)
    # -> small delta, not received, large delta, small delta, not received;
    # deltas: 0x04, 0xff9c (-100), 0x00; two padding octets (P bit, RFC 3550 §6.4.1)
    "twcc": (
        h("afcd0006 11111111 22222222 fffe 0005 000102 09 d240 04 ff9c 00 0002"),
        TransportCC(
            0x11111111, 0x22222222, 0xFFFE, 0x000102, 9,
            [(0xFFFE, 4), (0xFFFF, None), (0, -100), (1, 0), (2, None)],
        ),
    ),
    # RFC 3550 §6.7: APP "name" with 4 octets of data, subtype 3 -> Unknown
    "app": (h("83cc0003 11111111 6e616d65 01020304"), Unknown(204, 3, h("11111111 6e616d65 01020304"))),
    # RFC 5104 §4.2.1: TMMBR (RTPFB FMT 3) is not modelled -> Unknown
    "tmmbr": (
        h("83cd0004 11111111 00000000 22222222 04000000"),
        Unknown(205, 3, h("11111111 00000000 22222222 04000000")),
    ),
    # RFC 4585 §6.4: application layer feedback that is not REMB -> Unknown
    "afb": (h("8fce0003 11111111 00000000 41424344"), Unknown(206, 15, h("11111111 00000000 41424344"))),
}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_parse(name):
    data, expected = VECTORS[name]
    assert parse_compound(data) == [expected]
    if not isinstance(expected, Unknown):
        assert type(expected).parse(data) == expected


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_build(name):
    data, packet = VECTORS[name]
    assert bytes(packet) == data


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_truncated(name):
    data, packet = VECTORS[name]
    parse = Unknown.parse if isinstance(packet, Unknown) else type(packet).parse
    for cut in range(len(data)):
        with pytest.raises(ValueError):
            parse(data[:cut])
        with pytest.raises(ValueError):
            parse_compound(data[:cut])


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector_accepts_buffers(name):
    data, packet = VECTORS[name]
    assert parse_compound(bytearray(data)) == [packet]
    assert parse_compound(memoryview(data)) == [packet]


# Packets whose length fields are consistent but whose content is not.
INVALID = {
    "version 1": h("41c90001 11111111"),
    "padding zero": h("a0c90002 11111111 00000000"),
    "padding too long": h("a0c90001 11111109"),
    "sr rc=1 without block": h("81c80006 11111111 e1234567 89abcdef 00000100 00000010 00000800"),
    "sr short": h("80c80005 11111111 e1234567 89abcdef 00000100 00000010"),
    "rr without ssrc": h("80c90000"),
    "rr rc=2 one block": h("82c90007 11111111" + BLOCK_HEX),
    "sdes item overruns": h("81ca0002 11111111 01086162"),
    "sdes no end": h("81ca0002 11111111 01026162"),
    "sdes chunk missing": h("82ca0002 11111111 01016100"),
    "bye sc=2 one ssrc": h("82cb0001 11111111"),
    "bye reason overruns": h("81cb0002 11111111 05627965"),
    "nack without media ssrc": h("81cd0001 11111111"),
    "nack half entry": h("a1cd0004 11111111 22222222 fffe0000 00000002"),
    "pli without media ssrc": h("81ce0001 11111111"),
    "fir half entry": h("84ce0003 11111111 00000000 22222222"),
    "remb ssrc list short": h("8fce0005 11111111 00000000 52454d42 02 13d090 22222222"),
    "twcc header short": h("8fcd0003 11111111 22222222 fffe0005"),
    "twcc chunks short": h("8fcd0004 11111111 22222222 fffe 0005 00010209"),
    "twcc deltas short": h("8fcd0005 11111111 22222222 fffe 0003 00010209 4003 0000"),
    "twcc symbol 3": h("8fcd0005 11111111 22222222 fffe 0001 00010209 6001 0000"),
    "twcc run zero": h("8fcd0005 11111111 22222222 fffe 0001 00010209 2000 0000"),
    "twcc run beyond count": h("8fcd0005 11111111 22222222 fffe 0001 00010209 2002 0101"),
}


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid_twins_have_consistent_length(name):
    """So that test_invalid fails for the content, not for the length field."""
    data = INVALID[name]
    assert (int.from_bytes(data[2:4], "big") + 1) * 4 == len(data)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_invalid(name):
    with pytest.raises(ValueError):
        parse_compound(INVALID[name])


def test_parse_checks_packet_type_and_fmt():
    with pytest.raises(ValueError):
        SenderReport.parse(VECTORS["rr"][0])
    with pytest.raises(ValueError):
        Pli.parse(VECTORS["fir"][0])
    with pytest.raises(ValueError):
        Nack.parse(VECTORS["twcc"][0])
    with pytest.raises(ValueError):
        Remb.parse(VECTORS["afb"][0])


def test_parse_rejects_trailing_bytes():
    data = VECTORS["pli"][0]
    with pytest.raises(ValueError):
        Pli.parse(data + b"\x00\x00\x00\x00")


def test_padding_is_removed():
    """RFC 3550 §6.4.1: P bit, last octet counts the padding octets."""
    assert parse_compound(h("a0c90002 11111111 00000004")) == [ReceiverReport(0x11111111, [])]


# ------------------------------------------------------------------ compound


def test_compound_round_trip():
    """RFC 3550 §6.1: SR + SDES first, then feedback and anything else."""
    names = ["sr", "sdes", "remb", "nack", "app", "twcc", "bye"]
    data = b"".join(VECTORS[name][0] for name in names)
    packets = parse_compound(data)
    assert packets == [VECTORS[name][1] for name in names]
    assert serialize(packets) == data


@pytest.mark.parametrize("tail", [b"\x80", b"\x80\xc9\x00", b"\x80\xc9\x00\x01", b"\x80\xc9\x00\x01\x11\x11\x11"])
def test_compound_truncated_tail(tail):
    with pytest.raises(ValueError):
        parse_compound(VECTORS["sr"][0] + tail)


def test_compound_empty():
    with pytest.raises(ValueError):
        parse_compound(b"")


# ------------------------------------------------------------------ per type details


def test_report_block_parse():
    assert ReportBlock.parse(h(BLOCK_HEX)) == BLOCK
    assert bytes(BLOCK) == h(BLOCK_HEX)
    with pytest.raises(ValueError):
        ReportBlock.parse(h(BLOCK_HEX)[:-1])


@pytest.mark.parametrize(
    "lost, wire",
    [(0, "000000"), (-1, "ffffff"), (0x7FFFFF, "7fffff"), (-0x800000, "800000"),
     (0x1000000, "7fffff"), (-0x1000000, "800000")],  # §6.4.1: clamped
)
def test_report_block_packets_lost(lost, wire):
    block = ReportBlock(1, 0, lost, 0, 0, 0, 0)
    assert bytes(block)[5:8] == h(wire)
    assert ReportBlock.parse(bytes(block)).packets_lost == max(-0x800000, min(0x7FFFFF, lost))


@pytest.mark.parametrize(
    "lost, fci",
    [
        ([], ""),
        ([5], "00050000"),
        ([5, 6, 21], "00058001"),  # §6.2.1: bit i means PID + i + 1
        ([5, 22], "00050000 00160000"),  # 17 apart: two entries
        ([65535, 0, 15], "ffff8001"),  # wrap at 65535
        ([65530, 65530, 65531], "fffa0001"),  # duplicates are folded
        ([1, 2, 3, 1000, 1001], "00010003 03e80001"),
    ],
)
def test_nack_groups(lost, fci):
    data = bytes(Nack(1, 2, lost))
    assert data == h(f"81cd{2 + len(h(fci)) // 4:04x} 00000001 00000002" + fci)
    assert Nack.parse(data).lost == sorted(set(lost), key=lost.index)


def test_nack_random_round_trip():
    rng = random.Random(4585)
    for _ in range(200):
        start = rng.randrange(65536)
        steps = sorted(rng.sample(range(200), rng.randrange(1, 60)))
        lost = [(start + step) & 0xFFFF for step in steps]
        assert Nack.parse(bytes(Nack(1, 2, lost))).lost == lost


def test_nack_rejects_out_of_range():
    with pytest.raises(ValueError):
        bytes(Nack(1, 2, [65536]))


@pytest.mark.parametrize(
    "bitrate, wire",
    [(0, "000000"), (0x3FFFF, "03ffff"), (0x40000, "060000"), (4_000_000, "13d090"),
     (0x3FFFF << 63, "ffffff")],
)
def test_remb_exponent_mantissa(bitrate, wire):
    data = bytes(Remb(1, bitrate, []))
    assert data[-3:] == h(wire)
    assert Remb.parse(data).bitrate == bitrate


def test_remb_rounds_down():
    assert Remb.parse(bytes(Remb(1, 0x40001, [7]))).bitrate == 0x40000
    with pytest.raises(ValueError):
        bytes(Remb(1, 0x40000 << 63, []))
    with pytest.raises(ValueError):
        bytes(Remb(1, -1, []))


def test_fir_rejects_bad_seqnr():
    with pytest.raises(ValueError):
        bytes(Fir(1, [(2, 256)]))


def test_sdes_cname_round_trip():
    sdes = Sdes([(1, [(rtcp.SDES_CNAME, b"x" * n)]) for n in range(8)])
    assert Sdes.parse(bytes(sdes)) == sdes
    with pytest.raises(ValueError):
        bytes(Sdes([(1, [(1, b"x" * 256)])]))


def test_bye_reason_lengths():
    for n in range(8):
        bye = Bye([1], b"r" * n)
        data = bytes(bye)
        assert len(data) % 4 == 0
        assert Bye.parse(data) == bye


def test_unknown_round_trip_unaligned_body():
    packet = Unknown(210, 2, b"\x01\x02\x03")
    data = bytes(packet)
    assert data == h("a2d20001 01020301")  # padded with the P bit
    assert parse_compound(data) == [packet]


# ------------------------------------------------------------------ TWCC


def twcc(packets, base=None):
    base = packets[0][0] if base is None else base
    return TransportCC(1, 2, base, 0x123456, 7, packets)


def test_twcc_run_length_chunk():
    """§3.1.3: 20 small deltas -> one run-length chunk 0x2014."""
    packet = twcc([(i, 1) for i in range(20)])
    data = bytes(packet)
    assert data[20:22] == h("2014")
    assert TransportCC.parse(data) == packet


def test_twcc_one_bit_vector_chunk():
    """§3.1.4: received/not received alternating -> 1-bit status vectors."""
    packet = twcc([(i, 2 if i % 2 == 0 else None) for i in range(16)])
    data = bytes(packet)
    # 14 symbols 1 0 1 0 ... in one chunk, then a 2-symbol tail (1 0) as a 1-bit vector
    assert data[20:24] == h("aaaa a000")
    assert TransportCC.parse(data) == packet


@pytest.mark.parametrize(
    "padding",
    ["afcd0007 | 0002", "8fcd0007 | 0000"],  # P bit (RFC 3550), or zeros inside the FCI
)
def test_twcc_parses_foreign_chunk_choices(padding):
    """Any valid encoding parses: a run of 2 small deltas (§3.1.3, 0x2002), then a
    2-bit vector (§3.1.4, 0xca00: 00 10 10, the rest beyond the status count)."""
    head, tail = padding.split("|")
    data = h(head + "00000001 00000002 0010 0005 00000100 2002 ca00 05 06 0100 ff00" + tail)
    assert TransportCC.parse(data) == TransportCC(
        1, 2, 0x10, 1, 0, [(0x10, 5), (0x11, 6), (0x12, None), (0x13, 256), (0x14, -256)]
    )


def test_twcc_random_round_trip():
    rng = random.Random(3550)
    for _ in range(300):
        base = rng.randrange(65536)
        kinds = rng.choice([[None, 1], [None, 300], [None, 1, -5, 300], [1], [None]])
        packets = []
        for i in range(rng.randrange(0, 200)):
            kind = rng.choice(kinds) if rng.random() < 0.3 or not packets else packets[-1][1]
            delta = None if kind is None else rng.randrange(0, 256) if kind == 1 else rng.randrange(-0x8000, 0x8000)
            packets.append(((base + i) & 0xFFFF, delta))
        packet = TransportCC(1, 2, base, rng.randrange(1 << 24), rng.randrange(256), packets)
        data = bytes(packet)
        assert len(data) % 4 == 0
        assert TransportCC.parse(data) == packet
        assert parse_compound(data) == [packet]


def test_twcc_build_errors():
    with pytest.raises(ValueError):
        bytes(twcc([(5, 1), (7, 1)]))  # not consecutive
    with pytest.raises(ValueError):
        bytes(twcc([(5, 0x8000)]))  # delta beyond 16 bits
    with pytest.raises(ValueError):
        bytes(TransportCC(1, 2, 0, 1 << 24, 0, []))
    with pytest.raises(ValueError):
        bytes(TransportCC(1, 2, 0, 0, 256, []))


def test_twcc_empty():
    packet = TransportCC(1, 2, 100, 0, 0, [])
    assert TransportCC.parse(bytes(packet)) == packet


# ------------------------------------------------------------------ NTP


def test_ntp_now():
    """RFC 5905 §6: seconds since 1900 in the high word, fraction in the low word."""
    assert ntp_now(0.0) == 2208988800 << 32
    assert ntp_now(1.5) == ((2208988800 + 1) << 32) | 0x80000000
    assert ntp_now(1_700_000_000.25) == ((2208988800 + 1_700_000_000) << 32) | 0x40000000


def test_ntp_middle32():
    """RFC 3550 §6.4.1 LSR: the middle 32 bits of the NTP timestamp."""
    assert ntp_middle32(0x0123456789ABCDEF) == 0x456789AB
    assert ntp_middle32(ntp_now(1.5)) == ((2208988801 & 0xFFFF) << 16) | 0x8000


# ------------------------------------------------------------------ aiortc as an oracle


def test_aiortc_sender_report():
    theirs = aiortc_rtp.RtcpSrPacket(
        ssrc=0x11111111,
        sender_info=aiortc_rtp.RtcpSenderInfo(
            ntp_timestamp=0xE123456789ABCDEF, rtp_timestamp=0x100, packet_count=16, octet_count=2048
        ),
        reports=[aiortc_rtp.RtcpReceiverInfo(
            ssrc=0x22222222, fraction_lost=0x40, packets_lost=-2, highest_sequence=0x0001FFFF,
            jitter=17, lsr=0xAABBCCDD, dlsr=0x00010000,
        )],
    )
    assert bytes(theirs) == VECTORS["sr"][0]


def test_aiortc_receiver_report_and_sdes_and_bye():
    rr = aiortc_rtp.RtcpRrPacket(ssrc=0x11111111, reports=[])
    assert parse_compound(bytes(rr)) == [ReceiverReport(0x11111111, [])]
    sdes = aiortc_rtp.RtcpSdesPacket(chunks=[aiortc_rtp.RtcpSourceInfo(ssrc=7, items=[(1, b"cnam")])])
    assert bytes(sdes) == bytes(Sdes([(7, [(1, b"cnam")])]))
    # aiortc pads a 5-octet CNAME with a whole extra word of nulls; still valid (§6.5)
    sdes = aiortc_rtp.RtcpSdesPacket(chunks=[aiortc_rtp.RtcpSourceInfo(ssrc=7, items=[(1, b"cname")])])
    assert parse_compound(bytes(sdes)) == [Sdes([(7, [(1, b"cname")])])]
    bye = aiortc_rtp.RtcpByePacket(sources=[1, 2, 3])
    assert bytes(bye) == bytes(Bye([1, 2, 3]))


def test_aiortc_feedback():
    lost = [100, 101, 116, 117, 140]  # aiortc's NACK builder does not handle the 65535 wrap
    nack = aiortc_rtp.RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=2, lost=lost)
    assert bytes(nack) == bytes(Nack(1, 2, lost))
    assert aiortc_rtp.RtcpPacket.parse(bytes(Nack(1, 2, lost)))[0].lost == lost
    pli = aiortc_rtp.RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=2)
    assert bytes(pli) == bytes(Pli(1, 2))
    remb = aiortc_rtp.RtcpPsfbPacket(fmt=15, ssrc=1, media_ssrc=0,
                                     fci=aiortc_rtp.pack_remb_fci(1_234_567, [3, 4]))
    assert parse_compound(bytes(remb)) == [Remb(1, aiortc_rtp.unpack_remb_fci(remb.fci)[0], [3, 4])]
    assert bytes(remb) == bytes(Remb(1, 1_234_567, [3, 4]))


# ------------------------------------------------------------------ fuzz


def test_fuzz_only_value_error():
    """Like h11's fuzzer: mutated input parses or raises ValueError, never anything else;
    whatever parses serializes, and the second round trip is a fixed point."""
    rng = random.Random(7983)
    seeds = [data for data, _ in VECTORS.values()]
    outcomes = {"ok": 0, "error": 0}
    for _ in range(3000):
        data = bytearray(b"".join(rng.sample(seeds, rng.randrange(1, 4))))
        for _ in range(rng.randrange(1, 4)):
            action = rng.random()
            if action < 0.6:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif action < 0.8:
                del data[rng.randrange(len(data)):]
                if not data:
                    data = bytearray(b"\x80")
            else:
                data += rng.randbytes(rng.randrange(1, 9))
        try:
            packets = parse_compound(bytes(data))
        except ValueError:
            outcomes["error"] += 1
            continue
        outcomes["ok"] += 1
        again = parse_compound(serialize(packets))
        assert parse_compound(serialize(again)) == again
    assert min(outcomes.values()) > 300, outcomes
