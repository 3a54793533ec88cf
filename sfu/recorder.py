"""The recorder: a consumer of the forwarding plane that writes tracks to files.

A recording is one child process (``python -m sfu.recorder``), so that depacketizing and
writing never take the media loop's time or its GIL. The control plane makes it a
forwarding-plane peer with no WebRTC at all: the peer's address is a loopback UDP socket
the control plane binds and hands to the child (``pass_fds``), its SRTP keys are drawn
here (``RecorderProcess.keys``), and each recorded track is a subscription of that peer
like any other. The plane sends the same SRTP it sends to a browser; the child reads the
socket, unprotects (``sfu.srtp.SrtpPair``), puts packets back in order and into frames
(``sfu.depacketize``) and muxes them, never decoded, with PyAV:

    Opus -> WebM (Matroska), VP8 / VP9 / AV1 -> WebM, H.264 -> fragmented MP4

one file per track, ``<dir>/<nn>-<kind>-<codec>.<ext>``, plus ``manifest.json`` (the
tracks, their labels, their start offsets and counters).

Timing: every file's timestamps are on one timeline that starts when the recording starts
(``t0``): a track's first packet, arriving ``a`` seconds after ``t0``, has the
presentation time ``a`` and later frames follow its RTP timestamps, so the files play
together (open them side by side, or ``ffmpeg -i a.webm -i b.webm -map 0 -map 1 -c copy``).
Sync is as good as the arrival of each track's first packet (tens of milliseconds on a
good link); the manifest carries each track's offset for players that ignore start times.

Bounds, so that recording can never slow forwarding: the plane sends datagrams with
``sendto`` on its non-blocking socket and never waits for the recorder; the kernel's
receive buffer of the recorder socket (``SOCKET_BUFFER``) and the child's queue
(``QUEUE_BYTES``) are all that is held; what overflows is dropped and counted. A write
that fails (``ENOSPC``: the disk is full; or any other OSError) stops the recording: the
files are closed as far as they can be, and the parent hears ``stopped`` with the reason.

Child protocol (JSON lines): the parent writes ``{"op": "start", ...}`` (directory,
profile, key, t0), then ``{"op": "track", "ssrc", "codec", "clock_rate", "label"}``,
``{"op": "untrack", "ssrc"}`` and ``{"op": "stop"}``; the child writes
``{"event": "ready"}``, ``{"event": "first_packet", "ssrc", "wall"}``,
``{"event": "track_error", "ssrc", "reason"}`` and finally ``{"event": "stopped",
"reason", "tracks", "counters"}`` (reason "stopped", "disk_full" or "write_error").
"""

from __future__ import annotations

import asyncio
import collections
import errno
import json
import os
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from fractions import Fraction

from .depacketize import FrameAssembler, depacketizer
from .srtp import KEY_LENGTHS, PROFILES

SOCKET_BUFFER = 4 << 20  # bytes: the kernel's receive buffer of the recorder socket
QUEUE_BYTES = 8 << 20  # bytes held between the child's socket thread and its writer
QUEUE_PACKETS = 8192
MAX_PACKET = 1500 + 64
PROFILE = "SRTP_AEAD_AES_128_GCM"
STOP_TIMEOUT = 10.0  # seconds the child has to close its files before it is killed

# codec -> (container format, file extension, PyAV stream kind)
CONTAINERS: dict[str, tuple[str, str]] = {
    "opus": ("webm", "webm"),
    "vp8": ("webm", "webm"),
    "vp9": ("webm", "webm"),
    "h264": ("mp4", "mp4"),
    "av1": ("webm", "webm"),
}
# fragmented MP4, a fragment at least every second: what was written before a failure (a
# full disk) stays playable and the muxer holds at most a second of video; delay_moov so
# that the first fragment's start (the track's offset on the recording's timeline) is kept
MP4_OPTIONS = {"movflags": "frag_keyframe+delay_moov+default_base_moof", "frag_duration": "1000000",
               "flush_packets": "1"}
# Matroska holds a cluster in memory until it closes: a cluster a second, at most 256 KiB,
# bounds that memory and what a failure loses
WEBM_OPTIONS = {"cluster_time_limit": "1000", "cluster_size_limit": str(256 << 10), "flush_packets": "1"}
# flush_packets: each finished cluster or fragment is written at once, so that a write error
# (ENOSPC) is raised by the mux call that caused it, not only when the file is closed


def supported(codec: str) -> bool:
    return codec.lower() in CONTAINERS


# -- one track --------------------------------------------------------------------------


@dataclass
class TrackInfo:
    ssrc: int
    codec: str
    kind: str
    clock_rate: int
    label: str
    file: str
    start_offset: float | None = None  # seconds after t0 of the first packet
    first_packet_wall: float | None = None
    frames: int = 0
    bytes: int = 0
    duration: float = 0.0  # seconds from the first to the last frame written
    counters: dict = field(default_factory=dict)


