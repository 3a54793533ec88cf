"""Recording by the SFU with real aiortc participants on the meeting protocol: the host
starts it, every participant is told (and acknowledges) before the recorder's first
packet, the files are downloaded by the creator (403 for the others) and played back
with PyAV; a full disk stops the recording, never the meeting; retention and erasure
delete the files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import aiohttp
import pytest

from ..conftest import SfuProcess
from ..waiting import wait_until
from .ws_client import MeetingClient, MeetingError

import av  # noqa: E402 (a test dependency: pyproject.toml, extra "test")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


class Client(MeetingClient):
    """A participant whose page shows the recording notice and acknowledges it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.notices: list[tuple[float, dict]] = []  # (wall time received, event)
        self.acks: list[dict] = []

    def _on_event(self, ev: dict) -> None:
        super()._on_event(ev)
        if ev["event"] == "recording_changed":
            self.notices.append((time.time(), ev))
            if ev.get("notice"):
                self._tasks.append(asyncio.ensure_future(self._ack(ev["notice"])))

    async def _ack(self, notice: str) -> None:
        self.acks.append(await self.request("recording_ack", notice=notice))


def log_events(sfu: SfuProcess, msg: str) -> list[dict]:
    out = []
    for line in sfu.log().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == msg:
            out.append(entry)
    return out


async def http_get(sfu: SfuProcess, path: str, token: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as http:
        async with http.get(sfu.url + path, headers={"Authorization": f"Bearer {token}"}) as r:
            return r.status, await r.read()


# decoders PyAV may pick -> the codec's name
CODEC_NAMES = {"libdav1d": "av1", "libopus": "opus", "libvpx": "vp8", "libvpx-vp9": "vp9"}


def probe(path: str) -> dict:
    with av.open(path) as container:
        stream = container.streams[0]
        frames = list(container.decode(stream))
        times = [float(f.pts * f.time_base) for f in frames if f.pts is not None]
        return {"codec": CODEC_NAMES.get(stream.codec_context.name, stream.codec_context.name), "frames": len(frames),
                "duration": (times[-1] - times[0]) if times else 0.0, "start": times[0] if times else None}


async def meeting(sfu: SfuProcess, room: str) -> tuple[Client, Client]:
    host = Client(sfu.url, sfu.token(room, "ann@example.com", "Ann", host=True), fps=15)
    guest = Client(sfu.url, sfu.token(room, "ben@example.com", "Ben"), fps=15)
    for client in (host, guest):
        await client.join()
        await client.publish()
    assert await wait_until(lambda: guest.received_kinds(host.participant_id)["video"] > 10
                            and host.received_kinds(guest.participant_id)["video"] > 10, 30)
    return host, guest


async def test_recording_notice_first_then_files_for_the_creator(tmp_path, netns):
    sfu = SfuProcess(tmp_path).start()
    host = guest = None
    try:
        host, guest = await meeting(sfu, "rec")
        assert host.joined["permissions"]["record"] and not guest.joined["permissions"]["record"]
        with pytest.raises(MeetingError, match="forbidden"):
            await guest.request("recording_start")
        started = await host.request("recording_start")
        assert started["recording"] == "starting"
        recording_id = started["recording_id"]
        assert await wait_until(lambda: log_events(sfu, "recording first packet"), 20), sfu.log()[-3000:]
        first_packet = log_events(sfu, "recording first packet")[0]["wall"]
        for client in (host, guest):  # told, and acknowledged, before the first recorded packet
            assert client.notices and client.notices[0][1]["recording"] is True
            assert client.notices[0][0] < first_packet
            assert client.acks and client.acks[0]["acknowledged"] is True
        acked = log_events(sfu, "recording notice acknowledged")[0]
        assert acked["missing"] == 0 and acked["wall"] <= first_packet
        # a late joiner is told in its join response
        late = Client(sfu.url, sfu.token("rec", "cat@example.com", "Cat"), audio=False, video=False)
        joined = await late.join()
        assert joined["recording"] is True and joined["sfu_recording"]["recording_id"] == recording_id
        await late.leave()
        with pytest.raises(MeetingError, match="already_recording"):
            await host.request("recording_start")

        await asyncio.sleep(3)  # a few seconds of everyone
        await host.request("recording_stop")
        assert await wait_until(lambda: any(not n[1]["recording"] for n in guest.notices), 10)
        stopped = [n[1] for n in guest.notices if not n[1]["recording"]][0]
        assert stopped["reason"] == "stopped" and stopped["recording_id"] == recording_id

        meeting_id = host.joined["meeting"]["id"]
        ann = sfu.token("rec", "ann@example.com", "Ann", host=True)
        ben = sfu.token("rec", "ben@example.com", "Ben")
        status, body = await http_get(sfu, f"/api/meetings/{meeting_id}/recordings", ann)
        assert status == 200, body
        recordings = json.loads(body)["recordings"]
        assert [r["recording_id"] for r in recordings] == [recording_id]
        files = recordings[0]["files"]
        assert recordings[0]["status"] == "stopped" and recordings[0]["started_by"] == "Ann"
        # both participants' audio and video: Opus in WebM, VP8 in WebM (aiortc's default codecs)
        assert sorted((f["participant"], f["kind"], f["codec"]) for f in files) == [
            ("Ann", "audio", "opus"), ("Ann", "video", "vp8"), ("Ben", "audio", "opus"), ("Ben", "video", "vp8")]
        assert (await http_get(sfu, f"/api/meetings/{meeting_id}/recordings", ben))[0] == 403
        for f in files:
            assert (await http_get(sfu, f["url"], ben))[0] == 403
            status, data = await http_get(sfu, f["url"], ann)
            assert status == 200 and len(data) >= f["bytes"] > 0
            path = tmp_path / f["file"]
            path.write_bytes(data)
            info = probe(str(path))
            assert info["codec"] == f["codec"] and info["frames"] > 10
            assert 2.0 < info["duration"] < 15.0, info
            assert abs(info["start"] - f["start_offset"]) < 0.1, (info, f)
        assert (await http_get(sfu, f"/api/meetings/{meeting_id}/recordings/{recording_id}/../x", ann))[0] == 404
        assert (await http_get(sfu, f"/api/meetings/{meeting_id}/recordings/{recording_id}/nope.webm", ann))[0] == 404
        # every download was audited
        admin = sfu.token(None, "root", "Root", admin=True)
        status, body = await http_get(sfu, "/api/audit?kind=recording", admin)
        entries = json.loads(body)["entries"]
        assert sum(e["action"] == "export" and e["object_id"] == recording_id for e in entries) == len(files)

        # erasing Ben deletes the tracks he published, the others stay
        async with aiohttp.ClientSession() as http:
            async with http.delete(sfu.url + "/api/people/ben@example.com",
                                   headers={"Authorization": f"Bearer {admin}"}) as r:
                assert r.status == 200, await r.text()
        status, body = await http_get(sfu, f"/api/meetings/{meeting_id}/recordings", ann)
        left = json.loads(body)["recordings"][0]["files"]
        assert sorted(f["participant"] for f in left) == ["Ann", "Ann"]
        directory = os.path.join(sfu.data_dir, "recordings", meeting_id, recording_id)
        assert sorted(f for f in os.listdir(directory) if f != "manifest.json") == sorted(f["file"] for f in left)
        assert sfu.health()  # the server is fine
    finally:
        for client in (host, guest):
            if client is not None:
                await client.close()
        sfu.stop()
    assert not recorder_processes(), "a recorder process was left behind"


def recorder_processes() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "sfu.recorder"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line and str(os.getpid()) not in line]


