"""Load sweep: raise the load on one SFU worker until it loses packets or saturates.

    python -m bench.sweep [--scenario webinar,meeting,audio,joinstorm,memory]
                          [--datapath c,pure] [--seconds 4] [--out bench/results]

For each data path (``sfu serve --datapath c|pure``, one SFU process
each, in the same run) and each scenario, synthetic participants
(bench/loadgen.py: real WHIP/WHEP, ICE, DTLS, SRTP) connect once; the
viewers' sockets are then read by one native thread (bench/sink.pyx) and the
publishers' packets built, protected and sent by another (bench/publisher.pyx),
so that the load generator stays cheap. Then the publishers' packet rate goes up step
by step; each step measures, over ``--seconds``:

- the SFU's CPU time (utime+stime and schedstat) per forwarded packet,
- loss (distinct packets the viewers got vs. what the publishers sent times
  the fan-out), latency from the publisher's send time to the viewer's
  receive time (1 packet in 16 per viewer is decrypted for its trailer),
- the load generator's own CPU,
- and the floor (bench/floor.pyx) doing only libsrtp protect + sendmmsg of
  the same packets to the same number of sockets at the same rate.

A scenario stops at the first step with loss above ``--max-loss`` (1%) or the
SFU above ``--saturation`` (95% of a core). The highest step below both is
the worker's sustained forwarded packets per second (one core).

Scenarios:
- ``webinar``: R rooms of 1 video publisher -> N viewers.
- ``meeting``: one room of N participants, each publishing video and viewing
  the N-1 newest other tracks (N-1 video sections).
- ``audio``: a large audio-only room: A audio publishers (Opus-sized 100-byte
  packets) -> N viewers.
- ``joinstorm``: a webinar at moderate load while K viewers join at once:
  join times, and loss of the viewers already there.
- ``memory``: SFU RSS per subscription and per published video stream at
  1,000 subscriptions.

Writes ``sweep.json``, then ``sweep.md`` and PNG plots (bench/report.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

from bench.fanout import (
    BENCH_AUTH_SECRET, CLK_TCK, ROOT, SfuProcess, _git_commit, _health, percentile, reexec_in_loopback_namespace, proc_cpu_ns,
    run_loop,
    proc_cpu_ticks, proc_rss_kib, wait_healthy,
)

SCENARIOS = ("webinar", "meeting", "audio", "joinstorm", "memory")


# -- progress ---------------------------------------------------------------------


class Progress:
    """One status line with a bar on stderr (a plain line per update when not a terminal)."""

    def __init__(self, enabled: bool = True) -> None:
        self.tty = sys.stderr.isatty()
        self.enabled = enabled
        self._last = 0.0

    def show(self, fraction: float, text: str) -> None:
        if not self.enabled:
            return
        fraction = min(1.0, max(0.0, fraction))
        bar = "#" * int(24 * fraction) + "." * (24 - int(24 * fraction))
        line = f"[{bar}] {100 * fraction:5.1f}% {text}"
        if self.tty:
            sys.stderr.write("\r\x1b[K" + line)
            sys.stderr.flush()
        elif time.monotonic() - self._last > 5.0:
            self._last = time.monotonic()
            print(line, file=sys.stderr, flush=True)

    def done(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


# -- participants --------------------------------------------------------------------


def token(room: str) -> str:
    """An access token for the bench SFU (started with fanout.BENCH_AUTH_SECRET)."""
    from sfu.auth import Grants, mint_token

    return mint_token(BENCH_AUTH_SECRET, "bench", "bench", room, Grants(publish=True, subscribe=True))


async def connect_all(http, url: str, participants, room_of, batch: int, timeout: float, progress=None,
                      connected=None) -> list[float]:
    """Connect in batches; returns each connect duration (seconds). ``connected(p)`` runs
    as soon as ``p`` is connected (e.g. to hand its socket to a Sink while media flows)."""
    durations: list[float] = []

    async def one(p):
        t0 = time.monotonic()
        if p.token is None:
            p.token = token(room_of(p))
        await asyncio.wait_for(p.connect(http, url, room_of(p)), timeout)
        durations.append(time.monotonic() - t0)
        if connected is not None:
            connected(p)

    for i in range(0, len(participants), batch):
        await asyncio.gather(*(one(p) for p in participants[i:i + batch]))
        if progress is not None:
            progress(min(i + batch, len(participants)), len(participants))
    return durations


class Load:
    """Publishers and viewers of one scenario, with their viewers read by a Sink and
    their publishers sent by a native Publisher (bench/publisher.pyx)."""

    def __init__(self, publishers, viewers, fanout: float, sink, sender=None) -> None:
        self.publishers = publishers
        self.viewers = viewers
        self.fanout = fanout  # forwarded copies expected per published packet
        self.sink = sink
        self.sender = sender  # bench.publisher.Publisher, or None: the Python path

    def sent(self) -> int:
        return sum(p.sent for p in self.publishers)

    def set_rate(self, rate: float) -> None:
        for p in self.publishers:
            if not p.sending:
                p.rate = rate
                p.start_sending()
            else:
                p.set_rate(rate)

    async def pause(self, settle: float) -> None:
        """Stop the publishers and wait ``settle`` seconds for what is in flight to land."""
        for p in self.publishers:
            p.stop_sending()
        await asyncio.sleep(settle)

    def resume(self) -> None:
        for p in self.publishers:
            p.start_sending()

    def sender_totals(self) -> dict | None:
        return None if self.sender is None else self.sender.totals()

    async def close(self, http, url: str) -> None:
        for p in self.publishers:
            p.stop_sending()
        if self.sender is not None:
            self.sender.stop()
        if self.sink is not None:
            self.sink.stop()
        await asyncio.gather(*(p.leave(http, url) for p in self.publishers + self.viewers),
                             return_exceptions=True)


async def build_load(http, url: str, cert, scenario: str, args, tag: str, progress: Progress) -> Load:
    from bench.loadgen import Participant
    from bench.sink import Sink

    rooms: dict[object, str] = {}
    publishers, viewers = [], []
    if scenario in ("webinar", "joinstorm"):
        for r in range(args.rooms):
            room = f"{tag}-{scenario}-{r}"
            p = Participant("publish", cert, rate=args.rates[0], size=args.size)
            rooms[p] = room
            publishers.append(p)
            for _ in range(args.viewers):
                v = Participant("subscribe", cert)
                rooms[v] = room
                viewers.append(v)
        fanout = args.viewers
    elif scenario == "meeting":
        room = f"{tag}-meeting"
        n = args.meeting
        for _ in range(n):
            p = Participant("publish", cert, rate=args.rates[0], size=args.size)
            rooms[p] = room
            publishers.append(p)
        for _ in range(n):
            v = Participant("subscribe", cert, video_sections=n - 1)
            rooms[v] = room
            viewers.append(v)
        fanout = n - 1
    elif scenario == "audio":
        # one speaker: a WHEP viewer's one audio section carries the newest audio track only
        room = f"{tag}-audio"
        p = Participant("publish", cert, rate=args.audio_rates[0], size=100, kind="audio")
        rooms[p] = room
        publishers.append(p)
        for _ in range(args.audio_viewers):
            v = Participant("subscribe", cert)
            rooms[v] = room
            viewers.append(v)
        fanout = args.audio_viewers
    else:
        raise ValueError(scenario)

    def shown(done, total):
        progress.show(done / total, f"{scenario}: {done}/{total} participants connected")

    everyone = publishers + viewers
    await connect_all(http, url, everyone, rooms.__getitem__, args.batch, args.connect_timeout, shown)
    sink = Sink(sample_every=args.sample_every)
    for v in viewers:
        raw = v.detach_socket()
        sink.add(raw.fileno(), v.srtp.rx)
    sink.start()
    return Load(publishers, viewers, fanout, sink, attach_sender(publishers))


def attach_sender(publishers):
    """One native thread sends for all ``publishers`` (connected); they keep receiving RTCP."""
    from bench.publisher import Publisher

    sender = Publisher()
    for p in publishers:
        p.attach_publisher(sender)
    sender.start()
    return sender


# -- one step -----------------------------------------------------------------------------


async def forwarding_latency_buckets(http, url: str) -> dict[float, float]:
    """The SFU's ``sfu_forwarding_latency_seconds`` histogram: {upper bound: cumulative count}."""
    from prometheus_client.parser import text_string_to_metric_families

    async with http.get(url + "/metrics") as resp:
        resp.raise_for_status()
        text = await resp.text()
    out: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == "sfu_forwarding_latency_seconds":
            for sample in family.samples:
                if sample.name.endswith("_bucket"):
                    le = float(sample.labels["le"])
                    out[le] = out.get(le, 0.0) + sample.value
    return out


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus' histogram_quantile over {upper bound: cumulative count} (q in 0..1):
    linear interpolation inside the bucket that holds the rank; None without samples."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        count = buckets[le]
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = le, count
    return lower


