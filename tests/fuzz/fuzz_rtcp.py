"""Fuzz target: compound RTCP (sfu/rtcp.py ``parse_compound``, ``serialize``).

Property: ``parse_compound`` returns packets or raises ValueError (its own
error), nothing else; what it returns serializes without error, and after
one round trip (which may normalise, e.g. drop padding) serialize/parse is
stable. How the engine acts on the packets (NACK, PLI, SR, ...) is fuzzed
through the data path (fuzz_datapath.py sends them SRTCP-protected).
"""

from __future__ import annotations

import sys

from harness import fuzz_imports, run

with fuzz_imports():
    from sfu import rtcp


def one_input(data: bytes) -> None:
    try:
        packets = rtcp.parse_compound(data)
    except ValueError:
        return
    assert isinstance(packets, list) and packets
    wire = rtcp.serialize(packets)
    assert len(wire) % 4 == 0
    again = rtcp.parse_compound(wire)
    assert rtcp.parse_compound(rtcp.serialize(again)) == again, data.hex()


if __name__ == "__main__":
    run(one_input)
    sys.exit(0)
