"""Tokens on WHIP/WHEP and the REST API for meetings (sfu/api.py, sfu/rest.py),
against an in-process server on loopback; no media flows (offers from fixtures)."""

from __future__ import annotations

import asyncio
import csv
import json
import io
import pathlib

import aiohttp
import pytest

from sfu.auth import Grants, mint_token, verify_token
from sfu.config import Config
from sfu.server import Server

pytestmark = pytest.mark.timeout(60)
SECRET = "rest-test-secret"
FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "sdp"
PUBLISH_OFFER = (FIXTURES / "aiortc_publish.sdp").read_text()
VIEW_OFFER = (FIXTURES / "aiortc_view.sdp").read_text()


def tok(identity="alice", room="r1", ttl=600.0, secret=SECRET, **grants) -> str:
    return mint_token(secret, identity, identity.title(), room, Grants(**grants), ttl=ttl)


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


class Api:
    def __init__(self, server: Server, http: aiohttp.ClientSession) -> None:
        self.server, self.http, self.url = server, http, server.url

    async def call(self, method: str, path: str, token: str | None = None, **kw):
        headers = {**kw.pop("headers", {}), **(bearer(token) if token else {})}
        async with self.http.request(method, self.url + path, headers=headers, **kw) as r:
            ctype = r.headers.get("Content-Type", "")
            body = await (r.json() if ctype.startswith("application/json") else r.text())
            return r.status, body, r.headers

    async def offer(self, kind: str, room: str, token: str | None, sdp: str | None = None):
        sdp = sdp or (PUBLISH_OFFER if kind == "whip" else VIEW_OFFER)
        return await self.call("POST", f"/{kind}/{room}", token, data=sdp,
                               headers={"Content-Type": "application/sdp"})


@pytest.fixture
async def api(history_db, tmp_path):
    config = Config(http_port=0, rtc_port=0, data_dir=str(tmp_path / "data"), auth_secret=SECRET,
                    db=history_db, grace_period=0.05, heartbeat_interval=0.05)
    server = Server(config)
    await server.start()
    async with aiohttp.ClientSession() as http:
        yield Api(server, http)
    await server.stop()