async def measure_step(http, sfu: SfuProcess, load: Load, rate: float, args, progress: Progress,
                       label: str) -> dict:
    from bench.floor import wakeup_lateness

    load.set_rate(rate)
    await asyncio.sleep(args.warmup)
    sink = load.sink
    # exact accounting: the publishers pause at both ends of the window and every packet
    # in flight lands before the counters are read, so sent and received are the same
    # packets (a window shifted by the transit time miscounts a packet per publisher)
    await load.pause(args.grace)
    lat0 = await forwarding_latency_buckets(http, sfu.url)
    h0 = await _health(http, sfu.url)
    sent0 = load.sent()
    got0 = sink.totals()
    sink.take_samples()
    sink.record(True)
    load.resume()
    ticks0, ns0 = proc_cpu_ticks(sfu.pid), proc_cpu_ns(sfu.pid)
    own0 = time.process_time()
    sender0 = load.sender_totals()
    t0 = time.monotonic()
    end = t0 + args.seconds
    # the machine's own scheduling noise over the step: how late a sleeping thread wakes
    lateness = asyncio.get_running_loop().run_in_executor(None, wakeup_lateness, args.seconds)
    while (now := time.monotonic()) < end:
        await asyncio.sleep(min(0.5, end - now))
        sfu.check_alive()
        elapsed = time.monotonic() - t0
        cpu = (proc_cpu_ticks(sfu.pid) - ticks0) / CLK_TCK
        progress.show(elapsed / args.seconds, f"{label}: {rate:g} pkt/s per publisher, SFU CPU {100 * cpu / max(elapsed, 1e-9):5.1f}%")
    t1 = time.monotonic()
    ticks1, ns1 = proc_cpu_ticks(sfu.pid), proc_cpu_ns(sfu.pid)
    own1 = time.process_time()
    sender1 = load.sender_totals()
    await load.pause(args.grace)  # the next step's set_rate resumes
    sent1 = load.sent()
    got1 = sink.totals()
    h1 = await _health(http, sfu.url)
    lat1 = await forwarding_latency_buckets(http, sfu.url)
    late = await lateness
    sink.record(False)
    samples = sink.take_samples()
    wall = t1 - t0
    forwarded = h1["stats"].get("rtp_forwarded", 0) - h0["stats"].get("rtp_forwarded", 0)
    cpu = (ticks1 - ticks0) / CLK_TCK
    cpu_sched = (ns1 - ns0) / 1e9
    expected = (sent1 - sent0) * load.fanout
    received = got1["distinct"] - got0["distinct"]
    drops = {k: v - h0.get("drops", {}).get(k, 0) for k, v in h1.get("drops", {}).items()
             if v - h0.get("drops", {}).get(k, 0)}

    def ms(q):
        v = percentile(samples, q)
        return None if v is None else round(v / 1000.0, 3)

    # the latency the SFU adds (kernel receive timestamp -> sendmmsg returned, C path; see
    # sfu_forwarding_latency_seconds), from the histogram's growth over the step (it is fed
    # once a second, so the window is shifted by up to 1 s)
    added = {le: lat1.get(le, 0.0) - lat0.get(le, 0.0) for le in lat1}

    def added_ms(q):
        v = histogram_quantile(added, q)
        return None if v is None else round(v * 1000.0, 3)

    total_added = added.get(float("inf"), 0.0)

    return {
        "rate_per_publisher": rate,
        "publishers": len(load.publishers),
        "viewers": len(load.viewers),
        "seconds": round(wall, 3),
        "published_per_second": round((sent1 - sent0) / wall, 1),
        "forwarded_per_second": round(forwarded / wall, 1),
        "rtp_forwarded": forwarded,
        "expected": expected,
        "received": received,
        "loss": round(max(0.0, 1.0 - received / expected), 6) if expected else None,
        "duplicates": got1["duplicates"] - got0["duplicates"],
        "sfu_cpu_percent": round(100 * cpu / wall, 2),
        "sfu_cpu_us_per_forwarded": round(cpu_sched * 1e6 / forwarded, 3) if forwarded else None,
        "sfu_cpu_us_per_forwarded_ticks": round(cpu * 1e6 / forwarded, 3) if forwarded else None,
        "latency_ms_p50": ms(50),
        "latency_ms_p99": ms(99),
        "latency_ms_max": round(max(samples) / 1000.0, 3) if samples else None,
        "latency_samples": len(samples),
        "sfu_latency_ms_p50": added_ms(0.5),
        "sfu_latency_ms_p99": added_ms(0.99),
        "sfu_latency_within_2ms": round(added.get(0.002, 0.0) / total_added, 5) if total_added else None,
        "sfu_latency_samples": int(total_added),
        "wakeup_late_ms_p99": None if not late else round(percentile(late, 99) * 1000.0, 3),
        "wakeup_late_over_2ms": None if not late else round(sum(x > 0.002 for x in late) / len(late), 5),
        "loadgen_cpu_percent": round(100 * (own1 - own0) / wall, 2),
        # the native publishers' thread (included in loadgen_cpu_percent)
        "publisher_cpu_percent": None if sender0 is None else
        round(100 * (sender1["cpu_seconds"] - sender0["cpu_seconds"]) / wall, 2),
        "publisher_send_errors": None if sender0 is None else sender1["errors"] - sender0["errors"],
        "sfu_rss_kib": proc_rss_kib(sfu.pid),
        "sfu_drops": drops,
    }


