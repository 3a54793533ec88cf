"""Fuzz target: the C data path, ``Datapath.feed(data, addr, now)``
(sfu/_fast/datapath.pyx), with the engine's slow path behind it.

A MediaEngine with ``datapath="c"`` and two peers connected for real (ICE,
DTLS, SRTP; tests/fuzz/engine_rig.py): a publisher (audio + video) and a
viewer. ``FUZZ_DATAPATH=pure`` runs the same target through the pure-Python
plane (sfu.plane_py) instead.

Input: one control byte, then the datagram.

- bits 0-1, who sends: the publisher, the viewer, an unknown address (from
  the datagram's last bytes), the publisher again;
- bits 2-3, how: 0 as is; 1 SRTP-protected with the sender's keys (the RTP
  header from the input; with bit 6 its sequence number becomes a running
  counter plus a small offset from the input, so that replay protection does
  not eat everything, and the payload type the one negotiated for the SSRC);
  2 SRTCP-protected (compound RTCP: NACK, PLI, SR, ...; the media SSRC of
  feedback mapped onto the viewer's consumers and the publisher's streams);
  3 a signed STUN Binding request with the sender's credentials, the
  attributes between USERNAME and MESSAGE-INTEGRITY from the input;
- bits 4-5: clock advance (0, 5 ms, 20 ms, 200 ms); bit 7: run the engine's
  timers (NACKs, reports, consent) after the datagram.

SSRCs are mapped onto a fixed set of 16 (the publisher's two and 14 others,
by the low 4 bits of the SSRC) so that the peers' own libsrtp sessions stay
bounded.

Property: ``feed`` never raises and the engine logs no error (its
catch-alls), hostile datagrams end in drop counters; the tables stay
bounded (transports, C peers, send queue); the bytes the SFU sends stay
within ``FUZZ_AMPLIFICATION`` (default 4) times the bytes fed to it plus a
1 MiB allowance, over the whole run (no amplification). The C code is not
instrumented: coverage comes from the Python it calls; an ASan build of the
extension (``make fuzz-asan``) catches memory errors.
"""

from __future__ import annotations

import binascii
import hmac
import os
import struct
import sys

from harness import fuzz_imports, run

with fuzz_imports():
    import sfu.engine  # noqa: F401  (the slow path: STUN, DTLS, RTCP, SSRC learning)
    import sfu.transport  # noqa: F401
    import sfu.rtp as reference
    from aioice import stun

from engine_rig import Rig
from pylibsrtp import Error as SrtpError

try:
    import atheris
except ImportError:
    atheris = None

MODE = os.environ.get("FUZZ_DATAPATH", "c")
AMPLIFICATION = float(os.environ.get("FUZZ_AMPLIFICATION", "4"))
ALLOWANCE = 1 << 20

rig = Rig(MODE)
NAMES = ("pub", "viewer", None, "pub")
STEPS = (0.0, 0.005, 0.02, 0.2)
totals = {"in": 0, "out": 0, "reconnects": 0, "malformed_sent": 0}
last_plain = [b""]  # the RTP packet protected last, before SRTP
counter = [0]


def connect_all() -> None:
    port = 5000 + 2 * totals["reconnects"]
    if not rig.alive("pub"):
        rig.connect("pub", "publish", port)
        totals["reconnects"] += 1
    if not rig.alive("viewer"):
        rig.connect("viewer", "subscribe", port + 1)
        totals["reconnects"] += 1


connect_all()
totals["reconnects"] = 0
SSRCS = rig.peers["pub"].ssrcs + tuple(0x5EED0000 + i for i in range(14))
PUBLISHED_PT = (111, 96)  # build_offer: Opus on the audio SSRC, VP8 on the video SSRC
sequence = [0] * 16  # per SSRC of SSRCS, for the counted mode


def media_ssrcs() -> tuple[int, ...]:
    """What feedback may name: the viewer's consumers (its NACK/PLI), the publisher's streams."""
    viewer = rig.engine.transports.get(rig.peers["viewer"].session)
    consumers = tuple(c.ssrc for c in viewer.consumers) if viewer is not None else ()
    return (consumers + SSRCS + (0, 0, 0, 0, 0, 0, 0, 0))[:8]


def protect_rtp(peer, data: bytes, counted: bool) -> bytes | None:
    if len(data) < 12:
        return None
    buf = bytearray(data)
    index = buf[11] & 15
    struct.pack_into("!I", buf, 8, SSRCS[index])
    if counted:  # a stream the SFU can take: version 2, the negotiated PT, a running sequence
        sequence[index] += 1
        buf[0] = 0x80 | (buf[0] & 0x3F)
        if index < 2 and not buf[1] & 0x40:
            buf[1] = (buf[1] & 0x80) | PUBLISHED_PT[index]
        struct.pack_into("!HI", buf, 2, (sequence[index] + (buf[3] & 0x1F) - 16) & 0xFFFF,
                         (sequence[index] * 3000 + buf[7]) & 0xFFFFFFFF)
    try:
        wire = peer.srtp.protect(bytes(buf))
    except (SrtpError, ValueError):
        return None
    last_plain[0] = bytes(buf)
    return wire


def protect_rtcp(peer, data: bytes) -> bytes | None:
    if len(data) < 8:
        return None
    buf = bytearray(data)
    struct.pack_into("!I", buf, 4, SSRCS[buf[7] & 15])
    if len(buf) >= 12 and buf[1] in (205, 206):  # RTPFB/PSFB: the media source it is about
        struct.pack_into("!I", buf, 8, media_ssrcs()[buf[11] & 7])
    try:
        return peer.srtp.protect_rtcp(bytes(buf))
    except (SrtpError, ValueError):
        return None


