"""Prometheus metrics of the SFU: every metric lives in this module.

The media path only counts (integer increments on the engine, its producers
and consumers); nothing here runs per packet.  Once a second :meth:`Metrics.update`
reads the engine through ONE function, :func:`sample_engine`, and turns what
it reads into Prometheus series:

- counters and gauges are served from that cached :class:`EngineSample` by a
  custom collector (a scrape never walks the engine's objects);
- histograms (event-loop lag, sampled forwarding latency, join time, session
  and meeting duration, receivers' loss/jitter/RTT) are observed by the 1 s
  updater, the 0.1 s lag probe and the engine's event listener.

Names follow the Prometheus conventions (``sfu_`` prefix, base units,
``_total`` counters).  Labels are low-cardinality: ``worker`` (``"0"`` while
there is one worker), ``kind`` (audio|video), ``reason``, ``role``, ``type``.
Never a room, participant, identity or address.  docs/operations.md explains
every series and how the headroom estimate is computed.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import platform
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Callable, Iterable

from aiohttp import web
from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from prometheus_client.utils import floatToGoString
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from . import __version__, limits
from .events import EngineEvent, MeetingEnded, MeetingEvent, MeetingStarted, SessionClosed, SessionCreated
from .plane import LATENCY_BUCKETS  # forwarding latency: one definition for both planes and the metrics

logger = logging.getLogger("sfu.metrics")

# no `_created` series next to every histogram: they double the series count and
# say nothing a process start time does not (process_start_time_seconds)
disable_created_metrics()

UPDATE_INTERVAL = 1.0  # seconds between two reads of the engine's counters
LAG_INTERVAL = 0.1  # seconds the lag probe sleeps; the overshoot is the loop's lag
KINDS = ("audio", "video")
ROLES = ("publish", "subscribe")
FEEDBACK_TYPES = ("nack", "pli", "fir")
# drop reasons that always have a series (0 until it happens), so that alerts and
# dashboards see them; the engine may count further reasons, exported as they come
DROP_REASONS = (
    "unknown_source", "unknown_ufrag", "srtp_auth", "srtp_replay", "malformed",
    "no_subscriber", "send_buffer_full", "receive_buffer_overflow",
    "nack_repeat", "nack_budget", "nack_overflow", "stun_error_ratelimited", "too_long",
)
# sessions refused by a limit (sfu.limits.LimitExceeded.code), counted from zero
REFUSAL_REASONS = tuple(limits.STATUS)

# headroom model (docs/operations.md, "Headroom")
TARGET_BUSY = 0.8  # a loop busier than this adds latency: plan to stay below it
MIN_PACKETS_FOR_COST = 200  # forwarded packets in one interval before it updates the cost
COST_SMOOTHING = 0.2  # EWMA weight of the newest interval
BUSY_SMOOTHING = 0.3
VIDEO_1MBPS_PPS = 1_000_000 / 8 / 1200  # a 1 Mbps video in 1200-byte packets: ~104 packets/s

# histogram buckets, base units
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
JOIN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0)
SESSION_BUCKETS = (10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 28800)
LOSS_BUCKETS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
JITTER_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5)
RTT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


# -- reading the engine ------------------------------------------------------------

@dataclass
class Report:
    """One receiver report block about a forwarded stream, as RTCP gave it."""

    kind: str
    loss: float  # fraction lost since the previous report, 0..1 (RFC 3550 §6.4.1)
    jitter: float  # seconds
    rtt: float | None  # seconds, from LSR/DLSR when the SR it echoes is known


@dataclass
class EngineSample:
    """The engine's counters and population at one instant (all counters monotonic)."""

    stats: dict[str, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)
    received: dict[str, list[int]] = field(default_factory=dict)  # kind -> [packets, bytes]
    forwarded: dict[str, list[int]] = field(default_factory=dict)  # kind -> [packets, bytes]
    retransmitted: dict[str, int] = field(default_factory=dict)  # kind -> packets
    rooms: int = 0
    sessions: dict[str, int] = field(default_factory=dict)  # role -> live sessions
    tracks: dict[str, int] = field(default_factory=dict)  # kind -> published tracks
    subscriptions: dict[str, int] = field(default_factory=dict)  # kind -> attached consumers
    latency: list[float] = field(default_factory=list)  # sampled forwarding latencies since last read
    latency_hist: dict | None = None  # the forwarding plane's histogram (ForwardingPlane.latency()), cumulative
    reports: dict[str, tuple[object, Report]] = field(default_factory=dict)  # consumer id -> (block, report)
    first_media: dict[str, tuple[str, float]] = field(default_factory=dict)  # session -> (role, seconds)
    socket: socket.socket | None = None
    send_queue_bytes: int = 0
    up: bool = False

    def forwarded_packets(self) -> int:
        return sum(v[0] for v in self.forwarded.values())


