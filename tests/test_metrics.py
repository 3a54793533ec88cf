"""Unit tests of sfu.metrics: the engine sample, the collector, headroom, /proc readers.

No sockets to the network and no sleeping: a fake engine, a fake clock, a fake
thread-CPU clock and a fake /proc tree drive :class:`sfu.metrics.Metrics`.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import Counter
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sfu import metrics, rtcp
from sfu.events import (CloseReason, EndReason, MeetingEnded, MeetingStarted, ParticipantJoined, SessionClosed,
                        SessionCreated)
from sfu.metrics import SO_MEMINFO, Metrics, ProcReader, headroom, sample_engine, socket_meminfo
from sfu.router import NO_SUBSCRIPTION_STATS
from sfu.transport import Transport

pytestmark = pytest.mark.timeout(30)


# -- fakes ------------------------------------------------------------------------------

def producer(kind, packets=0, nbytes=0, first=None):
    return SimpleNamespace(kind=kind, packets=packets, bytes=nbytes, first_packet_time=first)


def consumer(cid, kind, packets=0, octets=0, rtx=0, attached=True, first=None, report=None, rtt=None,
             clock_rate=90000):
    return SimpleNamespace(id=cid, kind=kind, packets_sent=packets, octets_sent=octets, retransmissions=rtx,
                           producer=object() if attached else None, first_packet_time=first,
                           last_report=report, rtt=rtt, codec=SimpleNamespace(clock_rate=clock_rate))


def transport(tid, role, created=0.0, producers=(), consumers=()):
    return SimpleNamespace(id=tid, role=role, created=created, producers=list(producers),
                           consumers=list(consumers))


class FakeEngine:
    """What sfu.metrics reads of a MediaEngine: counters, media_stats() (plain data, here
    made from fake transports), the plane's latency histogram and the socket."""

    def __init__(self, sock=None):
        self.stats: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self.transports: dict = {}
        self.rooms: dict = {}
        self.socket = sock
        self.hist = None  # the plane's histogram (ForwardingPlane.latency())
        self.datapath_mode = "c"
        self.listeners = []
        self.queued = 0  # the plane's send queue (ForwardingPlane.queued_bytes())

    def latency(self):
        return self.hist

    def queued_bytes(self):
        return self.queued


    def media_stats(self):
        return [{"id": t.id, "role": t.role, "created": t.created,
                 "producers": [{"kind": p.kind, "packets": p.packets, "bytes": p.bytes,
                                "first_packet_time": p.first_packet_time} for p in t.producers],
                 "consumers": [{"id": c.id, "kind": c.kind, "attached": c.producer is not None,
                                "packets": c.packets_sent, "bytes": c.octets_sent,
                                "retransmissions": c.retransmissions, "first_packet_time": c.first_packet_time,
                                "report": c.last_report, "clock_rate": c.codec.clock_rate, "rtt": c.rtt}
                               for c in t.consumers]}
                for t in self.transports.values()]

    def add_listener(self, cb):
        self.listeners.append(cb)

    def emit(self, ev):
        for cb in self.listeners:
            cb(ev)


class Clock:
    def __init__(self, t=100.0):
        self.t = t

    def __call__(self):
        return self.t


class FakeProc(ProcReader):
    def __init__(self):
        super().__init__("/nonexistent")
        self.udp = None
        self.snmp = None
        self.stat = None

    def udp_socket(self, inode):
        return self.udp

    def udp_snmp(self):
        return self.snmp

    def cpu_idle(self):
        return self.stat


def make(engine=None, **kw):
    engine = engine or FakeEngine()
    clock, cpu, proc = Clock(), Clock(0.0), FakeProc()
    m = Metrics(engine, clock=clock, thread_cpu=cpu, proc=proc, process_metrics=False, **kw)
    return m, engine, clock, cpu, proc


def scrape(m, accept=None) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    body, _ctype = m.exposition(accept)
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


W = ("worker", "0")


# -- sample_engine ----------------------------------------------------------------------

