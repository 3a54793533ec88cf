"""Soak benchmark: a long run of joins, leaves and abandoned sessions; RSS and descriptors.

    python -m bench.soak [--duration 1800] [--interval 60] [--rooms 2] [--viewers 4] [--out bench/results]

Starts ``sfu serve`` as a child process on loopback (bench.fanout.SfuProcess) and,
for ``--duration`` seconds, keeps ``--rooms`` rooms busy with participants of
bench.loadgen (real WHIP/WHEP, ICE, DTLS and SRTP):

- each room has one publisher sending ``--rate`` packets/s of VP8 and about
  ``--viewers`` viewers;
- every ``--churn`` seconds one participant leaves (``DELETE`` of its session
  URL, with its token) and a new one joins: mostly viewers, every fifth time the
  publisher itself (the viewer packet count is a liveness figure, not a loss
  measurement: bench.fanout and bench.sweep measure loss);
- every second ``--abandon`` sessions are created and never connected (a WHIP or
  WHEP ``POST`` and nothing after it, in rooms of their own): the server must
  reap them after ``--consent-timeout``.

It samples the server every ``--interval`` seconds: RSS (``/proc/<pid>/status``
VmRSS), open descriptors (``/proc/<pid>/fd``), threads, ``/healthz`` counts
(transports, rooms, connecting) and what the load did (joins, leaves,
abandoned, failures, packets the viewers received).  At the end everyone leaves,
it waits until the server has reaped everything (``--drain``, default the consent
timeout + 10 s) and takes the last sample.  ``soak.json`` and ``soak.md`` go to
``--out``; the exit code is non-zero if the server died or no join succeeded.

Not part of ``make test`` (tests/test_soak_smoke.py runs ~15 s of it).  When not in a
loopback-only network namespace it re-runs itself through scripts/netns-run.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

from bench.fanout import (
    ROOT,
    SfuProcess,
    _git_commit,
    proc_rss_kib,
    reexec_in_loopback_namespace,
    run_loop,
    wait_healthy,
)
from bench.loadgen import Participant

SAMPLE_KEYS = ("t", "phase", "rss_kib", "fds", "threads", "transports", "rooms", "connecting",
               "joins", "leaves", "abandoned", "failures", "publishers", "viewers", "viewer_packets")


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def proc_threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


class Soak:
    """The load of one run; ``sample()`` is what the report is made of."""

    def __init__(self, http, sfu: SfuProcess, cert, args) -> None:
        self.http = http
        self.sfu = sfu
        self.cert = cert
        self.args = args
        self.rooms = [f"soak-{i}" for i in range(args.rooms)]
        self.publishers: dict[str, Participant] = {}
        self.viewers: dict[str, list[Participant]] = {room: [] for room in self.rooms}
        self.gone_packets = 0  # received by viewers that have left
        self.joins = self.leaves = self.abandoned = self.failures = 0
        self.errors: dict[str, int] = {}
        self.samples: list[dict] = []
        self.started = time.monotonic()
        self._tasks: set[asyncio.Task] = set()

    # -- one participant ------------------------------------------------------

    def _failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        key = f"{what}: {type(exc).__name__}: {str(exc)[:80]}"
        self.errors[key] = self.errors.get(key, 0) + 1

    async def join(self, room: str, role: str) -> Participant | None:
        p = Participant(role, self.cert, rate=self.args.rate, size=self.args.size)
        p.token = self.sfu.token(room)
        try:
            await p.connect(self.http, self.sfu.url, room, timeout=self.args.connect_timeout)
        except Exception as exc:
            self._failed("join", exc)
            await self.leave(p, count=False)
            return None
        self.joins += 1
        if role == "publish":
            p.start_sending()
        return p

    async def leave(self, p: Participant, count: bool = True) -> None:
        """Participant.leave, with the session's token on the DELETE."""
        if p.role == "subscribe":
            self.gone_packets += p.stats.packets
        p.close()
        if p.location:
            try:
                async with self.http.delete(self.sfu.url + p.location,
                                            headers={"Authorization": f"Bearer {p.token}"}) as resp:
                    await resp.read()
                    if resp.status >= 300 and resp.status != 404:
                        raise RuntimeError(f"DELETE {resp.status}")
            except Exception as exc:
                self._failed("leave", exc)
            p.location = None
        if count:
            self.leaves += 1

    async def abandon(self, room: str) -> None:
        """A WHIP or WHEP session that is created and never connected."""
        role = random.choice(("publish", "subscribe"))
        p = Participant(role, self.cert)
        path = "whip" if role == "publish" else "whep"
        headers = {"Content-Type": "application/sdp", "Authorization": f"Bearer {self.sfu.token(room)}"}
        try:
            async with self.http.post(f"{self.sfu.url}/{path}/{room}", data=p.offer(), headers=headers) as resp:
                await resp.read()
                if resp.status != 201:
                    raise RuntimeError(f"{path} POST {resp.status}")
            self.abandoned += 1
        except Exception as exc:
            self._failed("abandon", exc)

    # -- the load -------------------------------------------------------------

    async def fill(self) -> None:
        for room in self.rooms:
            if room not in self.publishers:
                p = await self.join(room, "publish")
                if p is not None:
                    self.publishers[room] = p
            while len(self.viewers[room]) < self.args.viewers:
                p = await self.join(room, "subscribe")
                if p is None:
                    break
                self.viewers[room].append(p)

    async def churn_once(self, n: int) -> None:
        room = random.choice(self.rooms)
        if n % 5 == 4 and room in self.publishers:
            await self.leave(self.publishers.pop(room))
        elif self.viewers[room]:
            viewers = self.viewers[room]
            await self.leave(viewers.pop(random.randrange(len(viewers))))
        await self.fill()

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run_load(self) -> None:
        args = self.args
        await self.fill()
        await self.sample("start")
        end = self.started + args.duration
        next_sample = time.monotonic() + args.interval
        next_churn = time.monotonic() + args.churn
        churns = 0
        while time.monotonic() < end:
            self.sfu.check_alive()
            for _ in range(args.abandon):
                # rooms of their own: in a live room an abandoned WHIP session's track could be
                # the one a new viewer's single video section gets, and it never sends
                self._spawn(self.abandon(f"soak-abandoned-{random.randrange(args.rooms)}"))
            now = time.monotonic()
            if now >= next_churn:
                next_churn = now + args.churn
                await self.churn_once(churns)
                churns += 1
            if now >= next_sample:
                next_sample = now + args.interval
                await self.sample("run")
            await asyncio.sleep(max(0.0, min(1.0, end - time.monotonic())))
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.sample("end of load")
        for room in self.rooms:
            for p in self.viewers[room]:
                await self.leave(p)
            self.viewers[room] = []
            if room in self.publishers:
                await self.leave(self.publishers.pop(room))
        # every session left or abandoned must be gone; then the last sample
        deadline = time.monotonic() + args.drain
        while time.monotonic() < deadline:
            self.sfu.check_alive()
            health = await self._health()
            if not health.get("transports") and not health.get("connecting"):
                break
            await asyncio.sleep(0.5)
        await self.sample("drained")

    async def _health(self) -> dict:
        try:
            async with self.http.get(self.sfu.url + "/healthz") as resp:
                return await resp.json()
        except Exception:
            return {}

    async def sample(self, phase: str) -> dict:
        health = await self._health()
        pid = self.sfu.pid
        viewers = [p for room in self.rooms for p in self.viewers[room]]
        s = {
            "t": round(time.monotonic() - self.started, 1),
            "phase": phase,
            "rss_kib": proc_rss_kib(pid),
            "fds": proc_fds(pid),
            "threads": proc_threads(pid),
            "transports": health.get("transports"),
            "rooms": health.get("rooms"),
            "connecting": health.get("connecting"),
            "joins": self.joins,
            "leaves": self.leaves,
            "abandoned": self.abandoned,
            "failures": self.failures,
            "publishers": len(self.publishers),
            "viewers": len(viewers),
            "viewer_packets": self.gone_packets + sum(p.stats.packets for p in viewers),
        }
        self.samples.append(s)
        print_row(s)
        return s


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

