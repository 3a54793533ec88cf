"""The engine's events and the one vocabulary of close reasons.

``MediaEngine`` gives every listener (``add_listener``) one of the frozen dataclasses
below; listeners dispatch on the event's type. Why a session closed (or a track was
unpublished) is a ``CloseReason``: its value is what logs show, and its attributes are
what each audience is told, so no table elsewhere translates it:

- ``label``: the ``reason`` label of ``sfu_session_leaves_total`` (sfu/metrics.py),
  a bounded set;
- ``end_reason``: how the session ends in the meeting history and in the
  ``participant_left`` event (a ``LeaveReason``, below);
- ``told``: the ``reason`` of the ``media_closed`` event a WebSocket participant gets
  (docs/protocol.md).

The meeting service (sfu/meetings.py) gives its listeners the frozen dataclasses of
the second section: ``MeetingStarted``, ``ParticipantJoined``, ``ParticipantLeft``
and ``MeetingEnded`` (``MeetingEvent``). Why a history session ended is a
``LeaveReason`` (what the history store records and the API shows: one of
``sfu.history.END_REASONS``), why a meeting ended an ``EndReason`` (what the
``meeting_ended`` event of the WebSocket protocol says); both are str-valued, so
JSON, logs and the database see exactly the strings they saw before.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


# LeaveReason first: CloseReason.end_reason is one; the meeting events below use it too
class LeaveReason(str, Enum):
    """Why a history session ended: stored as its value in ``sessions.end_reason``
    (sfu/history.py), shown by the history API and in the ``participant_left`` event."""

    LEFT = "left"
    KICKED = "kicked"  # a host ended the meeting (or removed the participant)
    TIMED_OUT = "timed out"  # the connection died without a goodbye
    SERVER_STOPPED = "server stopped"

    def __str__(self) -> str:
        return self.value


class CloseReason(str, Enum):
    """Why the engine closed a session or unpublished a track (str-valued: JSON and logs
    show the value)."""

    label: str
    end_reason: LeaveReason
    told: str

    #                   value                   label             end_reason        told (media_closed)
    CLIENT = (          "closed by client",     "client",         "left",           "closed by client")
    DTLS_CLOSED = (     "dtls closed",          "dtls_closed",    "left",           "closed by client")
    CONSENT_TIMEOUT = ( "ice consent timeout",  "consent_timeout", "timed out",     "timed out")
    DTLS_FAILED = (     "dtls failed",          "dtls_failed",    "timed out",      "dtls failed")
    SERVER_STOPPED = (  "server stopped",       "server_stopped", "server stopped", "server stopped")
    INTERNAL_ERROR = (  "internal error",       "error",          "server stopped", "internal error")
    KICKED = (          "kicked",               "other",          "kicked",         "kicked")
    PARTICIPANT_LEFT = ("participant left",     "other",          "left",           "participant left")
    UNPUBLISHED = (     "unpublished",          "other",          "left",           "unpublished")  # one track, by renegotiation

    def __new__(cls, value: str, label: str, end_reason: str, told: str) -> CloseReason:
        member = str.__new__(cls, value)
        member._value_ = value
        member.label = label
        member.end_reason = LeaveReason(end_reason)
        member.told = told
        return member

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class SessionCreated:
    room: str
    session: str
    role: str  # "publish" | "subscribe" | "meeting"


@dataclass(frozen=True, slots=True)
class SessionConnected:
    """ICE and DTLS are up: media flows from now on."""
    room: str
    session: str


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """A renegotiation of the session was applied."""
    room: str
    session: str


@dataclass(frozen=True, slots=True)
class SessionClosed:
    room: str
    session: str
    reason: CloseReason


@dataclass(frozen=True, slots=True)
class TrackPublished:
    room: str
    session: str
    kind: str  # "audio" | "video"
    codec: str
    producer: str
    mid: str


@dataclass(frozen=True, slots=True)
class TrackUnpublished:
    room: str
    session: str
    kind: str
    producer: str
    mid: str
    reason: CloseReason  # UNPUBLISHED by renegotiation, else why its session closed


EngineEvent = SessionCreated | SessionConnected | SessionUpdated | SessionClosed | TrackPublished | TrackUnpublished


# -- the meeting service's events (sfu/meetings.py) ------------------------------------------

class EndReason(str, Enum):
    """Why a meeting ended: the ``reason`` of the ``meeting_ended`` event (docs/protocol.md)."""

    EMPTY = "empty"  # its last participant left and nobody came back within the grace period
    ENDED_BY_HOST = "ended by host"
    SERVER_STOPPED = "server stopped"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True, slots=True)
class MeetingStarted:
    meeting_id: str
    room: str
    topic: str


@dataclass(frozen=True, slots=True)
class ParticipantJoined:
    meeting_id: str
    room: str
    session_id: str  # the history session
    identity: str
    name: str


@dataclass(frozen=True, slots=True)
class ParticipantLeft:
    meeting_id: str
    room: str
    session_id: str
    identity: str
    name: str
    reason: LeaveReason


@dataclass(frozen=True, slots=True)
class MeetingEnded:
    meeting_id: str
    room: str
    reason: EndReason


MeetingEvent = MeetingStarted | ParticipantJoined | ParticipantLeft | MeetingEnded

__all__ = [
    "CloseReason", "EndReason", "EngineEvent", "LeaveReason", "MeetingEnded", "MeetingEvent", "MeetingStarted",
    "ParticipantJoined", "ParticipantLeft", "SessionClosed", "SessionConnected", "SessionCreated",
    "SessionUpdated", "TrackPublished", "TrackUnpublished",
]