class TrackWriter:
    """One track's frames into one file. The file is opened at the first frame that can
    start it (a keyframe for video, with its size known); nothing is written before."""

    def __init__(self, path: str, info: TrackInfo, t0: float) -> None:
        self.path = path
        self.info = info
        self.t0 = t0
        self.codec = depacketizer(info.codec)
        self.assembler = FrameAssembler(self.codec)
        self.container = None
        self.stream = None
        self._anchor: tuple[int, int] | None = None  # (first frame's ext ts, its pts)
        self._first_arrival: float | None = None
        self._first_pts: int | None = None
        self._last_pts: int | None = None
        self.skipped = 0  # frames before the first keyframe, or out of order

    def push(self, packet: bytes, arrival: float) -> None:
        """One plaintext RTP packet that arrived at ``arrival`` (monotonic). OSError from the
        file is the caller's."""
        if self._first_arrival is None:
            self._first_arrival = arrival
            self.info.start_offset = round(arrival - self.t0, 6)
        for frame in self.assembler.push(packet):
            self._write(frame)

    def _write(self, frame) -> None:
        clock = self.info.clock_rate
        if self._anchor is None:
            # every frame's pts follows from the first packet's arrival: the first frame's
            # ts is the first packet's for audio, and of its own keyframe for video
            self._anchor = (frame.timestamp, round((self._first_arrival - self.t0) * clock))
        ts0, pts0 = self._anchor
        pts = pts0 + frame.timestamp - ts0
        if self.container is None:
            if self.codec.kind == "video" and (not frame.keyframe or frame.size is None):
                self.skipped += 1
                return
            self._open(frame)
        if self._last_pts is not None and pts <= self._last_pts:
            self.skipped += 1
            return
        import av

        packet = av.Packet(frame.data)
        packet.stream = self.stream
        packet.time_base = Fraction(1, clock)
        packet.pts = packet.dts = max(pts, 0)
        packet.is_keyframe = frame.keyframe
        self.container.mux(packet)
        if self._first_pts is None:
            self._first_pts = pts
        self._last_pts = pts
        self.info.frames += 1
        self.info.bytes += len(frame.data)
        self.info.duration = round((pts - self._first_pts) / clock, 6)

    def _open(self, frame) -> None:
        import av

        fmt, _ext = CONTAINERS[self.info.codec]
        options = MP4_OPTIONS if fmt == "mp4" else WEBM_OPTIONS
        container = av.open(self.path, "w", format=fmt, options=options)
        try:
            if self.info.codec == "opus":
                # an encoder context only for its parameters (OpusHead extradata): never fed
                stream = container.add_stream("libopus", rate=48000, layout="stereo")
            else:
                width, height = frame.size
                stream = container.add_mux_stream(self.info.codec, width=width, height=height)
            stream.time_base = Fraction(1, self.info.clock_rate)
        except Exception:
            container.close()
            raise
        self.container, self.stream = container, stream

    def close(self) -> None:
        """Write what is complete and close the file (an OSError is the caller's, after the
        file is released)."""
        try:
            if self.container is not None:
                for frame in self.assembler.flush():
                    self._write(frame)
        finally:
            self.info.counters = dict(self.assembler.counters, skipped=self.skipped)
            container, self.container = self.container, None
            if container is not None:
                container.close()


# -- one recording (in the child) -----------------------------------------------------


