"""Own history (GET /api/me/meetings) and the audit log (sfu/audit.py, GET /api/audit,
`sfu audit`), against an in-process server on loopback, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import logging

import pytest

from sfu import audit, cli
from sfu.auth import Grants, mint_token
from tests.test_rest import Api, api, tok, until  # noqa: F401  (api: the fixture)

pytestmark = pytest.mark.timeout(90)

HOPE = tok("hope", publish=True, subscribe=True, host=True)  # creates the meetings
VIC = tok("vic", subscribe=True)
PAT = tok("pat", subscribe=True)
NED = tok("ned", subscribe=True)  # never joins anything
ADMIN = tok("root", room=None, admin=True)


async def _meeting_with_people(api: Api, room: str = "r1", topic: str = "weekly") -> str:
    """hope creates the meeting and publishes; vic joins, leaves and rejoins; pat joins."""
    hope = tok("hope", room=room, publish=True, subscribe=True, host=True)
    code, created, _ = await api.call("POST", "/api/meetings", hope, json={"room": room, "topic": topic})
    assert code == 201, created
    meeting_id = created["meeting_id"]
    assert (await api.offer("whip", room, hope))[0] == 201
    code, _, h = await api.offer("whep", room, tok("vic", room=room, subscribe=True))
    assert code == 201
    assert (await api.call("DELETE", h["Location"], tok("vic", room=room)))[0] == 200
    assert (await api.offer("whep", room, tok("vic", room=room, subscribe=True)))[0] == 201
    assert (await api.offer("whep", room, tok("pat", room=room, subscribe=True)))[0] == 201
    await until(lambda: len(api.server.meetings.sessions_in(meeting_id)) == 3)
    return meeting_id


async def _audit_rows(api: Api, **filters) -> list[audit.AuditRecord]:
    return await audit.entries(api.server.meetings.store, **filters)


# -- own history ---------------------------------------------------------------------------

async def test_own_history_lists_only_own_times(api):
    m1 = await _meeting_with_people(api, "r1", "weekly")
    m2 = await _meeting_with_people(api, "r2", "retro")
    code, body, _ = await api.call("GET", "/api/me/meetings", VIC)
    assert code == 200, body
    assert body["identity"] == "vic"
    assert [m["meeting_id"] for m in body["meetings"]] == [m2, m1]  # newest first
    entry = body["meetings"][1]
    assert entry["topic"] == "weekly" and entry["room"] == "r1" and entry["creator"] is False
    assert len(entry["sessions"]) == 2  # vic left and rejoined
    assert entry["sessions"][0]["end_reason"] == "left" and entry["sessions"][1]["left_at"] is None
    assert entry["left_at"] is None and entry["joined_at"] == entry["sessions"][0]["joined_at"]
    assert entry["duration_seconds"] >= 0 and "attendance" not in entry
    text = json.dumps(body)
    for other in ("hope", "Hope", "pat", "Pat"):  # no other person's name or identity
        assert other not in text
    # one meeting of one's own
    code, one, _ = await api.call("GET", f"/api/me/meetings/{m1}", VIC)
    drop = lambda e: {**e, "duration_seconds": 0, "sessions": [  # noqa: E731  (an open session grows)
        {**x, "duration_seconds": 0} for x in e["sessions"]]}
    assert code == 200 and drop(one) == drop(entry)


async def test_the_creators_entry_links_the_attendance_view_and_export(api):
    meeting_id = await _meeting_with_people(api)
    code, body, _ = await api.call("GET", "/api/me/meetings", HOPE)
    assert code == 200
    [entry] = body["meetings"]
    assert entry["creator"] is True and len(entry["sessions"]) == 1
    links = entry["attendance"]
    assert links == {"view": f"/api/meetings/{meeting_id}",
                     "export_csv": f"/api/meetings/{meeting_id}/export?format=csv",
                     "export_json": f"/api/meetings/{meeting_id}/export?format=json"}
    code, report, _ = await api.call("GET", links["export_json"], HOPE)
    assert code == 200 and sorted({s["identity"] for s in report["sessions"]}) == ["hope", "pat", "vic"]
    code, _, _ = await api.call("GET", links["export_csv"], VIC)  # the link is the creator's only
    assert code == 403


OWN_ROLES = {"nobody": None, "attendee": VIC, "other-attendee": PAT, "creator": HOPE,
             "stranger": NED, "admin": ADMIN}


@pytest.mark.parametrize("role", sorted(OWN_ROLES))
async def test_api_matrix_own_history_and_audit(api, role):
    meeting_id = await _meeting_with_people(api)
    token = OWN_ROLES[role]
    code, one, _ = await api.call("GET", f"/api/me/meetings/{meeting_id}", token)
    code_list, listed, _ = await api.call("GET", "/api/me/meetings", token)
    code_audit, log, _ = await api.call("GET", "/api/audit", token)
    if role == "nobody":
        assert (code, code_list, code_audit) == (401, 401, 401)
        return
    if role in ("stranger", "admin"):  # did not attend: an admin reads /api/meetings/{id} instead
        assert code == 403 and one == {"error": "you did not attend this meeting"}
        assert code_list == 200 and listed["meetings"] == []
    else:
        assert code == 200 and code_list == 200 and [m["meeting_id"] for m in listed["meetings"]] == [meeting_id]
        me = {"attendee": "vic", "other-attendee": "pat", "creator": "hope"}[role]
        if role != "creator":  # an attendee never sees anyone else of a meeting they did not create
            others = {"vic", "pat", "hope"} - {me}
            assert not any(o in json.dumps([one, listed]) for o in others), (one, listed)
    if role == "admin":
        assert code_audit == 200 and log["entries"]
    else:
        assert code_audit == 403 and log == {"error": "only an admin may read the audit log"}
    code, _, _ = await api.call("GET", "/api/me/meetings/no-such-meeting", token)
    assert code == 404


# -- the audit log -------------------------------------------------------------------------

async def test_every_read_export_and_deletion_is_audited(api):
    meeting_id = await _meeting_with_people(api)
    store = api.server.meetings.store
    assert await _audit_rows(api) == []
    calls = [  # (token, path) -> the row it must write
        (HOPE, f"/api/meetings/{meeting_id}", ("hope", "read", "attendance", meeting_id, "creator")),
        (HOPE, f"/api/meetings/{meeting_id}/export?format=csv",
         ("hope", "export", "attendance", meeting_id, "creator csv")),
        (ADMIN, f"/api/meetings/{meeting_id}/export?format=json",
         ("root", "export", "attendance", meeting_id, "admin json")),
        (ADMIN, f"/api/meetings/{meeting_id}", ("root", "read", "attendance", meeting_id, "admin")),
        (VIC, "/api/me/meetings", ("vic", "read", "attendance", "*", "own")),
        (VIC, f"/api/me/meetings/{meeting_id}", ("vic", "read", "attendance", meeting_id, "own")),
    ]
    for token, path, expected in calls:
        code, body, _ = await api.call("GET", path, token)
        assert code == 200, (path, body)
        [row] = await _audit_rows(api, limit=1)
        assert (row.actor_identity, row.action, row.kind, row.object_id, row.detail) == expected
    # refused or failed requests read nothing and write no row
    for token, path in ((VIC, f"/api/meetings/{meeting_id}"), (PAT, f"/api/meetings/{meeting_id}/export"),
                        (NED, f"/api/me/meetings/{meeting_id}"), (VIC, "/api/audit"),
                        (HOPE, f"/api/meetings/{meeting_id}/export?format=xml")):
        code, _, _ = await api.call("GET", path, token)
        assert code in (400, 403)
    assert len(await _audit_rows(api)) == len(calls)
    # the admin reads the log over the API, filtered
    code, body, _ = await api.call("GET", f"/api/audit?action=export&object_id={meeting_id}", ADMIN)
    assert code == 200
    assert [(e["actor"], e["detail"]) for e in body["entries"]] == [("root", "admin json"), ("hope", "creator csv")]
    assert body["entries"][0]["at"].endswith("Z")
    code, body, _ = await api.call("GET", "/api/audit?actor=vic", ADMIN)
    assert {e["object_id"] for e in body["entries"]} == {"*", meeting_id}
    for bad in ("action=peek", "kind=secrets", "since=yesterday", "limit=x"):
        code, body, _ = await api.call("GET", f"/api/audit?{bad}", ADMIN)
        assert code == 400 and body["error"], bad
    code, body, _ = await api.call("GET", "/api/audit?since=2999-01-01", ADMIN)
    assert code == 200 and body["entries"] == []
    # a deletion
    code, body, _ = await api.call("DELETE", "/api/people/pat", ADMIN)
    assert code == 200
    [row] = await audit.entries(store, action="delete")
    assert (row.actor_identity, row.kind, row.object_id) == ("root", "person", body["pseudonym"])


async def test_erasure_pseudonymises_the_actor_in_the_audit_log(api):
    meeting_id = await _meeting_with_people(api)
    for path in ("/api/me/meetings", f"/api/me/meetings/{meeting_id}"):
        assert (await api.call("GET", path, VIC))[0] == 200
    assert (await api.call("GET", f"/api/meetings/{meeting_id}", HOPE))[0] == 200
    code, body, _ = await api.call("DELETE", "/api/people/vic", ADMIN)
    assert code == 200
    pseudonym = body["pseudonym"]
    assert pseudonym.startswith("erased-")
    rows = await _audit_rows(api)
    assert [r.actor_identity for r in rows if r.action == "read" and r.detail == "own"] == [pseudonym] * 2
    assert not any("vic" in (r.actor_identity + r.object_id + r.detail) for r in rows)
    # the same pseudonym as in the attendance, so the log still matches the history
    sessions = await api.server.meetings.store.sessions(meeting_id)
    assert pseudonym in {s.identity for s in sessions} and "vic" not in {s.identity for s in sessions}
    code, body, _ = await api.call("GET", "/api/me/meetings", VIC)  # vic's own history is gone
    assert code == 200 and body["meetings"] == []
    # an admin who erases themselves is the pseudonym as actor of that deletion too
    code, body, _ = await api.call("DELETE", "/api/people/root", ADMIN)
    assert code == 200
    assert not [r for r in await _audit_rows(api) if r.actor_identity == "root"]


async def test_audit_rows_follow_their_own_retention(history_db, tmp_path):
    """Purged at start and by the daily retention timer (a ManualClock moves the days),
    independently of the history's retention."""
    from sfu.clock import ManualClock
    from sfu.history import HistoryStore
    from sfu.meetings import MeetingService

    day, t0 = 86400.0, 1_800_000_000.0
    clock = ManualClock(wall=t0)
    store = HistoryStore.from_config(history_db, str(tmp_path))
    await store.open()
    await audit.record(store, "ancient-reader", audit.READ, audit.CHAT, "m-0", at=t0 - 31 * day)
    await audit.record(store, "old-reader", audit.READ, audit.CHAT, "m-1", at=t0 - 20 * day)
    await audit.record(store, "new-reader", audit.EXPORT, audit.POLL, "m-2", at=t0 - 5 * day)
    await store.close()
    service = MeetingService(HistoryStore.from_config(history_db, str(tmp_path)), clock=clock,
                             retention_days=1, audit_retention_days=30)
    await service.start()  # purges at start
    try:
        actors = lambda rows: [r.actor_identity for r in rows]  # noqa: E731
        assert actors(await audit.entries(service.store)) == ["new-reader", "old-reader"]
        clock.advance(11 * day)  # eleven daily timers: "old-reader" is past 30 days on the 11th
        await service.wait_idle()
        assert actors(await audit.entries(service.store)) == ["new-reader"]
        clock.advance(25 * day)
        await service.wait_idle()
        assert await audit.entries(service.store) == []
    finally:
        await service.stop()


