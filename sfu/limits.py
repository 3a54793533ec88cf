"""Refusals by a configured limit (sfu.config: max_offer_sections, max_session_tracks,
max_session_published, max_room_tracks, max_server_tracks, max_pending_sessions).

The engine raises :class:`LimitExceeded` before it builds anything, so a refused
request leaves nothing behind. The HTTP handlers answer ``status`` (with
``Retry-After`` when ``retry_after`` is set), the meeting protocol answers
``ok: false`` with ``code``. README.md ("Limits") lists them.
"""

from __future__ import annotations

# the protocol codes (docs/protocol.md, "Error codes") and their HTTP statuses
TOO_MANY_TRACKS = "too_many_tracks"  # this request asks for more than one session may hold: 400
ROOM_FULL = "room_full"  # the room holds as many tracks as it may: 403
SERVER_BUSY = "server_busy"  # the server holds as many tracks / unconnected sessions as it may: 503

STATUS = {TOO_MANY_TRACKS: 400, ROOM_FULL: 403, SERVER_BUSY: 503}


class LimitExceeded(Exception):
    """A request refused by a limit; ``message`` is one readable line."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = STATUS[code]
        self.retry_after = retry_after

    def retry_after_header(self) -> str | None:
        """``Retry-After`` in whole seconds (RFC 9110 §10.2.3), at least 1."""
        if self.retry_after is None:
            return None
        return str(max(1, int(-(-self.retry_after // 1))))
