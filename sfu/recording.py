"""Recording by the SFU: the control plane's side (the recorder process is sfu/recorder.py).

- :class:`RoomRecording` records one room: it makes the recorder a forwarding-plane peer
  (its loopback address and SRTP keys, no WebRTC), subscribes it to every track the room
  publishes now or later (``TrackPublished``) once the plane has the track's stream, with
  the keyframe gate (video starts at a keyframe, which the publisher is asked for), and
  unsubscribes it when the track goes (``TrackUnpublished``). Nothing here runs per packet.
- :class:`Recordings` is the meeting's feature (driven by sfu/signaling.py): a host starts
  and stops; the notice goes to every participant BEFORE the recorder subscribes to
  anything: ``recording_changed`` is sent, then the server waits (at most
  ``NOTICE_WAIT``) for every notified page to acknowledge it (``recording_ack``: the
  page shows the banner, then acks), and only then starts the recorder. The recording
  is listed in the meeting's history (tables ``recordings`` and ``recording_tracks`` of
  sfu/history.py) with each track's publisher, so that retention deletes the files with
  the meeting and erasing a person deletes the tracks they published.

A full disk (or any write error) stops the recording, never the meeting: the recorder
process reports it, the plane peer is removed, every participant is told
(``recording_changed`` with ``reason``), the history keeps what was written.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import secrets
import shutil
import time
from typing import Any, Callable

from .events import MeetingEnded, TrackPublished, TrackUnpublished
from .log import event

logger = logging.getLogger("sfu.recording")

NOTICE_WAIT = 3.0  # seconds the start waits for the notice's acknowledgements
PENDING_CHECK = 0.25  # seconds between looks at tracks not streaming yet
PENDING_GIVE_UP = 30.0  # a track that has no stream this long after publication is not recorded
STATES = ("recording", "stopped", "disk_full", "write_error", "server_stopped")


def available() -> str | None:
    """None if this server can record; else why not (one line)."""
    try:
        import av  # noqa: F401
    except ImportError:
        return "recording needs PyAV (pip install 'sfu[recording]')"
    return None


# -- one room -----------------------------------------------------------------------------


class RoomRecording:
    """The recorder's peer and subscriptions in one room (see the module doc).

    ``owner(session_id) -> (identity, name) | None`` names a track's publisher;
    ``on_stopped(result)`` is called once when the recorder stops, asked to or by itself
    (``result["reason"]``: "stopped", "disk_full", "write_error")."""

    def __init__(self, engine, room: str, directory: str, owner: Callable[[str], tuple | None],
                 on_stopped: Callable[[dict], None], new_id: Callable[[], int],
                 on_event: Callable[[dict], None] | None = None) -> None:
        from .recorder import RecorderProcess

        self.engine = engine
        self.new_id = new_id  # a fresh plane id (peers and subscriptions share the engine's numbering)
        self.room = room
        self.directory = directory
        self.owner = owner
        self.on_stopped = on_stopped
        self.on_event = on_event or (lambda ev: None)
        self.process = RecorderProcess(directory, self._child_event, host=_loopback(engine))
        self.peer: int | None = None
        self.tracks: dict[str, dict] = {}  # producer id -> {sub, ssrc, identity, name, kind, codec}
        self.by_ssrc: dict[int, dict] = {}  # every track recorded, also those gone
        self.pending: dict[str, float] = {}  # producer id -> when it was published
        self.first_packet_wall: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._active = False
        self._stopped = False

    async def start(self) -> None:
        address = await self.process.start()
        plane = self.engine.plane
        self.peer = self.new_id()
        plane.add_peer(self.peer)
        plane.set_address(self.peer, address)
        plane.set_keys(self.peer, *self.process.keys())
        self._active = True
        room = self.engine.rooms.get(self.room)
        now = time.monotonic()
        for producer_id in list(room.producers) if room is not None else ():
            self.pending[producer_id] = now
        self._tick()

    async def stop(self) -> dict:
        """Unsubscribe everything, close the files; the recorder's result."""
        self._detach()
        return await self.process.stop()

    def _detach(self) -> None:
        if not self._active:
            return
        self._active = False
        if self._timer is not None:
            self._timer.cancel()
        plane = self.engine.plane
        for track in self.tracks.values():
            plane.remove_subscription(track["sub"])
        if self.peer is not None:
            plane.remove_peer(self.peer)
        self.pending.clear()

    # -- tracks ------------------------------------------------------------------------
    def engine_event(self, ev) -> None:
        """An engine event (the one listener of :class:`Recordings` passes them on)."""
        if not self._active or getattr(ev, "room", None) != self.room:
            return
        if isinstance(ev, TrackPublished):
            self.pending[ev.producer] = time.monotonic()
            self._check_pending()  # most tracks wait for their SSRC: the tick tries again
        elif isinstance(ev, TrackUnpublished):
            self.pending.pop(ev.producer, None)
            track = self.tracks.pop(ev.producer, None)
            if track is not None:
                track["producer"] = None
                self.engine.plane.remove_subscription(track["sub"])
                self.process.remove_track(track["ssrc"])

    def _tick(self) -> None:
        """Every PENDING_CHECK seconds while recording: the tracks still waiting to be
        subscribed, and each recorded track held as its producer is (a host's mute holds
        a track for everyone: for the recorder too)."""
        self._timer = None
        if not self._active:
            return
        self._check_pending()
        plane = self.engine.plane
        for track in self.tracks.values():
            paused = bool(track["producer"].paused)
            if paused != track["paused"]:
                track["paused"] = paused
                plane.set_paused(track["sub"], paused)
        self._timer = asyncio.get_running_loop().call_later(PENDING_CHECK, self._tick)

    def _check_pending(self) -> None:
        now = time.monotonic()
        for producer_id, since in list(self.pending.items()):
            producer = self.engine.router.producer(producer_id, self.room)
            if producer is None or now - since > PENDING_GIVE_UP:
                del self.pending[producer_id]  # gone, or never streamed
                continue
            owner = self.owner(producer.transport.id)
            if not producer.streaming or owner is None:
                continue  # its SSRC is not known yet, or its publisher not registered yet
            del self.pending[producer_id]
            self._subscribe(producer, owner)

    def _subscribe(self, producer, owner: tuple) -> None:
        from .recorder import supported
        from .rtp import CODEC_OTHER, codec_id

        codec = producer.codec.name.lower()
        if not supported(codec):
            event(logger, "track not recorded", room=self.room, codec=codec)
            return
        plane = self.engine.plane
        sub = self.new_id()
        ssrc = random.getrandbits(32) or 1
        identity, name = owner
        track = {"sub": sub, "ssrc": ssrc, "identity": identity, "name": name, "kind": producer.kind,
                 "codec": codec, "producer": producer, "paused": False}
        self.tracks[producer.id] = self.by_ssrc[ssrc] = track
        # no name in the recorder's manifest: who published a track is in the history only,
        # where erasure reaches it
        self.process.add_track(ssrc, codec, producer.codec.clock_rate, producer.kind)
        plane.add_subscription(sub, self.peer, ssrc, producer.codec.clock_rate,
                               initial_seq=random.getrandbits(16), initial_ts=random.getrandbits(32))
        pt = producer.codec.payload_type
        plane.bind(sub, producer.plane_id, {pt: pt}, {},
                   codec_id(codec) if producer.kind == "video" else CODEC_OTHER)
        if producer.paused:  # held by a host
            track["paused"] = True
            plane.set_paused(sub, True)
        if producer.kind == "video":
            self.engine.request_keyframe(producer, self.engine.now())

    # -- the recorder's events ----------------------------------------------------------
    def _child_event(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "first_packet" and self.first_packet_wall is None:
            self.first_packet_wall = ev.get("wall")
            event(logger, "recording first packet", room=self.room, wall=self.first_packet_wall)
        elif kind == "stopped":
            self._detach()
            if not self._stopped:
                self._stopped = True
                self.on_stopped(ev)
        self.on_event(ev)

    def files(self, result: dict) -> list[dict]:
        """The files of a finished recording with their publishers, for the history."""
        out = []
        for track in result.get("tracks", ()):
            info = self.by_ssrc.get(track.get("ssrc"))
            if info is None or not track.get("frames"):
                continue
            out.append({"file": track["file"], "identity": info["identity"], "name": info["name"],
                        "kind": track["kind"], "codec": track["codec"],
                        "start_offset": track.get("start_offset") or 0.0,
                        "duration": track.get("duration") or 0.0, "bytes": track.get("bytes") or 0})
        return out


def _loopback(engine) -> str:
    """The loopback address of the plane socket's family."""
    return "::1" if ":" in getattr(engine.config, "host", "") else "127.0.0.1"


# -- the history ------------------------------------------------------------------------------
# tables recordings and recording_tracks are in sfu.history.SCHEMA; ``path`` is the
# recording's directory, each track's file is in it

_REC_COLS = "recording_id, meeting_id, started_at, stopped_at, started_by_identity, started_by_name, status, path"
_TRACK_COLS = "recording_id, file, identity, display_name, kind, codec, start_offset, duration, bytes"


async def store_started(store, row: tuple) -> None:
    await store._run(store._tx, lambda: store.backend.execute(
        f"INSERT INTO recordings ({_REC_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row))


async def store_finished(store, recording_id: str, stopped_at: float, status: str, files: list[dict]) -> None:
    def work():
        store.backend.execute("UPDATE recordings SET stopped_at = ?, status = ? WHERE recording_id = ?",
                              (stopped_at, status, recording_id))
        for f in files:
            store.backend.execute(
                f"INSERT INTO recording_tracks ({_TRACK_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (recording_id, f["file"], f["identity"], f["name"], f["kind"], f["codec"],
                 float(f["start_offset"]), float(f["duration"]), int(f["bytes"])))

    await store._run(store._tx, work)


async def stored_recordings(store, meeting_id: str) -> list[dict]:
    """The meeting's recordings with their files (the history API's answer)."""
    from .history import iso

    rows = await store._run(store.backend.query,
                            f"SELECT {_REC_COLS} FROM recordings WHERE meeting_id = ? ORDER BY started_at",
                            (meeting_id,))
    out = []
    for rid, _mid, started, stopped, _who, by_name, status, _path in rows:
        tracks = await store._run(store.backend.query,
                                  f"SELECT {_TRACK_COLS} FROM recording_tracks WHERE recording_id = ? "
                                  "ORDER BY file", (rid,))
        out.append({
            "recording_id": rid, "started_at": iso(started), "stopped_at": iso(stopped),
            "started_by": by_name, "status": status,
            "files": [{"file": t[1], "participant": t[3], "kind": t[4], "codec": t[5],
                       "start_offset": t[6], "duration_seconds": t[7], "bytes": t[8],
                       "url": f"/api/meetings/{meeting_id}/recordings/{rid}/{t[1]}"} for t in tracks],
        })
    return out


async def stored_file(store, meeting_id: str, recording_id: str, file: str) -> str | None:
    """The path of one file of a recording of ``meeting_id``, or None."""
    rows = await store._run(store.backend.query,
                            "SELECT r.path FROM recordings r JOIN recording_tracks t ON t.recording_id = r.recording_id "
                            "WHERE r.meeting_id = ? AND r.recording_id = ? AND t.file = ?",
                            (meeting_id, recording_id, file))
    if not rows:
        return None
    path = os.path.join(rows[0][0], file)
    return path if os.path.isfile(path) else None


# hooks of HistoryStore.purge and erase_identity (they run on the store's worker thread, in
# its transaction; the files go after the commit: remove_paths)

def purge_rows(backend, ended: str, ended_before: float) -> list[str]:
    """Delete the recordings of the meetings ``ended`` selects; their directories."""
    paths = [row[0] for row in backend.query(
        f"SELECT path FROM recordings WHERE meeting_id IN ({ended})", (ended_before,))]
    backend.execute(f"DELETE FROM recording_tracks WHERE recording_id IN (SELECT recording_id FROM recordings "
                    f"WHERE meeting_id IN ({ended}))", (ended_before,))
    backend.execute(f"DELETE FROM recordings WHERE meeting_id IN ({ended})", (ended_before,))
    return paths


def erase_rows(backend, identity: str, pseudonym: str, erased_name: str) -> tuple[int, list[str]]:
    """A person's erasure: the tracks they published are deleted (rows, and the files:
    returned), the recordings they started name the pseudonym."""
    files = [os.path.join(path, file) for path, file in backend.query(
        "SELECT r.path, t.file FROM recording_tracks t JOIN recordings r ON r.recording_id = t.recording_id "
        "WHERE t.identity = ?", (identity,))]
    changed = backend.execute("DELETE FROM recording_tracks WHERE identity = ?", (identity,))
    changed += backend.execute(
        "UPDATE recordings SET started_by_identity = ?, started_by_name = ? WHERE started_by_identity = ?",
        (pseudonym, erased_name, identity))
    return changed, files


def remove_paths(paths: list[str]) -> None:
    for path in paths:
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            event(logger, "recording file not removed", logging.WARNING, error=exc.strerror)


# -- the meeting feature ----------------------------------------------------------------------


def _refused(code: str, message: str):
    from .chat import RequestRefused  # what sfu/signaling.py turns into ok: false

    return RequestRefused(code, message)


class _Active:
    def __init__(self, recording_id: str, meeting_id: str, room: str) -> None:
        self.recording_id = recording_id
        self.meeting_id = meeting_id
        self.room = room
        self.notice = secrets.token_hex(6)
        self.waiting: set[str] = set()  # participant ids that have not acknowledged the notice
        self.acked = asyncio.Event()
        self.room_recording: RoomRecording | None = None
        self.stopping = False
        self.reason = "stopped"  # why it is being stopped (when asked to)


class Recordings:
    """Recording of every meeting on this server (see the module doc): the requests of the
    meeting protocol (``request_start``, ``request_stop``, ``request_ack``; a refusal is a
    ``RequestRefused``), the notices, the history rows."""

    def __init__(self, engine, rooms, store, meetings=None, clock: Callable[[], float] = time.time) -> None:
        config = engine.config
        self.engine = engine
        self.rooms = rooms
        self.store = store
        self.directory = getattr(config, "recordings_dir", None) or os.path.join(config.data_dir, "recordings")
        self.enabled = not getattr(config, "no_recording", False)
        self.clock = clock
        self.active: dict[str, _Active] = {}  # meeting id -> its recording
        self._tasks: set[asyncio.Task] = set()
        engine.add_listener(self._engine_event)
        if meetings is not None:
            meetings.add_listener(self.meeting_event)

    # -- the meeting protocol (docs/protocol.md) ------------------------------------------
    async def request_start(self, participant, message: dict) -> dict:
        if not participant.host:
            raise _refused("forbidden", "only a host may start recording")
        return {"recording": "starting",
                **self.start(participant.meeting_id, participant.room, participant.claims.identity, participant.name)}

    async def request_stop(self, participant, message: dict) -> dict:
        if not participant.host:
            raise _refused("forbidden", "only a host may stop recording")
        if not await self.stop(participant.meeting_id):
            raise _refused("not_recording", "the meeting is not being recorded")
        return {"recording": False}

    async def request_ack(self, participant, message: dict) -> dict:
        return {"acknowledged": self.ack(participant.meeting_id, participant.id, message.get("notice"))}

    def notify(self, meeting_id: str, room: str, fields: dict) -> list[str]:
        """``recording_changed`` to the meeting's WebSocket participants; their ids. (WHIP and
        WHEP peers have no channel to be told: docs/protocol.md.)"""
        from .chat import present

        told = []
        for participant in present(self.rooms, meeting_id, room):
            participant.event("recording_changed", **fields)
            told.append(participant.id)
        return told

    def owner(self, room: str, session_id: str) -> tuple | None:
        """(identity, display name) of the participant whose media session that is."""
        for participant in self.rooms.participants(room):
            if participant.media_session == session_id:
                return participant.claims.identity, participant.name
        return None

    def state(self, meeting_id: str | None) -> dict | None:
        """What a page joining now is told (the join response), None when not recording."""
        active = self.active.get(meeting_id)
        if active is None:
            return None
        return {"recording_id": active.recording_id, "notice": active.notice}

    def start(self, meeting_id: str, room: str, identity: str, name: str) -> dict:
        """A host asked: the notice goes out now, the recorder starts after it was
        acknowledged (or NOTICE_WAIT). RecordingRefused when it cannot."""
        why = None if self.enabled else "recording is turned off on this server"
        why = why or available()
        if why is not None:
            raise _refused("recording_unavailable", why)
        if meeting_id in self.active:
            raise _refused("already_recording", "the meeting is being recorded already")
        active = _Active(secrets.token_hex(8), meeting_id, room)
        self.active[meeting_id] = active
        active.waiting = set(self.notify(meeting_id, room, {"recording": True, "source": "sfu",
                                                            "recording_id": active.recording_id,
                                                            "notice": active.notice}))
        event(logger, "recording notice sent", meeting=meeting_id, recording=active.recording_id,
              participants=len(active.waiting))
        self._spawn(self._start(active, identity, name))
        return {"recording_id": active.recording_id, "notice": active.notice}

    def ack(self, meeting_id: str | None, participant_id: str, notice: Any) -> bool:
        """A page showed the notice."""
        active = self.active.get(meeting_id)
        if active is None or notice != active.notice:
            return False
        active.waiting.discard(participant_id)
        if not active.waiting:
            active.acked.set()
        return True

    def left(self, meeting_id: str | None, participant_id: str) -> None:
        """A participant went: nobody waits for its acknowledgement."""
        active = self.active.get(meeting_id)
        if active is not None and participant_id in active.waiting:
            self.ack(meeting_id, participant_id, active.notice)

    async def _start(self, active: _Active, identity: str, name: str) -> None:
        if active.waiting:
            try:
                await asyncio.wait_for(active.acked.wait(), NOTICE_WAIT)
            except asyncio.TimeoutError:
                pass
        event(logger, "recording notice acknowledged", meeting=active.meeting_id, recording=active.recording_id,
              missing=len(active.waiting), wall=time.time())
        if active.stopping:
            return
        path = os.path.join(self.directory, active.meeting_id, active.recording_id)
        started = self.clock()
        try:
            os.makedirs(path, exist_ok=True)
            if self.store is not None:
                await store_started(self.store, (active.recording_id, active.meeting_id, started, None, identity,
                                                 name, "recording", os.path.abspath(path)))
            room_recording = self.engine.record(
                active.room, path, lambda session: self.owner(active.room, session),
                lambda result: self._spawn(self._finished(active, result)))
            active.room_recording = room_recording
            await room_recording.start()
        except Exception:  # the recorder could not start: the meeting goes on
            logger.exception("recording failed to start")
            if active.room_recording is not None:
                active.room_recording._detach()
                await active.room_recording.process.close()
            self.active.pop(active.meeting_id, None)
            await self._close_row(active, "write_error", [])
            self.notify(active.meeting_id, active.room, {"recording": False, "source": "sfu",
                                                         "recording_id": active.recording_id,
                                                         "reason": "write_error"})
            return
        event(logger, "recording started", meeting=active.meeting_id, recording=active.recording_id,
              wall=time.time())

    async def stop(self, meeting_id: str | None, reason: str = "stopped") -> bool:
        """Stop the meeting's recording (a host, the meeting's end, the server's stop)."""
        active = self.active.get(meeting_id)
        if active is None or active.stopping:
            return False
        active.stopping = True
        active.reason = reason
        if active.room_recording is None:  # still waiting for acknowledgements
            self.active.pop(meeting_id, None)
            await self._close_row(active, reason, [], stored=False)
            self.notify(meeting_id, active.room, {"recording": False, "source": "sfu",
                                                  "recording_id": active.recording_id, "reason": reason})
            return True
        result = await active.room_recording.stop()
        await self._finished(active, result)
        return True

    async def _finished(self, active: _Active, result: dict) -> None:
        if self.active.get(active.meeting_id) is not active:
            return  # told already
        del self.active[active.meeting_id]
        status = result.get("reason") if result.get("reason") != "stopped" else active.reason
        files = active.room_recording.files(result) if active.room_recording is not None else []
        await self._close_row(active, status, files)
        counters = result.get("counters") or {}
        lost = sum((t.get("counters") or {}).get("lost", 0) for t in result.get("tracks", ()))
        event(logger, "recording stopped", meeting=active.meeting_id, recording=active.recording_id,
              reason=status, files=len(files), packets=counters.get("packets", 0),
              queue_drops=counters.get("queue_drops", 0), srtp_errors=counters.get("srtp_errors", 0),
              packets_lost=lost)
        self.notify(active.meeting_id, active.room, {"recording": False, "source": "sfu",
                                                     "recording_id": active.recording_id, "reason": status})

    async def _close_row(self, active: _Active, status: str, files: list[dict], stored: bool = True) -> None:
        if not stored or self.store is None:
            return
        try:
            await store_finished(self.store, active.recording_id, self.clock(), status, files)
        except Exception:
            logger.exception("recording not written to the history")

    def _engine_event(self, ev) -> None:
        for active in list(self.active.values()):
            if active.room_recording is not None and getattr(ev, "room", None) == active.room:
                active.room_recording.engine_event(ev)

    def meeting_event(self, ev) -> None:
        if isinstance(ev, MeetingEnded) and ev.meeting_id in self.active:
            self._spawn(self.stop(ev.meeting_id, "stopped"))

    async def shutdown(self) -> None:
        for meeting_id in list(self.active):
            await self.stop(meeting_id, "server_stopped")
        for task in list(self._tasks):
            task.cancel()

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def manifest(path: str) -> dict | None:
    """A recording directory's manifest.json (written by the recorder), if readable."""
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
