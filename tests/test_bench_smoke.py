"""The load generator (bench/loadgen.py) piece by piece against the SFU's own
sans-I/O modules, and a smoke run of the fan-out benchmark (bench/fanout.py)
against a real `sfu serve` process."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from bench import fanout
from bench.loadgen import (
    MAGIC,
    TRAILER,
    Connected,
    Failed,
    Handshake,
    ReceiveStats,
    VideoSource,
    build_offer,
    parse_answer,
    parse_feedback,
)
from sfu.dtls import Certificate, DtlsEndpoint, HandshakeComplete
from sfu.ice import IceLite
from sfu.sdp import parse_sdp, validate_offer
from sfu.srtp import SrtpPair

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def certs():
    return Certificate.generate(), Certificate.generate()


# -- SDP --------------------------------------------------------------------


@pytest.mark.parametrize("role,direction", [("publish", "sendonly"), ("subscribe", "recvonly")])
def test_offer_is_accepted_by_the_sfu_sdp_module(certs, role, direction):
    client, _ = certs
    text = build_offer(role, "cufr", "p" * 24, client.fingerprint(), audio_ssrc=11, video_ssrc=22)
    offer = parse_sdp(text)
    validate_offer(offer, role)
    assert offer.bundle == ["0", "1"]
    audio, video = offer.media
    assert (audio.kind, video.kind) == ("audio", "video")
    for m in offer.media:
        assert m.direction == direction and m.rtcp_mux and m.setup == "actpass"
        assert m.ice_ufrag == "cufr" and m.fingerprints == [("sha-256", client.fingerprint())]
    assert [c.name for c in audio.codecs] == ["opus"] and audio.codecs[0].payload_type == 111
    vp8 = video.codecs[0]
    assert (vp8.name, vp8.payload_type) == ("VP8", 96)
    assert {"nack", "nack pli", "ccm fir"} <= set(vp8.rtcp_fb)
    if role == "publish":
        assert (audio.ssrcs, video.ssrcs) == ([11], [22])
    else:
        assert audio.ssrcs == video.ssrcs == []


def test_offer_rejects_unknown_role(certs):
    with pytest.raises(ValueError):
        build_offer("sendrecv", "u", "p" * 24, certs[0].fingerprint())


ANSWER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=ice-lite\r\na=group:BUNDLE 0 1\r\n"
    "m=audio 40000 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 127.0.0.1\r\na=mid:0\r\na=sendonly\r\n"
    "a=ice-ufrag:sfuu\r\na=ice-pwd:0123456789abcdef0123456789abcdef\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:passive\r\na=rtcp-mux\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=ssrc:777 cname:sfu\r\n"
    "a=candidate:1 1 udp 2130706431 127.0.0.1 40000 typ host\r\na=end-of-candidates\r\n"
    "m=video 40000 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 127.0.0.1\r\na=mid:1\r\na=sendonly\r\n"
    "a=ice-ufrag:sfuu\r\na=ice-pwd:0123456789abcdef0123456789abcdef\r\n"
    "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\na=setup:passive\r\na=rtcp-mux\r\n"
    "a=rtpmap:96 VP8/90000\r\na=ssrc:888 cname:sfu\r\n"
)


def test_parse_answer():
    answer = parse_answer(ANSWER)
    assert (answer.ice_ufrag, answer.ice_pwd) == ("sfuu", "0123456789abcdef0123456789abcdef")
    assert answer.fingerprints == [("sha-256", ":".join(["AB"] * 32))]
    assert answer.setup == "passive"
    assert answer.address == ("127.0.0.1", 40000)
    assert answer.ssrcs == {"audio": [777], "video": [888]}


def test_parse_answer_without_candidate_or_credentials():
    no_candidate = "".join(line + "\r\n" for line in ANSWER.split("\r\n") if line and "candidate" not in line)
    with pytest.raises(ValueError):
        parse_answer(no_candidate)
    with pytest.raises(ValueError):  # SdpError is a ValueError
        parse_answer("not sdp")


# -- ICE + DTLS handshake in memory ---------------------------------------------


class Pair:
    """Our client Handshake against the SFU's IceLite + DtlsEndpoint (server)."""

    ADDR = ("127.0.0.1", 50000)

    def __init__(self, certs, *, client_pwd_for_server="0123456789abcdef0123456789abcdef"):
        client_cert, server_cert = certs
        self.ice = IceLite("sfuu", "0123456789abcdef0123456789abcdef", "cliu")
        self.server = DtlsEndpoint(server_cert, "server", [("sha-256", client_cert.fingerprint())])
        self.client = Handshake(client_cert, "cliu", "c" * 24, "sfuu", client_pwd_for_server,
                                [("sha-256", server_cert.fingerprint())], timeout=5.0)
        self.now = 0.0
        self.drop_next_stun = 0
        self.stun_requests: list[bytes] = []

    def pump(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            moved = False
            for datagram in self.client.datagrams_to_send():
                moved = True
                if datagram[0] < 4:
                    self.stun_requests.append(datagram)
                    if self.drop_next_stun:
                        self.drop_next_stun -= 1
                        continue
                    reply = self.ice.receive(datagram, self.ADDR, self.now)
                    if self.server.state == "new" and self.ice.selected_address is not None:
                        self.server.start(self.now)
                    if reply is not None:
                        self.client.receive(reply, self.now)
                else:
                    self.server.receive(datagram, self.now)
            for datagram in self.server.datagrams_to_send():
                moved = True
                self.client.receive(datagram, self.now)
            if not moved:
                return

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.client.handle_timer(self.now)
        self.pump()


def test_handshake_completes_against_sfu_ice_and_dtls(certs):
    pair = Pair(certs)
    pair.client.start(pair.now)
    pair.pump()
    event = pair.client.next_event()
    assert isinstance(event, Connected)
    assert pair.client.state == "connected"
    server_event = pair.server.next_event()
    assert isinstance(server_event, HandshakeComplete)
    # RFC 5764 §4.2: each side's sending key is the other's receiving key
    assert event.local_key == server_event.remote_key
    assert event.remote_key == server_event.local_key
    assert event.srtp_profile == "SRTP_AEAD_AES_128_GCM"  # preferred by both
    assert pair.ice.selected_address == Pair.ADDR


def test_handshake_retransmits_a_lost_check(certs):
    pair = Pair(certs)
    pair.drop_next_stun = 2
    pair.client.start(pair.now)
    pair.pump()
    assert pair.client.state == "checking"
    deadline = pair.client.get_timer()
    assert deadline == pytest.approx(0.05)
    pair.advance(0.05)
    assert pair.client.state == "checking"
    pair.advance(0.05)
    assert isinstance(pair.client.next_event(), Connected)
    assert pair.client.checks_sent == 3
    # every check is a distinct transaction (RFC 8489 §6.2.1)
    assert len({r[8:20] for r in pair.stun_requests}) == 3


def test_handshake_sends_consent_checks_once_connected(certs):
    pair = Pair(certs)
    pair.client.start(pair.now)
    pair.pump()
    assert isinstance(pair.client.next_event(), Connected)
    sent = pair.client.checks_sent
    deadline = pair.client.get_timer()
    assert 4.0 <= deadline - pair.now <= 6.0  # RFC 7675 §5.1: 5 s +- 20%
    pair.advance(deadline - pair.now)
    assert pair.client.checks_sent == sent + 1
    assert pair.ice.last_consent == pytest.approx(pair.now)
    assert pair.client.consent_failures == 0


def test_handshake_fails_on_wrong_ice_password(certs):
    pair = Pair(certs, client_pwd_for_server="wrong-password-wrong-password")
    pair.client.start(pair.now)
    pair.pump()
    event = pair.client.next_event()
    assert isinstance(event, Failed) and "401" in event.reason
    assert pair.client.get_timer() is None


def test_handshake_times_out_without_answers(certs):
    pair = Pair(certs)
    pair.drop_next_stun = 10**6
    pair.client.start(pair.now)
    pair.pump()
    for _ in range(200):
        deadline = pair.client.get_timer()
        if deadline is None:
            break
        pair.advance(deadline - pair.now)
    event = pair.client.next_event()
    assert isinstance(event, Failed) and "timed out" in event.reason
    assert pair.now == pytest.approx(5.0)


def test_srtp_from_the_handshake_carries_media_both_ways(certs):
    pair = Pair(certs)
    pair.client.start(pair.now)
    pair.pump()
    ours = pair.client.next_event()
    theirs = pair.server.next_event()
    client = SrtpPair(ours.srtp_profile, ours.local_key, ours.remote_key)
    server = SrtpPair(theirs.srtp_profile, theirs.local_key, theirs.remote_key)
    packet = VideoSource(0x1234).next_packet(42)[2]
    assert server.unprotect(client.protect(packet)) == packet
    assert client.unprotect(server.protect(packet)) == packet


# -- media --------------------------------------------------------------------


def test_video_source_frames_keyframes_and_trailer():
    src = VideoSource(0xCAFE, size=200, fps=25, rate=100.0, keyframe_interval=1.0)
    assert src.packets_per_frame == 4
    packets = [src.next_packet(1000 + i) for i in range(200)]
    seq0 = packets[0][0]
    for i, (seq, counter, data) in enumerate(packets):
        assert len(data) == 200
        assert data[0] == 0x80  # RFC 3550 §5.1: V=2, no padding/extension/CSRC
        assert data[1] & 0x7F == 96
        assert struct.unpack_from("!I", data, 8)[0] == 0xCAFE
        assert seq == (seq0 + i) & 0xFFFF == struct.unpack_from("!H", data, 2)[0]
        assert counter == i
        assert TRAILER.unpack_from(data, 200 - TRAILER.size) == (MAGIC, i, 1000 + i)
        first, last = i % 4 == 0, i % 4 == 3
        assert bool(data[1] & 0x80) == last  # marker at the end of a frame (RFC 7741 §4.1)
        assert data[12] == (0x90 if first else 0x80)  # X=1, S at the start of a frame
        assert data[13] & 0x80 and data[14] & 0x80  # I=1, M=1: 15-bit PictureID
    # one timestamp per frame, 90 kHz / 25 fps apart
    ts = [struct.unpack_from("!I", d, 4)[0] for _, _, d in packets]
    assert ts[0] == ts[3] and (ts[4] - ts[0]) & 0xFFFFFFFF == 3600
    # RFC 6386 §9.1: P=0 in the frame tag means a key frame; every 25 frames
    keys = [i // 4 for i, (_, _, d) in enumerate(packets) if i % 4 == 0 and d[16] & 1 == 0]
    assert keys == [0, 25]
    assert packets[0][2][19:22] == b"\x9d\x01\x2a"


def test_video_source_keyframe_on_request():
    src = VideoSource(1, size=100, fps=30, rate=30.0, keyframe_interval=100.0)
    assert src.next_packet(0)[2][16] & 1 == 0  # the first frame is a key frame
    assert src.next_packet(0)[2][16] & 1 == 1
    src.request_keyframe()
    assert src.next_packet(0)[2][16] & 1 == 0
    assert src.keyframes == 2


def test_video_source_rejects_tiny_packets():
    with pytest.raises(ValueError):
        VideoSource(1, size=30)


def test_receive_stats_loss_duplicates_latency():
    src = VideoSource(5, size=100)
    packets = [src.next_packet(1_000_000 + i * 1000)[2] for i in range(10)]
    stats = ReceiveStats()
    from array import array
    stats.latencies_us = array("d")
    for i in (0, 1, 2, 4, 5, 5, 7, 8, 9):  # 3 and 6 lost, 5 twice
        stats.on_rtp(packets[i], 2_000_000 + i * 1000)
    stats.on_rtp(b"\x80\x60" + bytes(30), 0)  # not ours
    assert stats.packets == 9 and stats.duplicates == 1 and stats.foreign == 1
    assert stats.received_between(0, 10) == 8
    assert stats.received_between(3, 7) == 2
    assert stats.received_between(10, 2000) == 0
    assert list(stats.latencies_us) == [1000.0] * 8
    stats.on_rtp(b"\x80", 0)  # shorter than the trailer
    assert stats.foreign == 2


# RFC 4585 §6.1 common feedback header, §6.2.1 Generic NACK, §6.3.1 PLI;
# RFC 5104 §4.3.1 FIR; preceded by a receiver report (RFC 3550 §6.4.2).
RR = bytes.fromhex("81c90007" "00000001" "00000002" "00000000" "00000000" "00000000" "00000000" "00000000")
PLI = bytes.fromhex("81ce0002" "00000001" "0000abcd")
NACK = bytes.fromhex("81cd0003" "00000001" "0000abcd" "00640005")  # 100, +1 and +3
FIR = bytes.fromhex("84ce0004" "00000001" "00000000" "0000abcd" "07000000")
REMB = bytes.fromhex("8fce0005" "00000001" "00000000" "52454d42" "01123456" "0000abcd")


def test_parse_feedback():
    assert parse_feedback(RR + PLI + NACK + FIR + REMB) == [
        ("pli", 0xABCD, []),
        ("nack", 0xABCD, [100, 101, 103]),
        ("fir", 0xABCD, []),
    ]
    assert parse_feedback(b"") == []


@pytest.mark.parametrize("bad", [PLI[:-1], NACK[:6], b"\x01" + PLI[1:], PLI + b"\x00"])
def test_parse_feedback_truncated_or_invalid(bad):
    with pytest.raises(ValueError):
        parse_feedback(bad)


# -- fanout helpers ------------------------------------------------------------


def test_percentile_and_marginal_fit():
    assert fanout.percentile([], 50) is None
    assert fanout.percentile([3, 1, 2], 50) == 2
    assert fanout.percentile(list(range(1, 101)), 99) == 99
    runs = [
        {"viewers": 1, "forwarded_per_second": 100.0, "sfu_cpu_percent": 5.0},
        {"viewers": 10, "forwarded_per_second": 1000.0, "sfu_cpu_percent": 14.0},
        {"viewers": 2, "error": "boom"},
    ]
    fit = fanout.marginal_fit(runs)
    assert fit["us_per_forwarded"] == pytest.approx(100.0)
    assert fit["fixed_cpu_percent"] == pytest.approx(4.0)
    assert fanout.marginal_fit(runs[:1]) is None


def test_proc_cpu_of_this_process():
    assert fanout.proc_cpu_ticks(os.getpid()) >= 0
    assert fanout.proc_cpu_ns(os.getpid()) > 0
    assert fanout.proc_rss_kib(os.getpid()) > 0


# -- smoke run against the real SFU ----------------------------------------------


@pytest.mark.timeout(120)
def test_fanout_smoke(netns, tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.fanout", "--viewers", "2", "--seconds", "3", "--rate", "50",
         "--idle-seconds", "0.5", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=100,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr + (out / "sfu.log").read_text()
    result = json.loads((out / "fanout.json").read_text())
    assert (out / "fanout.md").read_text().startswith("# Fan-out")
    (run,) = result["runs"]
    assert set(fanout.RESULT_KEYS) <= set(run), set(fanout.RESULT_KEYS) - set(run)
    assert run["viewers"] == 2
    assert run["packets_sent"] > 100
    assert run["viewer_packets"] > 0
    assert run["loss"] == 0
    assert run["rtp_forwarded"] >= run["viewer_packets"]
    assert run["sfu_cpu_us_per_forwarded"] > 0
    assert run["latency_ms_p50"] is not None and run["latency_ms_p50"] < run["latency_ms_max"] + 1e-9


# -- the load sweep (bench/sweep.py, bench/report.py) --------------------------------


@pytest.mark.timeout(150)
def test_sweep_smoke_report_and_no_loss(netns, tmp_path):
    """A tiny sweep on both data paths: the report (markdown, JSON, plots) is written,
    nothing is lost at this load, and the floor ran in the same run."""
    out = tmp_path / "sweep"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.sweep", "--scenario", "webinar", "--rooms", "1", "--viewers", "3",
         "--rates", "50,100", "--seconds", "1.5", "--warmup", "0.5", "--datapath", "c,pure",
         "--quiet", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=140,
    )
    logs = "".join(p.read_text() for p in out.glob("sfu-*.log")) if out.exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + logs
    result = json.loads((out / "sweep.json").read_text())
    report = (out / "sweep.md").read_text()
    assert report.startswith("# Load sweep") and "## Targets" in report
    for image in ("cpu_per_packet.png", "loss.png", "latency.png"):
        assert (out / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({image})" in report
    by_path = {s["datapath"]: s for s in result["sweeps"]}
    assert set(by_path) == {"c", "pure"}
    for sweep in by_path.values():
        assert len(sweep["steps"]) == 2
        for step in sweep["steps"]:
            assert step["loss"] == 0, step
            assert step["expected"] > 0
            assert step["received"] == step["expected"], step  # the same packets: publishers pause at both ends
            assert step["sfu_cpu_us_per_forwarded"] > 0
            assert step["latency_ms_p50"] is not None
    fast = by_path["c"]["steps"]
    assert all(step["floor_us_per_packet"] > 0 and step["ratio_to_floor"] > 0 for step in fast)
    # the SFU's own added latency, from its histogram (one sample per forwarded packet on the C path)
    assert all(step["sfu_latency_samples"] > 0 and step["sfu_latency_ms_p99"] is not None for step in fast)
    assert "SFU p99 ms" in report
    assert all(step["wakeup_late_ms_p99"] is not None for step in fast)
    assert result["summary"]["pure_over_fast_cpu_per_packet"]["at_rates"] == [50.0, 100.0]


def test_histogram_quantile_interpolates_like_promql():
    from bench.sweep import histogram_quantile

    inf = float("inf")
    buckets = {0.001: 50.0, 0.002: 90.0, 0.005: 100.0, inf: 100.0}
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.001)
    assert histogram_quantile(buckets, 0.7) == pytest.approx(0.0015)
    assert histogram_quantile(buckets, 0.99) == pytest.approx(0.0047)
    assert histogram_quantile({0.001: 0.0, inf: 0.0}, 0.5) is None
    assert histogram_quantile({0.001: 1.0, inf: 2.0}, 0.99) == 0.001  # in +Inf: the highest bound


@pytest.mark.timeout(30)
def test_floor_rotates_over_connected_destinations():
    """The floor serves as many destinations as the scenario has viewers, ``fanout``
    per tick: every destination gets its share, over connected sockets."""
    from bench.sweep import run_floor_step

    r = run_floor_step(2, 200, 0.5, 1100, "SRTP_AEAD_AES_128_GCM", destinations=4)
    assert r["errors"] == 0 and r["ticks"] > 50
    assert r["packets"] == 2 * r["ticks"] == r["sent"] == r["received"]
    assert r["us_per_packet"] > 0


# -- the native publisher (bench/publisher.pyx) ------------------------------------------
# Real UDP sockets on 127.0.0.1 only: each publisher's socket is connected to a receiving
# socket of the test, and the receiver holds the matching SRTP session.


class NativeLink:
    """A publisher's connected UDP socket, its outbound SRTP session, and the peer that
    receives (socket + the matching inbound session)."""

    PROFILE = "SRTP_AEAD_AES_128_GCM"

    def __init__(self):
        import socket

        from sfu.srtp import KEY_LENGTHS

        n = KEY_LENGTHS[self.PROFILE]
        ours, theirs = os.urandom(n), os.urandom(n)
        self.srtp = SrtpPair(self.PROFILE, ours, theirs)
        self.peer_srtp = SrtpPair(self.PROFILE, theirs, ours)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.sock.bind(("127.0.0.1", 0))
        self.peer.bind(("127.0.0.1", 0))
        self.sock.connect(self.peer.getsockname())
        self.peer.connect(self.sock.getsockname())
        self.sock.setblocking(False)

    def receive(self, count: int, timeout: float = 5.0) -> list[bytes]:
        """``count`` datagrams (fails after ``timeout``)."""
        import time

        out = []
        deadline = time.monotonic() + timeout
        while len(out) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"received {len(out)} of {count} datagrams"
            self.peer.settimeout(left)
            out.append(self.peer.recv(4096))
        return out

    def drain(self, quiet: float = 0.1) -> list[bytes]:
        """Whatever arrives until nothing has come for ``quiet`` seconds."""
        import socket

        out = []
        self.peer.settimeout(quiet)
        while True:
            try:
                out.append(self.peer.recv(4096))
            except socket.timeout:
                return out

    def close(self):
        self.sock.close()
        self.peer.close()


@pytest.fixture
def native():
    from bench.publisher import Publisher

    publisher = Publisher()
    links: list[NativeLink] = []

    def link():
        links.append(NativeLink())
        return links[-1]

    yield publisher, link
    publisher.stop()
    for ln in links:
        ln.close()


@pytest.mark.timeout(30)
def test_native_publisher_packets_are_those_of_video_source(native):
    """Decrypted with the matching session, every packet is VideoSource's (same header,
    VP8 descriptor, frame header, marker, trailer counter) but for the send time, which
    is CLOCK_MONOTONIC at sending; a key frame request makes the next frame a key frame."""
    import copy
    import time

    publisher, link = native
    ln = link()
    src = VideoSource(0xBEEF, size=300, fps=25, rate=100.0, keyframe_interval=100.0)
    reference = copy.deepcopy(src)
    index = publisher.add(ln.sock.fileno(), ln.srtp.tx, src)
    t_start = time.monotonic_ns()
    publisher.start()
    publisher.start_sending(index, 500.0)
    first = ln.receive(30)
    publisher.stop_sending(index)
    first += ln.drain()
    k = len(first)
    assert publisher.sent(index) == k and publisher.stats(index)["sending"] is False
    publisher.request_keyframe(index)
    publisher.start_sending(index)
    second = ln.receive(30)
    publisher.stop_sending(index)
    second += ln.drain()
    t_end = time.monotonic_ns()
    received = first + second
    stats = publisher.stats(index)
    assert stats["sent"] == stats["built"] == len(received)
    assert stats["errors"] == stats["protect_errors"] == stats["resends"] == 0

    expected = []
    for i in range(len(received)):
        if i == k:
            reference.request_keyframe()
        expected.append(reference.next_packet(0))
    plains = [ln.peer_srtp.unprotect(d) for d in received]
    sent_times = []
    for i, (plain, (seq, counter, ref)) in enumerate(zip(plains, expected)):
        assert len(plain) == 300
        assert plain[:-8] == ref[:-8], f"packet {i} differs"
        assert plain[0] == 0x80 and plain[1] & 0x7F == 96
        assert struct.unpack_from("!H", plain, 2)[0] == seq
        assert struct.unpack_from("!I", plain, 8)[0] == 0xBEEF
        magic, got_counter, sent_ns = TRAILER.unpack_from(plain, 300 - TRAILER.size)
        assert (magic, got_counter) == (MAGIC, counter) and counter == i
        assert t_start <= sent_ns <= t_end
        sent_times.append(sent_ns)
        assert bool(plain[1] & 0x80) == (i % 4 == 3)  # marker on the last packet of a frame
        assert plain[12] == (0x90 if i % 4 == 0 else 0x80)
        assert plain[13] == 0x80 and plain[14] & 0x80
    assert sent_times == sorted(sent_times)
    # key frames (RFC 6386 §9.1: P=0): the first frame, and the first frame begun after the request
    keys = [i for i, p in enumerate(plains) if i % 4 == 0 and p[16] & 1 == 0]
    assert keys == [0, (k + 3) // 4 * 4]
    assert plains[keys[1]][19:22] == b"\x9d\x01\x2a"
    assert stats["keyframes"] == 2 == reference.keyframes


@pytest.mark.timeout(30)
def test_native_publisher_paces_each_publisher_at_its_rate(native):
    import time

    publisher, link = native
    links = [link(), link()]
    rates = [200.0, 800.0]
    indexes = [publisher.add(ln.sock.fileno(), ln.srtp.tx, VideoSource(1 + i, size=1100, rate=r))
                for i, (ln, r) in enumerate(zip(links, rates))]
    publisher.start()
    for i, r in zip(indexes, rates):
        publisher.start_sending(i, r)

    def measure(seconds):
        time.sleep(0.1)
        s0, t0 = [publisher.sent(i) for i in indexes], time.monotonic()
        time.sleep(seconds)
        s1, t1 = [publisher.sent(i) for i in indexes], time.monotonic()
        return [(b - a) / (t1 - t0) for a, b in zip(s0, s1)]

    for got, want in zip(measure(1.0), rates):
        assert got == pytest.approx(want, rel=0.1)
    publisher.set_rate(indexes[0], 500.0)  # pacing restarts at the new rate
    got = measure(0.6)
    assert got[0] == pytest.approx(500.0, rel=0.1) and got[1] == pytest.approx(800.0, rel=0.1)
    for i in indexes:
        publisher.stop_sending(i)
    time.sleep(0.05)
    for i, ln in zip(indexes, links):
        assert len(ln.drain()) == publisher.sent(i)  # every packet counted was delivered
        assert publisher.stats(i)["errors"] == 0
    totals = publisher.totals()
    assert totals["sent"] == sum(publisher.sent(i) for i in indexes)
    assert totals["ticks"] > 1000 and totals["cpu_seconds"] > 0


@pytest.mark.timeout(30)
def test_native_publisher_resends_stored_packets(native):
    """A resend is the stored protected packet, byte for byte; the ring holds the last 512."""
    publisher, link = native
    ln = link()
    index = publisher.add(ln.sock.fileno(), ln.srtp.tx, VideoSource(7, size=200, rate=2000.0))
    publisher.start()
    publisher.start_sending(index, 2000.0)
    sent = ln.receive(600)
    publisher.stop_sending(index)
    sent += ln.drain()
    by_seq = {struct.unpack_from("!H", d, 2)[0]: d for d in sent}
    seqs = [struct.unpack_from("!H", d, 2)[0] for d in sent]
    assert len(by_seq) == len(sent) >= 600
    recent = [seqs[-1], seqs[-100], seqs[-512]]
    evicted = [seqs[0], seqs[-513]]  # older than the last 512
    never = (seqs[-1] + 1000) & 0xFFFF
    publisher.resend(index, recent + evicted)
    publisher.resend(index, never)
    again = ln.receive(3)
    assert again == [by_seq[s] for s in recent]  # in the requested order, as sent
    assert ln.drain() == []
    stats = publisher.stats(index)
    assert (stats["resends"], stats["resend_misses"], stats["errors"]) == (3, 3, 0)
    assert stats["sent"] == len(sent)  # resends are not original packets


@pytest.mark.timeout(30)
async def test_participant_hands_sending_to_the_native_publisher(native, certs):
    """Participant.attach_publisher: the native thread sends, the asyncio side still
    receives RTCP and passes PLI and NACK on; ``sent`` counts original packets only."""
    import asyncio

    from bench.loadgen import Participant

    publisher, link = native
    ln = link()
    p = Participant("publish", certs[0], rate=300.0, size=400, fps=30)
    loop = asyncio.get_running_loop()
    p._loop = loop
    await loop.create_datagram_endpoint(lambda: p, sock=ln.sock)
    p.srtp = ln.srtp
    try:
        p.attach_publisher(publisher)
        publisher.start()
        p.start_sending()
        assert p.sending
        first = await loop.run_in_executor(None, ln.receive, 40)
        p.stop_sending()
        assert not p.sending
        first += await loop.run_in_executor(None, ln.drain)
        assert p.sent == len(first) and p.retransmitted == 0 and p.keyframes == 1
        seqs = [struct.unpack_from("!H", d, 2)[0] for d in first]
        ssrc = struct.unpack_from("!I", first[0], 8)[0]
        assert ssrc == p.video_ssrc
        # RFC 4585 §6.2.1: NACK of seqs[5] and, by the bitmask, seqs[7]; §6.3.1 PLI
        nack = struct.pack("!BBHII", 0x81, 205, 3, 1, ssrc) + struct.pack("!HH", seqs[5], 0b10)
        pli = struct.pack("!BBHII", 0x81, 206, 2, 1, ssrc)
        ln.peer.send(ln.peer_srtp.protect_rtcp(RR + nack + pli))
        resent = await loop.run_in_executor(None, ln.receive, 2)
        assert resent == [first[5], first[7]]
        assert (p.nacks, p.plis, p.retransmitted) == (1, 1, 2)
        p.start_sending()
        more = await loop.run_in_executor(None, ln.receive, 20)
        p.stop_sending()
        more += await loop.run_in_executor(None, ln.drain)
        plains = [ln.peer_srtp.unprotect(d) for d in first + more]
        key_starts = [i for i, d in enumerate(plains) if d[12] == 0x90 and d[16] & 1 == 0]
        assert key_starts[0] == 0 and len(key_starts) == 2 and key_starts[1] >= len(first)
        assert p.keyframes == 2
        assert p.sent == len(first) + len(more)
    finally:
        p.close()
    await asyncio.sleep(0.05)  # the thread closes its socket at its next tick
    publisher.stop()
    assert publisher.stats(0)["sending"] is False