def run_floor_step(fanout: int, ticks_per_second: float, seconds: float, size: int, profile: str,
                   destinations: int = 0) -> dict:
    """bench.floor at the same shape: ``fanout`` of ``destinations`` (as many as the
    scenario has viewers) per tick, ``ticks_per_second`` (the publishers' packets/s).
    The destinations are connected UDP sockets read by a Sink, like the viewers'."""
    from bench.floor import run as floor_run
    from bench.loadgen import VideoSource
    from bench.sink import Sink
    from sfu.srtp import KEY_LENGTHS, SrtpPair

    socks = []
    sink = Sink(sample_every=1 << 30)
    try:
        destinations = max(destinations, fanout)
        for _ in range(destinations):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            s.bind(("127.0.0.1", 0))
            s.setblocking(False)
            socks.append(s)
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        out.bind(("127.0.0.1", 0))
        socks.append(out)
        for s in socks[:destinations]:
            s.connect(out.getsockname())
        n = KEY_LENGTHS[profile]
        pairs = [SrtpPair(profile, os.urandom(n), os.urandom(n)) for _ in range(destinations)]
        for s, pair in zip(socks, pairs):
            sink.add(s.fileno(), pair.rx)
        sink.start()
        packet = VideoSource(0x5EED, size=size).next_packet(time.monotonic_ns())[2]
        result = floor_run(out.fileno(), [s.getsockname() for s in socks[:destinations]], [p.tx for p in pairs],
                           packet, ticks_per_second, seconds, fanout)
        time.sleep(0.1)
        result["received"] = sink.totals()["packets"]
        return result
    finally:
        sink.stop()
        for s in socks:
            s.close()


