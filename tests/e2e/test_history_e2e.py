"""Meeting history with real clients: aiortc publishers and viewers join and leave
through WHIP/WHEP, the server is killed with SIGKILL and restarted, and the rows
match what happened; no IP address reaches the database or the log."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import signal
import sqlite3
import subprocess
import sys
import time

import aiohttp
import pytest

from ..conftest import ROOT, SfuProcess
from .clients import Publisher, Viewer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

HEARTBEAT = 0.2
ALICE = "alice@example.com"  # identities that look like e-mail addresses or phone numbers
BOB = "+44 20 7946 0958"
IP_PATTERN = re.compile(rb"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])|::1\b|::ffff:")


async def get_json(sfu: SfuProcess, path: str, token: str):
    async with aiohttp.ClientSession() as http:
        async with http.get(sfu.url + path, headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else await r.text())


async def wait_sessions(sfu, meeting_id, token, count, timeout=10.0):
    deadline = time.monotonic() + timeout
    while True:
        _status, details = await get_json(sfu, f"/api/meetings/{meeting_id}", token)
        open_now = [s for s in details["sessions"] if s["left_at"] is None]
        if len(open_now) == count or time.monotonic() > deadline:
            return details
        await asyncio.sleep(0.05)


def history_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sfu", "history", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


async def test_history_matches_what_happened_across_a_kill_9(tmp_path, netns):
    sfu = SfuProcess(tmp_path, "--heartbeat-interval", str(HEARTBEAT), "--grace-period", "30").start()
    alice_token = sfu.token("standup", ALICE, "Alice", publish=True, subscribe=False, host=True)
    bob_token = sfu.token("standup", BOB, "Bob", publish=False, subscribe=True)
    pub = Publisher(sfu.url, "standup", token=alice_token)
    bob1 = Viewer(sfu.url, "standup", token=bob_token)
    bob2 = Viewer(sfu.url, "standup", token=bob_token)
    killed_at = None
    try:
        await pub.start()
        await bob1.start()
        assert await bob1.wait_frames("video", 5, timeout=20) >= 5, bob1.frames
        await bob1.stop()  # bob leaves ...
        await bob2.start()  # ... and rejoins: a new session
        assert await bob2.wait_frames("video", 5, timeout=20) >= 5, bob2.frames
        status, listed = await get_json(sfu, "/api/meetings", alice_token)
        assert status == 200 and len(listed["meetings"]) == 1
        meeting_id = listed["meetings"][0]["meeting_id"]
        await wait_sessions(sfu, meeting_id, alice_token, 2)
        await asyncio.sleep(3 * HEARTBEAT)  # a few heartbeats
        killed_at = time.time()
        sfu.proc.send_signal(signal.SIGKILL)
        sfu.proc.wait(10)
    finally:
        await bob2.pc.close()
        await bob1.pc.close()
        await pub.pc.close()
        sfu.stop()
    log_before = sfu.log()

    # restart on the same data directory: what the crash left open is closed
    sfu2 = SfuProcess(tmp_path, "--heartbeat-interval", str(HEARTBEAT)).start()
    try:
        status, details = await get_json(sfu2, f"/api/meetings/{meeting_id}", alice_token)
        assert status == 200, details
        rows = [(s["identity"], s["display_name"], s["end_reason"]) for s in details["sessions"]]
        assert rows == [(ALICE, "Alice", "server stopped"), (BOB, "Bob", "left"),
                        (BOB, "Bob", "server stopped")], rows
        assert details["meeting"]["ended_at"] is not None and not details["meeting"]["active"]
        assert details["meeting"]["creator"] == {"identity": ALICE, "name": "Alice"}
        totals = {t["identity"]: t["sessions"] for t in details["totals"]}
        assert totals == {ALICE: 1, BOB: 2}
        # the crashed sessions end at their last heartbeat, before the kill
        db = sqlite3.connect(tmp_path / "data" / "history.sqlite3")
        crashed = db.execute("SELECT left_at, last_heartbeat FROM sessions "
                             "WHERE end_reason = 'server stopped'").fetchall()
        db.close()
        assert len(crashed) == 2
        for left_at, beat in crashed:
            assert left_at == beat
            assert killed_at - 2 * HEARTBEAT - 1.0 < left_at <= killed_at, (left_at, killed_at)
        # bob (not the creator) may not read it
        status, body = await get_json(sfu2, f"/api/meetings/{meeting_id}", bob_token)
        assert status == 403 and "error" in body
    finally:
        assert sfu2.stop() == 0

    # the command line reads the same history
    out = history_cli("export", meeting_id, "--format", "csv", "--data-dir", str(tmp_path / "data"),
                      "--identity", ALICE)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [(r["row"], r["identity"], r["end_reason"]) for r in rows][:3] == [
        ("session", ALICE, "server stopped"), ("session", "'" + BOB, "left"),
        ("session", "'" + BOB, "server stopped")]  # '+44...' is quoted against spreadsheet formulas
    out = history_cli("show", meeting_id, "--data-dir", str(tmp_path / "data"), "--identity", BOB)
    assert out.returncode == 1 and "403" in out.stdout
    out = history_cli("list", "--data-dir", str(tmp_path / "data"), "--admin")
    assert meeting_id in out.stdout
    out = history_cli("export", meeting_id, "--format", "json", "--data-dir", str(tmp_path / "data"),
                      "--admin")
    assert json.loads(out.stdout)["meeting"]["meeting_id"] == meeting_id

    # privacy: no IP address in the database files or the log; identities masked in the log
    for path in (tmp_path / "data").iterdir():
        if path.name.startswith("history.sqlite3"):
            data = path.read_bytes()
            assert not IP_PATTERN.search(data), (path.name, IP_PATTERN.search(data))
    log = sfu2.log()
    assert log.startswith(log_before)
    assert not IP_PATTERN.search(log.encode()), IP_PATTERN.search(log.encode())
    assert "participant joined" in log and "history recovered" in log
    assert ALICE not in log and "7946" not in log and "<email>" in log and "<phone>" in log


async def test_graceful_stop_closes_sessions_as_server_stopped(tmp_path, netns):
    sfu = SfuProcess(tmp_path).start()
    token = sfu.token("r1", "carol", "Carol", publish=True, host=True)
    pub = Publisher(sfu.url, "r1", token=token)
    try:
        await pub.start()
        status, listed = await get_json(sfu, "/api/meetings", token)
        meeting_id = listed["meetings"][0]["meeting_id"]
        stopped_at = time.time()
    finally:
        assert sfu.stop(signal.SIGTERM) == 0, sfu.log()
        await pub.pc.close()
    db = sqlite3.connect(tmp_path / "data" / "history.sqlite3")
    (left_at, reason), = db.execute("SELECT left_at, end_reason FROM sessions").fetchall()
    (ended_at,), = db.execute("SELECT ended_at FROM meetings WHERE meeting_id = ?", (meeting_id,)).fetchall()
    db.close()
    assert reason == "server stopped" and left_at >= stopped_at - 0.5 and ended_at >= left_at
