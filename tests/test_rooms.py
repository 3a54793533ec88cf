"""The meeting side's room registry (sfu/rooms.py) and the meeting events' reason
vocabulary (sfu/events.py): an entry lives while its room has a running meeting or a
participant, and the reasons read, serialize and are stored as the strings they were."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sfu.auth import Claims, Grants
from sfu.events import EndReason, LeaveReason, MeetingEnded, ParticipantLeft
from sfu.history import END_REASONS, HistoryStore, Meeting
from sfu.meetings import MeetingService
from sfu.participant import Participant
from sfu.rooms import Rooms

pytestmark = pytest.mark.timeout(30)


def meeting(meeting_id: str, room: str) -> Meeting:
    return Meeting(meeting_id, room, "", "", "", 1.0, None)


def person(room: str) -> Participant:
    claims = Claims("id", "Name", room, Grants(publish=True, subscribe=True), 2**40)
    return Participant(claims=claims, room=room, send=lambda m: None, close=lambda c, r: None)


def test_an_entry_lives_while_its_room_has_a_meeting_or_a_participant():
    rooms = Rooms()
    live = rooms.start(meeting("m1", "r"))
    assert list(rooms) == [rooms.get("r")] and rooms.live("r") is live and rooms.live_by_id("m1") is live
    alice, bob = person("r"), person("r")
    rooms.add(alice)
    rooms.add(bob)
    assert rooms.participants("r") == [alice, bob] and rooms.running() == [live]
    # the meeting ends while its participants' sockets are still closing: the room stays
    assert rooms.end(live) is True and rooms.end(live) is False
    assert rooms.live("r") is None and rooms.live_by_id("m1") is None and "r" in rooms
    # a new meeting starts next to them
    live2 = rooms.start(meeting("m2", "r"))
    with pytest.raises(ValueError):
        rooms.start(meeting("m3", "r"))  # one running meeting per room
    rooms.remove(alice)
    rooms.remove(alice)  # idempotent
    rooms.remove(bob)
    assert rooms.get("r").participants == {} and rooms.live("r") is live2
    rooms.end(live2)
    assert len(rooms) == 0 and rooms.get("r") is None and rooms.participants("r") == []
    # participants alone make a room too (WHIP/WHEP peers of a meeting that ended)
    carol = person("s")
    rooms.add(carol)
    assert rooms.all_participants() == [carol] and rooms.live("s") is None
    rooms.remove(carol)
    assert len(rooms) == 0


def test_remove_only_takes_out_that_participant_object():
    rooms = Rooms()
    first = person("r")
    twin = dataclasses.replace(first)  # the same participant id, another object
    rooms.add(first)
    rooms.remove(twin)
    assert rooms.participants("r") == [first]


def test_reasons_are_the_strings_stored_shown_and_sent():
    assert tuple(r.value for r in LeaveReason) == END_REASONS == ("left", "kicked", "timed out", "server stopped")
    assert [r.value for r in EndReason] == ["empty", "ended by host", "server stopped"]
    ev = ParticipantLeft("m", "r", "s", "alice", "Alice", LeaveReason.TIMED_OUT)
    assert json.dumps(dataclasses.asdict(ev)) == ('{"meeting_id": "m", "room": "r", "session_id": "s", '
                                                  '"identity": "alice", "name": "Alice", "reason": "timed out"}')
    assert str(EndReason.ENDED_BY_HOST) == f"{EndReason.ENDED_BY_HOST}" == "ended by host"
    assert LeaveReason("kicked") is LeaveReason.KICKED and MeetingEnded("m", "r", EndReason.EMPTY).reason == "empty"
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.reason = LeaveReason.LEFT


async def test_the_service_keeps_its_meetings_in_the_registry_and_stores_plain_strings(tmp_path):
    service = MeetingService(HistoryStore.from_config(":memory:", str(tmp_path)), grace_period=0.0)
    await service.start()
    try:
        claims = Claims("alice", "Alice", "r", Grants(publish=True), 2**40)
        m, s1 = await service.join(claims, "r")
        assert service.rooms.live("r").meeting is m and service.rooms.live("r").sessions == {s1}
        await service.leave(s1, LeaveReason.TIMED_OUT)
        [row] = await service.store.sessions(m.meeting_id)
        assert row.end_reason == "timed out" and type(row.end_reason) is str
        await service.end_meeting(m.meeting_id, Claims("admin", "Admin", None, Grants(admin=True), 2**40))
        assert len(service.rooms) == 0
    finally:
        await service.stop()
