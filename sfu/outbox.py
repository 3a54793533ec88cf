"""The queue of messages to one WebSocket client of the meeting protocol.

Bounded in bytes, not in messages: a client that stops reading costs at most
``limit`` bytes of queued JSON before it is cut off (sfu/signaling.py aborts the
connection when :meth:`Outbox.put` says no), whatever the size of each message.

A client that asked for it at ``join`` (``"batch_events": true``) gets bursts
merged: consecutive ``track_published`` events about one participant that are
still queued become one ``tracks_published`` event (``tracks``: a list), and
``track_unpublished`` ones one ``tracks_unpublished`` (``track_ids``), so the
burst of an offer that publishes many tracks is one message
(docs/protocol.md, section 5.1). Nothing here touches a socket.
"""

from __future__ import annotations

import json
from collections import deque

# event -> (merged event, field of one item, field of the list)
MERGED = {
    "track_published": ("tracks_published", "track", "tracks"),
    "track_unpublished": ("tracks_unpublished", "track_id", "track_ids"),
}


def dumps(message) -> str:
    """The wire form: compact JSON, ASCII only (so len() is the size in bytes)."""
    return json.dumps(message, separators=(",", ":"))


class _Run:
    """Queued events of one kind about one participant, sent as one message."""

    __slots__ = ("event", "participant_id", "single", "parts")

    def __init__(self, event: str, participant_id, single: str, part: str) -> None:
        self.event = event
        self.participant_id = participant_id
        self.single = single  # the first event as it was (sent as such if it stays alone)
        self.parts = [part]  # each item (a track, a track id) as JSON

    def text(self) -> str:
        if len(self.parts) == 1:
            return self.single
        merged, _item, plural = MERGED[self.event]
        return ('{"type":"event","event":"%s","participant_id":%s,"%s":[%s]}'
                % (merged, dumps(self.participant_id), plural, ",".join(self.parts)))


class Outbox:
    """FIFO of wire messages with a bound on their total size (bytes)."""

    def __init__(self, limit: int, merge: bool = False) -> None:
        self.limit = limit
        self.merge = merge  # merge bursts of track events (the client said it understands them)
        self.bytes = 0  # queued now
        self.peak = 0  # most bytes ever queued
        self.merged = 0  # events that went into a message queued before them
        self._items: deque[str | _Run] = deque()
        self._sizes: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: dict) -> bool:
        """Queue ``message``; False (and nothing queued) if the bound would be exceeded."""
        spec = MERGED.get(message.get("event")) if self.merge and message.get("type") == "event" else None
        if spec is not None and spec[1] in message:
            part = dumps(message[spec[1]])
            last = self._items[-1] if self._items else None
            if isinstance(last, _Run) and last.event == message["event"] \
                    and last.participant_id == message.get("participant_id"):
                size = len(part) + 1
                if self.bytes + size > self.limit:
                    return False
                last.parts.append(part)
                self._sizes[-1] += size
                self.merged += 1
                self._grow(size)
                return True
            text = dumps(message)
            item: str | _Run = _Run(message["event"], message.get("participant_id"), text, part)
        else:
            text = dumps(message)
            item = text
        size = len(text)
        if self.bytes + size > self.limit:
            return False
        self._items.append(item)
        self._sizes.append(size)
        self._grow(size)
        return True

    def pop(self) -> str:
        """The oldest message, as the text to send (IndexError if empty)."""
        item = self._items.popleft()
        self.bytes -= self._sizes.popleft()
        return item if isinstance(item, str) else item.text()

    def clear(self) -> None:
        self._items.clear()
        self._sizes.clear()
        self.bytes = 0

    def _grow(self, size: int) -> None:
        self.bytes += size
        if self.bytes > self.peak:
            self.peak = self.bytes
