"""A participant of a meeting as the WebSocket protocol sees it (sfu/signaling.py).

What others may learn about a participant is :meth:`Participant.public`: a
random participant id, the display name and the published tracks. The
identity from the access token (possibly an e-mail address or a phone
number) and the ids of the history and media sessions stay on the server.
WHIP publishers and WHEP viewers of a meeting's room are participants too
(``via``), with a no-op ``send``: they have no socket to be told anything.

Participants live in the room registry of the meeting side (sfu/rooms.py), in
the entry of their room next to its running meeting. A participant holds its
media session id and its tracks (with their producer ids): the protocol finds
it from an engine event through these, with no index of its own.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Callable

from .auth import Claims

SOURCES = ("camera", "microphone", "screen", "screen-audio")
DEFAULT_SOURCE = {"audio": "microphone", "video": "camera"}


@dataclass
class PublishedTrack:
    id: str  # public track id: "<participant id>-<mid>"
    kind: str  # "audio" | "video"
    source: str  # one of SOURCES
    mid: str  # the publisher's m-section
    producer_id: str  # the engine's producer (never sent to clients)
    muted: bool = False
    muted_by_host: bool = False  # a host muted it: the SFU holds its media until its owner unmutes

    def public(self) -> dict:
        return {"id": self.id, "kind": self.kind, "source": self.source, "muted": self.muted}


@dataclass
class Participant:
    claims: Claims
    room: str
    send: Callable[[dict], None]  # queue one message to this participant's socket
    close: Callable[[int, str], None]  # close its socket (code, reason) after what is queued
    via: str = "ws"  # "ws"; "whip" / "whep" for a WHIP publisher / WHEP viewer (no socket)
    id: str = field(default_factory=lambda: secrets.token_hex(4))
    meeting_id: str | None = None
    session_id: str | None = None  # history session (MeetingService)
    media_session: str | None = None  # engine transport id
    tracks: dict[str, PublishedTrack] = field(default_factory=dict)  # track id -> track
    subscriptions: dict[str, str | None] = field(default_factory=dict)  # mid -> track id
    joined: bool = False
    gone: bool = False  # disconnected: its media and history session are closed
    ending: bool = False  # meeting_ended or kicked was sent; the socket is closing
    busy: bool = False  # one of its requests is being handled
    host: bool = False  # may end the meeting and mute others: the token's host grant for the room, or admin
    close_after_response: tuple[int, str] | None = None

    @property
    def name(self) -> str:
        return self.claims.name

    def public(self) -> dict:
        out = {"id": self.id, "name": self.name, "tracks": [t.public() for t in self.tracks.values()]}
        if self.via != "ws":
            out["via"] = self.via
        return out

    def event(self, name: str, **fields) -> None:
        self.send({"type": "event", "event": name, **fields})
