"""The history store (sfu/history.py) on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import threading

import pytest

from sfu.history import (
    DuplicateMeeting, HistoryStore, Meeting, PostgresBackend, SessionRecord, SqliteBackend,
    attendance, export, export_csv, open_backend,
)

pytestmark = pytest.mark.timeout(60)
T0 = 1_800_000_000.0



def meeting(mid="abc-def-ghj", room="r1", start=T0, creator="alice"):
    return Meeting(mid, room, "Weekly", creator, creator.title(), start, None)


def session(sid, mid="abc-def-ghj", identity="bob", joined=T0 + 10):
    return SessionRecord(sid, mid, identity, identity.title(), joined, None, joined, None)


async def test_meeting_and_sessions_round_trip(store):
    await store.create_meeting(meeting())
    await store.add_session(session("s1"))
    await store.add_session(session("s2", identity="carol", joined=T0 + 20))
    assert await store.close_session("s1", T0 + 70, "left")
    assert not await store.close_session("s1", T0 + 99, "kicked"), "a closed session stays closed"
    await store.heartbeat(["s2", "s1"], T0 + 80)
    got = await store.sessions("abc-def-ghj")
    assert [(s.session_id, s.left_at, s.end_reason, s.last_heartbeat) for s in got] == [
        ("s1", T0 + 70, "left", T0 + 70), ("s2", None, None, T0 + 80)]
    assert await store.end_meeting("abc-def-ghj", T0 + 100)
    assert not await store.end_meeting("abc-def-ghj", T0 + 200)
    m = await store.get_meeting("abc-def-ghj")
    assert m == Meeting("abc-def-ghj", "r1", "Weekly", "alice", "Alice", T0, T0 + 100)
    assert await store.get_meeting("nope") is None


async def test_duplicate_meeting_id(store):
    await store.create_meeting(meeting())
    with pytest.raises(DuplicateMeeting):
        await store.create_meeting(meeting(room="r2"))
    await store.create_meeting(meeting(mid="xyz-xyz-xyz"))  # the connection is still usable


async def test_unknown_end_reason_is_refused(store):
    await store.create_meeting(meeting())
    await store.add_session(session("s1"))
    with pytest.raises(ValueError):
        await store.close_session("s1", T0, "exploded")


async def test_list_meetings_by_creator_newest_first(store):
    await store.create_meeting(meeting("m-1", start=T0, creator="alice"))
    await store.create_meeting(meeting("m-2", start=T0 + 5, creator="bob"))
    await store.create_meeting(meeting("m-3", start=T0 + 9, creator="alice"))
    assert [m.meeting_id for m in await store.list_meetings("alice")] == ["m-3", "m-1"]
    assert [m.meeting_id for m in await store.list_meetings(None)] == ["m-3", "m-2", "m-1"]
    assert [m.meeting_id for m in await store.list_meetings(None, limit=1)] == ["m-3"]
    assert await store.list_meetings("nobody") == []


async def test_recover_closes_sessions_at_their_last_heartbeat(store):
    await store.create_meeting(meeting("m-1"))
    await store.create_meeting(meeting("m-2", room="r2"))
    await store.add_session(session("s1", "m-1", joined=T0 + 1))
    await store.add_session(session("s2", "m-1", identity="carol", joined=T0 + 2))
    await store.add_session(session("s3", "m-1", identity="dave", joined=T0 + 3))
    await store.close_session("s3", T0 + 5, "left")
    await store.heartbeat(["s1"], T0 + 40)
    await store.heartbeat(["s2"], T0 + 50)
    # ... kill -9 here ...
    assert await store.recover() == (2, 2)
    rows = {s.session_id: s for s in await store.sessions("m-1")}
    assert (rows["s1"].left_at, rows["s1"].end_reason) == (T0 + 40, "server stopped")
    assert (rows["s2"].left_at, rows["s2"].end_reason) == (T0 + 50, "server stopped")
    assert (rows["s3"].left_at, rows["s3"].end_reason) == (T0 + 5, "left")
    assert (await store.get_meeting("m-1")).ended_at == T0 + 50  # its last sign of life
    assert (await store.get_meeting("m-2")).ended_at == T0  # nobody ever came
    assert await store.recover() == (0, 0)
    assert await store.open_sessions() == []


async def test_purge_removes_old_ended_meetings_only(store):
    await store.create_meeting(meeting("old"))
    await store.add_session(session("s-old", "old"))
    await store.end_meeting("old", T0 + 100)
    await store.create_meeting(meeting("new", room="r2"))
    await store.end_meeting("new", T0 + 10_000)
    await store.create_meeting(meeting("running", room="r3"))
    assert await store.purge(T0 + 5_000) == 1
    assert await store.get_meeting("old") is None
    assert await store.sessions("old") == []
    assert await store.get_meeting("new") is not None
    assert await store.get_meeting("running") is not None


async def test_erase_identity_anonymises_sessions_and_meetings(store):
    await store.create_meeting(meeting("m-1", creator="eve@example.com"))
    await store.add_session(session("s1", "m-1", identity="eve@example.com"))
    await store.add_session(session("s2", "m-1", identity="eve@example.com", joined=T0 + 50))
    await store.add_session(session("s3", "m-1", identity="bob"))
    assert await store.erase_identity("eve@example.com") == 3
    m = await store.get_meeting("m-1")
    rows = await store.sessions("m-1")
    erased = [r for r in rows if r.session_id in ("s1", "s2")]
    assert m.creator_identity == erased[0].identity == erased[1].identity  # one pseudonym
    assert m.creator_identity.startswith("erased-") and m.creator_name == "(erased)"
    assert all(r.display_name == "(erased)" for r in erased)
    assert [r.identity for r in rows if r.session_id == "s3"] == ["bob"]
    assert await store.list_meetings("eve@example.com") == []
    assert await store.erase_identity("eve@example.com") == 0


def test_erased_data_is_gone_from_the_sqlite_file(tmp_path):
    import asyncio

    path = tmp_path / "h.sqlite3"

    async def main():
        s = HistoryStore.from_config(str(path), str(tmp_path))
        await s.open()
        await s.create_meeting(meeting("m-1"))
        await s.add_session(session("s1", "m-1", identity="erin.secret@example.org"))
        await s.erase_identity("erin.secret@example.org")
        await s.close()

    asyncio.run(main())
    for f in tmp_path.iterdir():
        if f.name.startswith("h.sqlite3"):
            assert b"erin.secret" not in f.read_bytes(), f.name


async def test_calls_run_off_the_event_loop_thread(store):
    seen = []
    original = store.backend.execute

    def spy(sql, params=()):
        seen.append(threading.current_thread().name)
        return original(sql, params)

    store.backend.execute = spy
    await store.create_meeting(meeting())
    assert seen and all(name.startswith("history") for name in seen)
    assert threading.current_thread().name not in seen


async def test_store_must_be_open(tmp_path):
    s = HistoryStore.from_config(None, str(tmp_path))
    with pytest.raises(RuntimeError):
        await s.get_meeting("x")


def test_sqlite_file_is_wal_and_private(tmp_path):
    import asyncio
    import os
    import stat

    async def main():
        s = HistoryStore.from_config(None, str(tmp_path))
        await s.open()
        await s.close()

    asyncio.run(main())
    path = tmp_path / "history.sqlite3"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"meetings", "sessions", "audit_log"} <= tables  # + chat and polls (sfu/chat.py, sfu/polls.py)
        columns = {r[1] for t in tables for r in conn.execute(f"PRAGMA table_info({t})")}
        assert not any("ip" in c.split("_") or "addr" in c for c in columns), columns


def test_open_backend_choices(tmp_path):
    assert isinstance(open_backend(None, str(tmp_path)), SqliteBackend)
    assert open_backend(None, str(tmp_path)).path.endswith("history.sqlite3")
    assert open_backend("sqlite:////x/y.db", "d").path == "/x/y.db"
    assert open_backend("sqlite:///rel.db", "d").path == "rel.db"
    assert open_backend("/x/z.db", "d").path == "/x/z.db"
    assert isinstance(open_backend("postgresql://u@h/db", "d"), PostgresBackend)
    assert isinstance(open_backend("postgres://u@h/db", "d"), PostgresBackend)
    with pytest.raises(ValueError):
        open_backend("mysql://x", "d")


def report():
    m = Meeting("abc-def-ghj", "r1", "Plan, \"Q3\"", "alice", "Alice", T0, T0 + 600)
    sessions = [
        SessionRecord("s1", m.meeting_id, "alice", "Alice", T0, T0 + 600, T0 + 600, "left"),
        SessionRecord("s2", m.meeting_id, "bob", "Bob", T0 + 60, T0 + 120, T0 + 120, "timed out"),
        SessionRecord("s3", m.meeting_id, "bob", "Bobby", T0 + 180, T0 + 300, T0 + 300, "left"),
        SessionRecord("s4", m.meeting_id, "mal", "=HYPERLINK(1)", T0 + 1, None, T0 + 1, None),
    ]
    return attendance(m, sessions, now=T0 + 601)


def test_attendance_rows_and_totals():
    r = report()
    assert r["meeting"]["started_at"] == "2027-01-15T08:00:00Z"
    assert r["meeting"]["duration_seconds"] == 600
    assert [(s["identity"], s["duration_seconds"], s["end_reason"]) for s in r["sessions"]] == [
        ("alice", 600, "left"), ("bob", 60, "timed out"), ("bob", 120, "left"), ("mal", 600, None)]
    totals = {t["identity"]: (t["sessions"], t["total_seconds"], t["display_name"]) for t in r["totals"]}
    assert totals == {"alice": (1, 600, "Alice"), "bob": (2, 180, "Bobby"), "mal": (1, 600, "=HYPERLINK(1)")}


def test_export_json_and_csv():
    r = report()
    body, ctype = export(r, "json")
    assert ctype == "application/json" and json.loads(body) == r
    body, ctype = export(r, "csv")
    assert ctype == "text/csv" and body == export_csv(r)
    rows = list(csv.DictReader(io.StringIO(body)))
    assert [row["row"] for row in rows] == ["session"] * 4 + ["total"] * 3
    assert rows[0]["topic"] == 'Plan, "Q3"' and rows[0]["joined_at"] == "2027-01-15T08:00:00Z"
    assert rows[3]["display_name"] == "'=HYPERLINK(1)"  # no formula injection in spreadsheets
    bob = [row for row in rows if row["row"] == "total" and row["identity"] == "bob"][0]
    assert (bob["duration_seconds"], bob["sessions"]) == ("180.0", "2")
    with pytest.raises(ValueError):
        export(r, "xml")
