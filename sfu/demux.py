"""Demultiplex packets arriving on one UDP port by their first byte.

RFC 7983 §7 (updating RFC 5764 §5.1.2), with RTP and RTCP told apart by the
payload-type byte as RFC 5761 §4 describes:

                 +----------------+
                 |        [0..3] -+--> STUN       (RFC 8489)
                 |                |
                 |      [16..19] -+--> ZRTP       (unused here: UNKNOWN)
                 |                |
     packet -->  |      [20..63] -+--> DTLS       (RFC 9147)
                 |                |
                 |      [64..79] -+--> TURN channel (unused here: UNKNOWN)
                 |                |
                 |    [128..191] -+--> RTP/RTCP  -- second byte in [192..223]
                 |                |                 is RTCP (RFC 5761 §4),
                 |                |                 anything else is RTP
                 +----------------+

Everything else (including empty datagrams and RTP/RTCP datagrams shorter
than the second byte) is UNKNOWN and should be dropped.
"""

UNKNOWN = 0
STUN = 1
DTLS = 2
RTP = 3
RTCP = 4


def classify(data: bytes | bytearray | memoryview) -> int:
    """Return STUN, DTLS, RTP, RTCP or UNKNOWN for one datagram."""
    if not data:
        return UNKNOWN
    first = data[0]
    if first <= 3:
        return STUN
    if 20 <= first <= 63:
        return DTLS
    if 128 <= first <= 191:
        if len(data) < 2:
            return UNKNOWN
        # RFC 5761 §4: RTCP packet types 192..223 occupy the byte where RTP
        # keeps marker + payload type; RTP payload types 64..95 must not be used.
        if 192 <= data[1] <= 223:
            return RTCP
        return RTP
    return UNKNOWN
