"""RFC 7983 §7 demultiplexing, RFC 5761 §4 RTP/RTCP split."""

import pytest

from sfu.demux import DTLS, RTCP, RTP, STUN, UNKNOWN, classify

# A STUN binding request header (RFC 8489 §5): type 0x0001, magic cookie.
STUN_BINDING = bytes.fromhex("000100002112a442") + bytes(12)
# A DTLS 1.2 ClientHello record header (RFC 6347 §4.1): content type 22.
DTLS_HANDSHAKE = bytes.fromhex("16fefd0000000000000000")
# RTP, PT 96 marker set (RFC 3550 §5.1).
RTP_PT96 = bytes.fromhex("80e0000100000000deadbeef")
# RTCP receiver report, PT 201 (RFC 3550 §6.4.2).
RTCP_RR = bytes.fromhex("80c90001deadbeef")


@pytest.mark.parametrize(
    "data, expected",
    [
        (STUN_BINDING, STUN),
        (DTLS_HANDSHAKE, DTLS),
        (RTP_PT96, RTP),
        (RTCP_RR, RTCP),
        (b"", UNKNOWN),
        (b"\x80", UNKNOWN),  # RTP/RTCP range but no second byte
        (bytes([16]) + bytes(20), UNKNOWN),  # ZRTP
        (bytes([64]) + bytes(8), UNKNOWN),  # TURN ChannelData
        (bytes([255, 0]), UNKNOWN),
    ],
)
def test_classify_vectors(data, expected):
    assert classify(data) == expected
    assert classify(bytearray(data)) == expected
    assert classify(memoryview(data)) == expected


@pytest.mark.parametrize("first", range(256))
def test_classify_ranges_rfc7983(first):
    """Every first byte falls in the RFC 7983 §7 range it belongs to."""
    kind = classify(bytes([first, 0x60]))
    if first <= 3:
        assert kind == STUN
    elif 20 <= first <= 63:
        assert kind == DTLS
    elif 128 <= first <= 191:
        assert kind == RTP
    else:
        assert kind == UNKNOWN


@pytest.mark.parametrize("second", range(256))
def test_rtp_rtcp_split_rfc5761(second):
    """RFC 5761 §4: second byte 192..223 is an RTCP packet type."""
    kind = classify(bytes([0x80, second]))
    assert kind == (RTCP if 192 <= second <= 223 else RTP)


def test_constants_distinct():
    assert len({STUN, DTLS, RTP, RTCP, UNKNOWN}) == 5