async def until(predicate, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


# -- WHIP / WHEP --------------------------------------------------------------------------

@pytest.mark.parametrize("kind, token, status, words", [
    ("whip", None, 401, "missing"),
    ("whip", "garbage", 401, "malformed"),
    ("whip", tok(secret="another secret", publish=True), 401, "signature"),
    ("whip", tok(ttl=-120, publish=True), 401, "expired"),
    ("whip", tok(room="r2", publish=True), 403, "another room"),
    ("whip", tok(subscribe=True), 403, "publish grant"),
    ("whep", tok(publish=True), 403, "subscribe grant"),
    ("whep", tok(room="r2", subscribe=True), 403, "another room"),
])
async def test_whip_whep_refuse_bad_tokens(api, kind, token, status, words):
    code, body, headers = await api.offer(kind, "r1", token)
    assert code == status and words in body and body.count("\n") == 1, body
    if status == 401:
        assert headers["WWW-Authenticate"].startswith("Bearer")
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert api.server.engine.snapshot()["transports"] == 0, "a refused offer leaves nothing behind"
    assert api.server.meetings.active_meeting("r1") is None


async def test_token_in_query_is_accepted_for_whip(api):
    code, _body, headers = await api.call("POST", "/whip/r1?token=" + tok(publish=True), data=PUBLISH_OFFER,
                                          headers={"Content-Type": "application/sdp"})
    assert code == 201


async def test_whip_and_whep_sessions_are_recorded(api):
    meetings = api.server.meetings
    alice = tok("alice", publish=True, host=True)
    code, _answer, headers = await api.offer("whip", "r1", alice)
    assert code == 201
    pub_location = headers["Location"]
    code, _answer, headers = await api.offer("whep", "r1", tok("bob", subscribe=True))
    assert code == 201
    meeting = meetings.active_meeting("r1")
    assert meeting.creator_identity == "alice"
    rows = await meetings.store.sessions(meeting.meeting_id)
    assert [(r.identity, r.display_name, r.left_at) for r in rows] == [("alice", "Alice", None),
                                                                      ("bob", "Bob", None)]
    code, _, _ = await api.call("DELETE", pub_location, alice)
    assert code == 200
    await until(lambda: len(meetings.sessions_in(meeting.meeting_id)) == 1)
    # the viewer silently goes away: the engine drops it (here: as on consent timeout)
    transport_id = headers["Location"].rsplit("/", 1)[1]
    api.server.engine.close_session(transport_id, "ice consent timeout")
    await until(lambda: meetings.active_meeting("r1") is None)  # grace period over
    rows = await meetings.store.sessions(meeting.meeting_id)
    assert [(r.identity, r.end_reason) for r in rows] == [("alice", "left"), ("bob", "timed out")]
    assert (await meetings.store.get_meeting(meeting.meeting_id)).ended_at is not None


async def test_bad_offer_with_good_token_records_nothing(api):
    code, body, _ = await api.offer("whip", "r1", tok(publish=True), sdp="v=0\r\n")
    assert code == 400
    assert api.server.meetings.active_meeting("r1") is None
    assert await api.server.meetings.store.list_meetings(None) == []


# -- REST ---------------------------------------------------------------------------------

async def test_rest_needs_a_token_and_answers_json_errors(api):
    for method, path in (("GET", "/api/meetings"), ("POST", "/api/meetings"),
                         ("GET", "/api/meetings/abc-def-ghj"), ("DELETE", "/api/people/x"),
                         ("GET", "/api/meetings/abc-def-ghj/export")):
        code, body, _ = await api.call(method, path)
        assert code == 401 and body == {"error": "missing access token"}, (method, path, body)
    code, body, _ = await api.call("GET", "/api/meetings/abc-def-ghj", tok())
    assert (code, body) == (404, {"error": "no such meeting"})


async def test_create_list_and_read_meetings(api):
    alice, bob = tok("alice", room=None, host=True), tok("bob", room=None, host=True)
    code, created, headers = await api.call("POST", "/api/meetings", alice, json={"topic": "Planning"})
    assert code == 201 and created["topic"] == "Planning" and created["active"]
    mid = created["meeting_id"]
    assert created["room"] == mid and headers["Location"] == f"/api/meetings/{mid}"
    assert created["creator"] == {"identity": "alice", "name": "Alice"}
    code, other, _ = await api.call("POST", "/api/meetings", bob, json={"topic": "Bob's"})
    assert code == 201

    code, listed, _ = await api.call("GET", "/api/meetings", alice)
    assert code == 200 and [m["meeting_id"] for m in listed["meetings"]] == [mid]
    code, listed, _ = await api.call("GET", "/api/meetings", tok("root", room=None, admin=True))
    assert {m["meeting_id"] for m in listed["meetings"]} == {mid, other["meeting_id"]}

    # people join through WHIP with tokens for the meeting's room
    code, _, _ = await api.offer("whip", mid, tok("carol", room=mid, publish=True))
    assert code == 201
    code, details, _ = await api.call("GET", f"/api/meetings/{mid}", alice)
    assert code == 200 and details["meeting"]["meeting_id"] == mid
    assert [(s["identity"], s["end_reason"]) for s in details["sessions"]] == [("carol", None)]
    assert details["totals"][0]["identity"] == "carol"

    # only the creator or an admin reads the history
    for who in (bob, tok("carol", room=mid, publish=True, host=True)):
        code, body, _ = await api.call("GET", f"/api/meetings/{mid}", who)
        assert code == 403 and "creator" in body["error"]
        code, body, _ = await api.call("GET", f"/api/meetings/{mid}/export?format=csv", who)
        assert code == 403
    code, _, _ = await api.call("GET", f"/api/meetings/{mid}", tok("root", room=None, admin=True))
    assert code == 200


@pytest.mark.parametrize("body, words", [
    ({"topic": 5}, "topic"), ({"topic": "x" * 201}, "topic"), ({"room": "bad room!"}, "room name"),
    ([1, 2], "JSON object"), ("not json", "JSON object"),
])
async def test_create_meeting_validates_input(api, body, words):
    kw = {"json": body} if body != "not json" else {"data": b"{nope",
                                                    "headers": {"Content-Type": "application/json"}}
    code, answer, _ = await api.call("POST", "/api/meetings", tok(room=None, host=True), **kw)
    assert code == 400 and words in answer["error"]


async def test_create_meeting_in_a_room_needs_that_room_and_it_must_be_free(api):
    code, body, _ = await api.call("POST", "/api/meetings", tok("alice", room="r2", host=True), json={"room": "r1"})
    assert code == 403 and "another room" in body["error"]
    code, body, _ = await api.call("POST", "/api/meetings", tok("alice", room="r1", host=True),
                                   json={"room": "r1", "topic": "t"})
    assert code == 201 and body["room"] == "r1"
    code, body, _ = await api.call("POST", "/api/meetings", tok("alice", room="r1", host=True), json={"room": "r1"})
    assert code == 409


async def test_export_csv_and_json(api):
    alice = tok("alice", publish=True, host=True)
    code, _, h1 = await api.offer("whip", "r1", alice)
    code, _, h2 = await api.offer("whep", "r1", tok("bob", subscribe=True))
    await api.call("DELETE", h2["Location"], tok("bob"))
    code, _, h3 = await api.offer("whep", "r1", tok("bob", subscribe=True))  # bob rejoins
    meeting = api.server.meetings.active_meeting("r1")
    await until(lambda: len(api.server.meetings.sessions_in(meeting.meeting_id)) == 2)

    code, text, headers = await api.call("GET", f"/api/meetings/{meeting.meeting_id}/export?format=csv", alice)
    assert code == 200 and headers["Content-Type"].startswith("text/csv")
    assert f'filename="meeting-{meeting.meeting_id}.csv"' in headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["row"], r["identity"], r["end_reason"]) for r in rows][:3] == [
        ("session", "alice", ""), ("session", "bob", "left"), ("session", "bob", "")]
    assert sorted((r["row"], r["identity"]) for r in rows[3:]) == [("total", "alice"), ("total", "bob")]
    totals = {r["identity"]: r for r in rows if r["row"] == "total"}
    assert totals["bob"]["sessions"] == "2" and totals["alice"]["sessions"] == "1"

    code, report, headers = await api.call("GET", f"/api/meetings/{meeting.meeting_id}/export?format=json",
                                           alice)
    assert code == 200 and report["meeting"]["meeting_id"] == meeting.meeting_id
    assert [s["identity"] for s in report["sessions"]] == ["alice", "bob", "bob"]
    assert {t["identity"]: t["sessions"] for t in report["totals"]} == {"alice": 1, "bob": 2}
    code, body, _ = await api.call("GET", f"/api/meetings/{meeting.meeting_id}/export?format=xml", alice)
    assert code == 400