async def test_record_refuses_unknown_names_and_logs_the_actor_masked(api, caplog):
    store = api.server.meetings.store
    with pytest.raises(ValueError):
        await audit.record(store, "alice", "peek", audit.POLL, "m1")
    with pytest.raises(ValueError):
        await audit.record(store, "alice", audit.READ, "diary", "m1")
    with pytest.raises(ValueError):
        await audit.record(store, "", audit.READ, audit.POLL, "m1")
    assert await _audit_rows(api) == []
    with caplog.at_level(logging.INFO, logger="sfu.audit"):
        await audit.record(store, "alice@example.com", audit.READ, audit.RECORDING, "rec-1")
    text = "\n".join(r.getMessage() + json.dumps(getattr(r, "fields", {}), default=str) for r in caplog.records)
    assert "alice" not in text and audit.mask("alice@example.com") in text
    [row] = await _audit_rows(api)
    assert (row.actor_identity, row.kind, row.object_id) == ("alice@example.com", "recording", "rec-1")


# -- `sfu audit` ---------------------------------------------------------------------------

async def test_sfu_audit_cli(history_db, tmp_path, capsys):
    from sfu.history import HistoryStore

    data_dir = str(tmp_path / "data")
    store = HistoryStore.from_config(history_db, data_dir)
    await store.open()
    try:
        await audit.record(store, "hope", audit.EXPORT, audit.ATTENDANCE, "m-1", "creator csv", at=1_700_000_000)
        await audit.record(store, "root", audit.DELETE, audit.PERSON, "erased-abc", at=1_700_000_100)
    finally:
        await store.close()
    base = ["audit", "--db", history_db, "--data-dir", data_dir]
    run = lambda *extra: (__import__("asyncio").get_running_loop().run_in_executor(  # noqa: E731
        None, cli.main, [*base, *extra]))
    assert await run() == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["WHEN", "ACTOR", "ACTION", "KIND", "OBJECT", "DETAIL"]
    assert out[1].split() == ["2023-11-14T22:15:00Z", "root", "delete", "person", "erased-abc", "-"]
    assert out[2].split() == ["2023-11-14T22:13:20Z", "hope", "export", "attendance", "m-1", "creator", "csv"]
    assert await run("--actor", "hope", "--format", "json") == 0
    entries = json.loads(capsys.readouterr().out)["entries"]
    assert [(e["actor"], e["action"], e["object_id"]) for e in entries] == [("hope", "export", "m-1")]
    assert await run("--since", "2023-11-14T22:14:00Z", "--format", "json") == 0
    assert [e["actor"] for e in json.loads(capsys.readouterr().out)["entries"]] == ["root"]
    assert await run("--since", "last week") == 2
    assert "not a date" in capsys.readouterr().out