def test_sample_sums_live_tracks_and_what_the_engine_retired():
    e = FakeEngine(sock=object())
    e.stats.update({"rtp_packets_received_video": 10, "rtp_bytes_received_video": 1000,
                    "rtp_packets_forwarded_audio": 5, "rtp_bytes_forwarded_audio": 50, "rtx_sent_video": 2})
    e.transports = {
        "p": transport("p", "publish", 1.0, [producer("audio", 3, 30, first=1.5), producer("video", 4, 400)]),
        "v": transport("v", "subscribe", 2.0, consumers=[consumer("v:0", "audio", 6, 60),
                                                         consumer("v:1", "video", 8, 800, rtx=1, attached=False)]),
    }
    e.rooms = {"r": object()}
    e.hist = {"buckets": [], "count": 0, "sum": 0.0}
    s = sample_engine(e)
    assert s.received == {"audio": [3, 30], "video": [14, 1400]}
    assert s.forwarded == {"audio": [11, 110], "video": [8, 800]}
    assert s.retransmitted == {"audio": 0, "video": 3}
    assert s.tracks == {"audio": 1, "video": 1}
    assert s.subscriptions == {"audio": 1, "video": 0}  # a detached consumer is no subscription
    assert s.sessions == {"publish": 1, "subscribe": 1}
    assert s.rooms == 1
    assert s.latency_hist is e.hist
    assert s.first_media == {"p": ("publish", 0.5)}
    assert s.up and s.socket is e.socket
    assert s.forwarded_packets() == 19


def test_sample_of_an_engine_without_socket_is_down():
    assert not sample_engine(FakeEngine()).up


def test_sample_reads_the_socket_the_plane_reads():
    e = FakeEngine()
    e.socket = sock = object()
    s = sample_engine(e)
    assert s.up and s.socket is sock and s.send_queue_bytes == 0
    e.queued = 1234
    assert sample_engine(e).send_queue_bytes == 1234


# -- the collector ------------------------------------------------------------------------

def test_counters_and_gauges_are_exposed_with_the_worker_label():
    m, e, clock, cpu, proc = make()
    e.stats.update({"nacks_received": 3, "plis_received": 2, "firs_received": 1, "rtcp_nack_sent": 4,
                    "rtcp_pli_sent": 5, "dtls_failures": 1, "consent_timeouts": 2, "rtcp_packets_received": 9,
                    "rtp_packets_forwarded_video": 42, "keyframe_waits": 7})
    e.drops.update({"unknown_source": 3, "srtp_auth": 1, "socket_error": 1})
    m.update()
    got = scrape(m)
    assert got[("sfu_rtp_packets_forwarded_total", (("kind", "video"), W))] == 42
    assert got[("sfu_rtp_packets_received_total", (("kind", "audio"), W))] == 0
    assert got[("sfu_rtcp_feedback_received_total", (("type", "nack"), W))] == 3
    assert got[("sfu_rtcp_feedback_received_total", (("type", "fir"), W))] == 1
    assert got[("sfu_rtcp_feedback_sent_total", (("type", "pli"), W))] == 5
    assert got[("sfu_rtcp_feedback_sent_total", (("type", "fir"), W))] == 0
    assert got[("sfu_rtcp_packets_received_total", (W,))] == 9
    assert got[("sfu_dtls_handshake_failures_total", (W,))] == 1
    assert got[("sfu_ice_consent_timeouts_total", (W,))] == 2
    assert got[("sfu_keyframe_waits_total", (W,))] == 7
    drops = {dict(k[1])["reason"]: v for k, v in got.items() if k[0] == "sfu_packets_dropped_total"}
    # every documented reason has a series, engine-specific ones are passed through
    assert set(metrics.DROP_REASONS) <= set(drops)
    assert drops["unknown_source"] == 3 and drops["srtp_auth"] == 1 and drops["socket_error"] == 1
    assert drops["receive_buffer_overflow"] == 0
    assert got[("sfu_worker_up", (W,))] == 0  # no socket
    info = [k for k in got if k[0] == "sfu_build_info"]
    assert len(info) == 1 and dict(info[0][1])["fast_path"] == "true"