async def test_host_ends_the_meeting_over_rest_and_whip_sessions_are_disconnected(api):
    code, _, headers = await api.offer("whip", "r1", tok("alice", publish=True))
    code, _, _ = await api.offer("whep", "r1", tok("bob", subscribe=True))
    meeting = api.server.meetings.active_meeting("r1")
    code, body, _ = await api.call("DELETE", f"/api/meetings/{meeting.meeting_id}", tok("bob", subscribe=True))
    assert code == 403
    code, body, _ = await api.call("DELETE", f"/api/meetings/{meeting.meeting_id}",
                                   tok("hank", host=True))
    assert code == 200 and body == {"meeting_id": meeting.meeting_id, "ended": True, "disconnected": 2}
    assert api.server.engine.snapshot()["transports"] == 0
    rows = await api.server.meetings.store.sessions(meeting.meeting_id)
    assert {r.end_reason for r in rows} == {"kicked"}
    code, _, _ = await api.call("DELETE", headers["Location"], tok("alice"))
    assert code == 404


async def test_admin_erases_a_person(api):
    erin = tok("erin@example.com", publish=True, host=True)
    code, _, headers = await api.offer("whip", "r1", erin)
    assert (await api.call("DELETE", headers["Location"], erin))[0] == 200
    meeting_id = (await api.server.meetings.store.list_meetings(None))[0].meeting_id
    code, body, _ = await api.call("DELETE", "/api/people/erin@example.com", tok("erin@example.com"))
    assert code == 403
    code, body, _ = await api.call("DELETE", "/api/people/erin@example.com", tok("root", room=None, admin=True))
    assert code == 200 and body["erased"] >= 2  # the session and the meeting she created
    code, details, _ = await api.call("GET", f"/api/meetings/{meeting_id}", tok("root", room=None, admin=True))
    assert "erin" not in str(details)


