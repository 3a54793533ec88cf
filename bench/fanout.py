"""Fan-out benchmark: one publisher, N viewers, SFU CPU time per forwarded packet.

    python -m bench.fanout --viewers 1,5,10,25,50 --seconds 10 [--rate 100] [--out bench/results]

Starts ``sfu serve`` as a child process on loopback, then for each N: one
publisher (bench.loadgen, real ICE/DTLS/SRTP) and N viewers in a fresh room;
once all are connected and a warm-up has passed, it measures for
``--seconds``:

- the SFU's CPU time (``/proc/<pid>/stat`` utime+stime, in clock ticks; the
  per-thread ``schedstat`` nanoseconds as a finer cross-check),
- packets forwarded (``/healthz`` ``stats.rtp_forwarded`` delta),
- what the viewers received of the packets sent in the window (loss) and
  the latency from the publisher's send time to the viewer's receive time,
- the load generator's own CPU time.

Headline: **SFU CPU microseconds per forwarded packet**. On loopback the
kernel's delivery of a sent packet is charged to the sender, so this figure
includes the receive work done on the SFU's behalf; compare runs made on the
same machine in the same way (see /work/shared/DESIGN.md, "Measuring").

When not already in a loopback-only network namespace the command re-runs
itself through scripts/netns-run.sh.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import math
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CLK_TCK = os.sysconf("SC_CLK_TCK")

RESULT_KEYS = (
    "viewers", "seconds", "rate", "packets_sent", "rtp_forwarded", "viewer_packets",
    "expected_packets", "loss", "latency_ms_p50", "latency_ms_p99", "latency_ms_max",
    "sfu_cpu_seconds", "sfu_cpu_percent", "sfu_cpu_us_per_forwarded",
    "sfu_cpu_us_per_forwarded_schedstat", "sfu_idle_cpu_percent",
    "sfu_cpu_us_per_forwarded_above_idle", "loadgen_cpu_seconds", "loadgen_cpu_percent",
    "loadgen_cpu_us_per_packet", "forwarded_per_second", "sfu_rss_kib", "sfu_drops",
    "publisher_plis", "publisher_nacks", "connect_seconds",
)


# ---------------------------------------------------------------------------
# process measurements
# ---------------------------------------------------------------------------


def proc_cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (proc(5): fields 14, 15)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    # the command name (field 2) may contain spaces: split after its ')'
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def proc_cpu_ns(pid: int) -> int:
    """On-CPU nanoseconds of all threads of a process (sched schedstat)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