def signed_check(peer, data: bytes) -> bytes:
    """A Binding request to the peer's transport, signed with its password (RFC 8489 §14.5)."""
    transport = rig.engine.transports[peer.session]
    username = f"{transport.local_ufrag}:{peer.ufrag}".encode()
    attrs = struct.pack("!HH", 0x0006, len(username)) + username + bytes(-len(username) % 4)
    body = data[12:]
    attrs += body[: len(body) & ~3]
    transaction = (data[:12] + bytes(12))[:12]
    header = struct.pack("!HHI", 0x0001, len(attrs) + 24, stun.COOKIE) + transaction
    mac = hmac.digest(transport.local_pwd.encode(), header + attrs, "sha1")
    message = header[:2] + struct.pack("!H", len(attrs) + 32) + header[4:] + attrs \
        + struct.pack("!HH", 0x0008, 20) + mac
    return message + struct.pack("!HHI", 0x8028, 4, binascii.crc32(message) ^ 0x5354554E)


def _observer():
    """The C code gives libFuzzer no coverage: what it did (its counters, and the engine's)
    becomes Python branches here, one per counter and magnitude, so that inputs which make
    it forward, retransmit, or drop for a new reason are kept in the corpus."""
    names = sorted(set(getattr(sys.modules.get("sfu._fast.datapath"), "STAT_NAMES", ()))
                   | set(getattr(sys.modules.get("sfu._fast.datapath"), "DROP_NAMES", ()))
                   | {"rtcp_nack_sent", "rtcp_pli_sent", "nacks_received", "plis_received", "firs_received",
                      "keyframe_requests_sent", "ice_verification_requests_sent", "ice_address_changes",
                      "nack_overflow", "unknown_ufrag", "stun_error_ratelimited"})
    source = "def observe(delta):\n    get = delta.get\n" + "".join(
        f"    if get({name!r}, 0):\n        if get({name!r}) > 4:\n            pass\n" for name in names)
    scope: dict = {}
    exec(compile(source, "<datapath counters>", "exec"), scope)
    observe = scope["observe"]
    if atheris is not None:
        observe = atheris.instrument_func(observe)
    return observe


observe = _observer()
last_counts: dict = {}


def counter_delta() -> dict:
    engine = rig.engine
    engine._fold_counters()  # what the plane counted
    now = dict(engine.stats)
    now.update(engine.drops)
    delta = {k: v - last_counts.get(k, 0) for k, v in now.items() if v != last_counts.get(k, 0)}
    last_counts.clear()
    last_counts.update(now)
    return delta


def malformed_extension(plain: bytes) -> bool:
    try:
        for ext_id in range(1, 15):
            reference.get_extension(plain, ext_id)
    except ValueError:
        return True
    return False


def one_input(data: bytes) -> None:
    if not data:
        return
    control, datagram = data[0], data[1:]
    name = NAMES[control & 3]
    peer = rig.peers[name] if name is not None else None
    if peer is None:
        tail = (datagram[-3:] + b"\x00\x00\x00")[:3]
        addr = (f"10.{tail[0]}.{tail[1]}.{tail[2]}", 1024 + tail[0] * 251 + tail[1])
        peer = rig.peers["pub"]  # keys to protect with, sent from an address nobody has
    else:
        addr = peer.addr
    how = (control >> 2) & 3
    wire = None
    last_plain[0] = b""
    if how == 1:
        wire = protect_rtp(peer, datagram, bool(control & 0x40))
    elif how == 2:
        wire = protect_rtcp(peer, datagram)
    elif how == 3:
        wire = signed_check(peer, datagram)
    if wire is None:
        wire = datagram
    if how == 1 and last_plain[0] and malformed_extension(last_plain[0]):
        totals["malformed_sent"] += 1
    rig.now += STEPS[(control >> 4) & 3]
    rig.feed(wire, addr)
    if control & 0x80:
        rig.engine.tick(rig.now)
    sent = rig.take()
    delta = counter_delta()
    observe(delta)
    if delta.get("internal_error"):  # the C path's name for what raises on the Python path
        raise AssertionError(f"internal_error counted for input {data[:200].hex()}")
    totals["in"] += len(wire)
    totals["out"] += sum(len(d) for d, _ in sent)
    if totals["out"] > AMPLIFICATION * totals["in"] + ALLOWANCE:
        raise AssertionError(f"amplification: {totals['out']} bytes sent for {totals['in']} bytes received "
                             f"(last input: {data[:200].hex()})")
    if not (rig.alive("pub") and rig.alive("viewer")):
        connect_all()  # a peer may be closed by what it sent (e.g. consent, BYE): start over


def bounded() -> None:
    engine = rig.engine
    assert len(engine.transports) <= 2, len(engine.transports)
    assert len(engine.by_addr) <= 2 + 16, len(engine.by_addr)  # ICE may hold a candidate address
    if engine.plane.name == "c":
        assert engine.plane.datapath.peers <= 2, engine.plane.datapath.peers
        assert engine.plane.datapath.queued == 0, engine.plane.datapath.queued
    assert totals["reconnects"] <= 1000, totals


if __name__ == "__main__":
    run(one_input, bounded=bounded)
    sys.exit(0)
