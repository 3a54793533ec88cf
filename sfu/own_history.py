"""Own history: what a participant reads of the meetings they attended
(``GET /api/me/meetings``): the meetings an identity has sessions in, each
with that identity's sessions only, never anyone else's."""

from __future__ import annotations

from .history import _MEETING_COLS, _SESSION_COLS, Meeting, SessionRecord, iso


def own_meeting_dict(meeting: Meeting, mine: list[SessionRecord], identity: str, now: float) -> dict:
    """One meeting of a participant's own history: only their own sessions and
    times (no one else's name, identity or times, not even the creator's); the
    creator's entry links the full attendance view and its export."""
    own = [{"joined_at": iso(r.joined_at), "left_at": iso(r.left_at),
            "duration_seconds": round(r.duration(now), 3), "end_reason": r.end_reason} for r in mine]
    entry = {
        "meeting_id": meeting.meeting_id, "room": meeting.room, "topic": meeting.topic,
        "joined_at": iso(min((r.joined_at for r in mine), default=None)),
        "left_at": None if any(r.left_at is None for r in mine)
        else iso(max((r.left_at for r in mine), default=None)),
        "duration_seconds": round(sum(r.duration(now) for r in mine), 3),
        "sessions": own,
        "creator": bool(meeting.creator_identity) and meeting.creator_identity == identity,
    }
    if entry["creator"]:
        base = f"/api/meetings/{meeting.meeting_id}"
        entry["attendance"] = {"view": base, "export_csv": base + "/export?format=csv",
                               "export_json": base + "/export?format=json"}
    return entry


async def attended(store, identity: str, meeting_id: str | None = None,
                   limit: int = 1000) -> list[tuple[Meeting, list[SessionRecord]]]:
    """The meetings ``identity`` has sessions in (newest first; only ``meeting_id``
    if given), each with that identity's sessions only; ``store`` is the HistoryStore."""
    where, params = "identity = ?", [identity]
    if meeting_id is not None:
        where, params = "identity = ? AND meeting_id = ?", [identity, meeting_id]
    meetings = [Meeting(*row) for row in await store._run(
        store.backend.query, f"SELECT {_MEETING_COLS} FROM meetings WHERE meeting_id IN "
        f"(SELECT meeting_id FROM sessions WHERE {where}) ORDER BY started_at DESC, meeting_id LIMIT ?",
        (*params, limit))]
    if not meetings:
        return []
    marks = ", ".join("?" for _ in meetings)
    rows = await store._run(
        store.backend.query, f"SELECT {_SESSION_COLS} FROM sessions WHERE identity = ? AND "
        f"meeting_id IN ({marks}) ORDER BY joined_at, session_id",
        (identity, *[m.meeting_id for m in meetings]))
    mine: dict[str, list[SessionRecord]] = {m.meeting_id: [] for m in meetings}
    for row in rows:
        mine[row[1]].append(SessionRecord(*row))
    return [(m, mine[m.meeting_id]) for m in meetings]