def sample_engine(engine) -> EngineSample:
    """Read everything the metrics need from the engine: the one place that knows where.

    Per-kind traffic is the sum over live producers/consumers (plain data from
    ``engine.media_stats()``, the forwarding plane's statistics) plus what the engine
    folded into ``engine.stats`` when their sessions closed (keys
    ``rtp_{packets,bytes}_{received,forwarded}_<kind>`` and ``rtx_sent_<kind>``),
    so the totals never go down.
    """
    s = EngineSample()
    stats = dict(engine.stats)
    s.stats = stats
    s.drops = dict(engine.drops)
    for kind in KINDS:
        s.received[kind] = [stats.get(f"rtp_packets_received_{kind}", 0), stats.get(f"rtp_bytes_received_{kind}", 0)]
        s.forwarded[kind] = [stats.get(f"rtp_packets_forwarded_{kind}", 0), stats.get(f"rtp_bytes_forwarded_{kind}", 0)]
        s.retransmitted[kind] = stats.get(f"rtx_sent_{kind}", 0)
        s.tracks[kind] = 0
        s.subscriptions[kind] = 0
    for role in ROLES:
        s.sessions[role] = 0
    for session in engine.media_stats():
        role = session["role"]
        s.sessions[role] = s.sessions.get(role, 0) + 1
        first: float | None = None
        for producer in session["producers"]:
            kind = producer["kind"]
            if kind not in s.received:
                continue
            s.tracks[kind] += 1
            counts = s.received[kind]
            counts[0] += producer["packets"]
            counts[1] += producer["bytes"]
            t = producer["first_packet_time"]
            if t is not None and (first is None or t < first):
                first = t
        for consumer in session["consumers"]:
            kind = consumer["kind"]
            if kind not in s.forwarded:
                continue
            if consumer["attached"]:
                s.subscriptions[kind] += 1
            counts = s.forwarded[kind]
            counts[0] += consumer["packets"]
            counts[1] += consumer["bytes"]
            s.retransmitted[kind] += consumer["retransmissions"]
            t = consumer["first_packet_time"]
            if t is not None and (first is None or t < first):
                first = t
            block = consumer["report"]
            if block is not None:
                clock_rate = consumer["clock_rate"] or 90000
                s.reports[consumer["id"]] = (block, Report(
                    kind=kind,
                    loss=block.fraction_lost / 256.0,
                    jitter=block.jitter / clock_rate,
                    rtt=consumer["rtt"],
                ))
        if first is not None:
            s.first_media[session["id"]] = (role, max(0.0, first - session["created"]))
    s.rooms = len(engine.rooms)
    s.latency_hist = engine.latency()
    sock = engine.socket  # the socket the forwarding plane reads
    if sock is not None:
        s.up = True
        s.socket = sock
        s.send_queue_bytes = engine.queued_bytes()  # the plane's user-space send queue
    return s


# -- reading the kernel ------------------------------------------------------------

SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)  # Linux >= 4.6, include/uapi/asm-generic/socket.h
_MEMINFO_RMEM_ALLOC, _MEMINFO_DROPS, _MEMINFO_VARS = 0, 8, 9  # SK_MEMINFO_* (include/uapi/linux/sock_diag.h)


def socket_meminfo(sock) -> tuple[int, int] | None:
    """(receive queue bytes, drops) of our own socket with one getsockopt(SO_MEMINFO), the
    figures /proc/net/udp shows without reading every socket of the host; None where the
    kernel has no SO_MEMINFO. ``drops`` is sk_drops (receive buffer overflows)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * _MEMINFO_VARS)
    except (OSError, ValueError):
        return None
    if len(raw) < 4 * _MEMINFO_VARS:
        return None
    values = memoryview(raw).cast("I")
    return int(values[_MEMINFO_RMEM_ALLOC]), int(values[_MEMINFO_DROPS])


class ProcReader:
    """Kernel figures from /proc (Linux); every reader returns None when unavailable."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root

    def _read(self, name: str) -> str | None:
        try:
            with open(os.path.join(self.root, name)) as f:
                return f.read()
        except OSError:
            return None

    def udp_socket(self, inode: int) -> tuple[int, int] | None:
        """(receive queue bytes, drops) of the UDP socket with this inode (/proc/net/udp{,6}).

        ``drops`` is the socket's sk_drops: datagrams the kernel discarded because the
        receive buffer was full, the same count SO_RXQ_OVFL reports.
        """
        for name in ("net/udp", "net/udp6"):
            text = self._read(name)
            if text is None:
                continue
            for line in text.splitlines()[1:]:
                fields = line.split()
                if len(fields) >= 13 and fields[9] == str(inode):
                    rx_queue = int(fields[4].split(":")[1], 16)
                    return rx_queue, int(fields[12])
        return None

    def udp_snmp(self) -> dict[str, int] | None:
        """The node's UDP counters (/proc/net/snmp ``Udp:``): RcvbufErrors, SndbufErrors, InErrors..."""
        text = self._read("net/snmp")
        if text is None:
            return None
        rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Udp:")]
        if len(rows) < 2:
            return None
        return {k: int(v) for k, v in zip(rows[0], rows[1])}

    def cpu_idle(self) -> tuple[float, float, int] | None:
        """(idle jiffies, total jiffies, CPUs) of the whole node (/proc/stat)."""
        text = self._read("stat")
        if text is None:
            return None
        lines = text.splitlines()
        fields = [int(x) for x in lines[0].split()[1:9]]  # user..steal; guest is inside user
        cpus = sum(1 for line in lines if line.startswith("cpu") and line[3:4].isdigit())
        return float(fields[3] + fields[4]), float(sum(fields)), max(1, cpus)


def _build_labels(engine) -> dict[str, str]:
    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "none"

    mode = str(getattr(engine, "datapath_mode", "pure"))
    return {
        "datapath": mode,
        "version": __version__,
        "python": platform.python_version(),
        "uvloop": version("uvloop"),
        "cython": version("cython"),
        "fast_path": "true" if mode == "c" else "false",
    }


# -- the metrics ---------------------------------------------------------------------

