"""A short run of the soak benchmark (bench/soak.py) against a real `sfu serve`:
it runs, reports RSS and descriptors at the start and the end, and the server
reaps every session -- left and abandoned -- before the last sample."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import soak

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_args_defaults_to_thirty_minutes():
    args = soak.parse_args([])
    assert args.duration == 1800 and args.drain == args.consent_timeout + 10
    with pytest.raises(SystemExit):
        soak.parse_args(["--duration", "0"])


def test_proc_counters_of_this_process():
    assert soak.proc_fds(os.getpid()) > 2 and soak.proc_threads(os.getpid()) >= 1
    assert soak.proc_fds(2**22 + 7) == 0  # no such process


@pytest.mark.timeout(120)
def test_soak_smoke(netns, tmp_path):
    out = tmp_path / "soak"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--duration", "12", "--interval", "4", "--rooms", "2",
         "--viewers", "2", "--churn", "1", "--abandon", "2", "--consent-timeout", "8", "--rate", "30",
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    log = (out / "sfu-soak.log").read_text() if (out / "sfu-soak.log").exists() else ""
    assert proc.returncode == 0, proc.stdout + proc.stderr + log[-3000:]
    assert "RSS " in proc.stdout and "descriptors" in proc.stdout
    result = json.loads((out / "soak.json").read_text())
    assert (out / "soak.md").read_text().startswith("# Soak")
    samples = result["samples"]
    assert samples[0]["phase"] == "start" and samples[-1]["phase"] == "drained"
    assert len(samples) >= 4  # start, periodic, end of load, drained
    for s in samples:
        assert set(soak.SAMPLE_KEYS) <= set(s)
        assert s["rss_kib"] > 10_000 and s["fds"] > 3
    summ = result["summary"]
    assert summ["joins"] >= 2 * 3 + 5 and summ["leaves"] == summ["joins"]
    assert summ["abandoned"] >= 10
    assert summ["failures"] == 0, result["errors"]
    assert summ["viewer_packets"] > 0
    # media keeps flowing through the churn (abandoned sessions must not take the viewers' slots)
    during = [s["viewer_packets"] for s in samples if s["phase"] in ("start", "run", "end of load")]
    assert all(b > a for a, b in zip(during, during[1:])), during
    # every session is gone at the end: left ones at once, abandoned ones by consent
    assert samples[-1]["transports"] == 0 and samples[-1]["connecting"] == 0
    assert summ["fds_end"] <= summ["fds_start"] + 4
    assert summ["rss_kib_end"] < summ["rss_kib_start"] + 64 * 1024
