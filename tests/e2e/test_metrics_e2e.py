"""/metrics of a real SFU process after real sessions (aiortc over loopback),
garbage datagrams counted under the right drop reason, and a real Prometheus
server (Debian's package) scraping the SFU and answering PromQL."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from aioice import stun
from prometheus_client.parser import text_string_to_metric_families

from ..conftest import ROOT, SfuProcess, free_port
from .clients import Publisher, Viewer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "worker")))] = s.value
    return out


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def wait_metrics(url: str, predicate, timeout: float = 6.0):
    """Scrape until ``predicate(samples)`` holds (the SFU updates its metrics once a second)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if predicate(samples) or time.monotonic() > deadline:
            return samples
        await asyncio.sleep(0.2)


async def stats_of(pc, typ: str) -> dict[str, dict[str, int]]:
    """packets per kind of the pc's ``typ`` stats (outbound-rtp / inbound-rtp)."""
    out: dict[str, dict[str, int]] = {}
    for s in (await pc.getStats()).values():
        if s.type == typ:
            d = out.setdefault(s.kind, {"packets": 0})
            d["packets"] += s.packetsSent if typ == "outbound-rtp" else s.packetsReceived
    return out


async def wait_connected(viewer: Viewer, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while viewer.pc.connectionState != "connected":
        assert time.monotonic() < deadline, viewer.pc.connectionState
        await asyncio.sleep(0.05)


async def test_counters_agree_with_what_clients_sent_and_received(sfu):
    before = scrape(sfu.url)
    viewers = [Viewer(sfu.url, "m1"), Viewer(sfu.url, "m1")]
    pub = Publisher(sfu.url, "m1")
    try:
        for v in viewers:  # viewers first: every packet the publisher sends is forwarded twice
            await v.start()
        for v in viewers:
            await wait_connected(v)
        await pub.start()
        for v in viewers:
            assert await v.wait_frames("video", 40, timeout=20) >= 40, v.frames
        await asyncio.sleep(2.5)  # a few RTCP report intervals
        live = await wait_metrics(sfu.url, lambda s: value(s, "sfu_subscriptions", kind="video") == 2
                                  and value(s, "sfu_receiver_loss_ratio_count", kind="video") > 0)
        assert value(live, "sfu_rooms") == 1
        assert value(live, "sfu_sessions", role="publish") == 1
        assert value(live, "sfu_sessions", role="subscribe") == 2
        assert value(live, "sfu_tracks_published", kind="audio") == 1
        assert value(live, "sfu_tracks_published", kind="video") == 1
        assert value(live, "sfu_subscriptions", kind="audio") == 2
        sent = await stats_of(pub.pc, "outbound-rtp")
    finally:
        await pub.stop()  # the publisher stops first: nothing more to forward
        await asyncio.sleep(0.5)
        received = [await stats_of(v.pc, "inbound-rtp") for v in viewers]
        for v in viewers:
            await v.stop()

    after = await wait_metrics(sfu.url, lambda s: value(s, "sfu_sessions", role="subscribe") == 0
                               and value(s, "sfu_session_leaves_total", role="subscribe", reason="client") == 2)
    for kind in ("audio", "video"):
        rx = value(after, "sfu_rtp_packets_received_total", kind=kind) - value(
            before, "sfu_rtp_packets_received_total", kind=kind)
        fwd = value(after, "sfu_rtp_packets_forwarded_total", kind=kind) - value(
            before, "sfu_rtp_packets_forwarded_total", kind=kind)
        got = sum(r[kind]["packets"] for r in received)
        # the SFU received what the publisher sent (loopback: no loss; a few packets
        # may leave between getStats and the close)
        assert sent[kind]["packets"] * 0.98 <= rx <= sent[kind]["packets"] * 1.05 + 5, (kind, sent, rx)
        # forwarded = received x viewers
        assert 2 * rx * 0.97 <= fwd <= 2 * rx, (kind, rx, fwd)
        # and the viewers received what was forwarded
        assert fwd * 0.97 <= got <= fwd, (kind, fwd, got)
        rx_bytes = value(after, "sfu_rtp_bytes_received_total", kind=kind)
        fwd_bytes = value(after, "sfu_rtp_bytes_forwarded_total", kind=kind)
        # forwarded packets carry fewer header extensions than the publisher's
        assert 1.6 * rx_bytes <= fwd_bytes <= 2 * rx_bytes, (kind, rx_bytes, fwd_bytes)
    assert value(after, "sfu_session_joins_total", role="publish") - value(
        before, "sfu_session_joins_total", role="publish") == 1
    assert value(after, "sfu_session_joins_total", role="subscribe") - value(
        before, "sfu_session_joins_total", role="subscribe") == 2
    assert value(after, "sfu_join_time_seconds_count", role="subscribe") == 2
    assert value(after, "sfu_join_time_seconds_count", role="publish") == 1
    assert 0 < value(after, "sfu_join_time_seconds_sum", role="publish") < 10
    assert value(after, "sfu_session_duration_seconds_count", role="subscribe") == 2
    assert value(after, "sfu_session_duration_seconds_count", role="publish") == 1
    # subscribers' receiver reports: loss, jitter and RTT (LSR/DLSR of our translated SRs)
    for kind in ("audio", "video"):
        assert value(after, "sfu_receiver_loss_ratio_count", kind=kind) > 0
        assert value(after, "sfu_receiver_jitter_seconds_count", kind=kind) > 0
    assert value(after, "sfu_receiver_rtt_seconds_count", kind="video") + value(
        after, "sfu_receiver_rtt_seconds_count", kind="audio") > 0
    assert value(after, "sfu_receiver_loss_ratio_bucket", kind="video", le="0.02") == value(
        after, "sfu_receiver_loss_ratio_count", kind="video")  # loopback loses nothing
    assert value(after, "sfu_rtcp_packets_received_total") > 0
    assert value(after, "sfu_rtcp_packets_sent_total") > 0
    assert value(after, "sfu_rtcp_feedback_sent_total", type="pli") >= 1  # keyframe for each viewer
    assert value(after, "sfu_forwarding_latency_seconds_count") > 0
    assert value(after, "sfu_event_loop_lag_seconds_count") > 0
    assert 0 < value(after, "sfu_worker_cpu_seconds_total")
    assert 0 <= value(after, "sfu_worker_busy_ratio") <= 1
    assert value(after, "sfu_worker_up") == 1
    assert value(after, "process_cpu_seconds_total") > 0


def stun_request(ufrag: str) -> bytes:
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    msg.attributes["USERNAME"] = f"{ufrag}:remote"
    return bytes(msg)


async def test_garbage_is_counted_under_the_right_drop_reason(sfu):
    pub = Publisher(sfu.url, "junk")
    protected: list[bytes] = []
    try:
        await pub.start(audio=False)
        sender = pub.pc.getSenders()[0]
        ice = sender.transport.transport
        real_send = ice._send

        async def recording_send(data: bytes) -> None:
            protected.append(data)
            await real_send(data)

        ice._send = recording_send  # keep what aiortc sends (SRTP), to replay it
        deadline = time.monotonic() + 15
        while len([p for p in protected if 128 <= p[0] <= 191 and not 192 <= p[1] <= 223]) < 2:
            assert time.monotonic() < deadline, "the publisher sent no RTP"
            await asyncio.sleep(0.05)
        rtp = next(p for p in protected if 128 <= p[0] <= 191 and not 192 <= p[1] <= 223)
        before = await wait_metrics(sfu.url, lambda s: value(s, "sfu_rtp_packets_received_total", kind="video") > 0)

        # from an address the SFU does not know: unknown source (RTP-looking or not), unknown ICE ufrag
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            for i in range(5):
                stranger.sendto(bytes([0x80, 0x60]) + os.urandom(40), ("127.0.0.1", sfu.rtc_port))
            for i in range(3):
                stranger.sendto(b"\xff garbage", ("127.0.0.1", sfu.rtc_port))
            for i in range(4):
                stranger.sendto(stun_request("nosuchufrag"), ("127.0.0.1", sfu.rtc_port))
        # from the publisher's own (ICE-verified) address
        for i in range(6):  # SRTP that fails authentication
            await real_send(bytes([0x80, 0x60]) + os.urandom(60))
        for i in range(2):  # not STUN, DTLS, RTP or RTCP (RFC 7983): malformed
            await real_send(b"\x50" + os.urandom(20))
        await real_send(rtp)  # a replayed SRTP packet
        ice._send = real_send

        def settled(s):
            return (value(s, "sfu_packets_dropped_total", reason="srtp_replay") > value(
                before, "sfu_packets_dropped_total", reason="srtp_replay")
                and value(s, "sfu_packets_dropped_total", reason="unknown_ufrag") >= value(
                    before, "sfu_packets_dropped_total", reason="unknown_ufrag") + 4)
        after = await wait_metrics(sfu.url, settled)

        def delta(reason):
            return value(after, "sfu_packets_dropped_total", reason=reason) - value(
                before, "sfu_packets_dropped_total", reason=reason)
        assert delta("unknown_source") == 8
        assert delta("unknown_ufrag") == 4
        assert delta("srtp_auth") == 6
        assert delta("malformed") == 2
        assert delta("srtp_replay") == 1
        assert delta("receive_buffer_overflow") == 0
        assert value(after, "sfu_worker_up") == 1  # and the worker took it all in its stride
    finally:
        await pub.stop()


# -- a real Prometheus -------------------------------------------------------------------------

PROMETHEUS = shutil.which("prometheus")


def prometheus_query(base: str, query: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]["result"]


def test_real_prometheus_scrapes_the_sfu_and_answers_promql(tmp_path):
    assert PROMETHEUS, "Debian's prometheus package is needed (scripts/install-system-deps.sh)"
    sfu = SfuProcess(tmp_path).start()
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    rules = os.path.join(ROOT, "deploy", "prometheus", "alerts.yml")
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: [{json.dumps(rules)}]\n"
        "scrape_configs:\n"
        "  - job_name: sfu\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{sfu.http_port}']}}]\n"
    )
    log = open(tmp_path / "prometheus.log", "wb")
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{prom_port}"
    try:
        deadline = time.monotonic() + 60
        result: list = []
        while time.monotonic() < deadline:
            assert prom.poll() is None, (tmp_path / "prometheus.log").read_text()[-2000:]
            try:
                result = prometheus_query(base, 'sfu_worker_up{job="sfu"}')
                if result:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        assert result, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert result[0]["value"][1] == "1"
        assert result[0]["metric"]["worker"] == "0"
        assert prometheus_query(base, 'up{job="sfu"}')[0]["value"][1] == "1"
        build = prometheus_query(base, "sfu_build_info")
        assert build[0]["metric"]["version"]
        # a PromQL computation over SFU series: the lag quantile and the drop rate exist
        while time.monotonic() < deadline:
            lag = prometheus_query(
                base, "histogram_quantile(0.99, sum by (le) (rate(sfu_event_loop_lag_seconds_bucket[5s])))")
            if lag and not math.isnan(float(lag[0]["value"][1])):
                break
            time.sleep(0.5)
        assert lag and 0 <= float(lag[0]["value"][1]) < 1.0, lag
        # our alert rules load and evaluate without error against the live series
        with urllib.request.urlopen(base + "/api/v1/rules", timeout=5) as r:
            groups = json.loads(r.read())["data"]["groups"]
        health = [rule["health"] for g in groups for rule in g["rules"]]
        assert health and all(h in ("ok", "unknown") for h in health), groups
        while time.monotonic() < deadline and any(h == "unknown" for h in health):
            time.sleep(0.5)
            with urllib.request.urlopen(base + "/api/v1/rules", timeout=5) as r:
                groups = json.loads(r.read())["data"]["groups"]
            health = [rule["health"] for g in groups for rule in g["rules"]]
        assert all(h == "ok" for h in health), groups
    finally:
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        log.close()
        sfu.stop()