def proc_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def percentile(values, q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an unsorted sequence."""
    if not len(values):
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100.0 * len(ordered)) - 1))
    return ordered[rank]


def loopback_only() -> bool:
    return all(name == "lo" for _index, name in socket.if_nameindex())


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------
# the SFU child process
# ---------------------------------------------------------------------------


BENCH_AUTH_SECRET = "bench-secret-loopback-only"


class SfuProcess:
    def __init__(self, data_dir: str, log_path: Path, extra: list[str] | None = None) -> None:
        self.http_port = free_port()
        self.rtc_port = free_port(socket.SOCK_DGRAM)
        self.log_path = log_path
        self.args = [
            sys.executable, "-m", "sfu", "serve", "--host", "127.0.0.1",
            "--http-port", str(self.http_port), "--rtc-port", str(self.rtc_port),
            "--data-dir", data_dir, "--log-level", "warning", "--auth-secret", BENCH_AUTH_SECRET,
            *(extra or []),
        ]
        self.proc: subprocess.Popen | None = None
        self._log = None

    def token(self, room: str) -> str:
        from sfu.auth import Grants, mint_token

        return mint_token(BENCH_AUTH_SECRET, "bench", "bench", room, Grants(publish=True, subscribe=True))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=self._log, stderr=self._log,
                                     stdin=subprocess.DEVNULL)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"sfu exited with {self.proc.returncode}; log: {self.tail()}")

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None


async def _health(http, url: str) -> dict:
    async with http.get(url + "/healthz") as resp:
        resp.raise_for_status()
        return await resp.json()


async def wait_healthy(http, sfu: SfuProcess, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        sfu.check_alive()
        try:
            return await _health(http, sfu.url)
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError("sfu did not become healthy; log: " + sfu.tail()) from None
            await asyncio.sleep(0.1)


# ---------------------------------------------------------------------------
# one step: 1 publisher, N viewers
# ---------------------------------------------------------------------------


def _progress(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K" + text)
        sys.stderr.flush()


async def run_step(http, sfu: SfuProcess, cert, viewers: int, args) -> dict:
    from bench.loadgen import Participant

    room = f"fanout-{viewers}-{os.getpid()}-{int(time.time())}"
    publisher = Participant("publish", cert, rate=args.rate, size=args.size, fps=args.fps)
    watchers = [Participant("subscribe", cert) for _ in range(viewers)]
    everyone = [publisher, *watchers]
    for participant in everyone:
        participant.token = sfu.token(room)
    try:
        t_connect = time.monotonic()
        await asyncio.wait_for(publisher.connect(http, sfu.url, room), args.connect_timeout)
        # connect viewers in batches, so that a large N is not one DTLS storm
        for i in range(0, viewers, args.batch):
            batch = watchers[i : i + args.batch]
            await asyncio.wait_for(asyncio.gather(*(w.connect(http, sfu.url, room) for w in batch)),
                                   args.connect_timeout)
            _progress(f"N={viewers}: {min(i + args.batch, viewers)}/{viewers} viewers connected")
        connect_seconds = time.monotonic() - t_connect

        # idle window: everyone connected, no media; the SFU's fixed cost
        # (timers, RTCP, consent) for this many transports
        idle_ns0, idle_t0 = proc_cpu_ns(sfu.pid), time.monotonic()
        await asyncio.sleep(args.idle_seconds)
        idle_rate = (proc_cpu_ns(sfu.pid) - idle_ns0) / 1e9 / max(time.monotonic() - idle_t0, 1e-9)

        publisher.start_sending()
        # warm-up: keyframe requests answered, every viewer receiving
        deadline = time.monotonic() + max(args.warmup, 0.0) + 10.0
        await asyncio.sleep(args.warmup)
        while any(w.stats.packets == 0 for w in watchers):
            sfu.check_alive()
            if time.monotonic() > deadline:
                idle = sum(w.stats.packets == 0 for w in watchers)
                raise RuntimeError(f"{idle} of {viewers} viewers received nothing after the warm-up")
            await asyncio.sleep(0.05)

        # -- the measured window --------------------------------------------
        for w in watchers:
            w.stats.latencies_us = array("d")
        h0 = await _health(http, sfu.url)
        c0 = publisher.source.counter
        ticks0, ns0 = proc_cpu_ticks(sfu.pid), proc_cpu_ns(sfu.pid)
        own0 = time.process_time()
        t0 = time.monotonic()
        received0 = sum(w.stats.packets for w in watchers)
        end = t0 + args.seconds
        while (now := time.monotonic()) < end:
            await asyncio.sleep(min(1.0, end - now))
            sfu.check_alive()
            elapsed = time.monotonic() - t0
            cpu = (proc_cpu_ticks(sfu.pid) - ticks0) / CLK_TCK
            got = sum(w.stats.packets for w in watchers) - received0
            _progress(f"N={viewers}: {elapsed:4.1f}/{args.seconds:g} s  viewers got {got / elapsed:7.0f} pkt/s"
                      f"  sfu cpu {100 * cpu / elapsed:5.1f}%")
        t1 = time.monotonic()
        ticks1, ns1 = proc_cpu_ticks(sfu.pid), proc_cpu_ns(sfu.pid)
        own1 = time.process_time()
        c1 = publisher.source.counter
        h1 = await _health(http, sfu.url)
        rss = proc_rss_kib(sfu.pid)
        latencies = array("d")
        for w in watchers:
            latencies.extend(w.stats.latencies_us)
            w.stats.latencies_us = None
        # packets of the window still in flight arrive within the grace time
        await asyncio.sleep(args.grace)
        publisher.stop_sending()
        _progress("")
    finally:
        publisher.stop_sending()
        await asyncio.gather(*(p.leave(http, sfu.url) for p in everyone), return_exceptions=True)

    wall = t1 - t0
    sfu_cpu = (ticks1 - ticks0) / CLK_TCK
    sfu_cpu_sched = (ns1 - ns0) / 1e9
    own_cpu = own1 - own0
    forwarded = h1.get("stats", {}).get("rtp_forwarded", 0) - h0.get("stats", {}).get("rtp_forwarded", 0)
    sent = c1 - c0
    expected = sent * viewers
    got = sum(w.stats.received_between(c0, c1) for w in watchers)
    drops0, drops1 = h0.get("drops", {}), h1.get("drops", {})
    drops = {k: v - drops0.get(k, 0) for k, v in drops1.items() if v - drops0.get(k, 0)}
    loadgen_packets = sent + got

    def ms(q):
        v = percentile(latencies, q)
        return None if v is None else round(v / 1000.0, 3)

    return {
        "viewers": viewers,
        "seconds": round(wall, 3),
        "rate": args.rate,
        "packets_sent": sent,
        "rtp_forwarded": forwarded,
        "viewer_packets": got,
        "expected_packets": expected,
        "loss": round(1.0 - got / expected, 6) if expected else None,
        "latency_ms_p50": ms(50),
        "latency_ms_p99": ms(99),
        "latency_ms_max": round(max(latencies) / 1000.0, 3) if latencies else None,
        "sfu_cpu_seconds": round(sfu_cpu, 3),
        "sfu_cpu_percent": round(100.0 * sfu_cpu / wall, 2),
        "sfu_cpu_us_per_forwarded": round(sfu_cpu * 1e6 / forwarded, 2) if forwarded else None,
        "sfu_cpu_us_per_forwarded_schedstat": round(sfu_cpu_sched * 1e6 / forwarded, 2) if forwarded else None,
        "sfu_idle_cpu_percent": round(100.0 * idle_rate, 2),
        "sfu_cpu_us_per_forwarded_above_idle": (
            round((sfu_cpu_sched - idle_rate * wall) * 1e6 / forwarded, 2) if forwarded else None),
        "loadgen_cpu_seconds": round(own_cpu, 3),
        "loadgen_cpu_percent": round(100.0 * own_cpu / wall, 2),
        "loadgen_cpu_us_per_packet": round(own_cpu * 1e6 / loadgen_packets, 2) if loadgen_packets else None,
        "forwarded_per_second": round(forwarded / wall, 1),
        "sfu_rss_kib": rss,
        "sfu_drops": drops,
        "publisher_plis": publisher.plis + publisher.firs,
        "publisher_nacks": publisher.nacks,
        "connect_seconds": round(connect_seconds, 3),
    }


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def marginal_fit(runs: list[dict]) -> dict | None:
    """Least-squares line of SFU CPU (s per s) against forwarded packets per
    second over the steps: the slope is the marginal cost of one forwarded
    packet, free of the fixed per-second cost (the intercept)."""
    points = [(r["forwarded_per_second"], r["sfu_cpu_percent"] / 100.0)
              for r in runs if "error" not in r and r.get("forwarded_per_second")]
    if len({x for x, _ in points}) < 2:
        return None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx
    return {"us_per_forwarded": round(slope * 1e6, 2),
            "fixed_cpu_percent": round(100.0 * (my - slope * mx), 2), "points": n}


def _fmt(value, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec)


def markdown(result: dict) -> str:
    meta = result["meta"]
    lines = [
        f"# Fan-out: 1 publisher -> N viewers ({meta['date']})",
        "",
        f"{meta['rate']:g} packets/s of {meta['size']} bytes (VP8, {meta['fps']} fps), "
        f"{meta['seconds']:g} s per step, SRTP profile negotiated by DTLS; "
        f"commit `{meta['commit']}`, {meta['cpus']} CPUs, Python {meta['python']}.",
        "",
        "| N | forwarded/s | SFU CPU % | **SFU µs/fwd pkt** | (schedstat) | above idle | idle CPU % | loss % | latency p50 ms | p99 ms | loadgen CPU % | loadgen µs/pkt |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["runs"]:
        if "error" in r:
            lines.append(f"| {r['viewers']} | error: {r['error']} |||||||||||")
            continue
        lines.append(
            f"| {r['viewers']} | {_fmt(r['forwarded_per_second'], '.0f')} | {_fmt(r['sfu_cpu_percent'], '.1f')} "
            f"| **{_fmt(r['sfu_cpu_us_per_forwarded'], '.1f')}** | {_fmt(r['sfu_cpu_us_per_forwarded_schedstat'], '.1f')} "
            f"| {_fmt(r['sfu_cpu_us_per_forwarded_above_idle'], '.1f')} | {_fmt(r['sfu_idle_cpu_percent'], '.1f')} "
            f"| {_fmt(None if r['loss'] is None else 100 * r['loss'], '.3f')} "
            f"| {_fmt(r['latency_ms_p50'], '.2f')} | {_fmt(r['latency_ms_p99'], '.2f')} "
            f"| {_fmt(r['loadgen_cpu_percent'], '.1f')} | {_fmt(r['loadgen_cpu_us_per_packet'], '.1f')} |"
        )
    fit = result.get("marginal")
    if fit:
        lines += ["", f"Marginal cost (least-squares slope of SFU CPU over forwarded packets/s, "
                  f"{fit['points']} steps): **{fit['us_per_forwarded']:.1f} µs per forwarded packet**, "
                  f"fixed cost {fit['fixed_cpu_percent']:.1f}% CPU."]
    lines += [
        "",
        "SFU µs/fwd pkt = SFU process CPU time (utime+stime, clock ticks) / packets forwarded "
        "(healthz `stats.rtp_forwarded`); it includes receiving the publisher's packet, and "
        "on loopback the kernel's delivery of each sent packet. Loss and latency are over "
        "the packets the publisher sent during the window; latency is send to viewer receive, "
        "both in the load generator. *above idle*: schedstat CPU minus the CPU rate measured "
        "with the same participants connected and no media, per forwarded packet.",
        "",
    ]
    return "\n".join(lines)


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


async def run(args) -> dict:
    import aiohttp

    from sfu.dtls import Certificate

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": _git_commit(),
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "clk_tck": CLK_TCK,
            "rate": args.rate,
            "size": args.size,
            "fps": args.fps,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "viewers": args.viewers,
        },
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="sfu-bench-") as tmp:
        sfu = SfuProcess(os.path.join(tmp, "data"), out_dir / "sfu.log")
        try:
            sfu.start()
            timeout = aiohttp.ClientTimeout(total=30)
            async with aiohttp.ClientSession(timeout=timeout) as http:
                health = await wait_healthy(http, sfu)
                result["meta"]["sfu_version"] = health.get("version")
                cert = Certificate.generate()
                for n in args.viewers:
                    step_timeout = args.connect_timeout * (2 + n / args.batch) + args.seconds + args.warmup + 30
                    try:
                        r = await asyncio.wait_for(run_step(http, sfu, cert, n, args), step_timeout)
                    except Exception as exc:  # record it, try the next N (unless the SFU died)
                        r = {"viewers": n, "error": f"{type(exc).__name__}: {exc}"[:500]}
                        _progress("")
                    result["runs"].append(r)
                    _print_row(r)
                    if sfu.proc.poll() is not None:
                        result["sfu_exit"] = sfu.proc.returncode
                        break
        finally:
            sfu.stop()
    result["marginal"] = marginal_fit(result["runs"])
    (out_dir / "fanout.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "fanout.md").write_text(markdown(result))
    return result


_HEADER = f"{'N':>4} {'fwd/s':>8} {'SFU CPU%':>8} {'µs/fwd':>7} {'>idle':>7} {'loss%':>7} {'p50 ms':>7} {'p99 ms':>7} {'gen CPU%':>8}"


def _print_row(r: dict) -> None:
    if "error" in r:
        print(f"{r['viewers']:>4} error: {r['error']}", flush=True)
        return
    loss = None if r["loss"] is None else 100 * r["loss"]
    print(f"{r['viewers']:>4} {_fmt(r['forwarded_per_second'], '8.0f')} {_fmt(r['sfu_cpu_percent'], '8.1f')}"
          f" {_fmt(r['sfu_cpu_us_per_forwarded'], '7.1f')} {_fmt(r['sfu_cpu_us_per_forwarded_above_idle'], '7.1f')}"
          f" {_fmt(loss, '7.3f')}"
          f" {_fmt(r['latency_ms_p50'], '7.2f')} {_fmt(r['latency_ms_p99'], '7.2f')}"
          f" {_fmt(r['loadgen_cpu_percent'], '8.1f')}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__.split("\n\n")[0])
    p.add_argument("--viewers", default="1,5,10,25,50",
                   type=lambda s: [int(x) for x in s.split(",") if x.strip()],
                   help="comma-separated viewer counts (default 1,5,10,25,50)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per step")
    p.add_argument("--rate", type=float, default=100.0, help="publisher packets per second")
    p.add_argument("--size", type=int, default=1100, help="RTP packet size in bytes (before SRTP)")
    p.add_argument("--fps", type=int, default=30, help="video frames per second")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of sending before measuring")
    p.add_argument("--idle-seconds", type=float, default=2.0,
                   help="seconds measured with everyone connected and no media (the SFU's fixed cost)")
    p.add_argument("--grace", type=float, default=0.3, help="seconds to wait for in-flight packets")
    p.add_argument("--batch", type=int, default=10, help="viewers connected concurrently")
    p.add_argument("--connect-timeout", type=float, default=20.0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results"), help="directory for fanout.json/.md")
    args = p.parse_args(argv)
    if not args.viewers or min(args.viewers) < 1:
        p.error("--viewers needs positive counts")
    return args


def run_loop(coro):
    """Run ``coro`` to completion on uvloop (asyncio's loop where uvloop is missing)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def reexec_in_loopback_namespace(module: str, argv: list[str]) -> int | None:
    """Participants stay confined to loopback: outside a loopback-only network namespace,
    run ``python -m module argv`` again inside one and return its exit code; None when
    already inside."""
    if loopback_only():
        return None
    if os.environ.get("SFU_IN_NETNS") == "1":
        print(f"{module}: network namespace has interfaces besides lo; refusing", file=sys.stderr)
        return 2
    cmd = ["bash", str(ROOT / "scripts" / "netns-run.sh"), sys.executable, "-m", module, *argv]
    return subprocess.call(cmd, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    code = reexec_in_loopback_namespace("bench.fanout", argv)
    if code is not None:
        return code
    args = parse_args(argv)
    print(_HEADER, flush=True)
    result = run_loop(run(args))
    if result.get("marginal"):
        m = result["marginal"]
        print(f"marginal: {m['us_per_forwarded']:.1f} µs per forwarded packet, fixed {m['fixed_cpu_percent']:.1f}% CPU")
    print(f"results: {Path(args.out) / 'fanout.json'} and fanout.md", flush=True)
    failed = [r for r in result["runs"] if "error" in r]
    return 1 if failed or "sfu_exit" in result else 0


if __name__ == "__main__":
    sys.exit(main())
