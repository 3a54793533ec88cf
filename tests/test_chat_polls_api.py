"""Chat and polls over a real WebSocket (/ws) of an in-process server on loopback,
and who may read them back over the REST API (creator / other host / attendee /
stranger / admin), every read audited; SQLite and PostgreSQL. No media: chat and
polls need only a joined socket."""

from __future__ import annotations

import asyncio
import csv
import io
import json

import aiohttp
import pytest

from sfu import audit
from sfu.auth import Grants, mint_token
from sfu.config import Config
from sfu.server import Server

pytestmark = pytest.mark.timeout(60)
SECRET = "chat-polls-secret"


def tok(identity, room="r1", **grants) -> str:
    return mint_token(SECRET, identity, identity.split("@")[0].title(), room, Grants(**grants), ttl=600)


class Ws:
    """One participant's socket: requests with ids, events collected."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        self.http, self.url, self.token = http, url.replace("http", "ws", 1) + "/ws", token
        self.events: list[dict] = []
        self._waiting: dict[int, asyncio.Future] = {}
        self._n = 0

    async def open(self) -> "Ws":
        self.ws = await self.http.ws_connect(self.url, params={"token": self.token})
        self._reader = asyncio.create_task(self._read())
        self.joined = await self.request("join")
        assert self.joined["ok"], self.joined
        return self

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            if data.get("type") == "response" and data.get("id") in self._waiting:
                self._waiting.pop(data["id"]).set_result(data)
            elif data.get("type") == "event":
                self.events.append(data)

    async def request(self, type_: str, **fields) -> dict:
        self._n += 1
        future = self._waiting[self._n] = asyncio.get_running_loop().create_future()
        await self.ws.send_str(json.dumps({"id": self._n, "type": type_, **fields}))
        return await asyncio.wait_for(future, 10)

    def named(self, name: str) -> list[dict]:
        return [e for e in self.events if e["event"] == name]

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


async def until(predicate, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
async def server(history_db, tmp_path):
    config = Config(http_port=0, rtc_port=0, data_dir=str(tmp_path / "data"), auth_secret=SECRET,
                    db=history_db, grace_period=0.05, heartbeat_interval=0.05, keep_chat=True,
                    chat_max_chars=100, chat_burst=2, chat_per_minute=1.0)
    srv = Server(config)
    await srv.start()
    async with aiohttp.ClientSession() as http:
        srv.http = http
        yield srv
    await srv.stop()


async def get(srv, path: str, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with srv.http.get(srv.url + path, headers=headers) as r:
        body = await (r.json() if r.content_type == "application/json" else r.text())
        return r.status, body


async def test_chat_and_polls_over_the_websocket_then_the_api_matrix(server):
    creator = tok("creator@example.com", host=True, publish=True, subscribe=True)
    host = await Ws(server.http, server.url, creator).open()
    cohost = await Ws(server.http, server.url, tok("cohost@example.com", host=True, subscribe=True)).open()
    ann = await Ws(server.http, server.url, tok("ann@example.com", subscribe=True)).open()
    meeting_id = host.joined["meeting"]["id"]
    assert ann.joined["chat"] == {"enabled": True, "kept": True, "max_chars": 100}
    assert host.joined["permissions"]["polls"] is True and ann.joined["permissions"]["polls"] is False

    # chat: to everyone, to one, limits with clear protocol errors
    said = await ann.request("chat", text="hello everyone")
    assert said["ok"] and said["message"]["from"] == {"id": ann.joined["participant_id"], "name": "Ann"}
    await until(lambda: host.named("chat") and cohost.named("chat"))
    assert host.named("chat")[0]["message_id"] == said["message"]["message_id"]
    assert "ann@example.com" not in json.dumps(host.events + cohost.events)
    private = await host.request("chat", text="just for Ann", to=ann.joined["participant_id"])
    assert private["ok"]
    await until(lambda: len(ann.named("chat")) == 1)
    too_long = await ann.request("chat", text="x" * 101)
    assert too_long["code"] == "too_large" and "100 characters" in too_long["error"]
    assert (await ann.request("chat", text="second"))["ok"]
    limited = await ann.request("chat", text="third")  # a burst of 2
    assert limited["code"] == "rate_limited" and limited["retry_after"] > 0
    off = await cohost.request("chat_enable", enabled=False)
    assert off["ok"]
    await until(lambda: ann.named("chat_state"))
    assert (await ann.request("chat", text="x"))["code"] == "chat_disabled"
    assert (await ann.request("chat_enable", enabled=True))["code"] == "forbidden"
    await cohost.request("chat_enable", enabled=True)

    # polls: a named one and an anonymous one
    named = (await host.request("poll_create", question="Pizza or sushi?", options=["Pizza", "Sushi"]))["poll"]
    anon = (await host.request("poll_create", question="Happy?", options=["yes", "no"], anonymous=True))["poll"]
    await until(lambda: len(ann.named("poll_opened")) == 2)
    assert (await ann.request("poll_vote", poll_id=named["poll_id"], choices=[1]))["ok"]
    assert (await ann.request("poll_vote", poll_id=named["poll_id"], choices=[0]))["changed"] is True
    assert (await ann.request("poll_vote", poll_id=anon["poll_id"], choices=[1]))["final"] is True
    assert (await cohost.request("poll_vote", poll_id=anon["poll_id"], choices=[0]))["ok"]
    assert (await ann.request("poll_vote", poll_id=anon["poll_id"], choices=[0]))["code"] == "already_voted"
    await until(lambda: any(e["results"]["poll_id"] == anon["poll_id"] and e["results"]["voters"] == 2
                            for e in cohost.named("poll_results")))
    assert ann.named("poll_results") == []  # attendees see no results while a poll is open
    await host.request("poll_close", poll_id=named["poll_id"])
    await until(lambda: ann.named("poll_closed"))
    assert ann.named("poll_closed")[0]["results"]["options"] == [{"option": "Pizza", "votes": 1},
                                                                 {"option": "Sushi", "votes": 0}]
    for ws in (host, cohost, ann):
        await ws.close()
    await until(lambda: server.meetings.rooms.live_by_id(meeting_id) is None)  # ended: polls closed
    await server.meetings.store._run(lambda: None)

    # REST: only the creator and an admin read chat and polls; everyone else 403
    readers = {"creator": creator, "admin": tok("root@example.com", room=None, admin=True)}
    refused = {"other host": tok("cohost@example.com", host=True), "attendee": tok("ann@example.com"),
               "stranger": tok("eve@example.com", room="elsewhere", host=True)}
    for path in ("chat", "polls", "polls/export?format=csv"):
        for who, token in refused.items():
            status, body = await get(server, f"/api/meetings/{meeting_id}/{path}", token)
            assert status == 403, (path, who, status, body)
        assert (await get(server, f"/api/meetings/{meeting_id}/{path}", None))[0] == 401
        assert (await get(server, f"/api/meetings/nope/{path}", readers["admin"]))[0] == 404
    status, chat = await get(server, f"/api/meetings/{meeting_id}/chat", readers["creator"])
    assert status == 200
    texts = [(m["from"]["name"], m["to"] and m["to"]["name"], m["text"]) for m in chat["messages"]]
    assert texts == [("Ann", None, "hello everyone"), ("Creator", "Ann", "just for Ann"), ("Ann", None, "second")]
    status, polls = await get(server, f"/api/meetings/{meeting_id}/polls", readers["admin"])
    assert status == 200
    by_q = {p["question"]: p for p in polls["polls"]}
    assert by_q["Pizza or sushi?"]["votes"] == [{"identity": "ann@example.com", "name": "Ann",
                                                 "choices": ["Pizza"], "voted_at": by_q["Pizza or sushi?"]
                                                 ["votes"][0]["voted_at"]}]
    happy = by_q["Happy?"]
    assert happy["results"] == [{"option": "yes", "votes": 1}, {"option": "no", "votes": 1}]
    assert "votes" not in happy and happy["closed_at"] is not None  # closed when the meeting ended
    assert sorted(v["identity"] for v in happy["voters"]) == ["ann@example.com", "cohost@example.com"]
    status, text = await get(server, f"/api/meetings/{meeting_id}/polls/export?format=csv", readers["creator"])
    assert status == 200
    table = list(csv.DictReader(io.StringIO(text)))
    assert [(r["question"], r["option"], r["votes"], r["voters"]) for r in table] == [
        ("Pizza or sushi?", "Pizza", "1", "Ann"), ("Pizza or sushi?", "Sushi", "0", ""),
        ("Happy?", "yes", "1", ""), ("Happy?", "no", "1", "")]
    assert (await get(server, f"/api/meetings/{meeting_id}/polls/export?format=xml", creator))[0] == 400

    # every read and export was audited, refusals not
    rows = [(r.actor_identity, r.action, r.kind)
            for r in await audit.entries(server.meetings.store, object_id=meeting_id)]
    assert sorted(rows) == sorted([
        ("creator@example.com", "read", "chat"), ("root@example.com", "read", "poll"),
        ("creator@example.com", "export", "poll")])


async def test_chat_is_not_kept_without_the_flag(history_db, tmp_path):
    config = Config(http_port=0, rtc_port=0, data_dir=str(tmp_path / "data"), auth_secret=SECRET,
                    db=history_db, grace_period=0.05)
    srv = Server(config)
    await srv.start()
    try:
        async with aiohttp.ClientSession() as http:
            srv.http = http
            creator = tok("creator@example.com", host=True)
            a = await Ws(http, srv.url, creator).open()
            b = await Ws(http, srv.url, tok("b@example.com")).open()
            assert a.joined["chat"]["kept"] is False
            assert (await a.request("chat", text="not kept"))["ok"]
            await until(lambda: b.named("chat"))
            status, body = await get(srv, f"/api/meetings/{a.joined['meeting']['id']}/chat", creator)
            assert status == 200 and body["messages"] == []
            await a.close()
            await b.close()
    finally:
        await srv.stop()