class Metrics:
    """The SFU's Prometheus registry for one engine (one worker)."""

    def __init__(
        self,
        engine,
        worker: str = "0",
        *,
        clock: Callable[[], float] = time.monotonic,
        thread_cpu: Callable[[], float] = time.thread_time,
        proc: ProcReader | None = None,
        process_metrics: bool = True,
    ) -> None:
        self.engine = engine
        self.worker = worker
        self.http_guard = None  # sfu.httpguard.ConnectionGuard of the HTTP site, set by sfu.server
        self.clock = clock
        self.thread_cpu = thread_cpu
        self.proc = proc or ProcReader()
        self.registry = CollectorRegistry(auto_describe=True)
        if process_metrics:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
        self.build = _build_labels(engine)
        r = self.registry
        w = worker
        self.loop_lag = Histogram("sfu_event_loop_lag_seconds",
                                  "How late the worker's event loop ran a timer (sampled every 0.1 s)",
                                  ["worker"], buckets=LAG_BUCKETS, registry=r)
        # sfu_forwarding_latency_seconds: the forwarding plane keeps its own histogram (same
        # buckets), exposed as it is; samples counted here (none now) add to it
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # per bucket, the last one +Inf
        self.latency_sum = 0.0
        self.join_time = Histogram("sfu_join_time_seconds",
                                   "Time from a WHIP/WHEP request to the session's first media packet",
                                   ["worker", "role"], buckets=JOIN_BUCKETS, registry=r)
        self.session_duration = Histogram("sfu_session_duration_seconds",
                                          "Duration of closed participant sessions",
                                          ["worker", "role"], buckets=SESSION_BUCKETS, registry=r)
        self.meeting_duration = Histogram("sfu_meeting_duration_seconds", "Duration of ended meetings",
                                          buckets=SESSION_BUCKETS, registry=r)
        self.loss = Histogram("sfu_receiver_loss_ratio",
                              "Fraction lost reported by subscribers' RTCP receiver reports",
                              ["worker", "kind"], buckets=LOSS_BUCKETS, registry=r)
        self.jitter = Histogram("sfu_receiver_jitter_seconds",
                                "Interarrival jitter reported by subscribers' RTCP receiver reports",
                                ["worker", "kind"], buckets=JITTER_BUCKETS, registry=r)
        self.rtt = Histogram("sfu_receiver_rtt_seconds",
                             "Round-trip time SFU -> subscriber from RTCP LSR/DLSR",
                             ["worker", "kind"], buckets=RTT_BUCKETS, registry=r)
        # every labelled series exists from the start (0), so rules and panels always find it
        self.loop_lag.labels(w)
        for role in ROLES:
            self.join_time.labels(w, role)
            self.session_duration.labels(w, role)
        for kind in KINDS:
            for h in (self.loss, self.jitter, self.rtt):
                h.labels(w, kind)

        self.sample = EngineSample()
        self.joins: Counter[str] = Counter({role: 0 for role in ROLES})
        self.leaves: Counter[tuple[str, str]] = Counter({(role, "client"): 0 for role in ROLES})
        self.kernel_drops = 0  # receive buffer overflows of our socket
        self.rx_queue_bytes = 0
        self.node_udp: dict[str, int] = {}
        self.cpu_seconds = 0.0
        self.busy = 0.0
        self.cost: float | None = None  # CPU seconds per forwarded packet (EWMA)
        self.node_idle_cores: float | None = None
        self.headroom_pps: float | None = None
        self._sessions: dict[str, tuple[str, float]] = {}  # id -> (role, created)
        self._joined: set[str] = set()
        self._seen_reports: dict[str, object] = {}
        self._last: tuple[float, float, int] | None = None  # (clock, thread cpu, forwarded)
        self._busy_seen = False
        self._last_cpu_stat: tuple[float, float, int] | None = None
        self._task: asyncio.Task | None = None
        self._meeting_starts: dict[str, float] = {}  # meeting id -> clock() when it started
        self._meeting_handlers: dict[type, Callable[[Any], None]] = {
            MeetingStarted: self._meeting_started,
            MeetingEnded: self._meeting_ended,
        }
        r.register(_EngineCollector(self))
        self._engine_handlers: dict[type, Callable[[Any], None]] = {
            SessionCreated: self._session_created,
            SessionClosed: self._session_closed,
        }
        engine.add_listener(self.on_engine_event)

    # -- events ---------------------------------------------------------------
    def on_engine_event(self, ev: EngineEvent) -> None:
        handler = self._engine_handlers.get(type(ev))
        if handler is not None:
            handler(ev)

    def _session_created(self, ev: SessionCreated) -> None:
        self.joins[ev.role] += 1
        self._sessions[ev.session] = (ev.role, self.clock())

    def _session_closed(self, ev: SessionClosed) -> None:
        role, created = self._sessions.pop(ev.session, ("unknown", None))
        self._joined.discard(ev.session)
        self.leaves[(role, ev.reason.label)] += 1  # the label set is bounded by CloseReason
        if created is not None:
            self.session_duration.labels(self.worker, role).observe(max(0.0, self.clock() - created))

    def on_meeting_event(self, ev: MeetingEvent) -> None:
        """Listener for MeetingService events (sfu/events.py): the meetings' durations."""
        handler = self._meeting_handlers.get(type(ev))
        if handler is not None:
            handler(ev)

    def _meeting_started(self, ev: MeetingStarted) -> None:
        self._meeting_starts[ev.meeting_id] = self.clock()

    def _meeting_ended(self, ev: MeetingEnded) -> None:
        start = self._meeting_starts.pop(ev.meeting_id, None)
        if start is not None:  # else it started before this process watched
            self.meeting_duration.observe(max(0.0, self.clock() - start))

    def watch_meetings(self, service) -> None:
        service.add_listener(self.on_meeting_event)

    # -- the 1 s update -----------------------------------------------------------
    def forwarding_latency_family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "sfu_forwarding_latency_seconds",
            "Time a forwarded packet spent in the SFU: from its arrival (the kernel's receive timestamp on "
            "the C data path, every packet; the receive handler on the pure-Python plane, 1 packet in 64) to "
            "its copies handed to the kernel", labels=["worker"])
        c_path = self.sample.latency_hist
        c_buckets = c_path["buckets"] if c_path else None
        buckets, total = [], 0
        for i, bound in enumerate((*LATENCY_BUCKETS, float("inf"))):
            total += self.latency_counts[i]
            buckets.append((floatToGoString(bound), total + (c_buckets[i][1] if c_buckets else 0)))
        family.add_metric([self.worker], buckets, self.latency_sum + (c_path["sum"] if c_path else 0.0))
        return family

    def update(self) -> None:
        now = self.clock()
        cpu = self.thread_cpu()
        s = sample_engine(self.engine)
        w = self.worker
        counts = self.latency_counts
        for value in s.latency:
            counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
            self.latency_sum += value
        for sid, (role, seconds) in s.first_media.items():
            if sid not in self._joined and sid in self._sessions:
                self._joined.add(sid)
                self.join_time.labels(w, role).observe(seconds)
        seen: dict[str, object] = {}
        for cid, (block, report) in s.reports.items():
            seen[cid] = block
            if self._seen_reports.get(cid) is block:
                continue
            self.loss.labels(w, report.kind).observe(report.loss)
            self.jitter.labels(w, report.kind).observe(report.jitter)
            if report.rtt is not None:
                self.rtt.labels(w, report.kind).observe(report.rtt)
        self._seen_reports = seen
        self._update_kernel(s)
        self._update_load(now, cpu, s.forwarded_packets())
        self.sample = s

    def _update_kernel(self, s: EngineSample) -> None:
        if s.socket is not None:
            udp = socket_meminfo(s.socket)
            if udp is None:  # no SO_MEMINFO: look the socket up in /proc/net/udp (slower)
                try:
                    inode = os.fstat(s.socket.fileno()).st_ino
                except (OSError, ValueError):
                    inode = None
                udp = self.proc.udp_socket(inode) if inode is not None else None
            if udp is not None:
                self.rx_queue_bytes, drops = udp
                self.kernel_drops = max(self.kernel_drops, drops)  # sk_drops of a new socket starts at 0
        snmp = self.proc.udp_snmp()
        if snmp is not None:
            self.node_udp = snmp

    def _update_load(self, now: float, cpu: float, forwarded: int) -> None:
        stat = self.proc.cpu_idle()
        if stat is not None and self._last_cpu_stat is not None:
            idle0, total0, _ = self._last_cpu_stat
            idle, total, cpus = stat
            if total > total0:
                self.node_idle_cores = cpus * (idle - idle0) / (total - total0)
        if stat is not None:
            self._last_cpu_stat = stat
        last = self._last
        self._last = (now, cpu, forwarded)
        self.cpu_seconds = cpu
        if last is None:
            return
        dt = now - last[0]
        if dt <= 0:
            return
        dcpu = max(0.0, cpu - last[1])
        dfwd = forwarded - last[2]
        busy = min(1.0, dcpu / dt)
        self.busy = self.busy + BUSY_SMOOTHING * (busy - self.busy) if self._busy_seen else busy
        self._busy_seen = True
        if dfwd >= MIN_PACKETS_FOR_COST:
            cost = dcpu / dfwd
            self.cost = cost if self.cost is None else self.cost + COST_SMOOTHING * (cost - self.cost)
        self.headroom_pps = headroom(self.cost, self.busy, self.node_idle_cores)

    # -- the task ----------------------------------------------------------------------
    async def run(self) -> None:
        """The lag probe (every LAG_INTERVAL) and the counter update (every UPDATE_INTERVAL)."""
        next_update = self.clock()
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(LAG_INTERVAL)
            self.loop_lag.labels(self.worker).observe(max(0.0, time.perf_counter() - t0 - LAG_INTERVAL))
            if self.clock() >= next_update:
                next_update = self.clock() + UPDATE_INTERVAL
                try:
                    self.update()
                except Exception:  # metrics must never take the worker down
                    logger.exception("metrics update failed")

    def start(self) -> None:
        if self._task is None:
            self.update()
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    # -- exposition -------------------------------------------------------------------
    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """(body, content type): OpenMetrics when ``accept`` asks for it, else the text format 0.0.4."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def headroom(cost: float | None, busy: float, node_idle_cores: float | None) -> float | None:
    """More forwarded packets per second one worker can take (docs/operations.md, "Headroom").

    CPU left = what keeps the worker's loop under TARGET_BUSY, capped by the idle CPU
    of the whole node; divided by the measured CPU cost of one forwarded packet.
    """
    if cost is None or cost <= 0:
        return None
    left = max(0.0, TARGET_BUSY - busy)
    if node_idle_cores is not None:
        left = min(left, max(0.0, node_idle_cores))
    return left / cost


class _EngineCollector:
    """Counters and gauges from the cached sample (a scrape does not touch the engine)."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def describe(self) -> Iterable:
        return []

    def collect(self) -> Iterable:
        m = self.m
        s = m.sample
        w = m.worker
        nan = float("nan")

        def counter(name: str, doc: str, labels: list[str], rows: Iterable[tuple[list[str], float]]):
            family = CounterMetricFamily(name, doc, labels=["worker", *labels])
            for values, value in rows:
                family.add_metric([w, *values], value)
            return family

        def gauge(name: str, doc: str, labels: list[str], rows: Iterable[tuple[list[str], float]]):
            family = GaugeMetricFamily(name, doc, labels=["worker", *labels])
            for values, value in rows:
                family.add_metric([w, *values], value)
            return family

        st = s.stats
        yield counter("sfu_rtp_packets_received", "RTP packets accepted from publishers (after SRTP)",
                      ["kind"], (([k], s.received[k][0]) for k in KINDS if k in s.received))
        yield counter("sfu_rtp_bytes_received", "RTP bytes (header + payload) accepted from publishers",
                      ["kind"], (([k], s.received[k][1]) for k in KINDS if k in s.received))
        yield counter("sfu_rtp_packets_forwarded", "RTP packets sent to subscribers (one per subscriber)",
                      ["kind"], (([k], s.forwarded[k][0]) for k in KINDS if k in s.forwarded))
        yield counter("sfu_rtp_bytes_forwarded", "RTP bytes (header + payload, before SRTP) sent to subscribers",
                      ["kind"], (([k], s.forwarded[k][1]) for k in KINDS if k in s.forwarded))
        yield counter("sfu_rtp_retransmissions", "Packets re-sent to subscribers in answer to their NACKs",
                      ["kind"], (([k], s.retransmitted.get(k, 0)) for k in KINDS))
        yield counter("sfu_nack_cache_misses", "NACKed packets no longer in the packet cache", [],
                      [([], st.get("nack_misses", 0))])
        yield counter("sfu_keyframe_waits", "Video packets held from subscribers that wait for a keyframe "
                      "(joined, resumed or switched to another track)", [],
                      [([], st.get("keyframe_waits", 0))])
        yield counter("sfu_rtcp_packets_received", "SRTCP datagrams received", [],
                      [([], st.get("rtcp_packets_received", 0))])
        yield counter("sfu_rtcp_bytes_received", "SRTCP bytes received", [],
                      [([], st.get("rtcp_bytes_received", 0))])
        yield counter("sfu_rtcp_packets_sent", "SRTCP datagrams sent", [],
                      [([], st.get("rtcp_packets_sent", 0))])
        yield counter("sfu_rtcp_bytes_sent", "SRTCP bytes sent", [], [([], st.get("rtcp_bytes_sent", 0))])
        yield counter("sfu_rtcp_feedback_received", "NACK, PLI and FIR messages received from subscribers",
                      ["type"], [(["nack"], st.get("nacks_received", 0)), (["pli"], st.get("plis_received", 0)),
                                 (["fir"], st.get("firs_received", 0))])
        yield counter("sfu_rtcp_feedback_sent", "NACK, PLI and FIR messages sent to publishers",
                      ["type"], (([t], st.get(f"rtcp_{t}_sent", 0)) for t in FEEDBACK_TYPES))
        drops = Counter({reason: 0 for reason in DROP_REASONS})
        drops.update(s.drops)
        drops["receive_buffer_overflow"] += m.kernel_drops
        yield counter("sfu_packets_dropped", "Datagrams the SFU dropped, by reason", ["reason"],
                      (([reason], value) for reason, value in sorted(drops.items())))
        refused = Counter({reason: 0 for reason in REFUSAL_REASONS})
        refused.update({key[len("sessions_refused_"):]: n for key, n in st.items()
                        if key.startswith("sessions_refused_")})
        yield counter("sfu_sessions_refused", "Session requests refused by a limit (README, Limits), by reason",
                      ["reason"], (([reason], n) for reason, n in sorted(refused.items())))
        guard = m.http_guard
        if guard is not None:
            yield counter("sfu_http_connections_refused",
                          "HTTP connections closed by the guard: over the cap per source, or no request "
                          "head within the header timeout", ["reason"],
                          [(["per_source_cap"], guard.refused), (["header_timeout"], guard.timed_out)])
        yield counter("sfu_dtls_handshake_failures", "DTLS handshakes that failed", [],
                      [([], st.get("dtls_failures", 0))])
        yield counter("sfu_ice_consent_timeouts", "Sessions closed because ICE consent expired (RFC 7675)", [],
                      [([], st.get("consent_timeouts", 0))])
        yield counter("sfu_session_joins", "Sessions created (WHIP publish / WHEP subscribe)", ["role"],
                      (([role], n) for role, n in sorted(m.joins.items())))
        yield counter("sfu_session_leaves", "Sessions closed, by role and reason", ["role", "reason"],
                      (([role, reason], n) for (role, reason), n in sorted(m.leaves.items())))
        yield counter("sfu_worker_cpu_seconds", "CPU seconds used by the worker's event-loop thread", [],
                      [([], m.cpu_seconds)])
        node_udp = CounterMetricFamily("sfu_node_udp_errors", "The node's UDP error counters (/proc/net/snmp)",
                                       labels=["type"])
        for key, label in (("RcvbufErrors", "receive_buffer"), ("SndbufErrors", "send_buffer"),
                           ("InErrors", "in_errors")):
            node_udp.add_metric([label], m.node_udp.get(key, 0))
        yield node_udp

        yield gauge("sfu_worker_up", "1 while the worker's media socket is open", [], [([], 1.0 if s.up else 0.0)])
        yield gauge("sfu_worker_busy_ratio", "Fraction of wall time the worker's loop thread was on CPU (smoothed)",
                    [], [([], m.busy)])
        yield gauge("sfu_forward_cpu_seconds_per_packet",
                    "Measured CPU seconds of the worker per forwarded packet (NaN until measured)", [],
                    [([], m.cost if m.cost is not None else nan)])
        yield gauge("sfu_headroom_forwarded_packets_per_second",
                    "Estimated further forwarded packets/s the worker can take (NaN until measured)", [],
                    [([], m.headroom_pps if m.headroom_pps is not None else nan)])
        yield gauge("sfu_headroom_video_viewers",
                    "Estimated further viewers of a 1 Mbps video the worker can take (NaN until measured)", [],
                    [([], m.headroom_pps / VIDEO_1MBPS_PPS if m.headroom_pps is not None else nan)])
        idle = GaugeMetricFamily("sfu_node_cpu_idle_cores", "Idle CPU of the whole node, in cores (/proc/stat)")
        idle.add_metric([], m.node_idle_cores if m.node_idle_cores is not None else nan)
        yield idle
        yield gauge("sfu_rooms", "Rooms with at least one session", [], [([], s.rooms)])
        yield gauge("sfu_sessions", "Live participant sessions", ["role"],
                    (([role], n) for role, n in sorted(s.sessions.items())))
        yield gauge("sfu_tracks_published", "Published tracks", ["kind"],
                    (([k], s.tracks.get(k, 0)) for k in KINDS))
        yield gauge("sfu_subscriptions", "Subscriber tracks attached to a published track", ["kind"],
                    (([k], s.subscriptions.get(k, 0)) for k in KINDS))
        bufs = []
        if s.socket is not None:
            try:
                bufs = [(["receive"], s.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)),
                        (["send"], s.socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF))]
            except OSError:
                bufs = []
        yield gauge("sfu_udp_socket_buffer_bytes", "Kernel buffer size of the media socket (SO_RCVBUF/SO_SNDBUF)",
                    ["direction"], bufs)
        yield gauge("sfu_udp_queue_bytes",
                    "Bytes waiting: in the kernel receive queue, and in the user-space send queue", ["direction"],
                    [(["receive"], m.rx_queue_bytes), (["send"], s.send_queue_bytes)])
        yield m.forwarding_latency_family()
        info = InfoMetricFamily("sfu_build", "Version of the SFU and of what it runs on")
        info.add_metric([], m.build)
        yield info


# -- HTTP ------------------------------------------------------------------------------

METRICS_KEY = web.AppKey("metrics", Metrics)


async def handle_metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format, or OpenMetrics when the Accept header asks."""
    body, content_type = request.app[METRICS_KEY].exposition(request.headers.get("Accept"))
    return web.Response(body=body, headers={"Content-Type": content_type})


def _meeting_service(app: web.Application):
    """The app's MeetingService (sfu.rest mounts it), if this build has meetings."""
    try:
        from .rest import MEETINGS_KEY
    except ImportError:
        return None
    return app.get(MEETINGS_KEY)


def install(app: web.Application, engine) -> Metrics:
    """Mount GET /metrics on ``app`` and run the updater while the app runs."""
    metrics = Metrics(engine)
    app[METRICS_KEY] = metrics
    app.router.add_get("/metrics", handle_metrics)

    async def on_startup(app: web.Application) -> None:
        meetings = _meeting_service(app)
        if meetings is not None:
            metrics.watch_meetings(meetings)
        metrics.start()

    async def on_cleanup(_app: web.Application) -> None:
        await metrics.stop()

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return metrics