async def sweep_scenario(http, sfu: SfuProcess, cert, scenario: str, args, progress: Progress,
                         mode: str, tag: str) -> dict:
    out = {"scenario": scenario, "datapath": mode, "steps": []}
    load = await build_load(http, sfu.url, cert, scenario, args, tag, progress)
    loop = asyncio.get_running_loop()
    try:
        rates = args.audio_rates if scenario == "audio" else args.rates
        for i, rate in enumerate(rates):
            label = f"{mode} {scenario} step {i + 1}/{len(rates)}"
            step = await measure_step(http, sfu, load, rate, args, progress, label)
            if args.floor and mode == args.datapaths[0]:
                fan = max(1, round(load.fanout))
                ticks = step["published_per_second"]
                size = 100 if scenario == "audio" else args.size
                floor = await loop.run_in_executor(None, run_floor_step, fan, ticks, min(args.seconds, 3.0),
                                                   size, args.profile, len(load.viewers))
                step["floor_us_per_packet"] = round(floor["us_per_packet"], 3) if floor["us_per_packet"] else None
                step["floor_packets"] = floor["packets"]
                if step["floor_us_per_packet"] and step["sfu_cpu_us_per_forwarded"]:
                    step["ratio_to_floor"] = round(step["sfu_cpu_us_per_forwarded"] / step["floor_us_per_packet"], 3)
            out["steps"].append(step)
            progress.done()
            print_step(mode, scenario, step)
            if step["loss"] is not None and step["loss"] > args.max_loss:
                out["stopped"] = f"loss {100 * step['loss']:.2f}% > {100 * args.max_loss:g}%"
                break
            if step["sfu_cpu_percent"] > args.saturation:
                out["stopped"] = f"SFU CPU {step['sfu_cpu_percent']:.0f}% > {args.saturation:g}%"
                break
            if step["latency_ms_p50"] is not None and step["latency_ms_p50"] > args.max_latency:
                # a queue builds up in the socket buffers: the worker does not keep up
                out["stopped"] = f"latency p50 {step['latency_ms_p50']:.0f} ms > {args.max_latency:g} ms"
                break
    finally:
        await load.close(http, sfu.url)
    ok = [s for s in out["steps"] if s["loss"] is not None and s["loss"] <= args.max_loss
          and s["sfu_cpu_percent"] <= args.saturation
          and (s["latency_ms_p50"] is None or s["latency_ms_p50"] <= args.max_latency)]
    if ok:
        best = max(ok, key=lambda s: s["forwarded_per_second"])
        out["sustained_forwarded_per_second"] = best["forwarded_per_second"]
        out["sustained_loss"] = best["loss"]
        out["sustained_sfu_cpu_percent"] = best["sfu_cpu_percent"]
        cpu = best["sfu_cpu_percent"] / 100.0
        out["forwarded_per_second_per_core"] = round(best["forwarded_per_second"] / cpu, 1) if cpu else None
    return out


