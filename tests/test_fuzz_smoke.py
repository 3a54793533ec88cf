"""A short run of every fuzz target (tests/fuzz/fuzz_*.py), and the findings of
longer runs (``make fuzz``) kept as regression tests.

Each target runs in a subprocess for a few seconds over its seed corpus
(tests/fuzz/corpus/<target>), coverage-guided with atheris when it is
installed (the ``test`` extra), else with the plain mutation loop of
tests/fuzz/harness.py: a crash, an unexpected exception, an error logged by
the sfu or growth fails the test with the fuzzer's output instead of taking
pytest down. New inputs go to a temporary directory, not to the seeds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

FUZZ = Path(__file__).resolve().parent / "fuzz"
ROOT = FUZZ.parents[1]
TARGETS = ["stun", "dtls", "rtp", "rtcp", "sdp", "demux", "signaling", "datapath"]
SECONDS = float(os.environ.get("FUZZ_SMOKE_SECONDS", "4"))
RUNS = {"sdp": 3000, "signaling": 3000}  # slower per input: a bounded count too


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_smoke(target, tmp_path):
    assert (FUZZ / "corpus" / target).is_dir(), f"no seed corpus for {target}"
    new = tmp_path / "new"
    new.mkdir()
    env = dict(os.environ, FUZZ_CHECK_EVERY="500", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, str(FUZZ / f"fuzz_{target}.py"), f"-max_total_time={SECONDS:g}",
           f"-runs={RUNS.get(target, 200000)}", "-max_len=8192", "-rss_limit_mb=1024", "-timeout=20",
           f"-artifact_prefix={tmp_path}/", "-print_final_stats=1", str(new), str(FUZZ / "corpus" / target)]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=50)
    output = (result.stdout + result.stderr)[-6000:]
    assert result.returncode == 0, f"fuzz_{target} failed (exit {result.returncode}):\n{output}"
    assert "Traceback" not in result.stderr, output
    crashes = [p.name for p in tmp_path.iterdir() if p.name.startswith(("crash-", "leak-", "oom-", "timeout-"))]
    assert not crashes, f"fuzz_{target} wrote {crashes}:\n{output}"


# -- findings, kept --------------------------------------------------------------------------


@pytest.mark.parametrize("line", [
    "a=ssrc-group:",  # split() of nothing: a bare ValueError
    "a=ssrc-group:FID 1 \u00b2",  # "²".isdigit() is True, int("²") raises
    "a=fmtp:\u00b2 x=1",
    "a=ssrc:\u00b2 cname:x",
    "a=rtcp-fb:\u00b3 nack",
])
def test_sdp_odd_lines_are_sdp_errors(line):
    from sfu import sdp

    offer = (ROOT / "tests" / "fixtures" / "sdp" / "chromium_publish.sdp").read_text()
    with pytest.raises(sdp.SdpError):
        sdp.parse_sdp(offer + line + "\r\n")


@pytest.mark.parametrize("mode", ["pure", "c"])
def test_oversized_srtp_from_a_peer_is_a_drop(mode):
    """An SRTP or SRTCP datagram longer than pylibsrtp's 1500-byte buffer, from a connected
    peer: a "too_long" drop on both paths, not an internal error with a traceback."""
    sys.path.insert(0, str(FUZZ))
    try:
        from engine_rig import Rig
    finally:
        sys.path.remove(str(FUZZ))
    rig = Rig(mode)
    pub = rig.connect("pub", "publish", 5000)
    rig.feed(bytes([0x80, 0x60]) + bytes(2046), pub.addr)  # RTP
    rig.feed(bytes([0x80, 0xC9]) + bytes(1998), pub.addr)  # RTCP (always the slow path)
    rig.engine._fold_counters()
    drops = rig.engine.drops
    assert drops["internal_error"] == 0, drops
    assert drops["too_long"] == 2, drops


def test_closed_sessions_leave_the_timer_heap():
    """Sessions created, ticked once and closed (WHIP POST then DELETE): the engine's timer
    heap must not keep them -- with their DTLS and SRTP state -- until their consent
    deadline (found by fuzz_sdp/fuzz_signaling: ~45 kB per session held for 30 s)."""
    import gc
    import weakref

    from sfu.config import Config
    from sfu.engine import MediaEngine
    from tests.sdp_offers import OfferPeer

    now = [1000.0]
    engine = MediaEngine(Config(datapath="pure"))
    engine._loop = SimpleNamespace(time=lambda: now[0])
    refs = []
    for _ in range(1000):
        info = engine.create_session("r", "publish", OfferPeer().offer([("0", "audio", "sendonly")]))
        refs.append(weakref.ref(engine.transports[info.id]))
        now[0] += 0.005
        engine.tick(now[0])
        engine.close_session(info.id)
        now[0] += 0.005
        engine.tick(now[0])
    gc.collect()
    assert len(engine._timers) <= 2 * len(engine.transports) + 64 + 1
    assert sum(ref() is not None for ref in refs) <= 65


async def test_json_nested_too_deep_is_bad_request_not_an_error(tmp_path):
    """``[[[[...`` deeper than the JSON decoder recurses: json.loads raises RecursionError,
    which is no ValueError. The WebSocket answers bad_request and stays open; the REST API
    answers 400."""
    import aiohttp

    from sfu.auth import Grants, mint_token
    from sfu.config import Config
    from sfu.server import Server

    secret = "fuzz-smoke-secret"
    server = Server(Config(http_port=0, rtc_port=0, data_dir=str(tmp_path / "data"), auth_secret=secret))
    await server.start()
    deep = "[" * 20000 + "]" * 20000
    try:
        token = mint_token(secret, "alice", "Alice", "r1", Grants(subscribe=True), ttl=600.0)
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url + "/ws", params={"token": token}) as ws:
                await ws.send_str(deep)
                answer = await asyncio.wait_for(ws.receive_json(), 5.0)
                assert answer["code"] == "bad_request", answer
                await ws.send_json({"id": 1, "type": "ping"})
                pong = await asyncio.wait_for(ws.receive_json(), 5.0)
                assert pong["ok"] and pong["pong"], pong
            admin = mint_token(secret, "root", "Root", None, Grants(admin=True), ttl=600.0)
            async with http.post(server.url + "/api/meetings", data=deep,
                                 headers={"Authorization": f"Bearer {admin}",
                                          "Content-Type": "application/json"}) as response:
                assert response.status == 400, (response.status, await response.text())
    finally:
        await server.stop()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode, kind", [
    ("pure", "rtp"), ("pure", "rtcp"), ("c", "rtcp"),
    ("c", "rtp"),
])
def test_made_up_ssrcs_cost_no_memory(mode, kind):
    """A connected viewer (any subscribe token) sends authenticated SRTP/SRTCP, each packet
    from another SSRC: libsrtp kept a stream (~370 bytes) per SSRC, 22 MB per 60,000
    packets, without bound (found with fuzz_datapath's rig). Measured in a fresh process."""
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; from engine_rig import made_up_ssrcs; "
            "print(made_up_ssrcs(sys.argv[3], sys.argv[4]))")
    result = subprocess.run([sys.executable, "-c", code, str(FUZZ), str(ROOT), mode, kind], cwd=ROOT,
                            capture_output=True, text=True, timeout=50)
    assert result.returncode == 0, result.stderr[-3000:]
    grown = float(result.stdout.split()[-1])
    assert grown < 8, f"RSS grew by {grown:.0f} MiB for 60,000 made-up SSRCs"


@pytest.mark.parametrize("mode", [
    "pure",
    "c",
])
def test_malformed_extension_element_is_a_malformed_drop(mode):
    """A publisher's RTP packet whose header extension block fits the packet but whose
    element overruns the block (found by fuzz_datapath): the Python path logged a
    traceback per packet (engine catch-all), the C path counts internal_error."""
    import struct

    sys.path.insert(0, str(FUZZ))
    try:
        from engine_rig import Rig
    finally:
        sys.path.remove(str(FUZZ))
    from sfu import rtcp

    rig = Rig(mode)
    pub = rig.connect("pub", "publish", 5000)
    viewer = rig.connect("viewer", "subscribe", 5001)
    video = pub.ssrcs[1]
    # a VP8 keyframe (RFC 7741 §4.2 descriptor S=1 PID=0, then P=0): opens the viewer's keyframe gate
    good = struct.pack("!BBHII", 0x80, 96, 1, 3000, video) + b"\x10\x00" + bytes(98)
    bad = struct.pack("!BBHII", 0x90, 96, 2, 6000, video) + bytes.fromhex("bede0001" "9016" "37ff") + bytes(100)
    rig.feed(pub.srtp.protect(good), pub.addr)
    rig.feed(pub.srtp.protect(bad), pub.addr)
    rig.take()
    rig.engine._fold_counters()
    assert rig.engine.stats["rtp_forwarded"] == 1, dict(rig.engine.stats)
    # the viewer asks for it again: the cached packet is just as malformed
    consumer = next(c for c in rig.engine.transports[viewer.session].consumers if c.kind == "video")
    lost = (2 + consumer.stats().seq_delta) & 0xFFFF
    rig.now += 0.5
    rig.feed(viewer.srtp.protect_rtcp(rtcp.serialize([rtcp.Nack(1, consumer.ssrc, [lost])])), viewer.addr)
    rig.tick(0.02)
    rig.take()
    rig.engine._fold_counters()
    drops = rig.engine.drops
    assert drops["internal_error"] == 0, dict(drops)
    assert drops["malformed"] >= 1, dict(drops)
    if mode == "pure":  # once in forward, once in retransmit
        assert drops["malformed"] == 2, dict(drops)
