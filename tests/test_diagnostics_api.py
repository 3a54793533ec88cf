"""Connection diagnostics over the meeting protocol and the REST API: a participant is
told its own ``connection_quality`` and never another's (sfu/signaling.py on a
ManualClock, the engine's counters scripted), and ``GET
/api/participants/{id}/diagnostics`` answers its own participant only (an in-process
server on loopback, real WebSocket joins)."""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest

from sfu import diagnostics
from sfu.clock import ManualClock
from sfu.config import Config
from sfu.log import redact
from sfu.server import Server
from sfu.signaling import Signaling

from .conftest import new_engine
from .test_rest import SECRET, tok
from .test_signaling import AV, SOURCES, FakeMeetings, joined

pytestmark = pytest.mark.timeout(60)


class ScriptedStats:
    """What MediaEngine.media_stats() would say about the real sessions, with the
    counters the test writes: per media session, packets expected / received."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.real = engine.media_stats
        self.counts: dict[str, list[int]] = {}  # producer id -> [received, expected]

    def add(self, session_id: str, packets: int, loss_percent: float) -> None:
        for producer in self.engine.describe_session(session_id)["producers"].values():
            c = self.counts.setdefault(producer["id"], [0, 0])
            c[1] += packets
            c[0] += round(packets * (1 - loss_percent / 100))

    def __call__(self) -> list[dict]:
        out = []
        for s in self.real():
            producers = [{**p, "packets": self.counts.get(p["id"], [0, 0])[0],
                          "expected": self.counts.get(p["id"], [0, 0])[1], "jitter": 0.005} for p in s["producers"]]
            out.append({**s, "producers": producers})
        return out


async def test_each_participant_gets_its_own_quality_and_never_another(datapath_mode):
    engine = new_engine(Config(), datapath_mode)
    clock = ManualClock()
    signaling = Signaling(engine, FakeMeetings(), clock=clock)
    alice = await joined(signaling, "alice@example.com", "Alice")
    bob = await joined(signaling, "+15551234567", "Bob")
    for c in (alice, bob):
        assert (await c.request("offer", sdp=c.peer.offer(AV), tracks=SOURCES))["ok"]
    stats = ScriptedStats(engine)
    engine.media_stats = stats  # the counters of a link the test shapes
    a_session, b_session = alice.participant.media_session, bob.participant.media_session
    assert sorted(signaling.diagnostics.watched()) == sorted([a_session, b_session])

    for _ in range(3):
        stats.add(a_session, 100, 0.0)
        stats.add(b_session, 100, 0.0)
        clock.advance(diagnostics.INTERVAL)
    [a_good] = alice.events("connection_quality")
    [b_good] = bob.events("connection_quality")
    assert a_good["level"] == b_good["level"] == "good" and a_good["reason"] is None

    # Alice's uplink loses 15 %: she is told (once), Bob is not
    for _ in range(8):
        stats.add(a_session, 100, 15.0)
        stats.add(b_session, 100, 0.0)
        clock.advance(diagnostics.INTERVAL)
    assert [e["level"] for e in alice.events("connection_quality")] == ["good", "poor"]
    poor = alice.events("connection_quality")[-1]
    # told when the level changed, with the (smoothed) figure of then; the report is current
    assert re.fullmatch(r"your uplink loses 1\d% of packets", poor["reason"]), poor
    now = signaling.diagnostics.report(a_session)
    assert now["reason"] == "your uplink loses 15% of packets"
    assert now["uplink"]["loss_percent"] == pytest.approx(15.0, abs=0.5)
    assert bob.events("connection_quality") == [b_good]
    assert not any("connection_quality" in json.dumps(m) and m is not b_good for m in bob.sent)
    # no identity, no address in what Alice was told
    text = json.dumps(alice.events("connection_quality"))
    assert "alice@example.com" not in text and "+15551234567" not in text and redact(text) == text

    # her link recovers: told good again
    for _ in range(8):
        stats.add(a_session, 100, 0.0)
        clock.advance(diagnostics.INTERVAL)
    assert [e["level"] for e in alice.events("connection_quality")] == ["good", "poor", "good"]

    # she leaves: her session is no longer graded; Bob's still is; when he leaves the timer stops
    await alice.request("leave")
    assert signaling.diagnostics.watched() == [b_session]
    await bob.request("leave")
    assert signaling.diagnostics.watched() == [] and clock.pending() == []


# -- GET /api/participants/{id}/diagnostics ---------------------------------------------------

@pytest.fixture
async def server(history_db, tmp_path):
    config = Config(http_port=0, rtc_port=0, data_dir=str(tmp_path / "data"), auth_secret=SECRET,
                    db=history_db, grace_period=0.05, heartbeat_interval=0.05)
    server = Server(config)
    await server.start()
    yield server
    await server.stop()


async def join_ws(http: aiohttp.ClientSession, url: str, token: str):
    ws = await http.ws_connect(f"{url.replace('http', 'ws', 1)}/ws?token={token}")
    await ws.send_json({"id": 1, "type": "join"})
    while True:
        message = await ws.receive_json(timeout=5)
        if message.get("id") == 1:
            assert message["ok"], message
            return ws, message["participant_id"]


async def test_get_own_diagnostics_matrix(server):
    alice_token = tok("alice@example.com", room="r1", publish=True, subscribe=True)
    async with aiohttp.ClientSession() as http:
        alice_ws, alice_id = await join_ws(http, server.url, alice_token)
        bob_ws, bob_id = await join_ws(http, server.url, tok("bob", room="r1", publish=True, subscribe=True))

        async def get(participant_id, token):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            async with http.get(f"{server.url}/api/participants/{participant_id}/diagnostics",
                                headers=headers) as r:
                return r.status, await r.json()

        status, body = await get(alice_id, alice_token)
        assert status == 200, body
        assert body == {"participant_id": alice_id, "level": "unknown", "reason": None, "uplink": None,
                        "downlink": None}
        # the same identity with another token of hers (another room) still reads her own
        assert (await get(alice_id, tok("alice@example.com", room="r2", subscribe=True)))[0] == 200
        for token, expected in [
            (None, 401),
            ("garbage", 401),
            (tok("alice@example.com", room="r1", secret="another secret", subscribe=True), 401),
            (tok("bob", room="r1", subscribe=True), 403),  # another participant of the meeting
            (tok("bob", room="r1", host=True, publish=True, subscribe=True), 403),  # a host
            (tok("root", room=None, admin=True), 403),  # an admin: diagnostics are the participant's own
        ]:
            status, body = await get(alice_id, token)
            assert status == expected, (token, body)
            assert set(body) == {"error"} and "\n" not in body["error"]
        assert (await get("no-such-id", alice_token))[0] == 404
        assert (await get(bob_id, alice_token))[0] == 403
        # gone: 404
        await alice_ws.send_json({"id": 2, "type": "leave"})
        await alice_ws.receive_json(timeout=5)
        await alice_ws.close()
        for _ in range(100):
            status, _ = await get(alice_id, alice_token)
            if status == 404:
                break
            await asyncio.sleep(0.02)
        assert status == 404
        await bob_ws.close()