class Recording:
    """The tracks of one recording: plaintext packets are routed to their writer by SSRC.
    ``emit(dict)`` reports events. Not thread-safe: one thread calls everything."""

    def __init__(self, directory: str, t0: float, emit) -> None:
        self.directory = directory
        self.t0 = t0
        self.emit = emit
        self.writers: dict[int, TrackWriter] = {}
        self.closed: list[TrackInfo] = []
        self.counters = {"packets": 0, "unknown_ssrc": 0, "srtp_errors": 0, "queue_drops": 0}
        self._index = 0

    def add_track(self, ssrc: int, codec: str, clock_rate: int, label: str = "") -> None:
        codec = codec.lower()
        if ssrc in self.writers:
            return
        if not supported(codec):
            self.emit({"event": "track_error", "ssrc": ssrc, "reason": f"codec {codec} is not recorded"})
            return
        self._index += 1
        kind = depacketizer(codec).kind
        name = f"{self._index:02d}-{kind}-{codec}.{CONTAINERS[codec][1]}"
        info = TrackInfo(ssrc, codec, kind, clock_rate, label, name)
        self.writers[ssrc] = TrackWriter(os.path.join(self.directory, name), info, self.t0)

    def remove_track(self, ssrc: int) -> None:
        writer = self.writers.pop(ssrc, None)
        if writer is not None:
            self._close(writer)

    def packet(self, plain: bytes, arrival: float) -> None:
        if len(plain) < 12:
            return
        ssrc = int.from_bytes(plain[8:12], "big")
        writer = self.writers.get(ssrc)
        if writer is None:
            self.counters["unknown_ssrc"] += 1
            return
        self.counters["packets"] += 1
        first = writer._first_arrival is None
        writer.push(plain, arrival)
        if first:
            wall = time.time()
            writer.info.first_packet_wall = wall
            self.emit({"event": "first_packet", "ssrc": ssrc, "wall": wall,
                       "offset": writer.info.start_offset})

    def close_all(self) -> OSError | None:
        """Close every file; the first OSError, if any (the others are closed regardless)."""
        error = None
        for ssrc in list(self.writers):
            try:
                self._close(self.writers.pop(ssrc))
            except OSError as exc:
                error = error or exc
        return error

    def _close(self, writer: TrackWriter) -> None:
        try:
            writer.close()
        finally:
            self.closed.append(writer.info)

    def summary(self) -> list[dict]:
        return [asdict(info) for info in self.closed]

    def write_manifest(self, reason: str) -> None:
        manifest = {"t0_wall": self.t0_wall, "reason": reason, "tracks": self.summary(),
                    "counters": self.counters}
        path = os.path.join(self.directory, "manifest.json")
        try:
            with open(path + ".tmp", "w") as f:
                json.dump(manifest, f, indent=1)
            os.replace(path + ".tmp", path)
        except OSError:
            try:
                os.unlink(path + ".tmp")
            except OSError:
                pass
            raise

    t0_wall: float = 0.0


def stop_reason(exc: OSError) -> str:
    return "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "write_error"


# -- the child process ------------------------------------------------------------------


class _Queue:
    """Datagrams between the socket thread and the writer, bounded in packets and bytes;
    what does not fit is dropped (counted), the socket thread never waits."""

    def __init__(self) -> None:
        self.items: collections.deque = collections.deque()
        self.bytes = 0
        self.drops = 0
        self.cond = threading.Condition()

    def put(self, item, size: int, force: bool = False) -> None:
        with self.cond:
            if not force and (len(self.items) >= QUEUE_PACKETS or self.bytes + size > QUEUE_BYTES):
                self.drops += 1
                return
            self.items.append((item, size))
            self.bytes += size
            self.cond.notify()

    def get(self):
        with self.cond:
            while not self.items:
                self.cond.wait()
            item, size = self.items.popleft()
            self.bytes -= size
            return item


def child_main(fd: int) -> int:
    """``python -m sfu.recorder FD``: record from the UDP socket FD (see the module doc)."""
    import av
    import pylibsrtp

    from .srtp import SrtpPair

    av.logging.set_level(av.logging.FATAL)  # a full disk is reported as an event, not a log
    out = sys.stdout
    lock = threading.Lock()

    def emit(event: dict) -> None:
        with lock:
            out.write(json.dumps(event) + "\n")
            out.flush()

    start = json.loads(sys.stdin.readline() or "{}")
    if start.get("op") != "start":
        return 2
    directory = start["dir"]
    os.makedirs(directory, exist_ok=True)
    key = bytes.fromhex(start["key"])
    srtp = SrtpPair(start["profile"], key, key)
    now_mono, now_wall = time.monotonic(), time.time()
    t0 = now_mono - (now_wall - start.get("t0_wall", now_wall))  # t0 on this clock
    recording = Recording(directory, t0, emit)
    recording.t0_wall = start.get("t0_wall", now_wall)

    sock = socket.socket(fileno=fd)
    sock.settimeout(0.2)
    queue = _Queue()
    stopping = threading.Event()

    def read_socket() -> None:
        while not stopping.is_set():
            try:
                data = sock.recv(MAX_PACKET)
            except TimeoutError:
                continue
            except OSError:
                break
            queue.put(("rtp", data, time.monotonic()), len(data))

    def read_commands() -> None:
        for line in sys.stdin:
            try:
                command = json.loads(line)
            except ValueError:
                continue
            queue.put(("cmd", command, 0.0), 0, force=True)
        queue.put(("cmd", {"op": "stop"}, 0.0), 0, force=True)  # the parent went away

    threads = [threading.Thread(target=read_socket, daemon=True),
               threading.Thread(target=read_commands, daemon=True)]
    for thread in threads:
        thread.start()
    emit({"event": "ready"})

    reason = "stopped"
    while True:
        kind, value, arrival = queue.get()
        try:
            if kind == "rtp":
                try:
                    plain = srtp.unprotect(value)
                except (pylibsrtp.Error, ValueError):
                    recording.counters["srtp_errors"] += 1
                    continue
                recording.packet(plain, arrival)
            elif value.get("op") == "track":
                recording.add_track(int(value["ssrc"]), str(value["codec"]), int(value["clock_rate"]),
                                    str(value.get("label", "")))
            elif value.get("op") == "untrack":
                recording.remove_track(int(value["ssrc"]))
            elif value.get("op") == "stop":
                break
        except OSError as exc:
            reason = stop_reason(exc)
            emit({"event": "failing", "reason": reason, "detail": os.strerror(exc.errno or 0)})
            break
    stopping.set()
    error = recording.close_all()
    if error is not None and reason == "stopped":
        reason = stop_reason(error)
    recording.counters["queue_drops"] = queue.drops
    try:
        recording.write_manifest(reason)
    except OSError:
        pass  # the disk is full: the parent has the summary
    emit({"event": "stopped", "reason": reason, "tracks": recording.summary(),
          "counters": recording.counters})
    sock.close()
    return 0


