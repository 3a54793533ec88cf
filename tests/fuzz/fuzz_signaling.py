"""Fuzz target: the meeting protocol's message handler (sfu/signaling.py
``Signaling.handle``), in-process, with a real media engine (negotiation only,
no socket) and a real meeting service on a SQLite history in memory.

Two participants are in the room: a resident host who published audio and
video, and the fuzzed one, joined (it rejoins when a message made it leave,
or ended the meeting).

Input: one control byte, then either (control bit 0 clear) the text of a
WebSocket message, decoded as ``websocket_handler`` does (``json.loads``;
what it refuses it answers with ``bad_request``), or (bit 0 set) a message
built from the bytes (atheris.FuzzedDataProvider): a request type (the
protocol's, or any string), an id of any JSON type and the fields the
handlers read (sdp from the real offers, subscriptions and tracks keyed by
mid, track and participant ids of the room's or made up, muted, kind, room)
with values of any JSON type. Bit 1 gives the fuzzed participant the host
grant.

Property: every message gets exactly one response ``{"id", "type":
"response", "ok"}``; a refusal has a stable ``code`` that is not
``internal_error`` (the handler's catch-all for bugs, which also logs an
error); nothing else is raised; the room, the engine's sessions and the
queued events stay bounded.
"""

from __future__ import annotations

import asyncio
import json
import sys

from harness import ROOT, fuzz_imports, run

with fuzz_imports():
    from sfu.auth import Claims, Grants
    from sfu.config import Config
    from sfu.engine import MediaEngine
    from sfu.history import HistoryStore
    from sfu.meetings import MeetingService
    from sfu.signaling import Signaling

from tests.sdp_offers import OfferPeer

try:
    import atheris
except ImportError:
    atheris = None

TYPES = ["join", "offer", "mute", "mute_participant", "leave", "end_meeting", "ping"]
OFFERS = [path.read_text() for path in sorted((ROOT / "tests" / "fixtures" / "sdp").glob("*.sdp"))]

loop = asyncio.new_event_loop()
asyncio.set_event_loop(loop)
# SQLite in memory: the real store and schema, and nothing left on disk when libFuzzer exits
service = MeetingService(HistoryStore.from_config(":memory:", "."), grace_period=3600.0, heartbeat_interval=3600.0)
loop.run_until_complete(service.start())
engine = MediaEngine(Config(datapath="pure", consent_timeout=1e9))
signaling = Signaling(engine, service)


class Socket:
    """What the WebSocket glue gives Signaling: a send and a close that land here."""

    def __init__(self, identity: str, grants: Grants) -> None:
        self.claims = Claims(identity, identity.title(), "room", grants, 2**40)
        self.sent: list[dict] = []
        self.closed = None
        self.participant = signaling.connect(self.claims, "room", self.sent.append, self._close)
        self.ids = 0

    def _close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def request(self, message) -> dict:
        response = loop.run_until_complete(signaling.handle(self.participant, message))
        settle()
        return response


def settle() -> None:
    for _ in range(3):  # tasks the request spawned (disconnects after a meeting ended)
        loop.run_until_complete(asyncio.sleep(0))
    engine.tick(engine.now())  # as the running engine does every 20 ms: closed sessions leave its timer heap


def resident() -> Socket:
    host = Socket("host", Grants(publish=True, subscribe=True, host=True))
    assert host.request({"id": 1, "type": "join"})["ok"]
    peer = OfferPeer()
    offer = peer.offer([("0", "audio", "sendonly"), ("1", "video", "sendonly")])
    response = host.request({"id": 2, "type": "offer", "sdp": offer, "tracks": {"0": {"source": "microphone"}}})
    assert response["ok"], response
    return host


sockets: dict[str, Socket] = {}


def ensure(host_grant: bool) -> Socket:
    host = sockets.get("host")
    if host is None or host.participant.gone or host.closed:
        if host is not None:
            loop.run_until_complete(signaling.disconnect(host.participant))
        sockets["host"] = resident()
    fuzzed = sockets.get("fuzzed")
    grants = Grants(publish=True, subscribe=True, host=host_grant)
    if fuzzed is None or fuzzed.participant.gone or fuzzed.closed or fuzzed.claims.grants != grants:
        if fuzzed is not None:
            loop.run_until_complete(signaling.disconnect(fuzzed.participant))
        fuzzed = sockets["fuzzed"] = Socket("fuzzed", grants)
        fuzzed.request({"id": 0, "type": "join"})
    return fuzzed