async def test_full_disk_stops_the_recording_and_the_meeting_goes_on(tmp_path, netns):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.fail("mounting the small tmpfs of the full-disk test failed: it needs root (make test runs the suite as root)")
    sfu = SfuProcess(tmp_path, "--recordings-dir", str(disk)).start()
    host = guest = None
    try:
        host, guest = await meeting(sfu, "full")
        await host.request("recording_start")
        # 256 KiB hold a few seconds of two participants
        assert await wait_until(lambda: any(not n[1]["recording"] for n in guest.notices), 60), sfu.log()[-3000:]
        for client in (host, guest):
            stopped = [n[1] for n in client.notices if not n[1]["recording"]]
            assert stopped and stopped[0]["reason"] == "disk_full"
        # the meeting goes on: media still flows both ways, the protocol answers
        before = guest.received_kinds(host.participant_id)["video"]
        assert await wait_until(lambda: guest.received_kinds(host.participant_id)["video"] > before + 15, 20)
        assert (await host.request("ping"))["pong"]
        ann = sfu.token("full", "ann@example.com", "Ann", host=True)
        meeting_id = host.joined["meeting"]["id"]
        status, body = await http_get(sfu, f"/api/meetings/{meeting_id}/recordings", ann)
        assert status == 200 and json.loads(body)["recordings"][0]["status"] == "disk_full"
        # and it can be started again (it fails again at once, the disk is still full)
        await host.request("recording_start")
    finally:
        for client in (host, guest):
            if client is not None:
                await client.close()
        sfu.stop()
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
    assert not recorder_processes(), "a recorder process was left behind"


def recorder_of(sfu: SfuProcess) -> int:
    out = subprocess.run(["pgrep", "-P", str(sfu.proc.pid), "-f", "sfu.recorder"], capture_output=True, text=True)
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 1, out
    return pids[0]