# -- the parent's handle ----------------------------------------------------------------


class RecorderProcess:
    """The control plane's side of one recording (asyncio). ``start()`` binds the loopback
    socket the plane sends to and spawns the child; ``address`` and ``keys()`` are what the
    plane needs for the recorder's peer; ``on_event(dict)`` hears the child's events (on the
    loop); ``stop()`` waits for the child to close its files (killed after ``STOP_TIMEOUT``)."""

    def __init__(self, directory: str, on_event=None, *, host: str = "127.0.0.1",
                 profile: str = PROFILE) -> None:
        self.directory = directory
        self.on_event = on_event or (lambda event: None)
        self.host = host
        self.profile = profile
        self.key = os.urandom(KEY_LENGTHS[profile])
        self.address: tuple | None = None
        self.t0_wall: float | None = None
        self.result: dict | None = None  # the "stopped" event
        self.done = asyncio.Event()
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None

    def keys(self) -> tuple[int, bytes, bytes]:
        """(plane profile number, local key, remote key) for ``ForwardingPlane.set_keys``."""
        return PROFILES[self.profile], self.key, self.key

    async def start(self) -> tuple:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUFFORCE, SOCKET_BUFFER)
            except (OSError, AttributeError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
            sock.bind((self.host, 0))
            self.address = sock.getsockname()[:2]
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "sfu.recorder", str(sock.fileno()),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                pass_fds=(sock.fileno(),), limit=1 << 20)
        finally:
            sock.close()  # the child has its own copy
        self.t0_wall = time.time()
        self._send({"op": "start", "dir": self.directory, "profile": self.profile,
                    "key": self.key.hex(), "t0_wall": self.t0_wall})
        line = await asyncio.wait_for(self._proc.stdout.readline(), STOP_TIMEOUT)
        if json.loads(line or b"{}").get("event") != "ready":
            await self._kill()
            raise RuntimeError("the recorder did not start")
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self.address

    def add_track(self, ssrc: int, codec: str, clock_rate: int, label: str = "") -> None:
        self._send({"op": "track", "ssrc": ssrc, "codec": codec, "clock_rate": clock_rate, "label": label})

    def remove_track(self, ssrc: int) -> None:
        self._send({"op": "untrack", "ssrc": ssrc})

    def _send(self, command: dict) -> None:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdin.is_closing() or proc.returncode is not None:
            return
        proc.stdin.write((json.dumps(command) + "\n").encode())

    async def _read(self) -> None:
        try:
            async for line in self._proc.stdout:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "stopped":
                    self.result = event
                try:
                    self.on_event(event)
                except Exception:  # a listener's bug must not lose the recording's end
                    pass
        finally:
            await self._proc.wait()
            if self.result is None:
                self.result = {"event": "stopped", "reason": "write_error", "tracks": [], "counters": {}}
                self.on_event(self.result)
            self.done.set()

    async def stop(self) -> dict:
        """Stop recording; the "stopped" event (files, reason, counters)."""
        if self._proc is None:
            return {"event": "stopped", "reason": "stopped", "tracks": [], "counters": {}}
        self._send({"op": "stop"})
        try:
            await asyncio.wait_for(self.done.wait(), STOP_TIMEOUT)
        except asyncio.TimeoutError:
            await self._kill()
            await self.done.wait()
        return self.result

    async def close(self) -> None:
        """Kill the child if it still runs (a caller's cleanup; ``stop`` is the orderly end)."""
        await self._kill()
        if self._reader is not None:
            await self.done.wait()

    async def _kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()


if __name__ == "__main__":
    sys.exit(child_main(int(sys.argv[1])))