def any_value(fdp, depth: int = 0):
    kind = fdp.ConsumeIntInRange(0, 8)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeInt(8)
    if kind == 3:
        return fdp.ConsumeRegularFloat()
    if kind in (4, 5):
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 40))
    if kind == 6 and depth < 3:
        return [any_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if kind == 7 and depth < 3:
        return {fdp.ConsumeUnicodeNoSurrogates(8): any_value(fdp, depth + 1)
                for _ in range(fdp.ConsumeIntInRange(0, 4))}
    return fdp.ConsumeIntInRange(0, 3)


def room_ids() -> tuple[list[str], list[str]]:
    tracks, people = [], []
    for participant in signaling.participants("room"):
        people.append(participant.id)
        tracks += list(participant.tracks)
    return tracks, people


def built_message(fdp) -> dict:
    tracks, people = room_ids()
    message = {}
    if fdp.ConsumeIntInRange(0, 9):
        message["type"] = TYPES[fdp.ConsumeIntInRange(0, len(TYPES) - 1)] if fdp.ConsumeIntInRange(0, 7) \
            else any_value(fdp)
    if fdp.ConsumeBool():
        message["id"] = any_value(fdp)
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        field = fdp.ConsumeIntInRange(0, 9)
        if field == 0:  # a real offer, perhaps cut and patched
            offer = OFFERS[fdp.ConsumeIntInRange(0, len(OFFERS) - 1)]
            cut = fdp.ConsumeIntInRange(0, len(offer))
            message["sdp"] = offer[:cut] + fdp.ConsumeUnicodeNoSurrogates(16) + offer[cut:] \
                if fdp.ConsumeBool() else offer
        elif field == 1:
            message["subscriptions"] = {fdp.ConsumeUnicodeNoSurrogates(3): (
                tracks[fdp.ConsumeIntInRange(0, len(tracks) - 1)] if tracks and fdp.ConsumeBool()
                else any_value(fdp)) for _ in range(fdp.ConsumeIntInRange(0, 4))} \
                if fdp.ConsumeIntInRange(0, 5) else any_value(fdp)
        elif field == 2:
            message["tracks"] = {fdp.ConsumeUnicodeNoSurrogates(3): (
                {"source": any_value(fdp), "muted": any_value(fdp)} if fdp.ConsumeBool() else any_value(fdp))
                for _ in range(fdp.ConsumeIntInRange(0, 4))} if fdp.ConsumeIntInRange(0, 5) else any_value(fdp)
        elif field == 3:
            message["track_id"] = tracks[fdp.ConsumeIntInRange(0, len(tracks) - 1)] \
                if tracks and fdp.ConsumeBool() else any_value(fdp)
        elif field == 4:
            message["participant_id"] = people[fdp.ConsumeIntInRange(0, len(people) - 1)] \
                if people and fdp.ConsumeBool() else any_value(fdp)
        elif field == 5:
            message["muted"] = fdp.ConsumeBool() if fdp.ConsumeBool() else any_value(fdp)
        elif field == 6:
            message["kind"] = ("audio", "video")[fdp.ConsumeIntInRange(0, 1)] if fdp.ConsumeBool() \
                else any_value(fdp)
        elif field == 7:
            message["room"] = "room" if fdp.ConsumeBool() else any_value(fdp)
        else:
            message[fdp.ConsumeUnicodeNoSurrogates(8)] = any_value(fdp)
    return message


def one_input(data: bytes) -> None:
    if not data:
        return
    control, body = data[0], data[1:]
    socket = ensure(bool(control & 2))
    if control & 1:
        if atheris is None:  # the fallback runner: the bytes as JSON only
            return
        message = built_message(atheris.FuzzedDataProvider(body))
    else:
        try:
            message = json.loads(body)  # what websocket_handler does with a text frame
        except (ValueError, RecursionError):  # answered with bad_request "not JSON" by the glue
            return
    socket.sent.clear()
    response = socket.request(message)
    assert isinstance(response, dict) and response.get("type") == "response", response
    assert isinstance(response.get("ok"), bool), response
    if isinstance(message, dict) and response.get("id") is not None:
        assert response["id"] == message.get("id"), (response, message.get("id"))
    if not response["ok"]:
        code = response.get("code")
        assert isinstance(code, str) and code and code != "internal_error", response
        assert isinstance(response.get("error"), str), response
    else:
        json.dumps(response)  # what the glue sends must serialize
    assert sum(m is response for m in socket.sent) == 1, "the response was not queued once"
    assert len(socket.sent) <= 64, len(socket.sent)
    host = sockets.get("host")
    if host is not None:
        assert len(host.sent) <= 10_000, len(host.sent)
        host.sent.clear()


def bounded() -> None:
    assert len(engine.transports) <= 2, len(engine.transports)
    assert len(signaling.participants("room")) <= 2, len(signaling.participants("room"))
    assert len(service._sessions) <= 2 if hasattr(service, "_sessions") else True
    assert len(service.rooms) <= 1 and len(service.rooms.running()) <= 1, list(service.rooms)


if __name__ == "__main__":
    run(one_input, bounded=bounded)
    sys.exit(0)