async def test_a_dev_page_keeps_its_dev_identity_across_rooms_only(tmp_path):
    """--dev: a valid dev token presented to /api/dev/token keeps its identity (one
    person's own history across rooms); any other token does not lend its identity."""
    import aiohttp

    from sfu.auth import verify_token
    from sfu.config import Config
    from sfu.server import Server

    server = Server(Config(http_port=0, rtc_port=0, data_dir=str(tmp_path / "dev"), dev=True))
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async def dev_token(room: str, token: str | None = None) -> str:
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                async with http.post(server.url + "/api/dev/token", json={"room": room, "name": "Ivy"},
                                     headers=headers) as r:
                    assert r.status == 200
                    return (await r.json())["token"]

            first = await dev_token("r1")
            second = await dev_token("r2", first)
            one, two = (verify_token(server.auth_secret, t) for t in (first, second))
            assert one.identity == two.identity and (one.room, two.room) == ("r1", "r2")
            assert verify_token(server.auth_secret, await dev_token("r2")).identity != one.identity
            real = mint_token(server.auth_secret, "alice", "Alice", "r1", Grants(subscribe=True))
            assert verify_token(server.auth_secret, await dev_token("r1", real)).identity != "alice"
            assert verify_token(server.auth_secret, await dev_token("r1", "garbage")).identity.startswith("dev-")
    finally:
        await server.stop()