def test_no_label_carries_a_room_session_or_address():
    m, e, *_ = make()
    e.transports = {"abcdef": transport("abcdef", "publish", producers=[producer("video", 1, 1)])}
    e.rooms = {"secret-room": object()}
    e.emit(SessionCreated("secret-room", "abcdef", "publish"))
    m.update()
    body, _ = m.exposition()
    assert b"secret-room" not in body and b"abcdef" not in body and b"127.0.0.1" not in body
    allowed = {"worker", "kind", "reason", "role", "type", "direction", "le", "quantile",
               "version", "python", "uvloop", "cython", "fast_path", "datapath"}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            assert set(s.labels) <= allowed, (s.name, s.labels)


def test_openmetrics_when_asked():
    m, *_ = make()
    m.update()
    body, ctype = m.exposition("application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")
    body, ctype = m.exposition("text/plain")
    assert ctype.startswith("text/plain; version=0.0.4")
    assert b"# EOF" not in body


def test_population_gauges():
    m, e, *_ = make()
    e.transports = {
        "p": transport("p", "publish", producers=[producer("audio"), producer("video")]),
        "v1": transport("v1", "subscribe", consumers=[consumer("v1:0", "video")]),
        "v2": transport("v2", "subscribe", consumers=[consumer("v2:0", "video"), consumer("v2:1", "audio")]),
    }
    e.rooms = {"a": 1, "b": 2}
    m.update()
    got = scrape(m)
    assert got[("sfu_rooms", (W,))] == 2
    assert got[("sfu_sessions", (("role", "subscribe"), W))] == 2
    assert got[("sfu_tracks_published", (("kind", "video"), W))] == 1
    assert got[("sfu_subscriptions", (("kind", "video"), W))] == 2


# -- events: joins, leaves, join time, durations -------------------------------------------

def test_joins_leaves_session_duration_and_join_time():
    m, e, clock, *_ = make()
    e.emit(SessionCreated("r", "s1", "subscribe"))
    t = transport("s1", "subscribe", created=50.0, consumers=[consumer("s1:0", "video", first=50.8)])
    e.transports = {"s1": t}
    m.update()
    m.update()  # the join is observed once
    clock.t += 30
    e.transports = {}
    e.emit(SessionClosed("r", "s1", CloseReason.CONSENT_TIMEOUT))
    e.emit(SessionClosed("r", "zz", CloseReason.KICKED))  # a reason without a label of its own, an unknown session
    got = scrape(m)
    assert got[("sfu_session_joins_total", (("role", "subscribe"), W))] == 1
    assert got[("sfu_session_joins_total", (("role", "publish"), W))] == 0
    assert got[("sfu_session_leaves_total", (("reason", "consent_timeout"), ("role", "subscribe"), W))] == 1
    assert got[("sfu_session_leaves_total", (("reason", "other"), ("role", "unknown"), W))] == 1
    assert got[("sfu_join_time_seconds_count", (("role", "subscribe"), W))] == 1
    assert got[("sfu_join_time_seconds_sum", (("role", "subscribe"), W))] == pytest.approx(0.8)
    assert got[("sfu_join_time_seconds_bucket", (("le", "1.0"), ("role", "subscribe"), W))] == 1
    assert got[("sfu_session_duration_seconds_sum", (("role", "subscribe"), W))] == pytest.approx(30)


def test_meeting_duration_from_meeting_events():
    m, e, clock, *_ = make()
    service = SimpleNamespace(listeners=[], add_listener=lambda cb: service.listeners.append(cb))
    m.watch_meetings(service)
    (cb,) = service.listeners
    cb(MeetingStarted("m1", "r", ""))
    clock.t += 125
    cb(ParticipantJoined("m1", "r", "s1", "alice", "Alice"))
    cb(MeetingEnded("m1", "r", EndReason.EMPTY))
    cb(MeetingEnded("unknown", "r2", EndReason.EMPTY))  # started before us: not observed
    got = scrape(m)
    assert got[("sfu_meeting_duration_seconds_count", ())] == 1
    assert got[("sfu_meeting_duration_seconds_sum", ())] == pytest.approx(125)


# -- quality ---------------------------------------------------------------------------------

def block(fraction=0, jitter=0):
    return rtcp.ReportBlock(ssrc=1, fraction_lost=fraction, packets_lost=0, highest_sequence=0,
                            jitter=jitter, lsr=0, dlsr=0)