async def test_dev_token_endpoint_only_in_dev_mode(api, tmp_path):
    code, body, _ = await api.call("POST", "/api/dev/token", json={"room": "r1", "name": "Guest"})
    assert code == 404
    config = Config(http_port=0, rtc_port=0, data_dir=str(tmp_path / "dev"), dev=True)
    server = Server(config)
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(server.url + "/api/dev/token", json={"room": "r1", "name": "Guest"}) as r:
                assert r.status == 200
                token = (await r.json())["token"]
            async with http.post(server.url + "/api/dev/token", json={"room": "bad room"}) as r:
                assert r.status == 400
            # a caller never chooses whom it acts as: a supplied identity is ignored
            identities = set()
            for _ in range(2):
                async with http.post(server.url + "/api/dev/token",
                                     json={"room": "r1", "name": "Mallory", "identity": "alice"}) as r:
                    assert r.status == 200
                    answer = await r.json()
                identities.add(verify_token(server.auth_secret, answer["token"]).identity)
                assert answer["identity"] in identities
        assert len(identities) == 2 and "alice" not in identities
        assert all(i.startswith("dev-") and len(i) == 4 + 16 for i in identities)
        claims = verify_token(server.auth_secret, token)
        assert (claims.room, claims.name) == ("r1", "Guest") and claims.grants.publish
        assert server.auth_secret == (tmp_path / "dev" / "auth_secret").read_text().strip()
    finally:
        await server.stop()


# -- authority: who may do what (issue 9) -------------------------------------------------

ROLES = {  # who -> token; "creator" created the meeting in room r1 with POST /api/meetings
    "nobody": None,
    "viewer": tok("vic", subscribe=True),
    "publisher": tok("pat", publish=True),
    "creator-without-host": tok("hope", publish=True, subscribe=True),  # same identity, no host grant now
    "host-of-r2": tok("hal", room="r2", host=True),
    "host-of-r1": tok("hank", host=True),
    "creator": tok("hope", host=True),
    "admin": tok("root", room=None, admin=True),
}
ALLOWED = {  # action -> the roles that may; everyone else gets 403 (401 without a token)
    # GET /api/meetings/{id}: every participant's identity. The creator is a person (an
    # identity) who had the host grant when the meeting started; any token of theirs reads it
    "read": {"creator", "creator-without-host", "admin"},
    "export": {"creator", "creator-without-host", "admin"},
    "recording": {"creator", "host-of-r1", "admin"},
    "end": {"creator", "host-of-r1", "admin"},
    "create-in-r3": {"admin"},  # another room: only its hosts (none here) and admins
    "erase": {"admin"},
}


async def _do(api, action: str, meeting_id: str, token: str | None):
    if action == "read":
        return await api.call("GET", f"/api/meetings/{meeting_id}", token)
    if action == "export":
        return await api.call("GET", f"/api/meetings/{meeting_id}/export?format=json", token)
    if action == "recording":
        return await api.call("POST", f"/api/meetings/{meeting_id}/recording", token, json={"active": True})
    if action == "end":
        return await api.call("DELETE", f"/api/meetings/{meeting_id}", token)
    if action == "create-in-r3":
        return await api.call("POST", "/api/meetings", token, json={"room": "r3"})
    if action == "erase":
        return await api.call("DELETE", "/api/people/nobody-at-all", token)
    raise AssertionError(action)


