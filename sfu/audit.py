"""Audit log: who read, exported or deleted whose personal history, and when.

Every read, export and deletion of personal history (attendance, polls, chat,
recordings, a person's whole history) is written to the ``audit_log`` table of
the history database (SQLite or PostgreSQL, the same store as the history) by
calling :func:`record` before the data leaves the server::

    from sfu import audit
    await audit.record(store, claims.identity, audit.READ, audit.POLL, meeting_id)

``store`` is the :class:`sfu.history.HistoryStore` (``MeetingService.store``);
``record`` returns once the row is committed, so an answer is never sent
without its audit row (when the database fails the request fails too).

Columns (times are seconds since the epoch, UTC):

- ``audit_id``: random id; ``at``: when
- ``actor_identity``: who (the identity in their token: personal data too; see
  below)
- ``action``: one of :data:`ACTIONS` ("read", "export", "delete")
- ``kind``: one of :data:`KINDS` ("attendance", "poll", "chat", "recording",
  "person")
- ``object_id``: what: a meeting id, a poll or recording id, "*" for a list
  (own history), or for "person" the pseudonym the erased person got
- ``detail``: a short note (how: "own", "creator", "admin", "csv", "json"...),
  never personal data

Privacy of the log itself: the actor's identity is what the log is for (who
read what), so it is stored in clear; logs print it masked (:func:`mask`).
Erasing a person (:meth:`HistoryStore.erase_identity`) replaces their identity
as actor with the same random pseudonym their history rows get, so the log
still shows that *someone* (the same someone) read what they read; the
deletion itself is recorded with the pseudonym as object id, never the erased
identity.  Audit rows are kept ``--audit-retention-days`` (default 365),
purged by the meeting service's daily retention timer.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

# actions
READ = "read"
EXPORT = "export"
DELETE = "delete"
ACTIONS = (READ, EXPORT, DELETE)

# object kinds
ATTENDANCE = "attendance"
POLL = "poll"
CHAT = "chat"
RECORDING = "recording"
PERSON = "person"  # a person's whole history (DELETE /api/people/{identity})
KINDS = (ATTENDANCE, POLL, CHAT, RECORDING, PERSON)

ALL = "*"  # object_id of a list (own history: every meeting of the caller)
MAX_FIELD = 200

# the table (audit_log, indexes audit_by_time, audit_by_actor) is in sfu.history.SCHEMA
_COLS = "audit_id, at, actor_identity, action, kind, object_id, detail"


@dataclass
class AuditRecord:
    audit_id: str
    at: float
    actor_identity: str
    action: str
    kind: str
    object_id: str
    detail: str = ""


def mask(identity: str) -> str:
    """An identity as logs print it: a short stable hash, never the identity."""
    return "id#" + hashlib.sha256(identity.encode("utf-8", "replace")).hexdigest()[:10]


def _check(actor_identity: str, action: str, kind: str, object_id: str, detail: str) -> None:
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r} (one of {', '.join(ACTIONS)})")
    if kind not in KINDS:
        raise ValueError(f"unknown audit object kind {kind!r} (one of {', '.join(KINDS)})")
    for name, value in (("actor_identity", actor_identity), ("object_id", object_id)):
        if not isinstance(value, str) or not value or len(value) > MAX_FIELD:
            raise ValueError(f"audit {name} must be a string of 1-{MAX_FIELD} characters")
    if not isinstance(detail, str) or len(detail) > MAX_FIELD:
        raise ValueError(f"audit detail must be a string of at most {MAX_FIELD} characters")


async def record(store: Any, actor_identity: str, action: str, kind: str, object_id: str,
                 detail: str = "", at: float | None = None) -> None:
    """Write one audit row and commit it.  ``store`` is the HistoryStore.
    ValueError for an unknown action or kind (a programming error)."""
    _check(actor_identity, action, kind, object_id, detail)
    row = (secrets.token_hex(8), time.time() if at is None else float(at), actor_identity,
           action, kind, object_id, detail)
    backend = store.backend
    await store._run(store._tx, lambda: backend.execute(
        f"INSERT INTO audit_log ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)", row))


__all__ = ["READ", "EXPORT", "DELETE", "ACTIONS", "ATTENDANCE", "POLL", "CHAT", "RECORDING",
           "PERSON", "KINDS", "ALL", "AuditRecord", "record", "mask"]
