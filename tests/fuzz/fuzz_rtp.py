"""Fuzz target: RTP header parsing and the per-subscriber rewrite, in Python
(sfu/rtp.py) and in Cython (sfu/_fast/packet.pyx), differentially.

Input: 12 bytes of rewrite settings (two payload-type mappings, two
extension-id mappings, sequence and timestamp deltas), then the packet.

Property: both implementations give the same result -- the same header
tuple, extension data, rewritten bytes and length -- or both raise
ValueError (their own error); the rewrite never writes past the packet's
length, also in place (src is dst); nothing else is raised. The Cython code
runs with bounds checks off: an ASan build (``make fuzz-asan``) turns an
out-of-bounds access into a crash.
"""

from __future__ import annotations

import struct
import sys

from harness import fuzz_imports, run

with fuzz_imports():
    import sfu.rtp as reference

import sfu._fast.packet as fast  # compiled: its coverage is not seen, its results are compared

SETTINGS = 12


def outcome(fn, *args):
    try:
        return fn(*args)
    except ValueError:
        return ValueError


def rewriters(settings: bytes):
    pt_map = {settings[0] & 0x7F: settings[1] & 0x7F, settings[2] & 0x7F: settings[3] & 0x7F}
    ext_map = {settings[4] % 255 + 1: settings[5], settings[6] % 255 + 1: settings[7]}
    seq_delta, ts_delta = struct.unpack_from("!HH", settings, 8)
    out = []
    for impl in (reference, fast):
        rewriter = impl.Rewriter(0x01020304, pt_map, ext_map)
        rewriter.seq_delta = seq_delta - 0x8000
        rewriter.ts_delta = ts_delta * 0x10001
        out.append(rewriter)
    return out, ext_map


def one_input(data: bytes) -> None:
    if len(data) < SETTINGS:
        return
    settings, packet = data[:SETTINGS], data[SETTINGS:]
    header = outcome(reference.parse_rtp_header, packet)
    assert outcome(fast.parse_rtp_header, packet) == header, (packet.hex(), header)
    (slow, quick), ext_map = rewriters(settings)
    for ext_id in list(ext_map) + [1, 14, 15, 255]:
        expected = outcome(reference.get_extension, packet, ext_id)
        assert outcome(fast.get_extension, packet, ext_id) == expected, (packet.hex(), ext_id)

    guard = b"\xa5" * 16
    results = []
    for rewriter in (slow, quick):
        dst = bytearray(len(packet)) + bytearray(guard)
        n = outcome(rewriter.rewrite, packet, memoryview(dst)[: len(packet)])
        assert dst[len(packet):] == guard, "rewrite wrote past the end of dst"
        in_place = bytearray(packet)
        m = outcome(rewriter.rewrite, in_place, in_place)
        short = outcome(rewriter.rewrite, packet, bytearray(max(0, len(packet) - 1)))
        if n is not ValueError and n >= 0:
            assert 0 < n <= len(packet), n
            results.append((n, bytes(dst[:n]), m, bytes(in_place[:m]) if m is not ValueError and m >= 0 else m,
                            short))
        else:
            results.append((n, m, short))
    assert results[0] == results[1], (packet.hex(), settings.hex(), results)


if __name__ == "__main__":
    run(one_input)
    sys.exit(0)