async def test_a_stalled_recorder_does_not_slow_the_meeting(tmp_path, netns):
    """The recorder stopped dead (SIGSTOP: a hung disk, a descheduled process): the plane
    keeps sending to its socket without waiting, everyone keeps receiving at the same rate;
    resumed, it finishes its files."""
    sfu = SfuProcess(tmp_path).start()
    host = guest = None
    try:
        host, guest = await meeting(sfu, "stall")
        notice_wait = (await host.request("recording_start"))["recording_id"]
        assert await wait_until(lambda: log_events(sfu, "recording first packet"), 20), sfu.log()[-3000:]
        pid = recorder_of(sfu)

        async def rate(seconds: float = 3.0) -> float:
            before = guest.received_kinds(host.participant_id)["video"]
            await asyncio.sleep(seconds)
            return (guest.received_kinds(host.participant_id)["video"] - before) / seconds

        normal = await rate()
        os.kill(pid, signal.SIGSTOP)
        try:
            stalled = await rate()
            assert (await host.request("ping"))["pong"]
        finally:
            os.kill(pid, signal.SIGCONT)
        print(f"frames/s decoded by the guest: {normal:.1f} recording, {stalled:.1f} with the recorder stopped")
        assert normal > 5 and stalled >= 0.7 * normal, (normal, stalled)
        await host.request("recording_stop")
        assert await wait_until(lambda: any(not n[1]["recording"] for n in guest.notices), 15)
        ann = sfu.token("stall", "ann@example.com", "Ann", host=True)
        status, body = await http_get(sfu, f"/api/meetings/{host.joined['meeting']['id']}/recordings", ann)
        [rec] = json.loads(body)["recordings"]
        assert rec["recording_id"] == notice_wait and rec["status"] == "stopped" and len(rec["files"]) == 4
    finally:
        for client in (host, guest):
            if client is not None:
                await client.close()
        sfu.stop()
    assert not recorder_processes(), "a recorder process was left behind"


async def test_server_stop_closes_the_recording(tmp_path, netns):
    """SIGTERM while recording: the files are closed and playable, the history says why."""
    import sqlite3

    sfu = SfuProcess(tmp_path).start()
    host = guest = None
    try:
        host, guest = await meeting(sfu, "bye")
        recording_id = (await host.request("recording_start"))["recording_id"]
        assert await wait_until(lambda: log_events(sfu, "recording first packet"), 20), sfu.log()[-3000:]
        await asyncio.sleep(2)
    finally:
        assert sfu.stop() == 0
        for client in (host, guest):
            if client is not None:
                await client.close()
    assert not recorder_processes(), "a recorder process was left behind"
    with sqlite3.connect(os.path.join(sfu.data_dir, "history.sqlite3")) as db:
        [(status, path)] = db.execute("SELECT status, path FROM recordings WHERE recording_id = ?",
                                      (recording_id,)).fetchall()
        files = [row[0] for row in db.execute("SELECT file FROM recording_tracks WHERE recording_id = ?",
                                              (recording_id,))]
    assert status == "server_stopped" and len(files) == 4
    for name in files:
        info = probe(os.path.join(path, name))
        assert info["frames"] > 5, (name, info)


class H264Client(Client):
    """Publishes its camera in H.264 only (aiortc's packetizer: STAP-A and FU-A)."""

    async def publish(self) -> None:
        from aiortc import RTCRtpSender

        from .ws_client import AudioStreamTrack, PacedPatternTrack

        self.pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
        video = self.pc.addTransceiver(PacedPatternTrack(self.width, self.height, self.fps), direction="sendonly")
        video.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("video").codecs
                                   if c.mimeType == "video/H264"])
        await self.negotiate()


async def test_h264_is_recorded_to_mp4(tmp_path, netns):
    sfu = SfuProcess(tmp_path).start()
    host = None
    try:
        host = H264Client(sfu.url, sfu.token("h264", "ann@example.com", "Ann", host=True), fps=15)
        await host.join()
        await host.publish()
        notice = (await host.request("recording_start"))["notice"]
        assert notice
        assert await wait_until(lambda: len(log_events(sfu, "recording first packet")) >= 1, 20), sfu.log()[-3000:]
        await asyncio.sleep(4)
        await host.request("recording_stop")
        assert await wait_until(lambda: any(not n[1]["recording"] for n in host.notices), 10)
        ann = sfu.token("h264", "ann@example.com", "Ann", host=True)
        status, body = await http_get(sfu, f"/api/meetings/{host.joined['meeting']['id']}/recordings", ann)
        [rec] = json.loads(body)["recordings"]
        [video] = [f for f in rec["files"] if f["kind"] == "video"]
        assert video["codec"] == "h264" and video["file"].endswith(".mp4"), rec
        status, data = await http_get(sfu, video["url"], ann)
        assert status == 200
        (tmp_path / video["file"]).write_bytes(data)
        info = probe(str(tmp_path / video["file"]))
        assert info["codec"] == "h264" and info["frames"] > 20 and 2.0 < info["duration"] < 15.0, info
    finally:
        if host is not None:
            await host.close()
        sfu.stop()
