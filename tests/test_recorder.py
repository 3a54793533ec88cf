"""The recorder (sfu/recorder.py, sfu/depacketize.py) on synthetic streams: frames encoded
with PyAV, packetized into RTP as the forwarding plane sends it, SRTP-protected and sent
over loopback to a real recorder process; the files are read back with PyAV."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import subprocess
from fractions import Fraction

import pytest

import av  # noqa: E402 (a test dependency: pyproject.toml, extra "test")

from sfu.depacketize import (Av1Depacketizer, FrameAssembler, H264Depacketizer, Vp8Depacketizer, Vp9Depacketizer,
                             _vp9_header, depacketizer, h264_sps_size)
from sfu.recorder import RecorderProcess
from sfu.rtp import parse_rtp_header
from sfu.srtp import SrtpPair

from . import rtp_media as media


def assemble(codec: str, packets: list[bytes], window: int = 64):
    assembler = FrameAssembler(depacketizer(codec), window=window)
    frames = []
    for packet in packets:
        frames += assembler.push(packet)
    frames += assembler.flush()
    return frames, assembler.counters


@pytest.fixture(scope="module")
def coded():
    return {codec: media.encode_video(codec) for codec in ("vp8", "vp9", "h264")} | {
        "opus": media.encode_opus(), "av1": media.encode_av1(seconds=3)}


# -- depacketizers ---------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["vp8", "vp9"])
def test_vpx_frames_come_back_byte_for_byte(coded, codec):
    frames = coded[codec]
    out, counters = assemble(codec, media.video_rtp(codec, frames, 7))
    assert [f.data for f in out] == [data for _i, data, _k in frames]
    assert [f.keyframe for f in out] == [key for _i, _d, key in frames]
    assert out[0].size == (320, 240)
    assert counters["lost"] == counters["frames_dropped"] == 0
    # timestamps are extended across the 2^32 wrap of video_rtp's numbering
    assert [f.timestamp - out[0].timestamp for f in out] == [i * 3000 for i, _d, _k in frames]


def test_av1_temporal_units_come_back_without_temporal_delimiters(coded):
    frames = coded["av1"]
    packets = media.video_rtp("av1", frames, 7)
    assert any(p[12 + 8] & 0x40 for p in packets if p[0] & 0x10)  # some OBU spans packets (Y)
    out, counters = assemble("av1", packets)
    assert counters["frames_dropped"] == 0
    assert [f.data for f in out] == [d[2:] if d[:2] == b"\x12\x00" else d for _i, d, _k in frames]
    assert [f.keyframe for f in out] == [k for _i, _d, k in frames]
    assert out[0].size == (320, 240)
    decoder = av.CodecContext.create("libdav1d", "r")
    decoded = sum(len(decoder.decode(av.Packet(f.data))) for f in out) + len(decoder.decode(None))
    assert decoded == len(frames)


def test_h264_access_units_have_the_same_nal_units(coded):
    frames = coded["h264"]
    packets = media.video_rtp("h264", frames, 7)
    # the keyframes used a STAP-A (SPS, PPS) and FU-A fragments
    payload_types = {p[parse_rtp_header(p)[5]] & 0x1F for p in packets}
    assert {24, 28} <= payload_types
    out, _ = assemble("h264", packets)
    assert [media.annexb_nals(f.data) for f in out] == [media.annexb_nals(d) for _i, d, _k in frames]
    assert [f.keyframe for f in out] == [k for _i, _d, k in frames]
    assert out[0].size == (320, 240)


@pytest.mark.parametrize("profile,size", [("baseline", (318, 238)), ("high", (1280, 720)), ("main", (640, 360))])
def test_h264_sps_size(profile, size):
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height = size
    ctx.pix_fmt = "yuv420p"
    ctx.time_base = Fraction(1, 30)
    ctx.options = {"preset": "ultrafast", "profile": profile}
    frame = av.VideoFrame(size[0], size[1], "yuv420p")
    frame.pts = 0
    data = b"".join(bytes(p) for p in list(ctx.encode(frame)) + list(ctx.encode(None)))
    sps = [n for n in media.annexb_nals(data) if n[0] & 0x1F == 7][0]
    assert h264_sps_size(sps) == size


def test_vp9_size_without_the_scalability_structure(coded):
    key = coded["vp9"][0][1]
    assert _vp9_header(key) == (True, (320, 240))
    assert _vp9_header(coded["vp9"][1][1]) == (False, None)
    assert _vp9_header(b"\x00" * 8) is None


def test_reordered_packets_make_the_same_frames(coded):
    packets = media.video_rtp("vp8", coded["vp8"], 7)
    shuffled = packets[:1]  # the first packet is the first (the plane's keyframe gate opens on it)
    rng = random.Random(5)
    for i in range(1, len(packets), 8):  # the others shuffled within blocks of 8 (inside the window)
        block = packets[i:i + 8]
        rng.shuffle(block)
        shuffled += block
    out, counters = assemble("vp8", shuffled + shuffled[:5])  # and 5 duplicates
    assert [f.data for f in out] == [d for _i, d, _k in coded["vp8"]]
    assert counters["late"] == 5 and counters["lost"] == 0


def test_a_lost_packet_loses_only_its_frame(coded):
    frames = coded["h264"]
    packets = media.video_rtp("h264", frames, 7)
    # lose the middle packet of the first multi-packet frame after the first
    per_frame = []
    for p in packets:
        ts = int.from_bytes(p[4:8], "big")
        if not per_frame or per_frame[-1][0] != ts:
            per_frame.append((ts, []))
        per_frame[-1][1].append(p)
    index = next(i for i, (_ts, ps) in enumerate(per_frame) if i > 0 and len(ps) >= 3)
    lost = per_frame[index][1][1]
    out, counters = assemble("h264", [p for p in packets if p is not lost], window=4)
    assert counters["lost"] == 1 and counters["frames_dropped"] == 1
    assert len(out) == len(frames) - 1
    assert frames[index][1] not in {f.data for f in out}
    # and the frame after a lost first packet is dropped too (its start is gone)
    first = per_frame[index + 1][1][0] if len(per_frame[index + 1][1]) > 1 else None
    if first is not None:
        out, counters = assemble("h264", [p for p in packets if p is not first], window=4)
        assert counters["frames_dropped"] == 1


@pytest.mark.parametrize("codec", ["opus", "vp8", "vp9", "h264", "av1"])
def test_garbage_payloads_never_raise(codec):
    rng = random.Random(codec)
    assembler = FrameAssembler(depacketizer(codec), window=8)
    for i in range(3000):
        payload = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
        packet = media.rtp(100, i, (i // 3) * 3000, 1, payload, marker=rng.random() < 0.3)
        if rng.random() < 0.05:
            packet = packet[:rng.randrange(len(packet))]
        assembler.push(packet)
    assembler.flush()
    for parse in (Vp8Depacketizer().frame, Vp9Depacketizer().frame, H264Depacketizer().frame,
                  Av1Depacketizer().frame):
        for _ in range(500):
            parse([bytes(rng.randrange(256) for _ in range(rng.randrange(0, 30)))])


# -- the recorder process --------------------------------------------------------------


class Sender:
    """What the forwarding plane does for the recorder's peer: SRTP with the recorder's keys,
    sendto on a non-blocking socket that never waits."""

    def __init__(self, recorder: RecorderProcess) -> None:
        _profile, local_key, remote_key = recorder.keys()
        self.srtp = SrtpPair(recorder.profile, local_key, remote_key)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.addr = recorder.address
        self.sent = 0
        self.would_block = 0

    async def send(self, packets: list[bytes]) -> None:
        for i, packet in enumerate(packets):
            try:
                self.sock.sendto(self.srtp.protect(packet), self.addr)
                self.sent += 1
            except BlockingIOError:
                self.would_block += 1
            if i % 16 == 15:
                await asyncio.sleep(0.002)

    def close(self) -> None:
        self.sock.close()


# decoders PyAV may pick -> the codec's name
CODEC_NAMES = {"libdav1d": "av1", "libopus": "opus", "libvpx": "vp8", "libvpx-vp9": "vp9"}


def probe(path: str) -> dict:
    with av.open(path) as container:
        stream = container.streams[0]
        frames = list(container.decode(stream))
        times = [float(f.pts * f.time_base) for f in frames]
        info = {"codec": CODEC_NAMES.get(stream.codec_context.name, stream.codec_context.name), "frames": len(frames),
                "start": times[0] if times else None,
                "duration": times[-1] - times[0] if times else 0.0}
        if stream.type == "video":
            info["size"] = (frames[0].width, frames[0].height) if frames else None
        else:
            info["samples"] = sum(f.samples for f in frames)
        return info


async def test_recording_plays_back_aligned(tmp_path, coded):
    events = []
    recorder = RecorderProcess(str(tmp_path / "rec"), events.append)
    await recorder.start()
    sender = Sender(recorder)
    try:
        recorder.add_track(11, "opus", 48000, "alice audio")
        recorder.add_track(12, "vp8", 90000, "alice camera")
        recorder.add_track(13, "h264", 90000, "bob camera")
        recorder.add_track(14, "vp9", 90000, "carol camera")
        recorder.add_track(16, "av1", 90000, "dave camera")
        recorder.add_track(15, "rtx", 90000, "not recorded")
        await asyncio.sleep(0.1)
        audio = media.opus_rtp(coded["opus"], 11)
        await sender.send(audio[:25])  # half a second of audio before any video
        await asyncio.sleep(0.3)
        videos = [media.video_rtp(c, coded[c], ssrc)
                  for c, ssrc in (("vp8", 12), ("h264", 13), ("vp9", 14), ("av1", 16))]
        interleaved = [p for group in zip(*[v + [None] * (300 - len(v)) for v in videos]) for p in group if p]
        await sender.send(interleaved)
        await sender.send(audio[25:])
        await asyncio.sleep(0.2)
        result = await recorder.stop()
    finally:
        sender.close()
        await recorder.close()
    assert result["reason"] == "stopped"
    assert sender.would_block == 0
    assert {"event": "track_error", "ssrc": 15, "reason": "codec rtx is not recorded"} in events
    firsts = {e["ssrc"]: e for e in events if e["event"] == "first_packet"}
    assert set(firsts) == {11, 12, 13, 14, 16}
    tracks = {t["ssrc"]: t for t in result["tracks"]}
    manifest = json.loads((tmp_path / "rec" / "manifest.json").read_text())
    assert [t["file"] for t in manifest["tracks"]] == [t["file"] for t in result["tracks"]]
    expected = {11: ("opus", ".webm"), 12: ("vp8", ".webm"), 13: ("h264", ".mp4"), 14: ("vp9", ".webm"),
                16: ("av1", ".webm")}
    for ssrc, (codec, ext) in expected.items():
        track = tracks[ssrc]
        assert track["file"].endswith(ext)
        info = probe(str(tmp_path / "rec" / track["file"]))
        assert info["codec"] == codec
        if codec == "opus":
            assert info["frames"] == len(coded["opus"])
            assert abs(info["duration"] - 3.0) < 0.05
        else:
            assert info["frames"] == 90 and info["size"] == (320, 240)
            assert abs(info["duration"] - 89 / 30) < 0.01
        # the file starts where the track's first packet arrived on the recording's timeline
        assert abs(info["start"] - track["start_offset"]) < 0.02, (codec, info, track)
    # the video started at least 0.3 s after the audio, on the one timeline of all files
    for ssrc in (12, 13, 14, 16):
        assert tracks[ssrc]["start_offset"] >= tracks[11]["start_offset"] + 0.3
    assert result["counters"]["srtp_errors"] == 0 and result["counters"]["queue_drops"] == 0
    assert recorder._proc.returncode == 0


async def test_bad_packets_are_counted(tmp_path, coded):
    recorder = RecorderProcess(str(tmp_path / "rec"))
    await recorder.start()
    sender = Sender(recorder)
    try:
        recorder.add_track(12, "vp8", 90000)
        await asyncio.sleep(0.1)
        sender.sock.sendto(b"\x80" * 40, recorder.address)  # not SRTP of our key
        sender.sock.sendto(os.urandom(200), recorder.address)
        await sender.send([media.rtp(96, 1, 1, 99, b"x" * 50)])  # an SSRC not recorded
        await sender.send(media.video_rtp("vp8", coded["vp8"][:10], 12))
        await asyncio.sleep(0.2)
        result = await recorder.stop()
    finally:
        sender.close()
        await recorder.close()
    assert result["reason"] == "stopped"
    assert result["counters"]["srtp_errors"] == 2 and result["counters"]["unknown_ssrc"] == 1
    assert result["tracks"][0]["frames"] == 10


def _mount_tmpfs(path: str, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    os.makedirs(path, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                          capture_output=True).returncode == 0


async def test_full_disk_stops_the_recording_not_the_sender(tmp_path):
    disk = str(tmp_path / "disk")
    if not _mount_tmpfs(disk, "256k"):
        pytest.fail("mounting the small tmpfs of the full-disk test failed: it needs root (make test runs the suite as root)")
    try:
        events = []
        recorder = RecorderProcess(os.path.join(disk, "rec"), events.append)
        await recorder.start()
        sender = Sender(recorder)
        try:
            recorder.add_track(12, "vp8", 90000)
            await asyncio.sleep(0.1)
            frames = media.encode_video("vp8", seconds=4, noise=True, bitrate=1_000_000)
            packets = media.video_rtp("vp8", frames, 12)
            assert sum(map(len, packets)) > 2 * 256 * 1024
            await sender.send(packets)
            await asyncio.wait_for(recorder.done.wait(), 20)  # it stops by itself
            # the sender keeps sending to where the recorder was, never blocked
            more = media.video_rtp("vp8", frames, 12, seq0=65000 + len(packets))[:200]
            await sender.send(more)
        finally:
            sender.close()
            await recorder.close()
        result = recorder.result
        assert result["reason"] == "disk_full"
        assert any(e["event"] == "failing" and e["reason"] == "disk_full" for e in events)
        assert sender.sent == len(packets) + 200 and sender.would_block == 0
        assert await asyncio.wait_for(recorder._proc.wait(), 5) == 0
        # what was written before the disk filled plays
        track = result["tracks"][0]
        info = probe(os.path.join(disk, "rec", track["file"]))
        assert info["codec"] == "vp8" and info["frames"] >= 1
        assert not os.path.exists(os.path.join(disk, "rec", "manifest.json.tmp"))
    finally:
        subprocess.run(["umount", "-l", disk], capture_output=True)
