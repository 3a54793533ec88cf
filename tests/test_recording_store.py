"""Recordings in the history (sfu/recording.py, tables of sfu/history.py) on SQLite and a real
PostgreSQL server: listed with their files, purged with their meeting (the files too), a
person's erasure deletes the tracks they published and nothing else."""

from __future__ import annotations

import os

import pytest

from sfu.history import Meeting
from sfu.recording import stored_file, stored_recordings, store_finished, store_started

pytestmark = pytest.mark.timeout(60)
T0 = 1_800_000_000.0



async def recorded(store, tmp_path, meeting_id: str, recording_id: str, people: list[str]) -> str:
    await store.create_meeting(Meeting(meeting_id, "room-" + meeting_id, "Weekly", "ann", "Ann", T0, None))
    path = tmp_path / "recordings" / meeting_id / recording_id
    path.mkdir(parents=True)
    await store_started(store, (recording_id, meeting_id, T0 + 1, None, "ann", "Ann", "recording", str(path)))
    files = []
    for i, who in enumerate(people):
        for kind, codec, ext in (("audio", "opus", "webm"), ("video", "vp8", "webm")):
            name = f"{len(files) + 1:02d}-{kind}-{codec}.{ext}"
            (path / name).write_bytes(b"x" * 100)
            files.append({"file": name, "identity": who, "name": who.title(), "kind": kind, "codec": codec,
                          "start_offset": 0.5 * i, "duration": 3.0, "bytes": 100})
    (path / "manifest.json").write_text("{}")
    await store_finished(store, recording_id, T0 + 60, "stopped", files)
    return str(path)


async def test_listed_with_files(store, tmp_path):
    path = await recorded(store, tmp_path, "m1", "r1", ["ann", "ben"])
    [rec] = await stored_recordings(store, "m1")
    assert rec["recording_id"] == "r1" and rec["status"] == "stopped" and rec["started_by"] == "Ann"
    assert [(f["participant"], f["kind"]) for f in rec["files"]] == [
        ("Ann", "audio"), ("Ann", "video"), ("Ben", "audio"), ("Ben", "video")]
    assert rec["files"][0]["url"] == "/api/meetings/m1/recordings/r1/01-audio-opus.webm"
    assert await stored_file(store, "m1", "r1", "01-audio-opus.webm") == os.path.join(path, "01-audio-opus.webm")
    assert await stored_file(store, "m2", "r1", "01-audio-opus.webm") is None  # another meeting's id
    assert await stored_file(store, "m1", "r1", "manifest.json") is None  # not a track
    assert await stored_recordings(store, "nothing") == []


async def test_purge_deletes_rows_and_files_with_the_meeting(store, tmp_path):
    old = await recorded(store, tmp_path, "old", "r-old", ["ann"])
    new = await recorded(store, tmp_path, "new", "r-new", ["ann"])
    await store.end_meeting("old", T0 + 100)
    await store.end_meeting("new", T0 + 10_000)
    assert await store.purge(T0 + 5_000) == 1
    assert await stored_recordings(store, "old") == [] and not os.path.exists(old)
    assert len(await stored_recordings(store, "new")) == 1 and os.path.isdir(new)


async def test_erasure_deletes_the_persons_tracks_only(store, tmp_path):
    path = await recorded(store, tmp_path, "m1", "r1", ["ann", "ben@example.com"])
    changed = await store.erase_identity("ben@example.com")
    assert changed >= 2
    [rec] = await stored_recordings(store, "m1")
    assert [f["participant"] for f in rec["files"]] == ["Ann", "Ann"]
    assert sorted(os.listdir(path)) == ["01-audio-opus.webm", "02-video-vp8.webm", "manifest.json"]
    # the one who started it is erased as a starter, the recording stays
    await store.erase_identity("ann")
    [rec] = await stored_recordings(store, "m1")
    assert rec["started_by"] == "(erased)" and rec["files"] == []
