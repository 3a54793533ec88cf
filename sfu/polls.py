"""Polls of a meeting over the meeting protocol (sfu/signaling.py, docs/protocol.md 4.10).

A host opens a poll (``poll_create``: a question, 2-10 options, single or multiple
choice, named or anonymous); everyone present gets ``poll_opened``. A participant
votes with ``poll_vote`` (one vote per identity). While the poll is open only the
hosts see results (``poll_results`` after every vote); a host closes it
(``poll_close``) and everyone gets ``poll_closed`` with the counts (the voters'
names only go to hosts). A meeting that ends closes its open polls.

**Named** polls keep who chose what (``poll_votes``), and a voter may change the
vote until the poll closes. **Anonymous** polls never hold the link between a
voter and a choice, in memory or in the database: a poll keeps counts per option
and the set of identities that voted (so nobody votes twice), nothing else. An
anonymous vote is therefore final: changing it would need the server (or a
receipt it could be shown) to know the previous choice. The counts and voters of
an anonymous poll are written once, when it closes (written vote by vote, the
database's journal would order each voter next to the count it changed); an
anonymous poll still open when the server crashes loses its votes. The voters
are kept in a set (no order of arrival) and written sorted by identity.

After the meeting the creator (or an admin) reads them back with
``GET /api/meetings/{id}/polls`` and exports them (``.../polls/export``, sfu/rest.py).
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import secrets
from dataclasses import dataclass, field

from .chat import RequestRefused, clean_text, present, who
from .events import MeetingEnded
from .history import iso
from .log import event

logger = logging.getLogger("sfu.polls")

MAX_QUESTION = 300  # characters
MAX_OPTION = 100
MIN_OPTIONS, MAX_OPTIONS = 2, 10
MAX_OPEN_POLLS = 10  # open at once in one meeting
MAX_POLLS = 100  # in one meeting, open or closed


@dataclass(eq=False)
class Poll:
    poll_id: str
    meeting_id: str
    question: str
    options: list[str]
    multiple: bool
    anonymous: bool
    creator_identity: str
    creator_name: str
    opened_at: float
    closed_at: float | None = None
    # anonymous: counts per option and who voted (a set: no order), nothing that links them
    counts: list[int] = field(default_factory=list)
    voted: set[tuple[str, str]] = field(default_factory=set)  # (identity, display name)
    # named only: identity -> (display name, choices)
    votes: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)

    def has_voted(self, identity: str) -> bool:
        if self.anonymous:
            return any(i == identity for i, _name in self.voted)
        return identity in self.votes

    def tally(self) -> list[int]:
        if self.anonymous:
            return list(self.counts)
        counts = [0] * len(self.options)
        for _name, choices in self.votes.values():
            for c in choices:
                counts[c] += 1
        return counts

    def public(self) -> dict:
        return {"poll_id": self.poll_id, "question": self.question, "options": list(self.options),
                "multiple": self.multiple, "anonymous": self.anonymous, "created_by": self.creator_name,
                "opened_at": self.opened_at, "closed_at": self.closed_at,
                "open": self.closed_at is None}

    def results(self, names: bool) -> dict:
        """Counts per option and the number of voters; ``names``: for a named poll, who
        chose each option (display names). An anonymous poll has no such list to give."""
        counts = self.tally()
        options = [{"option": text, "votes": counts[i]} for i, text in enumerate(self.options)]
        if names and not self.anonymous:
            for i, entry in enumerate(options):
                entry["voters"] = sorted(name for name, choices in self.votes.values() if i in choices)
        return {"poll_id": self.poll_id, "voters": len(self.voted) if self.anonymous else len(self.votes),
                "options": options, "open": self.closed_at is None}


class Polls:
    """The polls of every running meeting on this server."""

    def __init__(self, rooms, store, clock, meetings=None) -> None:
        self.rooms = rooms
        self.store = store  # HistoryStore, or None: polls live in memory only
        self.clock = clock
        self._by_meeting: dict[str, dict[str, Poll]] = {}  # meeting id -> poll id -> poll
        self._pending: set[asyncio.Future] = set()
        if meetings is not None:
            meetings.add_listener(self._on_meeting_event)

    def poll(self, meeting_id: str | None, poll_id) -> Poll | None:
        return self._by_meeting.get(meeting_id or "", {}).get(poll_id) if isinstance(poll_id, str) else None

    def join_info(self, participant) -> list[dict]:
        """The meeting's polls for a joining participant: whether it voted (and its own
        choices in a named poll), the results if it is a host or the poll is closed."""
        out = []
        identity = participant.claims.identity
        for poll in self._by_meeting.get(participant.meeting_id or "", {}).values():
            entry = poll.public()
            entry["voted"] = poll.has_voted(identity)
            if not poll.anonymous and identity in poll.votes:
                entry["choices"] = list(poll.votes[identity][1])
            if participant.host or poll.closed_at is not None:
                entry["results"] = poll.results(names=participant.host)
            out.append(entry)
        return out

    # -- requests ----------------------------------------------------------------------
    async def create(self, host, message: dict) -> dict:
        if not host.host:
            raise RequestRefused("forbidden", "only a host may open a poll")
        question = clean_text(message.get("question"), "question", MAX_QUESTION)
        options = message.get("options")
        if not isinstance(options, list) or not MIN_OPTIONS <= len(options) <= MAX_OPTIONS:
            raise RequestRefused("bad_request", f"options must be a list of {MIN_OPTIONS}-{MAX_OPTIONS} strings")
        options = [clean_text(o, "an option", MAX_OPTION).strip() for o in options]
        multiple, anonymous = message.get("multiple", False), message.get("anonymous", False)
        if not isinstance(multiple, bool) or not isinstance(anonymous, bool):
            raise RequestRefused("bad_request", "multiple and anonymous must be true or false")
        polls = self._by_meeting.setdefault(host.meeting_id, {})
        if len(polls) >= MAX_POLLS or sum(p.closed_at is None for p in polls.values()) >= MAX_OPEN_POLLS:
            raise RequestRefused("too_many", f"at most {MAX_OPEN_POLLS} open and {MAX_POLLS} polls in a meeting")
        poll = Poll(secrets.token_hex(6), host.meeting_id, question.strip(), options, multiple, anonymous,
                    host.claims.identity, host.name, self.clock(), counts=[0] * len(options))
        if self.store is not None:
            await self._write(_insert_poll, poll)
        polls[poll.poll_id] = poll
        for other in present(self.rooms, host.meeting_id, host.room):
            if other is not host:
                other.event("poll_opened", poll=poll.public())
        self._results_to_hosts(poll, host)
        event(logger, "poll opened", meeting=host.meeting_id, poll=poll.poll_id, options=len(options),
              anonymous=anonymous, multiple=multiple)
        return {"poll": poll.public(), "results": poll.results(names=True)}

    async def vote(self, voter, message: dict) -> dict:
        poll = self.poll(voter.meeting_id, message.get("poll_id"))
        if poll is None:
            raise RequestRefused("not_found", "no such poll")
        if poll.closed_at is not None:
            raise RequestRefused("poll_closed", "the poll is closed")
        choices = message.get("choices")
        if not isinstance(choices, list) or not choices or any(
                isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < len(poll.options) for c in choices) \
                or len(set(choices)) != len(choices):
            raise RequestRefused("bad_request", "choices must be a list of distinct option indexes")
        if not poll.multiple and len(choices) != 1:
            raise RequestRefused("bad_request", "this poll takes exactly one choice")
        identity = voter.claims.identity
        choices = tuple(sorted(choices))
        changed = poll.has_voted(identity)
        if poll.anonymous:
            if changed:
                raise RequestRefused("already_voted", "an anonymous vote is final")
            poll.voted.add((identity, voter.name))
            for c in choices:
                poll.counts[c] += 1
        else:
            poll.votes[identity] = (voter.name, choices)
            if self.store is not None:
                await self._write(_upsert_vote, poll, identity, voter.name, choices, self.clock())
        self._results_to_hosts(poll)
        return {"poll_id": poll.poll_id, "choices": list(choices), "changed": changed, "final": poll.anonymous}

    async def close(self, host, message: dict) -> dict:
        if not host.host:
            raise RequestRefused("forbidden", "only a host may close a poll")
        poll = self.poll(host.meeting_id, message.get("poll_id"))
        if poll is None:
            raise RequestRefused("not_found", "no such poll")
        if poll.closed_at is not None:
            raise RequestRefused("poll_closed", "the poll is closed already")
        poll.closed_at = self.clock()
        if self.store is not None:
            await self._write(_close_poll, poll)
        for other in present(self.rooms, host.meeting_id, host.room):
            if other is not host:
                other.event("poll_closed", poll_id=poll.poll_id, results=poll.results(names=other.host))
        event(logger, "poll closed", meeting=host.meeting_id, poll=poll.poll_id)
        return {"poll_id": poll.poll_id, "results": poll.results(names=True)}

    # -- helpers -----------------------------------------------------------------------
    def _results_to_hosts(self, poll: Poll, skip=None) -> None:
        live = self.rooms.live_by_id(poll.meeting_id)
        if live is None:
            return
        for other in present(self.rooms, poll.meeting_id, live.meeting.room):
            if other.host and other is not skip:
                other.event("poll_results", results=poll.results(names=True))

    async def _write(self, fn, *args) -> None:
        store = self.store
        await store._run(store._tx, lambda: fn(store.backend, *args))

    def _on_meeting_event(self, ev) -> None:
        """The meeting ended: its open polls close now. The write is queued on the store's
        worker at once, so a server stop (which closes the store next) still runs it."""
        if not isinstance(ev, MeetingEnded):
            return
        polls = self._by_meeting.pop(ev.meeting_id, {})
        now = self.clock()
        closing = [p for p in polls.values() if p.closed_at is None]
        for poll in closing:
            poll.closed_at = now
        store = self.store
        if closing and store is not None and store._executor is not None:
            def work():
                for poll in closing:
                    _close_poll(store.backend, poll)

            future = asyncio.get_running_loop().run_in_executor(store._executor, store._tx, work)
            self._pending.add(future)
            future.add_done_callback(self._written)

    def _written(self, future: asyncio.Future) -> None:
        self._pending.discard(future)
        if not future.cancelled() and future.exception() is not None:
            logger.error("could not record closed polls", exc_info=future.exception())


# -- the database (sfu/history.py's tables), on the store's worker thread -------------------

def _insert_poll(backend, poll: Poll) -> None:
    backend.execute(
        "INSERT INTO polls (poll_id, meeting_id, question, options, multiple, anonymous, creator_identity, "
        "creator_name, opened_at, closed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
        (poll.poll_id, poll.meeting_id, poll.question, json.dumps(poll.options), int(poll.multiple),
         int(poll.anonymous), poll.creator_identity, poll.creator_name, poll.opened_at))


def _upsert_vote(backend, poll: Poll, identity: str, name: str, choices: tuple, now: float) -> None:
    backend.execute(
        "INSERT INTO poll_votes (poll_id, voter_identity, voter_name, choices, voted_at) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (poll_id, voter_identity) DO UPDATE SET voter_name = excluded.voter_name, "
        "choices = excluded.choices, voted_at = excluded.voted_at",
        (poll.poll_id, identity, name, json.dumps(list(choices)), now))


def _close_poll(backend, poll: Poll) -> None:
    """closed_at, the final counts, and (anonymous) who voted, sorted: one transaction."""
    backend.execute("UPDATE polls SET closed_at = ? WHERE poll_id = ? AND closed_at IS NULL",
                    (poll.closed_at, poll.poll_id))
    backend.executemany("INSERT INTO poll_counts (poll_id, option_index, votes) VALUES (?, ?, ?)",
                        [(poll.poll_id, i, n) for i, n in enumerate(poll.tally())])
    if poll.anonymous:
        backend.executemany("INSERT INTO poll_voters (poll_id, voter_identity, voter_name) VALUES (?, ?, ?)",
                            [(poll.poll_id, i, name) for i, name in sorted(poll.voted)])


# -- reading back (REST) ----------------------------------------------------------------

async def stored_polls(store, meeting_id: str) -> list[dict]:
    """A meeting's polls with their results: counts per option; a named poll's votes
    (identity, name, choices); an anonymous poll's voters (identity, name) only."""
    def work():
        q = store.backend.query
        polls = q("SELECT poll_id, question, options, multiple, anonymous, creator_identity, creator_name, "
                  "opened_at, closed_at FROM polls WHERE meeting_id = ? ORDER BY opened_at, poll_id", (meeting_id,))
        out = []
        for pid, question, options, multiple, anonymous, c_id, c_name, opened, closed in polls:
            options = json.loads(options)
            counts = [0] * len(options)
            entry = {"poll_id": pid, "question": question, "options": options, "multiple": bool(multiple),
                     "anonymous": bool(anonymous), "creator": {"identity": c_id, "name": c_name},
                     "opened_at": iso(opened), "closed_at": iso(closed)}
            if anonymous:
                for i, n in q("SELECT option_index, votes FROM poll_counts WHERE poll_id = ?", (pid,)):
                    counts[i] = n
                entry["voters"] = [{"identity": i, "name": n} for i, n in q(
                    "SELECT voter_identity, voter_name FROM poll_voters WHERE poll_id = ? "
                    "ORDER BY voter_identity", (pid,))]
            else:
                votes = q("SELECT voter_identity, voter_name, choices, voted_at FROM poll_votes WHERE poll_id = ? "
                          "ORDER BY voter_identity", (pid,))
                entry["votes"] = []
                for i, n, choices, at in votes:
                    chosen = json.loads(choices)
                    for c in chosen:
                        counts[c] += 1
                    entry["votes"].append({"identity": i, "name": n, "choices": [options[c] for c in chosen],
                                           "voted_at": iso(at)})
                entry["voters"] = [{"identity": v["identity"], "name": v["name"]} for v in entry["votes"]]
            entry["results"] = [{"option": text, "votes": counts[i]} for i, text in enumerate(options)]
            out.append(entry)
        return out

    return await store._run(work)


CSV_COLUMNS = ("poll_id", "question", "anonymous", "multiple", "opened_at", "closed_at", "option", "votes",
               "voters")


def export_polls(polls: list[dict], fmt: str) -> tuple[str, str]:
    """-> (body, content type): JSON as read, or CSV with one row per option (``voters``:
    the names who chose it in a named poll; empty for an anonymous one)."""
    from .history import _cell

    if fmt == "json":
        return json.dumps({"polls": polls}, indent=2, ensure_ascii=False) + "\n", "application/json"
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for p in polls:
        for r in p["results"]:
            names = "" if p["anonymous"] else "; ".join(v["name"] for v in p["votes"] if r["option"] in v["choices"])
            writer.writerow([_cell(v) for v in (p["poll_id"], p["question"], int(p["anonymous"]),
                                                 int(p["multiple"]), p["opened_at"], p["closed_at"],
                                                 r["option"], r["votes"], names)])
    return out.getvalue(), "text/csv"


__all__ = ["Poll", "Polls", "export_polls", "stored_polls"]
