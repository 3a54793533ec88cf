"""The meeting side's one room model: :class:`Rooms`, keyed by room name.

A room's entry (:class:`MeetingRoom`) holds what the meeting side knows of it:

- ``live``: its running meeting (:class:`LiveMeeting`: the stored
  :class:`~sfu.history.Meeting`, its open history session ids, the timer that
  ends it when it stays empty, whether a recorder records it), or None;
- ``participants``: who is in it as the WebSocket protocol sees them
  (:class:`~sfu.participant.Participant` by participant id: WebSocket
  participants and WHIP/WHEP peers).

The meeting service (sfu/meetings.py) owns the registry (``MeetingService.rooms``)
and starts and ends meetings in it; the protocol (sfu/signaling.py) adds and
removes participants. An entry is created by the first of these and removed by
the method that leaves it with neither a meeting nor a participant, here and
nowhere else. The running meetings are also found by meeting id; that index is
kept by the same methods. Participants of a meeting that ended stay in the room
until their sockets are closed, so a room can hold the participants of an ended
meeting next to a new one: filter on ``Participant.meeting_id``.

A participant carries its media session id and its published tracks (with their
producer ids), so the protocol finds the participant an engine event is about in
the event's room (``SessionClosed.session``, ``TrackUnpublished.producer``) and
keeps no index of its own.

The media side of a room (producers, consumers) is the engine's (sfu/router.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

from .clock import Timer
from .history import Meeting
from .participant import Participant


@dataclass(eq=False)
class LiveMeeting:
    """A running meeting."""

    meeting: Meeting
    sessions: set[str] = field(default_factory=set)  # open history session ids
    end_timer: Timer | None = None  # ends it if it stays empty (MeetingService grace period)
    recording: bool = False  # a recorder says it records it (POST /api/meetings/{id}/recording)


@dataclass(eq=False)
class MeetingRoom:
    name: str
    live: LiveMeeting | None = None
    participants: dict[str, Participant] = field(default_factory=dict)  # participant id -> participant


class Rooms:
    """Every room with a running meeting or a participant."""

    def __init__(self) -> None:
        self._rooms: dict[str, MeetingRoom] = {}
        self._live: dict[str, MeetingRoom] = {}  # meeting id -> its room, while it runs

    # -- queries -------------------------------------------------------------------------
    def get(self, name: str) -> MeetingRoom | None:
        return self._rooms.get(name)

    def __iter__(self) -> Iterator[MeetingRoom]:
        return iter(list(self._rooms.values()))

    def __len__(self) -> int:
        return len(self._rooms)

    def __contains__(self, name: object) -> bool:
        return name in self._rooms

    def live(self, name: str) -> LiveMeeting | None:
        """The running meeting of room ``name``."""
        room = self._rooms.get(name)
        return room.live if room is not None else None

    def live_by_id(self, meeting_id: str | None) -> LiveMeeting | None:
        room = self._live.get(meeting_id) if meeting_id is not None else None
        return room.live if room is not None else None

    def running(self) -> list[LiveMeeting]:
        return [room.live for room in self._live.values() if room.live is not None]

    def participants(self, name: str) -> list[Participant]:
        room = self._rooms.get(name)
        return list(room.participants.values()) if room is not None else []

    def all_participants(self) -> list[Participant]:
        return [p for room in self._rooms.values() for p in room.participants.values()]

    # -- changes: the only places an entry is created or removed --------------------------
    def start(self, meeting: Meeting) -> LiveMeeting:
        """``meeting`` runs in its room from now on (the room has none running)."""
        room = self._open(meeting.room)
        if room.live is not None:
            raise ValueError(f"room {meeting.room} has a running meeting")
        room.live = LiveMeeting(meeting)
        self._live[meeting.meeting_id] = room
        return room.live

    def end(self, live: LiveMeeting) -> bool:
        """``live`` no longer runs; False if it did not (ended already)."""
        room = self._live.get(live.meeting.meeting_id)
        if room is None or room.live is not live:
            return False
        del self._live[live.meeting.meeting_id]
        room.live = None
        self._release(room)
        return True

    def add(self, participant: Participant) -> None:
        self._open(participant.room).participants[participant.id] = participant

    def remove(self, participant: Participant) -> None:
        room = self._rooms.get(participant.room)
        if room is not None and room.participants.get(participant.id) is participant:
            del room.participants[participant.id]
            self._release(room)

    def _open(self, name: str) -> MeetingRoom:
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = MeetingRoom(name)
        return room

    def _release(self, room: MeetingRoom) -> None:
        if room.live is None and not room.participants and self._rooms.get(room.name) is room:
            del self._rooms[room.name]


__all__ = ["LiveMeeting", "MeetingRoom", "Rooms"]