@pytest.mark.parametrize("action", sorted(ALLOWED))
@pytest.mark.parametrize("role", sorted(ROLES))
async def test_api_matrix(api, role, action):
    code, created, _ = await api.call("POST", "/api/meetings", ROLES["creator"], json={"room": "r1", "topic": "t"})
    assert code == 201, created
    meeting_id = created["meeting_id"]
    code, _, _ = await api.offer("whep", "r1", ROLES["viewer"])  # someone is in it
    assert code == 201
    code, body, _ = await _do(api, action, meeting_id, ROLES[role])
    if role == "nobody":
        assert code == 401 and body == {"error": "missing access token"}, body
    elif role in ALLOWED[action]:
        assert code in (200, 201), (role, action, code, body)
        if action in ("read", "export"):
            assert [s["identity"] for s in body["sessions"]] == ["vic"]
    else:
        assert code == 403 and body["error"], (role, action, code, body)
        assert "vic" not in json.dumps(body)
        assert api.server.meetings.active_meeting("r1").meeting_id == meeting_id  # nothing changed
        assert api.server.meetings.active_meeting("r3") is None


@pytest.mark.parametrize("role, allowed", [
    ("viewer", False), ("publisher", False), ("creator-without-host", False), ("host-of-r2", False),
    ("host-of-r1", True), ("creator", True), ("admin", True)])
async def test_creating_a_meeting_for_a_room_needs_its_host_grant(api, role, allowed):
    code, body, _ = await api.call("POST", "/api/meetings", ROLES[role], json={"room": "r1", "topic": "t"})
    if allowed:
        assert code == 201 and body["room"] == "r1"
    else:
        assert code == 403 and ("host grant" in body["error"] or "another room" in body["error"]), body
        assert api.server.meetings.active_meeting("r1") is None
    # a room named after the meeting ID: the host grant (any room) or admin
    code, body, _ = await api.call("POST", "/api/meetings", ROLES[role], json={"topic": "t"})
    assert code == (201 if allowed or role == "host-of-r2" else 403), body


async def test_a_viewer_who_comes_first_does_not_squat_the_room(api):
    """The viewer's join starts the meeting without a creator: it reads nobody's identity,
    has no host powers, and the real host claims the meeting (no 409)."""
    viewer = tok("vic", subscribe=True)
    code, _, _ = await api.offer("whep", "r1", viewer)
    assert code == 201
    meeting = api.server.meetings.active_meeting("r1")
    assert meeting.creator_identity == ""
    code, listed, _ = await api.call("GET", "/api/meetings", viewer)
    assert listed == {"meetings": []}
    for method, path in (("GET", f"/api/meetings/{meeting.meeting_id}"), ("DELETE", f"/api/meetings/{meeting.meeting_id}"),
                         ("GET", f"/api/meetings/{meeting.meeting_id}/export")):
        code, body, _ = await api.call(method, path, viewer)
        assert code == 403, (method, path, body)
    code, body, _ = await api.call("POST", "/api/meetings", viewer, json={"room": "r1"})
    assert code == 403 and "host grant" in body["error"]
    # the host claims it: 200 (not 201), the same meeting, its topic and creator set
    host = tok("hope", host=True)
    code, body, headers = await api.call("POST", "/api/meetings", host, json={"room": "r1", "topic": "Standup"})
    assert code == 200 and body["meeting_id"] == meeting.meeting_id, body
    assert body["creator"] == {"identity": "hope", "name": "Hope"} and body["topic"] == "Standup"
    assert headers["Location"] == f"/api/meetings/{meeting.meeting_id}"
    code, details, _ = await api.call("GET", f"/api/meetings/{meeting.meeting_id}", host)
    assert code == 200 and [s["identity"] for s in details["sessions"]] == ["vic"]
    code, body, _ = await api.call("POST", "/api/meetings", tok("hal", host=True), json={"room": "r1"})
    assert code == 409  # it has a creator now


