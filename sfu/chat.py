"""Meeting chat over the meeting protocol (sfu/signaling.py, docs/protocol.md 4.8-4.9).

A participant sends ``chat`` ``{"text", "to"?}``: to everyone in its meeting, or
to one participant (``to``: a participant id). Those present get a ``chat``
event with the message id, the sender as the others see it (participant id and
display name, never the token's identity), the server time and the text; the
sender gets the same message in its response. Limits (sfu/config.py): at most
``chat_max_chars`` characters, and a token bucket of ``chat_burst`` messages
refilled at ``chat_per_minute``; a refusal is a protocol error (``too_large``,
``rate_limited`` with ``retry_after``, ``chat_disabled``). A host may turn the
meeting's chat off and on (``chat_enable``); everyone gets ``chat_state``.
While it is off only hosts can send.

Nothing is stored unless the server runs with ``--keep-chat``: then each message
is written to ``chat_messages`` (sfu/history.py) before it is delivered, with the
meeting, under the history's retention (purge) and erasure (erase_identity)
rules, and only the meeting's creator (or an admin) reads it back
(``GET /api/meetings/{id}/chat``, sfu/rest.py).
"""

from __future__ import annotations

import logging
import secrets
import unicodedata
from typing import Any

from .events import MeetingEnded
from .history import iso
from .log import event

logger = logging.getLogger("sfu.chat")

MAX_BUCKETS = 4096  # rate-limit entries kept before the full (idle) ones are dropped


