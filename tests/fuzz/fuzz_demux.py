"""Fuzz target: the demultiplexer (sfu/demux.py ``classify``) and the engine's
entry for a datagram on the shared port (the pure-Python plane's ``feed``, then
``MediaEngine.slow_path``), from a connected peer's address and from unknown ones.

Input: one control byte (bit 0: from the connected publisher, else from an
address made of the datagram's last bytes), then the datagram, as is.

Property: ``classify`` gives one of its five kinds by the first byte as RFC
7983 §7 and RFC 5761 §4 say; the engine never raises nor logs an error, and
a datagram it cannot use is counted as a drop (``engine.drops``) when it is
not STUN/DTLS/RTP/RTCP or comes from an unknown address; the address and
transport tables stay bounded.
"""

from __future__ import annotations

import sys

from harness import fuzz_imports, run

with fuzz_imports():
    from sfu import demux
    import sfu.engine  # noqa: F401
    import sfu.transport  # noqa: F401

from engine_rig import Rig

rig = Rig("pure")
rig.connect("pub", "publish", 5000)
rig.connect("viewer", "subscribe", 5001)


def expected_kind(data: bytes) -> int:
    if not data:
        return demux.UNKNOWN
    first = data[0]
    if first <= 3:
        return demux.STUN
    if 20 <= first <= 63:
        return demux.DTLS
    if 128 <= first <= 191 and len(data) >= 2:
        return demux.RTCP if 192 <= data[1] <= 223 else demux.RTP
    return demux.UNKNOWN


def one_input(data: bytes) -> None:
    if not data:
        return
    control, datagram = data[0], data[1:]
    kind = demux.classify(datagram)
    assert kind == expected_kind(datagram), (datagram[:2].hex(), kind)
    assert demux.classify(bytearray(datagram)) == kind == demux.classify(memoryview(datagram))
    peer = rig.peers["pub"] if control & 1 and rig.alive("pub") else None
    if peer is not None:
        addr = peer.addr
    else:
        tail = (datagram[-3:] + b"\x00\x00\x00")[:3]
        addr = (f"10.{tail[0]}.{tail[1]}.{tail[2]}", 1024 + tail[0] * 251 + tail[1])
    rig.engine._fold_counters()
    drops = sum(rig.engine.drops.values())
    rig.now += 0.001
    rig.feed(datagram, addr)
    rig.take()
    rig.engine._fold_counters()
    if kind == demux.UNKNOWN or (peer is None and kind != demux.STUN):
        assert sum(rig.engine.drops.values()) > drops, (datagram[:32].hex(), rig.engine.drops)


def bounded() -> None:
    assert len(rig.engine.transports) <= 2
    assert len(rig.engine.by_addr) <= 2 + 16, len(rig.engine.by_addr)


if __name__ == "__main__":
    run(one_input, bounded=bounded)
    sys.exit(0)
