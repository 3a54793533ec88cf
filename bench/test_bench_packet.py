"""Microbenchmarks of the RTP hot path: Cython (sfu._fast.packet) vs the Python reference (sfu.rtp).

Run: .venv/bin/python -m pytest bench/test_bench_packet.py --benchmark-enable
Compare within one run (groups "parse" and "rewrite"): absolute times drift
on shared machines, the ratio does not.
"""

import pytest

import sfu._fast.packet as fast
import sfu.rtp as reference

# A 1200-byte video packet with a one-byte extension block (RFC 8285 §4.2)
# holding abs-send-time (id 3, 3 bytes), transport-wide seq (id 5, 2 bytes)
# and mid (id 9, 1 byte) — what a browser typically sends.
EXTENSION = bytes.fromhex("bede0003" "32aabbcc" "510102" "9030" "0000")
HEADER = bytes.fromhex("90e01234" "01020304" "deadbeef")
PACKET = HEADER + EXTENSION + bytes(range(256)) * 4 + bytes(1200 - len(HEADER) - len(EXTENSION) - 1024)
assert len(PACKET) == 1200

PT_MAP = {96: 100, 97: 101}
EXT_MAP = {3: 2, 5: 4}  # keep abs-send-time and twcc, drop mid

IMPLEMENTATIONS = pytest.mark.parametrize("impl", [fast, reference], ids=["cython", "python"])


def run(benchmark, func, *args):
    """Many calls per round, so the timer's own cost does not swamp sub-microsecond calls."""
    return benchmark.pedantic(func, args, iterations=2000, rounds=50, warmup_rounds=2)


@IMPLEMENTATIONS
@pytest.mark.benchmark(group="parse_rtp_header")
def test_parse_rtp_header(benchmark, impl):
    result = run(benchmark, impl.parse_rtp_header, PACKET)
    assert result[:3] == (96, True, 0x1234)


@IMPLEMENTATIONS
@pytest.mark.benchmark(group="rewrite")
def test_rewrite(benchmark, impl):
    rewriter = impl.Rewriter(0x01020304, PT_MAP, EXT_MAP)
    rewriter.seq_delta = 1000
    dst = bytearray(1500)
    n = run(benchmark, rewriter.rewrite, PACKET, dst)
    assert n == 1200 - 4
    assert impl.get_extension(dst[:n], 4) == b"\x01\x02"
