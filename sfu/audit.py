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
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

from .log import event

logger = logging.getLogger("sfu.audit")

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
    # the log line names the actor masked; the table holds it in clear for admins
    event(logger, "audit", actor=mask(actor_identity), action=action, kind=kind, object_id=object_id)


def cli_admin() -> str:
    """The actor of an admin's command-line read (``sfu history --admin``): the OS user."""
    import getpass
    import os

    try:
        return "cli:" + getpass.getuser()
    except Exception:  # no login name (a container user without a passwd entry)
        return f"cli:uid{os.getuid()}" if hasattr(os, "getuid") else "cli:admin"


def _where(actor: str | None, action: str | None, kind: str | None, object_id: str | None,
           since: float | None, until: float | None) -> tuple[str, list]:
    clauses, params = [], []
    for column, value in (("actor_identity", actor), ("action", action), ("kind", kind),
                          ("object_id", object_id)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if since is not None:
        clauses.append("at >= ?")
        params.append(float(since))
    if until is not None:
        clauses.append("at < ?")
        params.append(float(until))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


async def entries(store: Any, actor: str | None = None, action: str | None = None, kind: str | None = None,
                  object_id: str | None = None, since: float | None = None, until: float | None = None,
                  limit: int = 1000) -> list[AuditRecord]:
    """Audit rows, newest first, filtered by any of the columns and a time range."""
    where, params = _where(actor, action, kind, object_id, since, until)
    rows = await store._run(store.backend.query,
                            f"SELECT {_COLS} FROM audit_log{where} ORDER BY at DESC, audit_id LIMIT ?",
                            (*params, int(limit)))
    return [AuditRecord(*row) for row in rows]


async def purge(store: Any, before: float) -> int:
    """Delete audit rows written before ``before`` (the audit log's own retention)."""
    backend = store.backend
    count = await store._run(store._tx, lambda: backend.execute(
        "DELETE FROM audit_log WHERE at < ?", (float(before),)))
    if count:
        await store._run(backend.after_erase)
    return count


def entry_dict(entry: AuditRecord) -> dict:
    from .history import iso

    return {"at": iso(entry.at), "actor": entry.actor_identity, "action": entry.action, "kind": entry.kind,
            "object_id": entry.object_id, "detail": entry.detail, "id": entry.audit_id}


__all__ = ["READ", "EXPORT", "DELETE", "ACTIONS", "ATTENDANCE", "POLL", "CHAT", "RECORDING",
           "PERSON", "KINDS", "ALL", "AuditRecord", "record", "mask", "entries", "purge", "entry_dict"]


# -- `sfu audit` ------------------------------------------------------------------------

def add_audit_arguments(parser) -> None:
    parser.add_argument("--actor", help="only what this identity did")
    parser.add_argument("--action", choices=ACTIONS, help="only this action")
    parser.add_argument("--kind", choices=KINDS, help="only this kind of object")
    parser.add_argument("--object", dest="object_id", help="only this object (a meeting id, ...)")
    parser.add_argument("--since", help="only from this UTC date or time on (2026-11-30 or 2026-11-30T08:00:00Z)")
    parser.add_argument("--limit", type=int, default=1000, help="at most this many rows (newest first)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    parser.add_argument("--data-dir", default=None, help="the server's data directory (env SFU_DATA_DIR)")
    parser.add_argument("--db", default=None, help="postgresql://... (env SFU_DB; default: SQLite in the data dir)")


def parse_time(text: str) -> float:
    """An ISO 8601 date or date-time (UTC unless it says otherwise) -> epoch seconds."""
    import datetime as dt

    value = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.timestamp()


async def _audit(args, db: str | None, data_dir: str, out) -> int:
    import json

    from .history import HistoryStore, _table

    try:
        since = parse_time(args.since) if args.since else None
    except ValueError:
        print(f"sfu audit: --since {args.since!r} is not a date (2026-11-30 or 2026-11-30T08:00:00Z)", file=out)
        return 2
    store = HistoryStore.from_config(db, data_dir)
    await store.open()
    try:
        rows = await entries(store, args.actor, args.action, args.kind, args.object_id, since,
                             limit=max(1, args.limit))
    finally:
        await store.close()
    if args.format == "json":
        out.write(json.dumps({"entries": [entry_dict(r) for r in rows]}, indent=2, ensure_ascii=False) + "\n")
        return 0
    table = [["WHEN", "ACTOR", "ACTION", "KIND", "OBJECT", "DETAIL"]]
    for r in rows:
        d = entry_dict(r)
        table.append([d["at"], d["actor"], d["action"], d["kind"], d["object_id"], d["detail"] or "-"])
    print(_table(table), file=out)
    return 0


def audit_command(args, db: str | None, data_dir: str, out=None) -> int:
    """Exit code 0, 2 (usage) or 3 (the database cannot be opened).  Whoever can
    open the database is an admin: the rows show actors' identities in clear."""
    import asyncio
    import sys

    from .history import EXIT_STORE_UNAVAILABLE, StoreUnavailable

    try:
        return asyncio.run(_audit(args, db, data_dir, out or sys.stdout))
    except StoreUnavailable as exc:
        print(f"sfu audit: {exc}", file=sys.stderr)
        return EXIT_STORE_UNAVAILABLE
