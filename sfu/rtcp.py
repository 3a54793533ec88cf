"""RTCP packets: parse and build, sans-I/O.

One dataclass per packet type, each with ``parse(data)`` (one whole packet,
ValueError when malformed or truncated) and ``__bytes__``. ``parse_compound``
splits a compound packet by its length fields; ``serialize`` joins packets.

Common header, RFC 3550 §6.4.1 (the 5-bit count is RC/SC, or FMT in
feedback messages, RFC 4585 §6.1)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |V=2|P|  RC/FMT |      PT       |      length (words - 1)       |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Packet types, dispatched by ``parse_compound`` (``_PARSERS``):

    200 SR   SenderReport      RFC 3550 §6.4.1
    201 RR   ReceiverReport    RFC 3550 §6.4.2
    202 SDES Sdes              RFC 3550 §6.5
    203 BYE  Bye               RFC 3550 §6.6
    205 RTPFB FMT 1  Nack      RFC 4585 §6.2.1
    205 RTPFB FMT 15 TransportCC  draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1
    206 PSFB FMT 1  Pli        RFC 4585 §6.3.1
    206 PSFB FMT 4  Fir        RFC 5104 §4.3.1
    206 PSFB FMT 15 Remb       draft-alvestrand-rmcat-remb-03 §2.2 ("REMB")
    anything else   Unknown    kept as raw bytes, re-serialized unchanged
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar, Union

RTCP_VERSION = 2

PT_SR = 200
PT_RR = 201
PT_SDES = 202
PT_BYE = 203
PT_APP = 204
PT_RTPFB = 205
PT_PSFB = 206

FMT_NACK = 1
FMT_TWCC = 15
FMT_PLI = 1
FMT_FIR = 4
FMT_AFB = 15  # application layer feedback, REMB lives here

SDES_END = 0
SDES_CNAME = 1

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01 (RFC 5905 §6)

_header = struct.Struct("!BBH")
_report_block = struct.Struct("!IB3sIIII")
_sender_info = struct.Struct("!IQIII")
_two_ssrcs = struct.Struct("!II")
_nack_entry = struct.Struct("!HH")  # RFC 4585 §6.2.1 FCI: PID, BLP
# offsets from the PID of the numbers a BLP byte names (bit i of the BLP: PID + i + 1)
_BLP_LOW = [tuple(bit + 1 for bit in range(8) if byte >> bit & 1) for byte in range(256)]
_BLP_HIGH = [tuple(bit + 9 for bit in range(8) if byte >> bit & 1) for byte in range(256)]


# ------------------------------------------------------------------ helpers


def ntp_now(unix_time: float) -> int:
    """64-bit NTP timestamp (RFC 5905 §6: 32.32 fixed point since 1900) for a Unix time."""
    ntp = unix_time + NTP_EPOCH_OFFSET
    seconds = int(ntp)
    fraction = int((ntp - seconds) * (1 << 32))
    return ((seconds & 0xFFFFFFFF) << 32) | (fraction & 0xFFFFFFFF)


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp, as used in LSR and DLSR (RFC 3550 §6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


def _pack_packet(count: int, packet_type: int, body: bytes) -> bytes:
    """Common header + body, padded (P bit, RFC 3550 §6.4.1) to a multiple of 4 octets."""
    if not 0 <= count <= 31:
        raise ValueError("RTCP count/FMT must be in 0..31")
    padding = -len(body) % 4
    first = (RTCP_VERSION << 6) | count
    if padding:
        first |= 0x20
        body = body + bytes(padding - 1) + bytes((padding,))
    return _header.pack(first, packet_type, len(body) // 4) + body


def _unpack_packet(data: bytes | bytearray | memoryview) -> tuple[int, int, bytes]:
    """Check one whole packet; return (count/FMT, packet type, body without padding)."""
    if len(data) < 4:
        raise ValueError("RTCP packet shorter than its header")
    first, packet_type, length = _header.unpack_from(data)
    if first >> 6 != RTCP_VERSION:
        raise ValueError("RTCP version is not 2")
    if (length + 1) * 4 != len(data):
        raise ValueError("RTCP length field does not match the packet size")
    body = bytes(data[4:])
    if first & 0x20:
        padding = body[-1] if body else 0
        if padding == 0 or padding > len(body):
            raise ValueError("RTCP padding length is invalid")
        body = body[:-padding]
    return first & 0x1F, packet_type, body


def _expect(packet_type: int, expected: int) -> None:
    if packet_type != expected:
        raise ValueError(f"RTCP packet type {packet_type}, expected {expected}")


def _check_u32(*values: int) -> None:
    for value in values:
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"{value} is not an unsigned 32-bit value")


# ------------------------------------------------------------------ reports


@dataclass
class ReportBlock:
    """Reception report block, RFC 3550 §6.4.1 (24 octets).

    ``packets_lost`` is the signed 24-bit cumulative count; values out of
    range are clamped when serialized, as §6.4.1 asks.
    """

    ssrc: int
    fraction_lost: int
    packets_lost: int
    highest_sequence: int
    jitter: int
    lsr: int
    dlsr: int

    SIZE: ClassVar[int] = 24

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> ReportBlock:
        if len(data) != cls.SIZE:
            raise ValueError("RTCP report block must be 24 octets")
        return cls._unpack_from(data, 0)

    @classmethod
    def _unpack_from(cls, data, offset: int) -> ReportBlock:
        ssrc, fraction, lost, highest, jitter, lsr, dlsr = _report_block.unpack_from(data, offset)
        return cls(ssrc, fraction, int.from_bytes(lost, "big", signed=True), highest, jitter, lsr, dlsr)

    def __bytes__(self) -> bytes:
        _check_u32(self.ssrc, self.highest_sequence, self.jitter, self.lsr, self.dlsr)
        if not 0 <= self.fraction_lost <= 255:
            raise ValueError("fraction_lost must be in 0..255")
        lost = max(-0x800000, min(0x7FFFFF, self.packets_lost))
        return _report_block.pack(
            self.ssrc,
            self.fraction_lost,
            lost.to_bytes(3, "big", signed=True),
            self.highest_sequence,
            self.jitter,
            self.lsr,
            self.dlsr,
        )


def _unpack_reports(body: bytes, offset: int, count: int) -> list[ReportBlock]:
    if offset + count * ReportBlock.SIZE > len(body):
        raise ValueError("RTCP report blocks are truncated")
    return [ReportBlock._unpack_from(body, offset + i * ReportBlock.SIZE) for i in range(count)]


def _pack_reports(reports: list[ReportBlock]) -> bytes:
    if len(reports) > 31:
        raise ValueError("at most 31 report blocks fit in one report")
    return b"".join(bytes(r) for r in reports)


@dataclass
class SenderReport:
    """SR, RFC 3550 §6.4.1. Profile-specific extensions after the blocks are ignored."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)

    packet_type: ClassVar[int] = PT_SR

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> SenderReport:
        count, packet_type, body = _unpack_packet(data)
        _expect(packet_type, PT_SR)
        if len(body) < _sender_info.size:
            raise ValueError("RTCP SR is truncated")
        ssrc, ntp, rtp_ts, packets, octets = _sender_info.unpack_from(body)
        return cls(ssrc, ntp, rtp_ts, packets, octets, _unpack_reports(body, _sender_info.size, count))

    def __bytes__(self) -> bytes:
        _check_u32(self.ssrc, self.rtp_timestamp, self.packet_count, self.octet_count)
        if not 0 <= self.ntp_timestamp < 1 << 64:
            raise ValueError("ntp_timestamp is not an unsigned 64-bit value")
        body = _sender_info.pack(
            self.ssrc, self.ntp_timestamp, self.rtp_timestamp, self.packet_count, self.octet_count
        )
        return _pack_packet(len(self.reports), PT_SR, body + _pack_reports(self.reports))