_HEADER = (f"{'t s':>7} {'phase':<12} {'RSS MiB':>8} {'fds':>5} {'thr':>4} {'transp':>6} {'conn':>5} "
           f"{'joins':>6} {'leaves':>6} {'aband':>6} {'fail':>5} {'rx pkts':>9}")


def print_row(s: dict) -> None:
    def f(v, spec=""):
        return "-" if v is None else format(v, spec)
    print(f"{s['t']:>7.1f} {s['phase']:<12} {s['rss_kib'] / 1024:>8.1f} {s['fds']:>5} {s['threads']:>4} "
          f"{f(s['transports']):>6} {f(s['connecting']):>5} {s['joins']:>6} {s['leaves']:>6} "
          f"{s['abandoned']:>6} {s['failures']:>5} {s['viewer_packets']:>9}", flush=True)


def summary(samples: list[dict]) -> dict:
    if not samples:
        return {}
    first, last = samples[0], samples[-1]
    peak = max(s["rss_kib"] for s in samples)
    return {
        "rss_kib_start": first["rss_kib"], "rss_kib_end": last["rss_kib"], "rss_kib_peak": peak,
        "rss_growth_kib": last["rss_kib"] - first["rss_kib"],
        "fds_start": first["fds"], "fds_end": last["fds"], "fds_peak": max(s["fds"] for s in samples),
        "threads_start": first["threads"], "threads_end": last["threads"],
        "joins": last["joins"], "leaves": last["leaves"], "abandoned": last["abandoned"],
        "failures": last["failures"], "viewer_packets": last["viewer_packets"],
        "transports_end": last["transports"], "connecting_end": last["connecting"],
    }