async def join_storm(http, sfu: SfuProcess, cert, args, progress: Progress, mode: str, tag: str) -> dict:
    """A webinar at a moderate rate; then ``--storm`` viewers join at once."""
    from bench.loadgen import Participant

    load = await build_load(http, sfu.url, cert, "joinstorm", args, tag, progress)
    try:
        load.set_rate(args.storm_rate)
        await asyncio.sleep(args.warmup)
        got0, sent0 = load.sink.totals(), load.sent()
        ticks0 = proc_cpu_ticks(sfu.pid)
        t0 = time.monotonic()
        joiners = [Participant("subscribe", cert) for _ in range(args.storm)]
        room = f"{tag}-joinstorm-0"
        results = await asyncio.gather(*(_timed_connect(p, http, sfu.url, room, args.connect_timeout)
                                         for p in joiners), return_exceptions=True)
        storm_seconds = time.monotonic() - t0
        await asyncio.sleep(1.0)
        cpu = (proc_cpu_ticks(sfu.pid) - ticks0) / CLK_TCK
        wall = time.monotonic() - t0
        # stop sending and let the backlog drain: late is not lost
        for p in load.publishers:
            p.stop_sending()
        sent1 = load.sent()
        await asyncio.sleep(2.0)
        got1 = load.sink.totals()
        times = [r for r in results if isinstance(r, float)]
        failures = [repr(r)[:200] for r in results if not isinstance(r, float)]
        expected = (sent1 - sent0) * load.fanout
        received = got1["distinct"] - got0["distinct"]
        for p in joiners:
            await p.leave(http, sfu.url)
        return {
            "scenario": "joinstorm", "datapath": mode, "joiners": args.storm,
            "existing_viewers": len(load.viewers), "rate_per_publisher": args.storm_rate,
            "joined": len(times), "failures": len(failures), "failure_examples": failures[:3],
            "storm_seconds": round(storm_seconds, 3),
            "join_ms_p50": round(1000 * percentile(times, 50), 1) if times else None,
            "join_ms_p99": round(1000 * percentile(times, 99), 1) if times else None,
            "join_ms_max": round(1000 * max(times), 1) if times else None,
            "existing_viewers_loss": round(max(0.0, 1 - received / expected), 6) if expected else None,
            "sfu_cpu_percent": round(100 * cpu / wall, 2),
        }
    finally:
        await load.close(http, sfu.url)


async def _timed_connect(p, http, url, room, timeout) -> float:
    t0 = time.monotonic()
    p.token = token(room)
    await asyncio.wait_for(p.connect(http, url, room), timeout)
    return time.monotonic() - t0