def test_receiver_reports_become_histograms_once_each():
    m, e, *_ = make()
    rr = block(fraction=64, jitter=900)  # 25 % loss, 10 ms at 90 kHz
    c = consumer("v:1", "video", report=rr, rtt=0.05)
    e.transports = {"v": transport("v", "subscribe", consumers=[c])}
    m.update()
    m.update()  # the same report block is not counted twice
    c.last_report = block(fraction=0, jitter=0)
    c.rtt = None
    m.update()
    got = scrape(m)
    vid = (("kind", "video"), W)
    assert got[("sfu_receiver_loss_ratio_count", vid)] == 2
    assert got[("sfu_receiver_loss_ratio_sum", vid)] == pytest.approx(0.25)
    assert got[("sfu_receiver_jitter_seconds_sum", vid)] == pytest.approx(0.01)
    assert got[("sfu_receiver_rtt_seconds_count", vid)] == 1
    assert got[("sfu_receiver_rtt_seconds_sum", vid)] == pytest.approx(0.05)
    assert got[("sfu_receiver_loss_ratio_count", (("kind", "audio"), W))] == 0


def _fake_transport_for_rtcp(consumers):
    by_ssrc = {c.ssrc: c for c in consumers}
    return SimpleNamespace(tracks=SimpleNamespace(reported=by_ssrc.get), producers_by_ssrc={},
                           engine=SimpleNamespace(stats=Counter()))


def test_transport_measures_rtt_from_lsr_and_dlsr():
    """RFC 3550 §6.4.1: RTT = A - LSR - DLSR, against the time we sent the translated SR."""
    sent = []
    sub = SimpleNamespace(send_rtcp=sent.append)
    stats = NO_SUBSCRIPTION_STATS._replace(synced=True, ts_delta=10, packets_sent=5, octets_sent=500)
    c = SimpleNamespace(ssrc=0xABC, stats=lambda: stats, transport=sub, sr_sent={}, rtt=None, last_report=None,
                        confirmed=True)
    prod = SimpleNamespace(consumers=(c,), last_sr_ntp=0, last_sr_time=0.0)
    pub = SimpleNamespace(producers_by_ssrc={0x111: prod}, tracks=SimpleNamespace(subscribers=lambda p: p.consumers))
    ntp = (3_900_000_000 << 32) | 0x80000000
    sr = rtcp.SenderReport(ssrc=0x111, ntp_timestamp=ntp, rtp_timestamp=1000, packet_count=1, octet_count=1,
                           reports=[])
    Transport._on_sender_report(pub, sr, 10.0)
    assert sent and sent[0][0].ssrc == 0xABC
    assert c.sr_sent == {rtcp.ntp_middle32(ntp): 10.0}
    # the subscriber held the SR 0.25 s (DLSR in 1/65536 s) and its RR arrives at 10.30 s
    rr = rtcp.ReceiverReport(ssrc=9, reports=[rtcp.ReportBlock(
        ssrc=0xABC, fraction_lost=0, packets_lost=0, highest_sequence=0, jitter=0,
        lsr=rtcp.ntp_middle32(ntp), dlsr=int(0.25 * 65536))])
    Transport._on_receiver_report(_fake_transport_for_rtcp([c]), rr, 10.30)
    assert c.rtt == pytest.approx(0.05, abs=1e-4)
    # an LSR we never sent (or 0: no SR received yet) leaves the RTT alone
    c.rtt = None
    rr.reports[0].lsr = 12345
    Transport._on_receiver_report(_fake_transport_for_rtcp([c]), rr, 11.0)
    assert c.rtt is None
    for i in range(20):  # the SR send times stay bounded
        Transport._on_sender_report(pub, rtcp.SenderReport(ssrc=0x111, ntp_timestamp=ntp + (i << 32),
                                                           rtp_timestamp=0, packet_count=0, octet_count=0,
                                                           reports=[]), 12.0 + i)
    assert len(c.sr_sent) <= 8


# -- load and headroom ------------------------------------------------------------------------

