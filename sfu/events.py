"""The engine's events and the one vocabulary of close reasons.

``MediaEngine`` gives every listener (``add_listener``) one of the frozen dataclasses
below; listeners dispatch on the event's type. Why a session closed (or a track was
unpublished) is a ``CloseReason``: its value is what logs show, and its attributes are
what each audience is told, so no table elsewhere translates it:

- ``label``: the ``reason`` label of ``sfu_session_leaves_total`` (sfu/metrics.py),
  a bounded set;
- ``end_reason``: how the session ends in the meeting history and in the
  ``participant_left`` event (one of ``sfu.history.END_REASONS``);
- ``told``: the ``reason`` of the ``media_closed`` event a WebSocket participant gets
  (docs/protocol.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class CloseReason(str, Enum):
    """Why the engine closed a session or unpublished a track (str-valued: JSON and logs
    show the value)."""

    label: str
    end_reason: str
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
        member.end_reason = end_reason
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

__all__ = [
    "CloseReason", "EngineEvent", "SessionClosed", "SessionConnected", "SessionCreated", "SessionUpdated",
    "TrackPublished", "TrackUnpublished",
]