def markdown(result: dict) -> str:
    meta, summ = result["meta"], result.get("summary", {})
    lines = [
        "# Soak", "",
        f"{meta['date']}, commit {meta['commit']}, {meta['duration']:.0f} s of load, {meta['rooms']} rooms "
        f"x (1 publisher at {meta['rate']:.0f} packets/s + {meta['viewers']} viewers), a leave and a join "
        f"every {meta['churn']} s, {meta['abandon']} abandoned sessions/s, consent timeout "
        f"{meta['consent_timeout']} s, datapath {meta['datapath']}.", "",
    ]
    if summ:
        lines += [
            f"RSS {summ['rss_kib_start'] / 1024:.1f} MiB at the start, {summ['rss_kib_end'] / 1024:.1f} MiB "
            f"at the end (peak {summ['rss_kib_peak'] / 1024:.1f}); descriptors {summ['fds_start']} -> "
            f"{summ['fds_end']} (peak {summ['fds_peak']}); {summ['joins']} joins, {summ['leaves']} leaves, "
            f"{summ['abandoned']} abandoned, {summ['failures']} failures.", "",
        ]
    lines += ["| " + " | ".join(SAMPLE_KEYS) + " |", "|" + "---|" * len(SAMPLE_KEYS)]
    for s in result["samples"]:
        lines.append("| " + " | ".join("-" if s[k] is None else str(s[k]) for k in SAMPLE_KEYS) + " |")
    if result.get("errors"):
        lines += ["", "Failures:", ""] + [f"- {n} x {k}" for k, n in sorted(result["errors"].items())]
    if "sfu_exit" in result:
        lines += ["", f"**The server exited with {result['sfu_exit']}.**"]
    return "\n".join(lines) + "\n"


async def run(args) -> dict:
    import aiohttp

    from sfu.dtls import Certificate

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": _git_commit(), "python": platform.python_version(), "cpus": os.cpu_count(),
            **{k: getattr(args, k) for k in ("duration", "interval", "rooms", "viewers", "rate", "churn",
                                             "abandon", "consent_timeout", "datapath")},
        },
        "samples": [],
    }
    print(_HEADER, flush=True)
    with tempfile.TemporaryDirectory(prefix="sfu-soak-") as tmp:
        sfu = SfuProcess(os.path.join(tmp, "data"), out_dir / "sfu-soak.log",
                         extra=["--consent-timeout", str(args.consent_timeout), "--datapath", args.datapath])
        soak = None
        try:
            sfu.start()
            timeout = aiohttp.ClientTimeout(total=30)
            # no keep-alive: the server's descriptor count is then its own, not our idle pool
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
                await wait_healthy(http, sfu)
                soak = Soak(http, sfu, Certificate.generate(), args)
                try:
                    await soak.run_load()
                except Exception as exc:
                    result["error"] = f"{type(exc).__name__}: {exc}"[:500]
                    print("error:", result["error"], flush=True)
                finally:
                    for p in list(soak.publishers.values()) + [v for vs in soak.viewers.values() for v in vs]:
                        p.close()
        finally:
            if sfu.proc is not None and sfu.proc.poll() is not None:
                result["sfu_exit"] = sfu.proc.returncode
            sfu.stop()
    if soak is not None:
        result["samples"] = soak.samples
        result["errors"] = soak.errors
        result["summary"] = summary(soak.samples)
    (out_dir / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "soak.md").write_text(markdown(result))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=1800.0, help="seconds of load (default 1800)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between samples (default 60)")
    p.add_argument("--rooms", type=int, default=2)
    p.add_argument("--viewers", type=int, default=4, help="viewers per room, kept up by the churn")
    p.add_argument("--rate", type=float, default=50.0, help="packets/s of each publisher")
    p.add_argument("--size", type=int, default=1100, help="RTP packet size in bytes")
    p.add_argument("--churn", type=float, default=2.0, help="seconds between a leave and a join")
    p.add_argument("--abandon", type=int, default=2, help="sessions created and never connected per second")
    p.add_argument("--consent-timeout", type=float, default=30.0,
                   help="the server's --consent-timeout: how soon it reaps the abandoned sessions")
    p.add_argument("--drain", type=float, default=None,
                   help="seconds to wait at the end for the server to reap everything (default consent + 10)")
    p.add_argument("--datapath", default="c", choices=("c", "pure"))
    p.add_argument("--connect-timeout", type=float, default=15.0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="directory for soak.json/.md")
    args = p.parse_args(argv)
    if args.drain is None:
        args.drain = args.consent_timeout + 10.0
    if args.duration <= 0 or args.interval <= 0 or args.rooms < 1 or args.viewers < 0 or args.churn <= 0:
        p.error("--duration, --interval, --churn must be positive, --rooms at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    code = reexec_in_loopback_namespace("bench.soak", argv)
    if code is not None:
        return code
    args = parse_args(argv)
    result = run_loop(run(args))
    summ = result.get("summary") or {}
    if summ:
        print(f"RSS {summ['rss_kib_start'] / 1024:.1f} -> {summ['rss_kib_end'] / 1024:.1f} MiB "
              f"(peak {summ['rss_kib_peak'] / 1024:.1f}), descriptors {summ['fds_start']} -> {summ['fds_end']} "
              f"(peak {summ['fds_peak']})", flush=True)
    print(f"results: {Path(args.out) / 'soak.json'} and soak.md", flush=True)
    return 1 if "sfu_exit" in result or "error" in result or not summ.get("joins") else 0


if __name__ == "__main__":
    sys.exit(main())