def test_busy_cost_and_headroom_from_cpu_and_forwarded_packets():
    m, e, clock, cpu, proc = make()
    got = scrape(m)
    assert got[("sfu_headroom_forwarded_packets_per_second", (W,))] != got[
        ("sfu_headroom_forwarded_packets_per_second", (W,))]  # NaN until measured
    c = consumer("v:1", "video")
    e.transports = {"v": transport("v", "subscribe", consumers=[c])}
    m.update()
    clock.t += 1.0
    cpu.t += 0.2  # 20 % busy
    c.packets_sent += 10_000  # 20 µs per forwarded packet
    m.update()
    assert m.busy == pytest.approx(0.2)
    assert m.cost == pytest.approx(20e-6)
    # (0.8 - 0.2) cores / 20 µs = 30 000 packets/s; / 104.17 per 1 Mbps viewer
    assert m.headroom_pps == pytest.approx(30_000)
    got = scrape(m)
    assert got[("sfu_worker_busy_ratio", (W,))] == pytest.approx(0.2)
    assert got[("sfu_worker_cpu_seconds_total", (W,))] == pytest.approx(0.2)
    assert got[("sfu_forward_cpu_seconds_per_packet", (W,))] == pytest.approx(20e-6)
    assert got[("sfu_headroom_video_viewers", (W,))] == pytest.approx(30_000 / metrics.VIDEO_1MBPS_PPS)
    # a quiet second (few packets) does not move the cost estimate
    clock.t += 1.0
    cpu.t += 0.01
    c.packets_sent += 5
    m.update()
    assert m.cost == pytest.approx(20e-6)


def test_headroom_is_capped_by_the_idle_cpu_of_the_node():
    assert headroom(None, 0.1, None) is None
    assert headroom(1e-5, 0.3, None) == pytest.approx(50_000)
    assert headroom(1e-5, 0.3, 0.1) == pytest.approx(10_000)  # other processes use the node
    assert headroom(1e-5, 0.95, None) == 0.0  # already past the target


def test_node_idle_cores_from_proc_stat():
    m, e, clock, cpu, proc = make()
    proc.stat = (1000.0, 4000.0, 2)
    m.update()
    proc.stat = (1150.0, 4200.0, 2)  # 150 of 200 jiffies idle on 2 CPUs
    clock.t += 1
    m.update()
    assert m.node_idle_cores == pytest.approx(1.5)


def test_latency_and_loop_lag_histograms():
    from sfu.metrics import LATENCY_BUCKETS

    m, e, *_ = make()
    e.hist = {"buckets": [(b, int(b >= 5e-05) + int(b >= 3e-3)) for b in LATENCY_BUCKETS] + [(float("inf"), 2)],
              "count": 2, "sum": 30e-6 + 3e-3}
    m.update()
    m.loop_lag.labels("0").observe(0.004)
    got = scrape(m)
    assert got[("sfu_forwarding_latency_seconds_count", (W,))] == 2
    assert got[("sfu_forwarding_latency_seconds_bucket", (("le", "5e-05"), W))] == 1
    assert got[("sfu_event_loop_lag_seconds_bucket", (("le", "0.005"), W))] == 1


def test_c_data_path_latency_histogram_is_exposed_as_it_is():
    from sfu._fast.datapath import LATENCY_BUCKETS_US, Datapath

    from sfu.metrics import LATENCY_BUCKETS

    # one set of buckets: the metric is the C histogram, bucket for bucket
    assert LATENCY_BUCKETS_US == tuple(round(b * 1e6) for b in LATENCY_BUCKETS)
    e = FakeEngine()
    e.hist = Datapath(lambda data, addr: None).latency()  # a real, empty one
    m, *_ = make(e)
    m.update()
    got = scrape(m)
    assert got[("sfu_forwarding_latency_seconds_count", (W,))] == 0
    e.hist = {  # as Datapath.latency() reports after 3 packets
        "buckets": [(b * 1e-6, 0 if b < 500 else (1 if b < 3000 else 3)) for b in LATENCY_BUCKETS_US]
        + [(float("inf"), 3)], "count": 3, "sum": 0.008}
    m.update()
    got = scrape(m)
    assert got[("sfu_forwarding_latency_seconds_count", (W,))] == 3
    assert got[("sfu_forwarding_latency_seconds_bucket", (("le", "5e-05"), W))] == 0
    assert got[("sfu_forwarding_latency_seconds_bucket", (("le", "0.002"), W))] == 1
    assert got[("sfu_forwarding_latency_seconds_bucket", (("le", "0.003"), W))] == 3
    assert got[("sfu_forwarding_latency_seconds_sum", (W,))] == pytest.approx(0.008)