async def test_whip_whep_delete_needs_the_sessions_identity(api):
    code, _, headers = await api.offer("whip", "r1", tok("alice", publish=True))
    assert code == 201
    location = headers["Location"]
    code, _, vheaders = await api.offer("whep", "r1", tok("bob", subscribe=True))
    assert code == 201
    sessions = api.server.engine.snapshot()["transports"]
    for token, status, words in [
            (None, 401, "missing"), ("garbage", 401, "malformed"),
            (tok("bob", subscribe=True), 403, "identity"),  # another participant of the room
            (tok("mallory", room="r1", publish=True, subscribe=True, host=True), 403, "identity"),
    ]:
        code, body, rheaders = await api.call("DELETE", location, token)
        assert code == status and words in body and body.count("\n") == 1, (token, code, body)
        if status == 401:
            assert rheaders["WWW-Authenticate"].startswith("Bearer")
    assert api.server.engine.snapshot()["transports"] == sessions, "nothing was closed"
    for token in (None, tok("alice")):  # an unknown session: 401 first, then 404
        code, body, _ = await api.call("DELETE", "/whip/r1/doesnotexist", token)
        assert code == (401 if token is None else 404), body
    code, _, _ = await api.call("DELETE", location.replace("/r1/", "/r2/"), tok("alice"))
    assert code == 404  # the session exists, in another room
    # the same identity (any of its tokens), or an admin
    code, _, _ = await api.call("DELETE", location, tok("alice", room="r9"))
    assert code == 200
    code, _, _ = await api.call("DELETE", vheaders["Location"], tok("root", room=None, admin=True))
    assert code == 200
    await until(lambda: api.server.engine.snapshot()["transports"] == 0)
    assert (await api.call("DELETE", location, tok("alice")))[0] == 404


async def test_patch_answers_alike_whether_or_not_the_session_exists(api):
    code, _, headers = await api.offer("whip", "r1", tok("alice", publish=True))
    answers = set()
    for path in (headers["Location"], "/whip/r1/doesnotexist", "/whep/r1/doesnotexist"):
        for token in (None, tok("alice")):
            code, body, rheaders = await api.call("PATCH", path, token, data="a=ice-ufrag:x\r\n",
                                                  headers={"Content-Type": "application/trickle-ice-sdpfrag"})
            answers.add((code, body, rheaders.get("Allow")))
    assert answers == {(405, "trickle ICE and ICE restart are not supported\n", "POST, DELETE, OPTIONS")}


@pytest.fixture
async def limited_api(history_db, tmp_path):
    config = Config(http_port=0, rtc_port=0, data_dir=str(tmp_path / "data"), auth_secret=SECRET,
                    db=history_db, max_meetings_per_identity=3, meetings_per_minute=5)
    server = Server(config)
    await server.start()
    async with aiohttp.ClientSession() as http:
        yield Api(server, http)
    await server.stop()


async def test_meeting_creation_is_capped_and_rate_limited_per_identity(limited_api):
    api = limited_api
    alice = tok("alice", room=None, host=True)
    ids = []
    for _ in range(3):
        code, body, _ = await api.call("POST", "/api/meetings", alice, json={"topic": "t"})
        assert code == 201
        ids.append(body["meeting_id"])
    code, body, headers = await api.call("POST", "/api/meetings", alice, json={"topic": "t"})
    assert code == 429 and "limit is 3" in body["error"] and int(headers["Retry-After"]) > 0, body
    # another identity has its own allowance
    code, _, _ = await api.call("POST", "/api/meetings", tok("bob", room=None, host=True), json={})
    assert code == 201
    # ending one frees a place ... until the rate (5 a minute) is spent
    for meeting_id in ids[:2]:
        code, _, _ = await api.call("DELETE", f"/api/meetings/{meeting_id}", alice)
        assert code == 200
    for _ in range(2):
        code, body, _ = await api.call("POST", "/api/meetings", alice, json={})
        assert code == 201, body
    code, _, _ = await api.call("DELETE", f"/api/meetings/{body['meeting_id']}", alice)
    assert code == 200
    code, body, headers = await api.call("POST", "/api/meetings", alice, json={})
    assert code == 429 and "per minute" in body["error"], body
    assert 1 <= int(headers["Retry-After"]) <= 12
    running = [m for m in await api.server.meetings.store.list_meetings("alice") if m.ended_at is None]
    assert len(running) == 2
    # a burst from one token creates nothing more
    codes = await asyncio.gather(*(api.call("POST", "/api/meetings", alice, json={}) for _ in range(50)))
    assert {c for c, _, _ in codes} == {429}
    assert len(await api.server.meetings.store.list_meetings("alice")) == 5
    # an admin (a backend creating meetings for others) is not limited
    for _ in range(8):
        code, _, _ = await api.call("POST", "/api/meetings", tok("root", room=None, admin=True), json={})
        assert code == 201
