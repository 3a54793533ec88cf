"""Meeting history: meetings and participant sessions, in SQLite or PostgreSQL.

Two tables, the same on both backends (times are seconds since the epoch, UTC):

- ``meetings``: meeting_id, room, topic, creator_identity, creator_name,
  started_at, ended_at (NULL while it runs)
- ``sessions``: session_id, meeting_id, identity, display_name, joined_at,
  left_at (NULL while connected), last_heartbeat, end_reason
  ("left", "kicked", "timed out", "server stopped": the values of
  :class:`sfu.events.LeaveReason`)

No column holds a network address, by design: the privacy policy lets the SFU
use a participant's IP address to connect, nothing else.

:class:`HistoryStore` is the asyncio face.  Every database call runs on one
worker thread that owns the connection, so the event loop that forwards media
never waits for the disk or the network; callers ``await`` only where the
result must be durable first (a join is committed before it is acknowledged).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import csv
import datetime as _dt
import io
import json
import os
import re
import secrets
import sqlite3
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

from .events import LeaveReason

END_REASONS = tuple(r.value for r in LeaveReason)  # ("left", "kicked", "timed out", "server stopped")
ERASED_NAME = "(erased)"

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meetings (
        meeting_id TEXT PRIMARY KEY,
        room TEXT NOT NULL,
        topic TEXT NOT NULL DEFAULT '',
        creator_identity TEXT NOT NULL,
        creator_name TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        ended_at DOUBLE PRECISION
    )""",
    "CREATE INDEX IF NOT EXISTS meetings_by_creator ON meetings (creator_identity)",
    "CREATE INDEX IF NOT EXISTS meetings_by_end ON meetings (ended_at)",
    """CREATE TABLE IF NOT EXISTS sessions (
        session_id TEXT PRIMARY KEY,
        meeting_id TEXT NOT NULL REFERENCES meetings (meeting_id) ON DELETE CASCADE,
        identity TEXT NOT NULL,
        display_name TEXT NOT NULL,
        joined_at DOUBLE PRECISION NOT NULL,
        left_at DOUBLE PRECISION,
        last_heartbeat DOUBLE PRECISION NOT NULL,
        end_reason TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS sessions_by_meeting ON sessions (meeting_id)",
    "CREATE INDEX IF NOT EXISTS sessions_by_identity ON sessions (identity)",
    # chat kept with --keep-chat (sfu/chat.py); recipient_* NULL: to everyone
    """CREATE TABLE IF NOT EXISTS chat_messages (
        message_id TEXT PRIMARY KEY,
        meeting_id TEXT NOT NULL REFERENCES meetings (meeting_id) ON DELETE CASCADE,
        sent_at DOUBLE PRECISION NOT NULL,
        sender_identity TEXT NOT NULL,
        sender_name TEXT NOT NULL,
        sender_participant TEXT NOT NULL,
        recipient_identity TEXT,
        recipient_name TEXT,
        recipient_participant TEXT,
        body TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS chat_by_meeting ON chat_messages (meeting_id, sent_at)",
    "CREATE INDEX IF NOT EXISTS chat_by_sender ON chat_messages (sender_identity)",
    "CREATE INDEX IF NOT EXISTS chat_by_recipient ON chat_messages (recipient_identity)",
    # polls (sfu/polls.py): poll_votes (who chose what) for named polls only
    """CREATE TABLE IF NOT EXISTS polls (
        poll_id TEXT PRIMARY KEY,
        meeting_id TEXT NOT NULL REFERENCES meetings (meeting_id) ON DELETE CASCADE,
        question TEXT NOT NULL,
        options TEXT NOT NULL,
        multiple INTEGER NOT NULL,
        anonymous INTEGER NOT NULL,
        creator_identity TEXT NOT NULL,
        creator_name TEXT NOT NULL,
        opened_at DOUBLE PRECISION NOT NULL,
        closed_at DOUBLE PRECISION
    )""",
    "CREATE INDEX IF NOT EXISTS polls_by_meeting ON polls (meeting_id, opened_at)",
    """CREATE TABLE IF NOT EXISTS poll_votes (
        poll_id TEXT NOT NULL REFERENCES polls (poll_id) ON DELETE CASCADE,
        voter_identity TEXT NOT NULL,
        voter_name TEXT NOT NULL,
        choices TEXT NOT NULL,
        voted_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (poll_id, voter_identity)
    )""",
    """CREATE TABLE IF NOT EXISTS poll_counts (
        poll_id TEXT NOT NULL REFERENCES polls (poll_id) ON DELETE CASCADE,
        option_index INTEGER NOT NULL,
        votes INTEGER NOT NULL,
        PRIMARY KEY (poll_id, option_index)
    )""",
    """CREATE TABLE IF NOT EXISTS poll_voters (
        poll_id TEXT NOT NULL REFERENCES polls (poll_id) ON DELETE CASCADE,
        voter_identity TEXT NOT NULL,
        voter_name TEXT NOT NULL,
        PRIMARY KEY (poll_id, voter_identity)
    )""",
    # the audit log (sfu/audit.py): who read, exported or deleted whose history
    """CREATE TABLE IF NOT EXISTS audit_log (
        audit_id TEXT PRIMARY KEY,
        at DOUBLE PRECISION NOT NULL,
        actor_identity TEXT NOT NULL,
        action TEXT NOT NULL,
        kind TEXT NOT NULL,
        object_id TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX IF NOT EXISTS audit_by_time ON audit_log (at)",
    "CREATE INDEX IF NOT EXISTS audit_by_actor ON audit_log (actor_identity)",
    # recordings by the SFU (sfu/recording.py): a directory per recording, a file per track with its
    # publisher (erasing a person deletes their tracks; purging a meeting deletes its recordings)
    """CREATE TABLE IF NOT EXISTS recordings (
        recording_id TEXT PRIMARY KEY,
        meeting_id TEXT NOT NULL REFERENCES meetings (meeting_id) ON DELETE CASCADE,
        started_at DOUBLE PRECISION NOT NULL,
        stopped_at DOUBLE PRECISION,
        started_by_identity TEXT NOT NULL,
        started_by_name TEXT NOT NULL,
        status TEXT NOT NULL,
        path TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS recordings_by_meeting ON recordings (meeting_id, started_at)",
    """CREATE TABLE IF NOT EXISTS recording_tracks (
        recording_id TEXT NOT NULL REFERENCES recordings (recording_id) ON DELETE CASCADE,
        file TEXT NOT NULL,
        identity TEXT NOT NULL,
        display_name TEXT NOT NULL,
        kind TEXT NOT NULL,
        codec TEXT NOT NULL,
        start_offset DOUBLE PRECISION NOT NULL,
        duration DOUBLE PRECISION NOT NULL,
        bytes BIGINT NOT NULL,
        PRIMARY KEY (recording_id, file)
    )""",
    "CREATE INDEX IF NOT EXISTS recording_tracks_by_identity ON recording_tracks (identity)",
)

# what goes with a purged meeting (purge), children first; ? is the ended_before time
_ENDED = "SELECT meeting_id FROM meetings WHERE ended_at IS NOT NULL AND ended_at < ?"
_PURGE_CHILDREN = tuple(
    f"DELETE FROM {table} WHERE poll_id IN (SELECT poll_id FROM polls WHERE meeting_id IN ({_ENDED}))"
    for table in ("poll_votes", "poll_counts", "poll_voters")) + (
    f"DELETE FROM polls WHERE meeting_id IN ({_ENDED})",
    f"DELETE FROM chat_messages WHERE meeting_id IN ({_ENDED})",
)
# erase_identity beyond sessions: (pseudonym, ERASED_NAME, identity); their chat text goes
_ERASE_CHILDREN = (
    "UPDATE chat_messages SET sender_identity = ?, sender_name = ?, body = '' WHERE sender_identity = ?",
    "UPDATE chat_messages SET recipient_identity = ?, recipient_name = ? WHERE recipient_identity = ?",
    "UPDATE polls SET creator_identity = ?, creator_name = ? WHERE creator_identity = ?",
    "UPDATE poll_votes SET voter_identity = ?, voter_name = ? WHERE voter_identity = ?",
    "UPDATE poll_voters SET voter_identity = ?, voter_name = ? WHERE voter_identity = ?",
)

_MEETING_COLS = "meeting_id, room, topic, creator_identity, creator_name, started_at, ended_at"
_SESSION_COLS = ("session_id, meeting_id, identity, display_name, joined_at, left_at, "
                 "last_heartbeat, end_reason")


@dataclass
class Meeting:
    meeting_id: str
    room: str
    topic: str
    creator_identity: str
    creator_name: str
    started_at: float
    ended_at: float | None = None


@dataclass
class SessionRecord:
    session_id: str
    meeting_id: str
    identity: str
    display_name: str
    joined_at: float
    left_at: float | None
    last_heartbeat: float
    end_reason: str | None

    def duration(self, now: float) -> float:
        end = self.left_at if self.left_at is not None else now
        return max(0.0, end - self.joined_at)


class DuplicateMeeting(Exception):
    """A meeting with that id exists already."""


# -- backends: synchronous, used from the store's one worker thread only -----------------

EXIT_STORE_UNAVAILABLE = 3  # `sfu serve` / `sfu history` exit code when the store cannot be opened


class StoreUnavailable(Exception):
    """The history database cannot be opened or is not a valid database.  ``where``
    names the file (or the database URL without its password), ``problem`` says what
    is wrong, ``advice`` what to do; ``str()`` is all three on one line."""

    def __init__(self, where: str, problem: str, advice: str) -> None:
        self.where = where
        self.problem = problem
        self.advice = advice
        super().__init__(f"history database {where}: {problem}; {advice}")


def _sqlite_unavailable(path: str, exc: BaseException) -> StoreUnavailable:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    low = text.lower()
    who = f"uid {os.getuid()}" if hasattr(os, "getuid") else "this user"
    if isinstance(exc, sqlite3.DatabaseError) and ("not a database" in low or "malformed" in low
                                                    or "corrupt" in low or "integrity" in low):
        return StoreUnavailable(path, f"not a valid SQLite database ({text})",
                                "restore it from a backup, or move it away to start with an empty history")
    if "readonly" in low or "read-only" in low:
        return StoreUnavailable(path, f"read-only ({text})",
                                f"the file and its directory must be writable by {who}")
    if isinstance(exc, sqlite3.DatabaseError) and "disk i/o" in low:
        return StoreUnavailable(path, f"cannot be read or written ({text})",
                                "check the disk and the file system (dmesg), then the file's permissions")
    return StoreUnavailable(path, f"cannot be opened ({text})",
                            f"check that its directory exists and that both are readable and writable by {who}")


class _Backend:
    placeholder = "?"

    def __init__(self) -> None:
        self.conn: Any = None

    def _sql(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def execute(self, sql: str, params: Iterable = ()) -> int:
        cur = self.conn.execute(self._sql(sql), tuple(params))
        return cur.rowcount

    def executemany(self, sql: str, rows: list[tuple]) -> None:
        if rows:
            self.conn.cursor().executemany(self._sql(sql), rows)

    def query(self, sql: str, params: Iterable = ()) -> list[tuple]:
        return list(self.conn.execute(self._sql(sql), tuple(params)).fetchall())

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        self.conn.rollback()

    def is_duplicate(self, exc: Exception) -> bool:
        raise NotImplementedError

    def after_erase(self) -> None:
        pass

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class SqliteBackend(_Backend):
    placeholder = "?"

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def open(self) -> None:
        """Open, check (``PRAGMA quick_check``) and set up the file; StoreUnavailable
        naming it when it cannot be opened, written or is not a valid database."""
        try:
            self._open()
        except (sqlite3.Error, OSError) as exc:
            self.close_quietly()
            raise _sqlite_unavailable(os.path.abspath(self.path), exc) from None

    def close_quietly(self) -> None:
        try:
            self.close()
        except sqlite3.Error:
            self.conn = None

    def _open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise NotADirectoryError(20, "a parent of it is not a directory") from None
        if os.path.isdir(self.path):
            raise IsADirectoryError(21, "is a directory")
        self.conn = sqlite3.connect(self.path, isolation_level="DEFERRED", check_same_thread=False)
        # a corrupt or truncated file must fail here, not in the middle of a meeting
        problems = [row[0] for row in self.conn.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise sqlite3.DatabaseError("integrity check failed: " + "; ".join(problems)[:200])
        self.conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed join survives a power cut too, not only a kill -9
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        # erased or purged rows are overwritten, not left in free pages
        self.conn.execute("PRAGMA secure_delete=ON")
        self.conn.execute("PRAGMA busy_timeout=5000")
        for statement in SCHEMA:
            self.conn.execute(statement)
        self.conn.commit()
        try:
            os.chmod(self.path, 0o600)
        except OSError:
            pass

    def is_duplicate(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)

    def after_erase(self) -> None:
        # the WAL still holds the old pages until a checkpoint copies them back
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class PostgresBackend(_Backend):
    placeholder = "%s"

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.dsn = dsn

    def open(self) -> None:
        import psycopg  # only needed for this backend

        self._psycopg = psycopg
        try:
            self.conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=10)
            for statement in SCHEMA:
                self.conn.execute(statement)
            self.conn.commit()
        except psycopg.Error as exc:
            if self.conn is not None:
                self.conn.close()
                self.conn = None
            text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            where = re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", self.dsn)  # never the password
            where = re.sub(r"password=\S+", "password=***", where)
            raise StoreUnavailable(where, f"cannot be used ({text})",
                                   "check that the server is up and the URL, user and password are right") from None

    def is_duplicate(self, exc: Exception) -> bool:
        return isinstance(exc, self._psycopg.errors.UniqueViolation)


def open_backend(db: str | None, data_dir: str) -> _Backend:
    """``None`` -> SQLite in the data directory; ``postgresql://...`` -> PostgreSQL;
    ``sqlite:///path`` or a plain path -> that SQLite file."""
    if not db:
        return SqliteBackend(os.path.join(data_dir, "history.sqlite3"))
    if db.startswith(("postgresql://", "postgres://")):
        return PostgresBackend(db)
    if db.startswith("sqlite:///"):  # sqlite:///relative.db, sqlite:////absolute.db
        return SqliteBackend(db[len("sqlite:///"):])
    if "://" in db:
        raise ValueError(f"unsupported database URL {db.split('://')[0]}://... (use postgresql:// or sqlite:///)")
    return SqliteBackend(db)


# -- the store ---------------------------------------------------------------------------

class HistoryStore:
    """Asynchronous history store; all database work happens on one worker thread."""

    def __init__(self, backend: _Backend) -> None:
        self.backend = backend
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @classmethod
    def from_config(cls, db: str | None, data_dir: str) -> "HistoryStore":
        return cls(open_backend(db, data_dir))

    async def _run(self, fn: Callable, *args):
        if self._executor is None:
            raise RuntimeError("history store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        """StoreUnavailable (one line naming the database and what to do) when it cannot be used."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="history")
        try:
            await self._run(self.backend.open)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._run(self.backend.close)
        self._executor.shutdown(wait=True)
        self._executor = None

    # each _x method runs on the worker thread and commits before returning

    def _tx(self, work: Callable[[], Any]) -> Any:
        try:
            result = work()
            self.backend.commit()
            return result
        except BaseException:
            self.backend.rollback()
            raise

    async def create_meeting(self, meeting: Meeting) -> None:
        def work():
            try:
                self.backend.execute(
                    f"INSERT INTO meetings ({_MEETING_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (meeting.meeting_id, meeting.room, meeting.topic, meeting.creator_identity,
                     meeting.creator_name, meeting.started_at, meeting.ended_at))
                self.backend.commit()
            except Exception as exc:
                self.backend.rollback()
                if self.backend.is_duplicate(exc):
                    raise DuplicateMeeting(meeting.meeting_id) from None
                raise

        await self._run(work)

    async def end_meeting(self, meeting_id: str, ended_at: float) -> bool:
        return await self._run(self._tx, lambda: self.backend.execute(
            "UPDATE meetings SET ended_at = ? WHERE meeting_id = ? AND ended_at IS NULL",
            (ended_at, meeting_id)) > 0)

    async def claim_meeting(self, meeting_id: str, identity: str, name: str, topic: str | None) -> bool:
        """Give a meeting that has no creator yet (``creator_identity`` '') its creator
        (and a topic, unless None); False if it has one already."""
        if topic is None:
            sql, params = ("UPDATE meetings SET creator_identity = ?, creator_name = ? "
                           "WHERE meeting_id = ? AND creator_identity = ''", (identity, name, meeting_id))
        else:
            sql, params = ("UPDATE meetings SET creator_identity = ?, creator_name = ?, topic = ? "
                           "WHERE meeting_id = ? AND creator_identity = ''", (identity, name, topic, meeting_id))
        return await self._run(self._tx, lambda: self.backend.execute(sql, params) > 0)

    async def add_session(self, record: SessionRecord) -> None:
        await self._run(self._tx, lambda: self.backend.execute(
            f"INSERT INTO sessions ({_SESSION_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.session_id, record.meeting_id, record.identity, record.display_name,
             record.joined_at, record.left_at, record.last_heartbeat, record.end_reason)))

    async def close_session(self, session_id: str, left_at: float, reason: LeaveReason | str) -> bool:
        if reason not in END_REASONS:
            raise ValueError(f"unknown end reason {reason!r}")
        reason = LeaveReason(reason).value  # the plain string, whatever the database driver
        return await self._run(self._tx, lambda: self.backend.execute(
            "UPDATE sessions SET left_at = ?, last_heartbeat = ?, end_reason = ? "
            "WHERE session_id = ? AND left_at IS NULL",
            (left_at, left_at, reason, session_id)) > 0)

    async def heartbeat(self, session_ids: list[str], now: float) -> None:
        """Mark open sessions as alive at ``now`` (one batched transaction)."""
        if not session_ids:
            return
        rows = [(now, sid) for sid in session_ids]
        await self._run(self._tx, lambda: self.backend.executemany(
            "UPDATE sessions SET last_heartbeat = ? WHERE session_id = ? AND left_at IS NULL", rows))

    async def recover(self) -> tuple[int, int]:
        """Close what a crash left open: sessions end at their last heartbeat with
        reason "server stopped"; their meetings end at the last such time.
        Returns (sessions closed, meetings ended)."""
        def work():
            sessions = self.backend.execute(
                "UPDATE sessions SET left_at = last_heartbeat, end_reason = 'server stopped' "
                "WHERE left_at IS NULL")
            meetings = self.backend.execute(
                "UPDATE meetings SET ended_at = COALESCE("
                "(SELECT MAX(s.left_at) FROM sessions s WHERE s.meeting_id = meetings.meeting_id), "
                "started_at) WHERE ended_at IS NULL")
            return sessions, meetings

        return await self._run(self._tx, work)

    async def get_meeting(self, meeting_id: str) -> Meeting | None:
        rows = await self._run(self.backend.query,
                               f"SELECT {_MEETING_COLS} FROM meetings WHERE meeting_id = ?", (meeting_id,))
        return Meeting(*rows[0]) if rows else None

    async def list_meetings(self, creator_identity: str | None = None, limit: int = 1000) -> list[Meeting]:
        """Newest first; ``creator_identity`` None lists everyone's."""
        if creator_identity is None:
            rows = await self._run(self.backend.query,
                                   f"SELECT {_MEETING_COLS} FROM meetings ORDER BY started_at DESC LIMIT ?",
                                   (limit,))
        else:
            rows = await self._run(self.backend.query,
                                   f"SELECT {_MEETING_COLS} FROM meetings WHERE creator_identity = ? "
                                   "ORDER BY started_at DESC LIMIT ?", (creator_identity, limit))
        return [Meeting(*row) for row in rows]

    async def sessions(self, meeting_id: str) -> list[SessionRecord]:
        rows = await self._run(self.backend.query,
                               f"SELECT {_SESSION_COLS} FROM sessions WHERE meeting_id = ? "
                               "ORDER BY joined_at, session_id", (meeting_id,))
        return [SessionRecord(*row) for row in rows]

    async def open_sessions(self) -> list[SessionRecord]:
        rows = await self._run(self.backend.query,
                               f"SELECT {_SESSION_COLS} FROM sessions WHERE left_at IS NULL", ())
        return [SessionRecord(*row) for row in rows]

    async def purge(self, ended_before: float) -> int:
        """Delete meetings that ended before ``ended_before`` and their sessions."""
        from .recording import purge_rows, remove_paths
        recording_dirs: list[str] = []

        def work():
            for statement in _PURGE_CHILDREN:  # chat and polls (sfu/chat.py, sfu/polls.py)
                self.backend.execute(statement, (ended_before,))
            recording_dirs.extend(purge_rows(self.backend, _ENDED, ended_before))  # sfu/recording.py
            self.backend.execute(
                "DELETE FROM sessions WHERE meeting_id IN (SELECT meeting_id FROM meetings "
                "WHERE ended_at IS NOT NULL AND ended_at < ?)", (ended_before,))
            return self.backend.execute(
                "DELETE FROM meetings WHERE ended_at IS NOT NULL AND ended_at < ?", (ended_before,))

        count = await self._run(self._tx, work)
        if recording_dirs:  # the files go once the rows are gone
            await self._run(remove_paths, recording_dirs)
        if count:
            await self._run(self.backend.after_erase)
        return count

    async def erase_identity(self, identity: str, pseudonym: str | None = None) -> int:
        """Anonymise a person: their sessions and the meetings they created get a
        random pseudonym (so attendance totals still add up) and no name; the
        audit rows where they are the actor get the same pseudonym (sfu/audit.py).
        Returns the number of rows changed."""
        pseudonym = pseudonym or new_pseudonym()

        def work():
            changed = self.backend.execute(
                "UPDATE sessions SET identity = ?, display_name = ? WHERE identity = ?",
                (pseudonym, ERASED_NAME, identity))
            changed += self.backend.execute(
                "UPDATE meetings SET creator_identity = ?, creator_name = ? WHERE creator_identity = ?",
                (pseudonym, ERASED_NAME, identity))
            changed += self.backend.execute(
                "UPDATE audit_log SET actor_identity = ? WHERE actor_identity = ?", (pseudonym, identity))
            for statement in _ERASE_CHILDREN:  # chat and polls
                changed += self.backend.execute(statement, (pseudonym, ERASED_NAME, identity))
            erased, files = erase_recordings(self.backend, identity, pseudonym, ERASED_NAME)
            recording_files.extend(files)  # the tracks they published (sfu/recording.py)
            return changed + erased

        from .recording import erase_rows as erase_recordings, remove_paths
        recording_files: list[str] = []
        changed = await self._run(self._tx, work)
        if recording_files:
            await self._run(remove_paths, recording_files)
        await self._run(self.backend.after_erase)
        return changed


def new_pseudonym() -> str:
    """What an erased identity becomes (in the history and as an actor in the audit log)."""
    return "erased-" + secrets.token_hex(6)


# -- reports -----------------------------------------------------------------------------

def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def meeting_dict(meeting: Meeting, now: float) -> dict:
    end = meeting.ended_at if meeting.ended_at is not None else now
    return {
        "meeting_id": meeting.meeting_id,
        "room": meeting.room,
        "topic": meeting.topic,
        "creator": {"identity": meeting.creator_identity, "name": meeting.creator_name},
        "started_at": iso(meeting.started_at),
        "ended_at": iso(meeting.ended_at),
        "duration_seconds": round(max(0.0, end - meeting.started_at), 3),
        "active": meeting.ended_at is None,
    }


def session_dict(record: SessionRecord, now: float) -> dict:
    return {
        "session_id": record.session_id,
        "identity": record.identity,
        "display_name": record.display_name,
        "joined_at": iso(record.joined_at),
        "left_at": iso(record.left_at),
        "duration_seconds": round(record.duration(now), 3),
        "end_reason": record.end_reason,
    }


def attendance(meeting: Meeting, sessions: list[SessionRecord], now: float) -> dict:
    """The export: the meeting, one row per session, and each identity's total time."""
    totals: dict[str, dict] = {}
    for record in sessions:
        entry = totals.setdefault(record.identity, {
            "identity": record.identity, "display_name": record.display_name,
            "sessions": 0, "total_seconds": 0.0})
        entry["sessions"] += 1
        entry["total_seconds"] += record.duration(now)
        entry["display_name"] = record.display_name  # the latest name they used
    for entry in totals.values():
        entry["total_seconds"] = round(entry["total_seconds"], 3)
    return {
        "meeting": meeting_dict(meeting, now),
        "sessions": [session_dict(r, now) for r in sessions],
        "totals": sorted(totals.values(), key=lambda e: (-e["total_seconds"], e["identity"])),
    }


def export_json(report: dict) -> str:
    return json.dumps(report, indent=2, ensure_ascii=False) + "\n"


CSV_COLUMNS = ("row", "meeting_id", "topic", "identity", "display_name", "joined_at", "left_at",
               "duration_seconds", "end_reason", "sessions")


def _cell(value) -> str:
    text = "" if value is None else str(value)
    # a spreadsheet would run a cell starting with = + - @ as a formula
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        text = "'" + text
    return text


def export_csv(report: dict) -> str:
    """One "session" row per session, then one "total" row per identity."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")  # RFC 4180 §2
    writer.writerow(CSV_COLUMNS)
    mid, topic = report["meeting"]["meeting_id"], report["meeting"]["topic"]
    for s in report["sessions"]:
        writer.writerow([_cell(v) for v in ("session", mid, topic, s["identity"], s["display_name"],
                                            s["joined_at"], s["left_at"], s["duration_seconds"],
                                            s["end_reason"], 1)])
    for t in report["totals"]:
        writer.writerow([_cell(v) for v in ("total", mid, topic, t["identity"], t["display_name"],
                                            None, None, t["total_seconds"], None, t["sessions"])])
    return out.getvalue()


def export(report: dict, fmt: str) -> tuple[str, str]:
    """-> (body, content type); ValueError for an unknown format."""
    if fmt == "json":
        return export_json(report), "application/json"
    if fmt == "csv":
        return export_csv(report), "text/csv"
    raise ValueError("format must be csv or json")


__all__ = [
    "END_REASONS", "DuplicateMeeting", "HistoryStore", "Meeting", "SessionRecord", "asdict",
    "attendance", "export", "export_csv", "export_json", "iso", "meeting_dict", "open_backend",
    "session_dict", "StoreUnavailable", "EXIT_STORE_UNAVAILABLE", "new_pseudonym",
]


# -- `sfu history` ----------------------------------------------------------------------

def add_history_arguments(parser) -> None:
    parser.add_argument("action", choices=("list", "show", "export"))
    parser.add_argument("meeting_id", nargs="?", help="the meeting (show, export)")
    parser.add_argument("--format", choices=("csv", "json"), default="csv", help="export format")
    parser.add_argument("--data-dir", default=None, help="the server's data directory (env SFU_DATA_DIR)")
    parser.add_argument("--db", default=None, help="postgresql://... (env SFU_DB; default: SQLite in the data dir)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--identity", help="act as this person: only meetings they created")
    who.add_argument("--admin", action="store_true", help="every meeting")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


async def _history(args, db: str | None, data_dir: str, out) -> int:
    import time

    if args.action != "list" and not args.meeting_id:
        print(f"sfu history {args.action}: a meeting id is needed", file=out)
        return 2
    store = HistoryStore.from_config(db, data_dir)
    await store.open()
    try:
        now = time.time()
        if args.action == "list":
            meetings = await store.list_meetings(None if args.admin else args.identity)
            rows = [["MEETING", "ROOM", "TOPIC", "CREATOR", "STARTED", "ENDED", "MINUTES"]]
            for m in meetings:
                d = meeting_dict(m, now)
                rows.append([m.meeting_id, m.room, m.topic or "-", m.creator_name, d["started_at"],
                             d["ended_at"] or "running", f"{d['duration_seconds'] / 60:.1f}"])
            print(_table(rows), file=out)
            return 0
        meeting = await store.get_meeting(args.meeting_id)
        if meeting is None:
            print(f"no such meeting: {args.meeting_id}", file=out)
            return 1
        if not args.admin and (not meeting.creator_identity or meeting.creator_identity != args.identity):
            print("403: only the meeting's creator or an admin may read its history", file=out)
            return 1
        from . import audit  # the CLI's reads are audited too: actor --identity, or the OS user for --admin

        actor = args.identity if not args.admin else audit.cli_admin()
        await audit.record(store, actor, audit.EXPORT if args.action == "export" else audit.READ,
                           audit.ATTENDANCE, meeting.meeting_id,
                           ("cli admin" if args.admin else "cli creator")
                           + (f" {args.format}" if args.action == "export" else ""))
        report = attendance(meeting, await store.sessions(meeting.meeting_id), now)
        if args.action == "export":
            out.write(export(report, args.format)[0])
            return 0
        m = report["meeting"]
        print(f"meeting {m['meeting_id']}  room {m['room']}  topic {m['topic'] or '-'}\n"
              f"creator {m['creator']['name']}  started {m['started_at']}  "
              f"ended {m['ended_at'] or 'running'}  ({m['duration_seconds'] / 60:.1f} min)\n", file=out)
        rows = [["NAME", "IDENTITY", "JOINED", "LEFT", "MINUTES", "ENDED BY"]]
        for s in report["sessions"]:
            rows.append([s["display_name"], s["identity"], s["joined_at"], s["left_at"] or "-",
                         f"{s['duration_seconds'] / 60:.1f}", s["end_reason"] or "in meeting"])
        print(_table(rows), file=out)
        print("\n" + _table([["NAME", "IDENTITY", "SESSIONS", "TOTAL MINUTES"]] + [
            [t["display_name"], t["identity"], t["sessions"], f"{t['total_seconds'] / 60:.1f}"]
            for t in report["totals"]]), file=out)
        return 0
    finally:
        await store.close()


def history_command(args, db: str | None, data_dir: str, out=None) -> int:
    """Exit code 0, 1 (no such meeting, not allowed), 2 (usage) or 3 (the database
    cannot be opened: one line on stderr naming it and what to do)."""
    import sys

    try:
        return asyncio.run(_history(args, db, data_dir, out or sys.stdout))
    except StoreUnavailable as exc:
        print(f"sfu history: {exc}", file=sys.stderr)
        return EXIT_STORE_UNAVAILABLE