# -- kernel figures ----------------------------------------------------------------------------

def test_socket_buffers_queue_and_receive_overflow_of_our_socket():
    # a real overflow: a small receive buffer nobody reads, more datagrams than fit
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", 0))
        for _ in range(50):
            sender.sendto(b"x" * 1000, sock.getsockname())
        queued, dropped = socket_meminfo(sock)
        assert queued > 0 and dropped > 0
        m, e, clock, cpu, proc = make(FakeEngine(sock))
        proc.udp = (1, 1)  # /proc is only the fallback: SO_MEMINFO answers
        proc.snmp = {"RcvbufErrors": 20, "SndbufErrors": 3, "InErrors": 21}
        m.update()
        got = scrape(m)
        assert got[("sfu_worker_up", (W,))] == 1
        assert got[("sfu_packets_dropped_total", (("reason", "receive_buffer_overflow"), W))] == dropped
        assert got[("sfu_udp_queue_bytes", (("direction", "receive"), W))] == queued
        assert got[("sfu_udp_queue_bytes", (("direction", "send"), W))] == 0  # the plane queues itself
        assert got[("sfu_udp_socket_buffer_bytes", (("direction", "receive"), W))] == \
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        assert got[("sfu_node_udp_errors_total", (("type", "receive_buffer"),))] == 20
        assert got[("sfu_node_udp_errors_total", (("type", "send_buffer"),))] == 3


PROC_UDP = """\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  123: 0100007F:9C40 00000000:0000 07 00000000:00000A00 00:00000000 00000000     0        0 4242 2 0000000000000000 5
  124: 0100007F:9C41 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 777 2 0000000000000000 0
  125: garbage line
"""
PROC_SNMP = """\
Ip: Forwarding DefaultTTL
Ip: 1 64
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 100 2 7 90 7 1 0 0 0
UdpLite: InDatagrams NoPorts
UdpLite: 0 0
"""
PROC_STAT = """\
cpu  100 0 50 800 50 0 0 0 0 0
cpu0 50 0 25 400 25 0 0 0 0 0
cpu1 50 0 25 400 25 0 0 0 0 0
intr 1
"""


def test_proc_reader_parses_udp_snmp_and_stat(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "udp").write_text(PROC_UDP)
    (tmp_path / "net" / "snmp").write_text(PROC_SNMP)
    (tmp_path / "stat").write_text(PROC_STAT)
    reader = ProcReader(str(tmp_path))
    assert reader.udp_socket(4242) == (0xA00, 5)
    assert reader.udp_socket(777) == (0, 0)
    assert reader.udp_socket(1) is None
    assert reader.udp_snmp()["RcvbufErrors"] == 7
    assert reader.cpu_idle() == (850.0, 1000.0, 2)


def test_proc_reader_without_proc_or_with_truncated_files(tmp_path):
    reader = ProcReader(str(tmp_path))
    assert reader.udp_socket(1) is None and reader.udp_snmp() is None and reader.cpu_idle() is None
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "snmp").write_text("Udp: InDatagrams\n")
    assert reader.udp_snmp() is None


def test_proc_reader_finds_a_real_socket_and_agrees_with_so_meminfo():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.sendto(b"x" * 100, sock.getsockname())
        rx_queue, drops = ProcReader().udp_socket(os.fstat(sock.fileno()).st_ino)
        assert rx_queue > 0 and drops == 0
        assert socket_meminfo(sock) == (rx_queue, drops)


def test_kernel_figures_fall_back_to_proc_without_so_meminfo():
    class NoMeminfo:
        def __init__(self, sock):
            self.sock = sock

        def getsockopt(self, level, name, *args):
            if name == SO_MEMINFO:
                raise OSError(92, "Protocol not available")
            return self.sock.getsockopt(level, name, *args)

        def fileno(self):
            return self.sock.fileno()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert socket_meminfo(NoMeminfo(sock)) is None
        m, e, clock, cpu, proc = make(FakeEngine(NoMeminfo(sock)))
        proc.udp = (4096, 17)
        m.update()
        got = scrape(m)
        assert got[("sfu_packets_dropped_total", (("reason", "receive_buffer_overflow"), W))] == 17
        assert got[("sfu_udp_queue_bytes", (("direction", "receive"), W))] == 4096