async def memory(http, sfu: SfuProcess, cert, args, progress: Progress, mode: str, tag: str) -> dict:
    """RSS per published video stream and per subscription (``--subscriptions`` viewers)."""
    from bench.loadgen import Participant
    from bench.sink import Sink
    from sfu.transport import DTLS_RELEASE_AFTER

    rooms = max(1, args.subscriptions // args.viewers)
    rss0 = proc_rss_kib(sfu.pid)
    publishers = [Participant("publish", cert, rate=100, size=args.size) for _ in range(rooms)]
    room_of = {p: f"{tag}-mem-{i}" for i, p in enumerate(publishers)}
    await connect_all(http, sfu.url, publishers, room_of.__getitem__, args.batch, args.connect_timeout)
    sender = attach_sender(publishers)
    for p in publishers:
        p.start_sending()
    # fill the packet caches: 512 KiB of 1100-byte packets at 100/s takes ~5 s
    fill = args.cache_fill
    t_end = time.monotonic() + fill
    while time.monotonic() < t_end:
        progress.show(1 - (t_end - time.monotonic()) / fill, f"memory: filling {rooms} packet caches")
        await asyncio.sleep(0.5)
    rss1 = proc_rss_kib(sfu.pid)
    # joins without media (the Python handshakes of 1,000 viewers need the CPU; the caches
    # stay filled), then media again, so every subscription's send path has run
    for p in publishers:
        p.stop_sending()
    viewers = []
    for i, p in enumerate(publishers):
        for _ in range(args.viewers):
            v = Participant("subscribe", cert)
            room_of[v] = room_of[p]
            viewers.append(v)

    def shown(done, total):
        progress.show(done / total, f"memory: {done}/{total} subscriptions")

    sink = Sink(sample_every=1 << 30)
    sink.start()

    def to_sink(v):
        # the sink reads it from now on, not 1,000 Python protocols
        sink.add(v.detach_socket().fileno(), v.srtp.rx)

    try:
        await connect_all(http, sfu.url, viewers, room_of.__getitem__, args.batch, args.connect_timeout, shown,
                          connected=to_sink)
        for p in publishers:
            p.start_sending()
        await asyncio.sleep(1.0)
        rss_joined = proc_rss_kib(sfu.pid)  # the last joiners still hold their DTLS state
        # steady state: every DTLS endpoint has released its OpenSSL objects (sfu.dtls)
        await asyncio.sleep(DTLS_RELEASE_AFTER + 2.0)
        rss2 = proc_rss_kib(sfu.pid)
        health = await _health(http, sfu.url)
    finally:
        for p in publishers:
            p.stop_sending()
        sender.stop()
        sink.stop()
        await asyncio.gather(*(p.leave(http, sfu.url) for p in publishers + viewers), return_exceptions=True)
    progress.done()
    subs = health.get("consumers", len(viewers) * 2)
    return {
        "scenario": "memory", "datapath": mode, "published_video_streams": rooms,
        "subscriptions": len(viewers), "consumers": subs,
        "rss_kib_start": rss0, "rss_kib_publishers": rss1, "rss_kib_subscriptions": rss2,
        "kib_per_published_stream": round((rss1 - rss0) / rooms, 1),
        "kib_per_subscription": round((rss2 - rss1) / max(1, len(viewers)), 1),
        "rss_kib_just_joined": rss_joined,
        "kib_per_subscription_just_joined": round((rss_joined - rss1) / max(1, len(viewers)), 1),
        "note": "a subscription is one WHEP viewer (transport, DTLS, SRTP, an audio and a video consumer)",
    }


# -- driver -----------------------------------------------------------------------------


def print_step(mode: str, scenario: str, s: dict) -> None:
    loss = "-" if s["loss"] is None else f"{100 * s['loss']:.3f}"
    ratio = s.get("ratio_to_floor")
    print(f"{mode:>6} {scenario:>8} {s['rate_per_publisher']:>6g} {s['forwarded_per_second']:>9.0f} "
          f"{s['sfu_cpu_percent']:>6.1f} {_f(s['sfu_cpu_us_per_forwarded'], '7.2f')} "
          f"{_f(s.get('floor_us_per_packet'), '6.2f')} {_f(ratio, '5.2f')} {loss:>7} "
          f"{_f(s['latency_ms_p50'], '6.2f')} {_f(s['latency_ms_p99'], '6.2f')} {s['loadgen_cpu_percent']:>6.1f}",
          flush=True)


HEADER = (f"{'path':>6} {'scenario':>8} {'rate':>6} {'fwd/s':>9} {'SFU%':>6} {'µs/fwd':>7} {'floor':>6} "
          f"{'ratio':>5} {'loss%':>7} {'p50ms':>6} {'p99ms':>6} {'gen%':>6}")


def _f(v, spec):
    return "-" if v is None else format(v, spec)


async def run(args) -> dict:
    import aiohttp

    from sfu.dtls import Certificate

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(not args.quiet)
    result = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": _git_commit(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "machine": platform.machine(), "seconds": args.seconds, "size": args.size,
            "rates": args.rates, "audio_rates": args.audio_rates, "rooms": args.rooms, "viewers": args.viewers,
            "meeting": args.meeting, "audio_viewers": args.audio_viewers,
            "datapaths": args.datapaths, "scenarios": args.scenarios, "max_loss": args.max_loss,
            "saturation": args.saturation, "srtp_profile_floor": args.profile,
        },
        "sweeps": [], "joinstorm": [], "memory": [],
    }
    print(HEADER, flush=True)
    cert = Certificate.generate()
    for mode in args.datapaths:
        with tempfile.TemporaryDirectory(prefix="sfu-sweep-") as tmp:
            sfu = SfuProcess(os.path.join(tmp, "data"), out_dir / f"sfu-{mode}.log",
                             extra=["--datapath", mode])
            try:
                sfu.start()
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
                    await wait_healthy(http, sfu)
                    tag = f"{mode}-{os.getpid()}"
                    scenarios = args.scenarios if mode == args.datapaths[0] else \
                        [s for s in args.scenarios if s in args.compare_scenarios]
                    for scenario in scenarios:
                        try:
                            if scenario == "joinstorm":
                                r = await join_storm(http, sfu, cert, args, progress, mode, tag)
                                result["joinstorm"].append(r)
                                print(f"{mode:>6} joinstorm: {r['joined']}/{r['joiners']} joined, "
                                      f"p50 {r['join_ms_p50']} ms p99 {r['join_ms_p99']} ms, "
                                      f"loss of existing viewers {r['existing_viewers_loss']}", flush=True)
                            elif scenario == "memory":
                                r = await memory(http, sfu, cert, args, progress, mode, tag)
                                result["memory"].append(r)
                                print(f"{mode:>6} memory: {r['kib_per_subscription']} KiB per subscription, "
                                      f"{r['kib_per_published_stream']} KiB per published video stream "
                                      f"({r['subscriptions']} subscriptions)", flush=True)
                            else:
                                r = await sweep_scenario(http, sfu, cert, scenario, args, progress, mode, tag)
                                result["sweeps"].append(r)
                        except Exception as exc:  # record, go on with the next scenario
                            progress.done()
                            sfu.check_alive()
                            result.setdefault("errors", []).append(
                                {"datapath": mode, "scenario": scenario, "error": f"{type(exc).__name__}: {exc}"[:500]})
                            print(f"{mode:>6} {scenario}: error {type(exc).__name__}: {exc}", flush=True)
                            traceback.print_exc()  # where it failed, on stderr
                        tag += "x"
            finally:
                sfu.stop()
    result["summary"] = summarize(result, args)
    (out_dir / "sweep.json").write_text(json.dumps(result, indent=2) + "\n")
    from bench import report

    report.write(result, out_dir)
    return result