async def test_sfu_history_show_and_export_are_audited(history_db, tmp_path, capsys):
    from sfu.history import HistoryStore, Meeting, SessionRecord

    data_dir = str(tmp_path / "data")
    store = HistoryStore.from_config(history_db, data_dir)
    await store.open()
    try:
        await store.create_meeting(Meeting("m-cli", "r1", "t", "hope", "Hope", 1_700_000_000.0, 1_700_000_600.0))
        await store.add_session(SessionRecord("s1", "m-cli", "vic", "Vic", 1_700_000_010.0, 1_700_000_300.0,
                                              1_700_000_300.0, "left"))
    finally:
        await store.close()
    base = ["history", "--db", history_db, "--data-dir", data_dir]
    loop = __import__("asyncio").get_running_loop()
    assert await loop.run_in_executor(None, cli.main, [*base, "show", "m-cli", "--identity", "hope"]) == 0
    assert await loop.run_in_executor(None, cli.main, [*base, "export", "m-cli", "--admin", "--format", "json"]) == 0
    assert await loop.run_in_executor(None, cli.main, [*base, "show", "m-cli", "--identity", "vic"]) == 1  # 403
    assert await loop.run_in_executor(None, cli.main, [*base, "list", "--admin"]) == 0  # no one's sessions
    capsys.readouterr()
    store = HistoryStore.from_config(history_db, data_dir)
    await store.open()
    try:
        rows = await audit.entries(store)
    finally:
        await store.close()
    assert [(r.actor_identity, r.action, r.object_id, r.detail) for r in reversed(rows)] == [
        ("hope", "read", "m-cli", "cli creator"), (audit.cli_admin(), "export", "m-cli", "cli admin json")]
    assert audit.cli_admin().startswith("cli:")


def test_sfu_audit_without_its_database_says_so_in_one_line(tmp_path, capsys):
    code = cli.main(["audit", "--db", "postgresql://bob:hunter2@127.0.0.1:1/db", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 3 and err.startswith("sfu audit: history database") and len(err.strip().splitlines()) == 1
    assert "hunter2" not in err
    (tmp_path / "junk.sqlite3").write_bytes(b"not a database at all" * 100)
    assert cli.main(["audit", "--db", str(tmp_path / "junk.sqlite3")]) == 3
    assert "not a valid SQLite database" in capsys.readouterr().err