# -- the task ------------------------------------------------------------------------------

async def test_start_and_stop_the_updater():
    m, e, *_ = make()
    m.start()
    assert m._task is not None
    await m.stop()
    assert m._task is None
    await m.stop()  # idempotent


async def test_an_update_error_never_stops_the_task(monkeypatch, caplog):
    monkeypatch.setattr(metrics, "LAG_INTERVAL", 0)
    m, e, *_ = make()
    e.transports = None  # a broken engine: update() raises
    task = asyncio.get_running_loop().create_task(m.run())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    assert "metrics update failed" in caplog.text
    assert scrape(m)[("sfu_event_loop_lag_seconds_count", (W,))] >= 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- wiring in the real server -------------------------------------------------------------------

async def test_server_serves_metrics_and_feeds_meeting_durations(tmp_path):
    import aiohttp

    from sfu.config import Config
    from sfu.metrics import METRICS_KEY
    from sfu.server import Server

    server = Server(Config(host="127.0.0.1", http_port=0, rtc_port=0, data_dir=str(tmp_path / "data")))
    await server.start()
    try:
        m = server._runner.app[METRICS_KEY]
        assert m._task is not None  # the updater runs while the app runs
        # the meeting service reports to the metrics
        m.clock = Clock(0.0)
        server.meetings._emit(MeetingStarted("x", "r", ""))
        m.clock.t = 42.0
        server.meetings._emit(MeetingEnded("x", "r", EndReason.EMPTY))
        assert scrape(m)[("sfu_meeting_duration_seconds_sum", ())] == 42.0
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/metrics",
                                   headers={"Accept": "application/openmetrics-text; version=1.0.0"}) as r:
                assert r.status == 200
                assert r.headers["Content-Type"].startswith("application/openmetrics-text")
                assert "sfu_worker_up" in await r.text()
    finally:
        await server.stop()
    assert m._task is None


async def test_refused_sessions_and_http_connections_are_counted(tmp_path):
    """A WHIP offer over the per-session limit and a connection that never sends its request
    head show up as sfu_sessions_refused / sfu_http_connections_refused (README, Limits)."""
    import aiohttp

    from sfu.auth import Grants, mint_token
    from sfu.config import Config
    from sfu.metrics import METRICS_KEY
    from sfu.server import Server

    from .sdp_offers import OfferPeer

    config = Config(host="127.0.0.1", http_port=0, rtc_port=0, data_dir=str(tmp_path / "data"),
                    auth_secret="metrics-secret", max_session_published=1, http_header_timeout=0.3)
    server = Server(config)
    await server.start()
    try:
        m = server._runner.app[METRICS_KEY]
        before = scrape(m)
        assert before[("sfu_sessions_refused_total", (("reason", "too_many_tracks"), W))] == 0
        assert before[("sfu_http_connections_refused_total", (("reason", "header_timeout"), W))] == 0
        token = mint_token("metrics-secret", "pub", "Pub", "r", Grants(publish=True), ttl=600.0)
        offer = OfferPeer().offer([("0", "audio", "sendonly"), ("1", "video", "sendonly")])
        async with aiohttp.ClientSession() as http:
            async with http.post(server.url + "/whip/r", data=offer,
                                 headers={"Content-Type": "application/sdp",
                                          "Authorization": f"Bearer {token}"}) as r:
                assert r.status == 400, await r.text()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
        await writer.drain()
        assert b"408" in await asyncio.wait_for(reader.read(), 10.0)  # then closed
        writer.close()
        m.engine._fold_counters()
        after = scrape(m)
        assert after[("sfu_sessions_refused_total", (("reason", "too_many_tracks"), W))] == 1
        assert after[("sfu_http_connections_refused_total", (("reason", "header_timeout"), W))] == 1
    finally:
        await server.stop()