def summarize(result: dict, args) -> dict:
    """The headline figures: per scenario and data path, and the ratios measured in this run."""
    summary: dict = {}
    by = {(s["datapath"], s["scenario"]): s for s in result["sweeps"]}
    for (mode, scenario), s in by.items():
        summary.setdefault(scenario, {})[mode] = {
            k: s.get(k) for k in ("sustained_forwarded_per_second", "forwarded_per_second_per_core",
                                  "sustained_loss", "sustained_sfu_cpu_percent", "stopped")
        }
    fast = by.get(("c", "webinar"))
    if fast and fast["steps"]:
        ratios = [st["ratio_to_floor"] for st in fast["steps"] if st.get("ratio_to_floor")]
        summary["fast_ratio_to_floor"] = {"min": min(ratios), "median": sorted(ratios)[len(ratios) // 2],
                                          "max": max(ratios)} if ratios else None
        best = [st for st in fast["steps"] if st["forwarded_per_second"] == fast.get("sustained_forwarded_per_second")]
        if ratios and best and best[0].get("ratio_to_floor"):
            summary["fast_ratio_to_floor"]["at_sustained"] = best[0]["ratio_to_floor"]
        half = min(fast["steps"], key=lambda st: abs(st["sfu_cpu_percent"] - 50))
        summary["latency_at_half_core"] = {"sfu_cpu_percent": half["sfu_cpu_percent"],
                                           "p50_ms": half["latency_ms_p50"], "p99_ms": half["latency_ms_p99"],
                                           "sfu_p50_ms": half.get("sfu_latency_ms_p50"),
                                           "sfu_p99_ms": half.get("sfu_latency_ms_p99"),
                                           "sfu_within_2ms": half.get("sfu_latency_within_2ms"),
                                           "wakeup_late_ms_p99": half.get("wakeup_late_ms_p99"),
                                           "wakeup_late_over_2ms": half.get("wakeup_late_over_2ms")}
    for other in ("pure",):
        slow = by.get((other, "webinar"))
        if fast and slow:
            pairs = [(a, b) for a in fast["steps"] for b in slow["steps"]
                     if a["rate_per_publisher"] == b["rate_per_publisher"]
                     and a["sfu_cpu_us_per_forwarded"] and b["sfu_cpu_us_per_forwarded"]]
            if pairs:
                ratio = [b["sfu_cpu_us_per_forwarded"] / a["sfu_cpu_us_per_forwarded"] for a, b in pairs]
                summary[f"{other}_over_fast_cpu_per_packet"] = {
                    "min": round(min(ratio), 2), "max": round(max(ratio), 2),
                    "at_rates": [a["rate_per_publisher"] for a, _ in pairs]}
    return summary


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.sweep", description=__doc__.split("\n\n")[0])
    lst = lambda typ: (lambda s: [typ(x) for x in s.split(",") if x.strip()])  # noqa: E731
    p.add_argument("--scenario", dest="scenarios", type=lst(str), default=["webinar", "meeting", "audio", "joinstorm"],
                   help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--datapath", dest="datapaths", type=lst(str), default=["c", "pure"],
                   help="SFU data paths to compare in this run (c, pure); the first gets the floor")
    p.add_argument("--compare-scenarios", type=lst(str), default=["webinar"],
                   help="scenarios also run on the other data paths (the first runs all)")
    p.add_argument("--rates", type=lst(float), default=[100, 200, 400, 700, 1000, 1500, 2000, 2500, 3000, 4000],
                   help="video packets/s per publisher, one step each")
    p.add_argument("--audio-rates", type=lst(float), default=[50, 100, 200, 400, 800, 1600],
                   help="audio packets/s per speaker, one step each")
    p.add_argument("--rooms", type=int, default=2, help="webinar rooms (1 publisher each)")
    p.add_argument("--viewers", type=int, default=50, help="viewers per webinar room")
    p.add_argument("--meeting", type=int, default=8, help="participants of the N-by-N meeting")
    p.add_argument("--audio-viewers", type=int, default=150, help="listeners in the audio room")
    p.add_argument("--storm", type=int, default=50, help="viewers joining at once (join storm)")
    p.add_argument("--storm-rate", type=float, default=200.0, help="packets/s per publisher during the storm")
    p.add_argument("--subscriptions", type=int, default=1000, help="viewers of the memory scenario")
    p.add_argument("--cache-fill", type=float, default=6.0, help="seconds of media before measuring RSS")
    p.add_argument("--size", type=int, default=1100, help="video RTP packet size")
    p.add_argument("--seconds", type=float, default=4.0, help="measured seconds per step")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--grace", type=float, default=0.3)
    p.add_argument("--batch", type=int, default=20, help="participants connected concurrently")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--sample-every", type=int, default=16, help="decrypt 1 packet in this many per viewer (latency)")
    p.add_argument("--max-loss", type=float, default=0.01)
    p.add_argument("--saturation", type=float, default=95.0, help="SFU CPU percent that counts as saturated")
    p.add_argument("--max-latency", type=float, default=50.0,
                   help="median latency (ms) above which the worker counts as not keeping up")
    p.add_argument("--profile", default="SRTP_AEAD_AES_128_GCM", help="SRTP profile of the floor (the SFU's is negotiated)")
    p.add_argument("--no-floor", dest="floor", action="store_false")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = p.parse_args(argv)
    for s in args.scenarios:
        if s not in SCENARIOS:
            p.error(f"unknown scenario {s!r}")
    for d in args.datapaths:
        if d not in ("c", "pure"):
            p.error(f"unknown data path {d!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    code = reexec_in_loopback_namespace("bench.sweep", argv)
    if code is not None:
        return code
    args = parse_args(argv)
    result = run_loop(run(args))
    print(json.dumps(result["summary"], indent=2))
    print(f"results: {Path(args.out) / 'sweep.json'}, sweep.md and plots", flush=True)
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