@dataclass
class ReceiverReport:
    """RR, RFC 3550 §6.4.2."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)

    packet_type: ClassVar[int] = PT_RR

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> ReceiverReport:
        count, packet_type, body = _unpack_packet(data)
        _expect(packet_type, PT_RR)
        if len(body) < 4:
            raise ValueError("RTCP RR is truncated")
        (ssrc,) = struct.unpack_from("!I", body)
        return cls(ssrc, _unpack_reports(body, 4, count))

    def __bytes__(self) -> bytes:
        _check_u32(self.ssrc)
        return _pack_packet(len(self.reports), PT_RR, struct.pack("!I", self.ssrc) + _pack_reports(self.reports))


# ------------------------------------------------------------------ SDES, BYE


@dataclass
class Sdes:
    """SDES, RFC 3550 §6.5: chunks of (ssrc, [(item type, value), ...]); CNAME is type 1."""

    chunks: list[tuple[int, list[tuple[int, bytes]]]] = field(default_factory=list)

    packet_type: ClassVar[int] = PT_SDES

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Sdes:
        count, packet_type, body = _unpack_packet(data)
        _expect(packet_type, PT_SDES)
        chunks = []
        offset = 0
        for _ in range(count):
            if offset + 4 > len(body):
                raise ValueError("RTCP SDES chunk is truncated")
            (ssrc,) = struct.unpack_from("!I", body, offset)
            offset += 4
            items = []
            while True:
                if offset >= len(body):
                    raise ValueError("RTCP SDES items are not terminated")
                item_type = body[offset]
                if item_type == SDES_END:
                    # §6.5: the list ends with null octets up to the next 32-bit boundary
                    offset = (offset + 4) & ~3
                    break
                if offset + 2 > len(body) or offset + 2 + body[offset + 1] > len(body):
                    raise ValueError("RTCP SDES item is truncated")
                length = body[offset + 1]
                items.append((item_type, body[offset + 2 : offset + 2 + length]))
                offset += 2 + length
            chunks.append((ssrc, items))
        if offset > len(body):
            raise ValueError("RTCP SDES chunk padding is truncated")
        return cls(chunks)

    def __bytes__(self) -> bytes:
        body = bytearray()
        for ssrc, items in self.chunks:
            _check_u32(ssrc)
            body += struct.pack("!I", ssrc)
            for item_type, value in items:
                if not 1 <= item_type <= 255 or len(value) > 255:
                    raise ValueError("SDES item type must be 1..255 and its value at most 255 octets")
                body += bytes((item_type, len(value))) + value
            body += bytes(4 - len(body) % 4)  # at least one null octet, §6.5
        return _pack_packet(len(self.chunks), PT_SDES, bytes(body))


@dataclass
class Bye:
    """BYE, RFC 3550 §6.6."""

    ssrcs: list[int] = field(default_factory=list)
    reason: bytes = b""

    packet_type: ClassVar[int] = PT_BYE

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Bye:
        count, packet_type, body = _unpack_packet(data)
        _expect(packet_type, PT_BYE)
        end = 4 * count
        if end > len(body):
            raise ValueError("RTCP BYE is truncated")
        ssrcs = list(struct.unpack_from(f"!{count}I", body))
        reason = b""
        if end < len(body):
            length = body[end]
            if end + 1 + length > len(body):
                raise ValueError("RTCP BYE reason is truncated")
            reason = body[end + 1 : end + 1 + length]
        return cls(ssrcs, reason)

    def __bytes__(self) -> bytes:
        _check_u32(*self.ssrcs)
        body = struct.pack(f"!{len(self.ssrcs)}I", *self.ssrcs)
        if self.reason:
            if len(self.reason) > 255:
                raise ValueError("BYE reason is at most 255 octets")
            body += bytes((len(self.reason),)) + self.reason
            body += bytes(-len(body) % 4)  # null octets to the boundary, §6.6
        return _pack_packet(len(self.ssrcs), PT_BYE, body)


# ------------------------------------------------------------------ feedback


def _unpack_feedback(data, packet_type: int, fmt: int) -> tuple[int, int, bytes]:
    """RFC 4585 §6.1: return (sender ssrc, media ssrc, FCI)."""
    count, actual_type, body = _unpack_packet(data)
    _expect(actual_type, packet_type)
    if count != fmt:
        raise ValueError(f"RTCP feedback FMT {count}, expected {fmt}")
    if len(body) < 8:
        raise ValueError("RTCP feedback packet is truncated")
    sender, media = _two_ssrcs.unpack_from(body)
    return sender, media, body[8:]


def _pack_feedback(packet_type: int, fmt: int, sender: int, media: int, fci: bytes) -> bytes:
    _check_u32(sender, media)
    return _pack_packet(fmt, packet_type, _two_ssrcs.pack(sender, media) + fci)


NACK_MAX_SEQS = 256  # sequence numbers one parsed NACK may ask for; the rest are ignored (counted)


@dataclass
class Nack:
    """Generic NACK, RFC 4585 §6.2.1: each FCI entry is a PID and a 16-bit bitmask (BLP)
    of the following lost packets. ``lost`` lists sequence numbers in send order
    (wrapping at 65535); building packs consecutive numbers into one entry.

    Parsing expands at most ``NACK_MAX_SEQS`` numbers (a hostile NACK of 1.2 kB asks
    for ~5,000); ``ignored`` counts the ones left out (not part of equality)."""

    sender_ssrc: int
    media_ssrc: int
    lost: list[int] = field(default_factory=list)
    ignored: int = field(default=0, compare=False)

    packet_type: ClassVar[int] = PT_RTPFB
    fmt: ClassVar[int] = FMT_NACK

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Nack:
        sender, media, fci = _unpack_feedback(data, PT_RTPFB, FMT_NACK)
        if len(fci) % 4:
            raise ValueError("RTCP NACK FCI is not a whole number of entries")
        lost: list[int] = []
        ignored = 0
        for index, (pid, blp) in enumerate(_nack_entry.iter_unpack(fci)):
            lost.append(pid)
            if blp:
                lost.extend([(pid + offset) & 0xFFFF for offset in _BLP_LOW[blp & 0xFF] + _BLP_HIGH[blp >> 8]])
            if len(lost) >= NACK_MAX_SEQS:
                ignored = len(lost) - NACK_MAX_SEQS
                del lost[NACK_MAX_SEQS:]
                rest = fci[4 * index + 4:]
                if rest:  # one per entry and one per BLP bit, without expanding them
                    mask = int.from_bytes(b"\x00\x00\xff\xff" * (len(rest) // 4), "big")
                    ignored += len(rest) // 4 + (int.from_bytes(rest, "big") & mask).bit_count()
                break
        return cls(sender, media, lost, ignored)

    def __bytes__(self) -> bytes:
        entries: list[list[int]] = []  # [pid, blp]
        for seq in self.lost:
            if not 0 <= seq <= 0xFFFF:
                raise ValueError("NACK sequence numbers must be in 0..65535")
            if entries:
                distance = (seq - entries[-1][0]) & 0xFFFF
                if distance == 0:
                    continue
                if distance <= 16:
                    entries[-1][1] |= 1 << (distance - 1)
                    continue
            entries.append([seq, 0])
        fci = b"".join(struct.pack("!HH", pid, blp) for pid, blp in entries)
        return _pack_feedback(PT_RTPFB, FMT_NACK, self.sender_ssrc, self.media_ssrc, fci)


@dataclass
class Pli:
    """Picture Loss Indication, RFC 4585 §6.3.1 (no FCI)."""

    sender_ssrc: int
    media_ssrc: int

    packet_type: ClassVar[int] = PT_PSFB
    fmt: ClassVar[int] = FMT_PLI

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Pli:
        sender, media, _fci = _unpack_feedback(data, PT_PSFB, FMT_PLI)
        return cls(sender, media)

    def __bytes__(self) -> bytes:
        return _pack_feedback(PT_PSFB, FMT_PLI, self.sender_ssrc, self.media_ssrc, b"")


@dataclass
class Fir:
    """Full Intra Request, RFC 5104 §4.3.1: entries of (ssrc, command sequence number).
    The media source SSRC of the common header is 0 (§4.3.1.2)."""

    sender_ssrc: int
    entries: list[tuple[int, int]] = field(default_factory=list)

    packet_type: ClassVar[int] = PT_PSFB
    fmt: ClassVar[int] = FMT_FIR

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Fir:
        sender, _media, fci = _unpack_feedback(data, PT_PSFB, FMT_FIR)
        if len(fci) % 8:
            raise ValueError("RTCP FIR FCI is not a whole number of entries")
        entries = [struct.unpack_from("!IB", fci, offset) for offset in range(0, len(fci), 8)]
        return cls(sender, [(ssrc, seqnr) for ssrc, seqnr in entries])

    def __bytes__(self) -> bytes:
        fci = bytearray()
        for ssrc, seqnr in self.entries:
            _check_u32(ssrc)
            if not 0 <= seqnr <= 255:
                raise ValueError("FIR command sequence number must be in 0..255")
            fci += struct.pack("!IB3x", ssrc, seqnr)
        return _pack_feedback(PT_PSFB, FMT_FIR, self.sender_ssrc, 0, bytes(fci))


@dataclass
class Remb:
    """Receiver Estimated Max Bitrate, draft-alvestrand-rmcat-remb-03 §2.2.

    FCI: 'REMB', Num SSRC (8 bits), BR Exp (6 bits), BR Mantissa (18 bits),
    SSRC feedback list. ``bitrate`` is in bits per second; it is rounded down
    to what exponent/mantissa can express when built.
    """

    sender_ssrc: int
    bitrate: int
    ssrcs: list[int] = field(default_factory=list)

    packet_type: ClassVar[int] = PT_PSFB
    fmt: ClassVar[int] = FMT_AFB

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Remb:
        sender, _media, fci = _unpack_feedback(data, PT_PSFB, FMT_AFB)
        if len(fci) < 8 or fci[:4] != b"REMB":
            raise ValueError("RTCP application feedback is not REMB")
        count = fci[4]
        exponent = fci[5] >> 2
        mantissa = ((fci[5] & 0x03) << 16) | (fci[6] << 8) | fci[7]
        if len(fci) < 8 + 4 * count:
            raise ValueError("RTCP REMB SSRC list is truncated")
        ssrcs = list(struct.unpack_from(f"!{count}I", fci, 8))
        return cls(sender, mantissa << exponent, ssrcs)

    def __bytes__(self) -> bytes:
        if self.bitrate < 0:
            raise ValueError("REMB bitrate must not be negative")
        if len(self.ssrcs) > 255:
            raise ValueError("REMB carries at most 255 SSRCs")
        _check_u32(*self.ssrcs)
        exponent = max(0, self.bitrate.bit_length() - 18)
        if exponent > 63:
            raise ValueError("REMB bitrate is too large")
        mantissa = self.bitrate >> exponent
        fci = b"REMB" + bytes(
            (len(self.ssrcs), (exponent << 2) | (mantissa >> 16), (mantissa >> 8) & 0xFF, mantissa & 0xFF)
        )
        fci += struct.pack(f"!{len(self.ssrcs)}I", *self.ssrcs)
        return _pack_feedback(PT_PSFB, FMT_AFB, self.sender_ssrc, 0, fci)


# Transport-wide congestion control feedback,
# draft-holmer-rmcat-transport-wide-cc-extensions-01 §3.1.
TWCC_NOT_RECEIVED = 0
TWCC_SMALL_DELTA = 1  # received, delta in 0..255 ticks (1 octet, unsigned)
TWCC_LARGE_DELTA = 2  # received, delta in -32768..32767 ticks (2 octets, signed)
TWCC_TICK_US = 250  # the unit of the receive deltas
TWCC_REFERENCE_TIME_MS = 64  # the unit of reference_time


def _twcc_symbol(delta: int | None) -> int:
    if delta is None:
        return TWCC_NOT_RECEIVED
    if 0 <= delta <= 0xFF:
        return TWCC_SMALL_DELTA
    if -0x8000 <= delta <= 0x7FFF:
        return TWCC_LARGE_DELTA
    raise ValueError(f"TWCC receive delta {delta} does not fit in 16 bits")


@dataclass
class TransportCC:
    """Transport-wide CC feedback (RTPFB FMT 15).

    ``packets`` is [(transport-wide sequence number, receive delta or None)],
    consecutive from ``base_sequence`` (mod 2**16). Deltas are in the wire's
    units of 250 µs ("ticks", ``TWCC_TICK_US``), each relative to the previous
    received packet (the first to ``reference_time``); None means not
    received. ``reference_time`` is the unsigned 24-bit field, in units of
    64 ms. Packet chunks (§3.1.1-3.1.4) are parsed in every form and built
    with run-length chunks for runs of 14 or more equal symbols, else 1-bit
    status vectors when all of the next 14 symbols fit, else 2-bit vectors.
    """

    sender_ssrc: int
    media_ssrc: int
    base_sequence: int
    reference_time: int
    fb_packet_count: int
    packets: list[tuple[int, int | None]] = field(default_factory=list)

    packet_type: ClassVar[int] = PT_RTPFB
    fmt: ClassVar[int] = FMT_TWCC

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> TransportCC:
        sender, media, fci = _unpack_feedback(data, PT_RTPFB, FMT_TWCC)
        if len(fci) < 8:
            raise ValueError("RTCP TWCC header is truncated")
        base, status_count, ref_and_count = struct.unpack_from("!HHI", fci)
        symbols: list[int] = []
        offset = 8
        while len(symbols) < status_count:
            if offset + 2 > len(fci):
                raise ValueError("RTCP TWCC packet chunks are truncated")
            (chunk,) = struct.unpack_from("!H", fci, offset)
            offset += 2
            remaining = status_count - len(symbols)
            if not chunk & 0x8000:  # §3.1.3 run length chunk
                symbol = (chunk >> 13) & 0x03
                run = chunk & 0x1FFF
                if run == 0 or run > remaining:
                    raise ValueError("RTCP TWCC run length is invalid")
                symbols.extend([symbol] * run)
            elif not chunk & 0x4000:  # §3.1.4 status vector, 14 one-bit symbols
                symbols.extend((chunk >> (13 - i)) & 0x01 for i in range(min(14, remaining)))
            else:  # §3.1.4 status vector, 7 two-bit symbols
                symbols.extend((chunk >> (12 - 2 * i)) & 0x03 for i in range(min(7, remaining)))
        packets: list[tuple[int, int | None]] = []
        for i, symbol in enumerate(symbols):
            seq = (base + i) & 0xFFFF
            if symbol == TWCC_NOT_RECEIVED:
                packets.append((seq, None))
            elif symbol == TWCC_SMALL_DELTA:
                if offset + 1 > len(fci):
                    raise ValueError("RTCP TWCC receive deltas are truncated")
                packets.append((seq, fci[offset]))
                offset += 1
            elif symbol == TWCC_LARGE_DELTA:
                if offset + 2 > len(fci):
                    raise ValueError("RTCP TWCC receive deltas are truncated")
                packets.append((seq, struct.unpack_from("!h", fci, offset)[0]))
                offset += 2
            else:
                raise ValueError("RTCP TWCC status symbol 3 is reserved")
        return cls(sender, media, base, ref_and_count >> 8, ref_and_count & 0xFF, packets)

    def __bytes__(self) -> bytes:
        if not 0 <= self.base_sequence <= 0xFFFF:
            raise ValueError("base_sequence must be in 0..65535")
        if not 0 <= self.reference_time <= 0xFFFFFF:
            raise ValueError("reference_time must be an unsigned 24-bit value")
        if not 0 <= self.fb_packet_count <= 0xFF:
            raise ValueError("fb_packet_count must be in 0..255")
        if len(self.packets) > 0xFFFF:
            raise ValueError("at most 65535 packet statuses fit in one TWCC packet")
        symbols = []
        deltas = bytearray()
        for i, (seq, delta) in enumerate(self.packets):
            if seq != (self.base_sequence + i) & 0xFFFF:
                raise ValueError("TWCC packets must be consecutive from base_sequence")
            symbol = _twcc_symbol(delta)
            symbols.append(symbol)
            if symbol == TWCC_SMALL_DELTA:
                deltas.append(delta)
            elif symbol == TWCC_LARGE_DELTA:
                deltas += struct.pack("!h", delta)
        chunks = bytearray()
        i, n = 0, len(symbols)
        while i < n:
            run = 1
            while i + run < n and run < 0x1FFF and symbols[i + run] == symbols[i]:
                run += 1
            if run >= 14 or i + run == n:
                chunks += struct.pack("!H", (symbols[i] << 13) | run)
                i += run
            elif max(symbols[i : i + 14]) <= 1:
                bits = 0
                for j, symbol in enumerate(symbols[i : i + 14]):
                    bits |= symbol << (13 - j)
                chunks += struct.pack("!H", 0x8000 | bits)
                i += 14
            else:
                bits = 0
                for j, symbol in enumerate(symbols[i : i + 7]):
                    bits |= symbol << (12 - 2 * j)
                chunks += struct.pack("!H", 0xC000 | bits)
                i += 7
        fci = struct.pack(
            "!HHI", self.base_sequence, n, (self.reference_time << 8) | self.fb_packet_count
        )
        fci += chunks + deltas  # padded with the P bit (RFC 3550 §6.4.1), as libwebrtc does
        return _pack_feedback(PT_RTPFB, FMT_TWCC, self.sender_ssrc, self.media_ssrc, fci)


# ------------------------------------------------------------------ unknown, compound


@dataclass
class Unknown:
    """Any other RTCP packet, kept as its body (``raw``: after the header, padding removed)."""

    packet_type: int
    fmt: int
    raw: bytes = b""

    @classmethod
    def parse(cls, data: bytes | bytearray | memoryview) -> Unknown:
        count, packet_type, body = _unpack_packet(data)
        return cls(packet_type, count, body)

    def __bytes__(self) -> bytes:
        if not 0 <= self.packet_type <= 255:
            raise ValueError("RTCP packet type must be in 0..255")
        return _pack_packet(self.fmt, self.packet_type, self.raw)


Packet = Union[
    SenderReport, ReceiverReport, Sdes, Bye, Nack, Pli, Fir, Remb, TransportCC, Unknown
]

# (packet type, count/FMT or None for any) -> parser
_PARSERS = {
    (PT_SR, None): SenderReport.parse,
    (PT_RR, None): ReceiverReport.parse,
    (PT_SDES, None): Sdes.parse,
    (PT_BYE, None): Bye.parse,
    (PT_RTPFB, FMT_NACK): Nack.parse,
    (PT_RTPFB, FMT_TWCC): TransportCC.parse,
    (PT_PSFB, FMT_PLI): Pli.parse,
    (PT_PSFB, FMT_FIR): Fir.parse,
    (PT_PSFB, FMT_AFB): None,  # REMB if the FCI says so, else Unknown
}


def _parse_one(packet: bytes) -> Packet:
    count = packet[0] & 0x1F
    packet_type = packet[1]
    parser = _PARSERS.get((packet_type, None), _PARSERS.get((packet_type, count), Unknown.parse))
    if parser is None:
        if packet[12:16] == b"REMB":
            return Remb.parse(packet)
        return Unknown.parse(packet)
    return parser(packet)


def parse_compound(data: bytes | bytearray | memoryview) -> list[Packet]:
    """Split a compound RTCP packet (RFC 3550 §6.1) by its length fields and parse each part."""
    data = bytes(data)
    packets = []
    offset = 0
    if not data:
        raise ValueError("empty RTCP packet")
    while offset < len(data):
        if offset + 4 > len(data):
            raise ValueError("RTCP header is truncated")
        length = (int.from_bytes(data[offset + 2 : offset + 4], "big") + 1) * 4
        if offset + length > len(data):
            raise ValueError("RTCP packet is truncated")
        packets.append(_parse_one(data[offset : offset + length]))
        offset += length
    return packets


def serialize(packets: list[Packet]) -> bytes:
    """A compound RTCP packet from its parts."""
    return b"".join(bytes(packet) for packet in packets)