class RequestRefused(Exception):
    """A chat or poll request that gets ``ok: false`` (signaling turns it into the
    response): ``code`` is stable, ``message`` readable, ``extra`` more response fields."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.extra = extra


def clean_text(value: Any, what: str, limit: int, code: str = "too_large") -> str:
    """A non-empty string of at most ``limit`` characters with no control characters
    but newline and tab (and no lone surrogates: it must be storable as UTF-8)."""
    if not isinstance(value, str) or not value.strip():
        raise RequestRefused("bad_request", f"{what} must be a non-empty string")
    if len(value) > limit:
        raise RequestRefused(code, f"{what} is longer than {limit} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestRefused("bad_request", f"{what} is not valid Unicode") from None
    if any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in value):
        raise RequestRefused("bad_request", f"{what} holds control characters")
    return value


def present(rooms, meeting_id: str | None, room: str) -> list:
    """The WebSocket participants of ``meeting_id`` still in it."""
    return [p for p in rooms.participants(room)
            if p.meeting_id == meeting_id and p.joined and not p.gone and p.via == "ws"]


def who(participant) -> dict:
    return {"id": participant.id, "name": participant.name}


class Chat:
    """Chat of every meeting on this server: who may send, and what is delivered."""

    def __init__(self, config, rooms, store, clock, meetings=None) -> None:
        self.rooms = rooms
        self.store = store  # HistoryStore or None (kept chat needs it)
        self.clock = clock  # clock() wall time of a message; clock.now() for the rate limit
        self.max_chars = max(1, config.chat_max_chars)
        self.burst = max(1, config.chat_burst)
        self.per_second = max(0.0, config.chat_per_minute) / 60.0
        self.keep = bool(config.keep_chat) and store is not None
        self._disabled: set[str] = set()  # meeting ids whose chat a host turned off
        self._buckets: dict[str, list[float]] = {}  # identity -> [tokens, last refill time]
        if meetings is not None:
            meetings.add_listener(self._on_meeting_event)

    def join_info(self, meeting_id: str) -> dict:
        """What a joining participant learns (its join response's ``chat``)."""
        return {"enabled": meeting_id not in self._disabled, "kept": self.keep, "max_chars": self.max_chars}

    async def send(self, sender, message: dict) -> dict:
        text = clean_text(message.get("text"), "text", self.max_chars)
        if sender.meeting_id in self._disabled and not sender.host:
            raise RequestRefused("chat_disabled", "a host has turned chat off in this meeting")
        to = message.get("to")
        target = None
        if to is not None:
            if not isinstance(to, str):
                raise RequestRefused("bad_request", "to must be a participant id")
            target = next((p for p in present(self.rooms, sender.meeting_id, sender.room) if p.id == to), None)
            if target is None or target is sender:
                raise RequestRefused("not_found", "no such participant to send to")
        self._take_token(sender.claims.identity)  # per person: a new connection gets no new bucket
        msg = {"message_id": secrets.token_hex(8), "from": who(sender), "to": who(target) if target else None,
               "text": text, "time": self.clock()}
        if self.keep:
            await self._store(sender, target, msg)
        for other in present(self.rooms, sender.meeting_id, sender.room):
            if other is not sender and (target is None or other is target):
                other.event("chat", **msg)
        return {"message": msg}

    async def enable(self, host, message: dict) -> dict:
        enabled = message.get("enabled")
        if not isinstance(enabled, bool):
            raise RequestRefused("bad_request", "enabled must be true or false")
        if not host.host:
            raise RequestRefused("forbidden", "only a host may turn chat on or off")
        changed = (host.meeting_id in self._disabled) == enabled
        if enabled:
            self._disabled.discard(host.meeting_id)
        else:
            self._disabled.add(host.meeting_id)
        if changed:
            for other in present(self.rooms, host.meeting_id, host.room):
                other.event("chat_state", enabled=enabled, by=who(host))
            event(logger, "chat enabled" if enabled else "chat disabled", meeting=host.meeting_id,
                  participant=host.id)
        return {"enabled": enabled}

    # -- rate limit: a token bucket per participant -------------------------------------
    def _take_token(self, identity: str) -> None:
        now = self.clock.now()
        bucket = self._buckets.get(identity)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_full(now)
            bucket = self._buckets[identity] = [float(self.burst), now]
        tokens = min(float(self.burst), bucket[0] + (now - bucket[1]) * self.per_second)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            wait = (1.0 - tokens) / self.per_second if self.per_second > 0 else None
            raise RequestRefused("rate_limited", "too many chat messages; wait a moment",
                                 retry_after=round(wait, 1) if wait is not None else None)
        bucket[0] = tokens - 1.0

    def _forget_full(self, now: float) -> None:
        for key, (tokens, last) in list(self._buckets.items()):
            if tokens + (now - last) * self.per_second >= self.burst:
                del self._buckets[key]

    def _on_meeting_event(self, ev) -> None:
        if isinstance(ev, MeetingEnded):
            self._disabled.discard(ev.meeting_id)

    async def _store(self, sender, target, msg: dict) -> None:
        row = (msg["message_id"], sender.meeting_id, msg["time"], sender.claims.identity, sender.name, sender.id,
               target.claims.identity if target else None, target.name if target else None,
               target.id if target else None, msg["text"])
        store = self.store
        await store._run(store._tx, lambda: store.backend.execute(
            f"INSERT INTO chat_messages ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row))


_COLS = ("message_id, meeting_id, sent_at, sender_identity, sender_name, sender_participant, "
         "recipient_identity, recipient_name, recipient_participant, body")


async def stored_messages(store, meeting_id: str) -> list[dict]:
    """The kept chat of a meeting, oldest first (``GET /api/meetings/{id}/chat``)."""
    rows = await store._run(store.backend.query, f"SELECT {_COLS} FROM chat_messages WHERE meeting_id = ? "
                            "ORDER BY sent_at, message_id", (meeting_id,))
    out = []
    for (mid, _meeting, sent_at, s_id, s_name, s_part, r_id, r_name, r_part, body) in rows:
        out.append({
            "message_id": mid, "time": iso(sent_at), "timestamp": sent_at,
            "from": {"identity": s_id, "name": s_name, "participant_id": s_part},
            "to": None if r_id is None else {"identity": r_id, "name": r_name, "participant_id": r_part},
            "text": body,
        })
    return out


__all__ = ["Chat", "RequestRefused", "clean_text", "stored_messages"]
