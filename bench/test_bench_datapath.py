"""Microbenchmarks of the forwarding path: Cython/C against Python, in one run.

Run: make bench, or
    .venv/bin/python -m pytest bench/test_bench_datapath.py --benchmark-enable

Groups (compare within a group; absolute times drift on shared machines):
- "protect": libsrtp protect of a 1100-byte packet, called from a C loop
  (bench.floor.protect_loop, the data path's way) vs. through pylibsrtp from Python.
- "forward 1->10": one SRTP packet in, ten rewritten and protected copies out
  (no socket: what is sent is dropped), for 200 packets per round: MediaEngine
  on the C plane and on the pure-Python reference plane.
"""

import itertools

import pytest

from bench.floor import protect_loop
from bench.loadgen import VideoSource
from sfu.srtp import KEY_LENGTHS, SrtpPair
from tests.test_datapath import Harness, rtp

PROFILE = "SRTP_AEAD_AES_128_GCM"
PACKET = VideoSource(0xBEEF, size=1100).next_packet(0)[2]
ITERATIONS = 1000


def _pair():
    n = KEY_LENGTHS[PROFILE]
    return SrtpPair(PROFILE, bytes(range(n)), bytes(range(1, n + 1)))


@pytest.mark.benchmark(group="protect")
def test_protect_cython(benchmark):
    session = _pair().tx
    errors = benchmark.pedantic(protect_loop, (session, PACKET, ITERATIONS), rounds=30, warmup_rounds=2)
    assert errors == 0


@pytest.mark.benchmark(group="protect")
def test_protect_python(benchmark):
    session = _pair().tx
    packets = [PACKET[:2] + (i & 0xFFFF).to_bytes(2, "big") + PACKET[4:] for i in range(ITERATIONS)]

    def loop():
        protect = session.protect
        for p in packets:
            protect(p)

    benchmark.pedantic(loop, rounds=30, warmup_rounds=2)


PER_ROUND = 200


@pytest.mark.parametrize("mode", ["c", "pure"])
@pytest.mark.benchmark(group="forward 1->10")
def test_forward_one_to_ten(benchmark, mode):
    h = Harness(mode, PROFILE, capture=False)
    h.join("pub", "room", "publish", 6000, audio_ssrc=1, video_ssrc=2)
    for i in range(10):
        h.join(f"v{i}", "room", "subscribe", 6001 + i)
    seqs = itertools.count(1)
    addr = h.addrs["pub"]
    client = h.clients["pub"]

    def make_round():
        packets = []
        for _ in range(PER_ROUND):
            seq = next(seqs)
            packets.append(client.protect(rtp(96, seq, seq * 3000, 2, size=1100)))
        return (packets,), {}

    feed = h.feed

    def run(packets):
        for p in packets:
            feed(p, addr)

    benchmark.pedantic(run, setup=make_round, rounds=20, warmup_rounds=1)
    assert h.engine.drops["srtp_replay"] == 0
    h.engine.tick(h.now)
    assert h.engine.stats["rtp_forwarded"] == 10 * PER_ROUND * 21
