"""Cheap synthetic WebRTC participants for load tests of the SFU.

A participant does the real thing on the wire -- WHIP/WHEP signaling, an ICE
connectivity check (RFC 8445 §7.2.4, as the controlling full agent), a DTLS
1.2 handshake as client (RFC 5763 §5: we offer a=setup:actpass, the SFU
answers passive) and SRTP (RFC 3711 / RFC 7714) -- but no media stack: a
publisher sends pre-built VP8 packets (RFC 7741) whose payload carries a send
time and a counter, a viewer unprotects what it receives and counts. Per
packet it costs a few struct writes, one libsrtp call and one sendto, so
that one process can drive many participants (aiortc costs ~100x more).

Layers, as elsewhere in the project (see /work/shared/STYLE.md):

- ``build_offer`` writes the offer SDP; ``parse_answer`` reads the SFU's.
- ``Handshake`` is sans-I/O: ICE check + consent (RFC 7675), DTLS client;
  datagrams and ``now`` in, datagrams, a timer and a ``Connected`` event out.
- ``VideoSource`` builds the plaintext RTP packets in one bytearray.
- ``ReceiveStats`` counts what a viewer got: loss by the payload counter,
  latency from the payload's send time.
- ``Participant`` is the asyncio glue: one connected UDP socket each. A
  publisher sends from the loop's timer, or, once handed to a
  ``bench.publisher.Publisher`` (``attach_publisher``), from that native
  thread, while RTCP feedback is still received here.

Clocks: send times are ``time.monotonic_ns()``, CLOCK_MONOTONIC, which is the
same for every process of the machine, so publisher and viewers may live in
different processes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import socket
import struct
import time
from array import array
from collections import deque
from dataclasses import dataclass, field
from typing import Union

from aioice import stun

from sfu.dtls import Certificate, DtlsEndpoint, HandshakeComplete, HandshakeFailed
from sfu.sdp import parse_sdp
from sfu.srtp import SrtpPair

__all__ = [
    "Connected",
    "Failed",
    "Handshake",
    "Participant",
    "ReceiveStats",
    "VideoSource",
    "build_offer",
    "parse_answer",
    "parse_feedback",
    "TRAILER",
]

VIDEO_PT = 96
AUDIO_PT = 111
VIDEO_CLOCK = 90000

# The last 16 bytes of every payload the publisher sends: magic, a counter of
# original packets (a retransmission repeats it) and the send time in ns.
TRAILER = struct.Struct("!4sIQ")
MAGIC = b"SFUB"
_TRAILER_LEN = TRAILER.size

# ---------------------------------------------------------------------------
# SDP (RFC 8866; JSEP offer shape RFC 9429 §5.2)
# ---------------------------------------------------------------------------


def build_offer(
    role: str,
    ice_ufrag: str,
    ice_pwd: str,
    fingerprint: str,
    *,
    audio_ssrc: int | None = None,
    video_ssrc: int | None = None,
    cname: str = "bench",
    video_sections: int = 1,
) -> str:
    """The offer of a publisher (role "publish": sendonly, with a=ssrc lines)
    or a viewer ("subscribe": recvonly). BUNDLE (RFC 8843), rtcp-mux
    (RFC 5761), a=setup:actpass (RFC 5763 §5), Opus PT 111 and VP8 PT 96."""
    if role not in ("publish", "subscribe"):
        raise ValueError(f"role must be 'publish' or 'subscribe', not {role!r}")
    direction = "sendonly" if role == "publish" else "recvonly"
    session_id = random.getrandbits(62)
    lines = [
        "v=0",
        f"o=- {session_id} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE " + " ".join(str(i) for i in range(1 + max(1, video_sections))),
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS bench",
    ]
    transport = [
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        f"a=ice-ufrag:{ice_ufrag}",
        f"a=ice-pwd:{ice_pwd}",
        "a=ice-options:trickle",
        f"a=fingerprint:sha-256 {fingerprint}",
        "a=setup:actpass",
    ]
    sections = (
        ("audio", "0", AUDIO_PT, audio_ssrc,
         [f"a=rtpmap:{AUDIO_PT} opus/48000/2", f"a=rtcp-fb:{AUDIO_PT} transport-cc",
          f"a=fmtp:{AUDIO_PT} minptime=10;useinbandfec=1"]),
        ("video", "1", VIDEO_PT, video_ssrc,
         [f"a=rtpmap:{VIDEO_PT} VP8/90000", f"a=rtcp-fb:{VIDEO_PT} nack",
          f"a=rtcp-fb:{VIDEO_PT} nack pli", f"a=rtcp-fb:{VIDEO_PT} ccm fir"]),
    )
    if role == "subscribe" and video_sections > 1:  # one more video section per extra track
        sections += tuple(("video", str(1 + i), VIDEO_PT, None, sections[1][4]) for i in range(1, video_sections))
    for kind, mid, pt, ssrc, codec_lines in sections:
        lines.append(f"m={kind} 9 UDP/TLS/RTP/SAVPF {pt}")
        lines += transport
        lines += [f"a=mid:{mid}", f"a={direction}"]
        if role == "publish":
            lines.append(f"a=msid:bench {kind}-{mid}")
        lines += ["a=rtcp-mux", "a=rtcp-rsize"]
        lines += codec_lines
        if role == "publish" and ssrc is not None:
            lines += [f"a=ssrc:{ssrc} cname:{cname}", f"a=ssrc:{ssrc} msid:bench {kind}-{mid}"]
    return "\r\n".join(lines) + "\r\n"


@dataclass
class Answer:
    ice_ufrag: str
    ice_pwd: str
    fingerprints: list[tuple[str, str]]
    setup: str | None
    address: tuple[str, int]
    ssrcs: dict[str, list[int]]  # kind -> the SFU's SSRCs in that section


def parse_answer(text: str) -> Answer:
    """The SFU's ICE credentials, fingerprint and host candidate (ValueError if absent)."""
    sd = parse_sdp(text)
    media = [m for m in sd.media if not m.rejected]
    if not media:
        raise ValueError("answer rejects every section")
    first = media[0]
    ufrag = first.ice_ufrag or sd.ice_ufrag
    pwd = first.ice_pwd or sd.ice_pwd
    fingerprints = first.fingerprints or sd.fingerprints
    if not ufrag or not pwd or not fingerprints:
        raise ValueError("answer lacks ICE credentials or a fingerprint")
    address = None
    for m in media:
        for cand in m.candidates:
            # RFC 8839 §5.1: foundation component transport priority addr port typ type
            parts = cand.split()
            if len(parts) >= 8 and parts[2].lower() == "udp" and parts[1] == "1":
                address = (parts[4], int(parts[5]))
                break
        if address:
            break
    if address is None:
        raise ValueError("answer has no UDP candidate")
    ssrcs: dict[str, list[int]] = {}
    for m in media:
        ssrcs.setdefault(m.kind, []).extend(m.ssrcs)
    return Answer(ufrag, pwd, fingerprints, first.setup or sd.setup, address, ssrcs)


# ---------------------------------------------------------------------------
# Handshake: ICE check + DTLS client, sans-I/O
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Connected:
    srtp_profile: str
    local_key: bytes
    remote_key: bytes


@dataclass(frozen=True)
class Failed:
    reason: str


HandshakeEvent = Union[Connected, Failed]

# RFC 8445 §5.1.2.1: type preference of a peer-reflexive candidate, used in
# PRIORITY of a check (§7.1.1).
_PRFLX_PRIORITY = (110 << 24) | (65535 << 8) | 255


class Handshake:
    """The controlling side of one ICE-lite pair plus the DTLS client.

    Sends Binding requests (with USE-CANDIDATE: aggressive nomination is what
    a lite peer expects, RFC 8445 §8.1.1) every `check_interval` until one is
    answered, then runs DTLS; once connected, sends a consent check
    (RFC 7675 §5.1) every `consent_interval` seconds.
    """

    def __init__(
        self,
        certificate: Certificate,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str,
        remote_pwd: str,
        remote_fingerprints: list[tuple[str, str]],
        *,
        check_interval: float = 0.05,
        consent_interval: float = 5.0,
        timeout: float = 15.0,
    ) -> None:
        self.local_ufrag = local_ufrag
        self.local_pwd = local_pwd
        self.remote_ufrag = remote_ufrag
        self.remote_key = remote_pwd.encode()
        self.check_interval = check_interval
        self.consent_interval = consent_interval
        self.timeout = timeout
        self.tie_breaker = random.getrandbits(64)
        self.dtls = DtlsEndpoint(certificate, "client", remote_fingerprints)
        self.state = "new"  # new -> checking -> dtls -> connected | failed
        self.checks_sent = 0
        self.consent_failures = 0
        self._pending: set[bytes] = set()  # transaction ids of checks in flight
        self._next_check: float | None = None
        self._give_up_at: float | None = None
        self._out: list[bytes] = []
        self._events: deque[HandshakeEvent] = deque()

    # -- input --------------------------------------------------------------

    def start(self, now: float) -> None:
        if self.state != "new":
            return
        self.state = "checking"
        self._give_up_at = now + self.timeout
        self._send_check(now)

    def receive(self, data: bytes, now: float) -> None:
        """One STUN or DTLS datagram (RFC 7983 demux by the first byte)."""
        if not data:
            return
        first = data[0]
        if first < 4:
            self._receive_stun(data, now)
        elif 20 <= first < 64:
            if self.state in ("dtls", "connected"):
                self.dtls.receive(data, now)
                self._drain_dtls(now)

    def handle_timer(self, now: float) -> None:
        if self.state in ("checking", "dtls") and self._give_up_at is not None and now >= self._give_up_at:
            self._fail(f"timed out in state {self.state}")
            return
        if self._next_check is not None and now >= self._next_check:
            self._send_check(now)
        if self.state == "dtls":
            timer = self.dtls.get_timer()
            if timer is not None and now >= timer:
                self.dtls.handle_timer(now)
                self._drain_dtls(now)

    # -- output -------------------------------------------------------------

    def datagrams_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        candidates = [self._next_check]
        if self.state in ("checking", "dtls"):
            candidates.append(self._give_up_at)
        if self.state == "dtls":
            candidates.append(self.dtls.get_timer())
        candidates = [t for t in candidates if t is not None]
        return min(candidates) if candidates else None

    def next_event(self) -> HandshakeEvent | None:
        return self._events.popleft() if self._events else None

    # -- internals ------------------------------------------------------------

    def _send_check(self, now: float) -> None:
        if self.state == "checking":
            self._next_check = now + self.check_interval
        elif self.state == "connected":
            if self._pending:  # the previous consent check went unanswered
                self.consent_failures += 1
                self._pending.clear()
            # RFC 7675 §5.1: randomized over 0.8..1.2 of the interval
            self._next_check = now + self.consent_interval * random.uniform(0.8, 1.2)
        else:
            self._next_check = None
            return
        # RFC 8445 §7.2.2: USERNAME "remote:local", PRIORITY, ICE-CONTROLLING,
        # USE-CANDIDATE; MESSAGE-INTEGRITY with the remote password, FINGERPRINT.
        request = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.REQUEST,
            attributes={
                "USERNAME": f"{self.remote_ufrag}:{self.local_ufrag}",
                "PRIORITY": _PRFLX_PRIORITY,
                "ICE-CONTROLLING": self.tie_breaker,
                "USE-CANDIDATE": None,
            },
        )
        request.add_message_integrity(self.remote_key)  # and FINGERPRINT
        self._pending.add(request.transaction_id)
        self.checks_sent += 1
        self._out.append(bytes(request))

    def _receive_stun(self, data: bytes, now: float) -> None:
        try:
            message = stun.parse_message(data)
        except ValueError:
            return
        if message.transaction_id not in self._pending:
            return
        if message.message_class == stun.Class.ERROR:
            self._pending.discard(message.transaction_id)
            if self.state == "checking":
                self._fail(f"ICE check rejected: {message.attributes.get('ERROR-CODE')}")
            return
        if message.message_class != stun.Class.RESPONSE:
            return
        # RFC 8489 §9.1.3: the response is signed with the same (remote) password.
        if not message.check_message_integrity(self.remote_key):
            return
        self._pending.discard(message.transaction_id)
        if self.state == "checking":
            self.state = "dtls"
            self._next_check = None
            self.dtls.start(now)
            self._drain_dtls(now)

    def _drain_dtls(self, now: float) -> None:
        self._out.extend(self.dtls.datagrams_to_send())
        while (ev := self.dtls.next_event()) is not None:
            if isinstance(ev, HandshakeComplete) and self.state == "dtls":
                self.state = "connected"
                self._next_check = now + self.consent_interval * random.uniform(0.8, 1.2)
                self._events.append(Connected(ev.srtp_profile, ev.local_key, ev.remote_key))
            elif isinstance(ev, HandshakeFailed):
                self._fail(f"DTLS: {ev.reason}")
            else:  # Closed
                if self.state == "connected":
                    self.state = "closed"
                    self._next_check = None
                    self._events.append(Failed("DTLS closed by peer"))

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        self._next_check = None
        self._events.append(Failed(reason))


# ---------------------------------------------------------------------------
# Media
# ---------------------------------------------------------------------------


def _vp8_keyframe_header(width: int = 1280, height: int = 720, first_partition: int = 200) -> bytes:
    # RFC 6386 §9.1 frame tag: P (0 = key frame) | version (3) | show_frame |
    # first_part_size (19 bits), then the key frame start code and sizes.
    tag = (first_partition << 5) | (1 << 4) | 0
    return (tag.to_bytes(3, "little") + b"\x9d\x01\x2a"
            + struct.pack("<HH", width, height))


def _vp8_interframe_header(first_partition: int = 60) -> bytes:
    tag = (first_partition << 5) | (1 << 4) | 1
    return tag.to_bytes(3, "little") + bytes(7)


class VideoSource:
    """Plaintext VP8 RTP packets (RFC 7741) of a constant packet rate.

    Frames of `packets_per_frame` packets at `fps`; the first packet of a
    frame has S=1 and the VP8 frame header, the last one the marker bit
    (RFC 7741 §4.1). A key frame every `keyframe_interval` seconds, or the
    next frame after `request_keyframe()`. The buffer is built once; each
    packet patches sequence number, timestamp, descriptor, frame header and
    the 16-byte trailer in place.
    """

    HEADER = 12
    DESCRIPTOR = 4  # X=1, I=1, M=1: 15-bit PictureID (RFC 7741 §4.2)
    FRAME_HEADER = 10

    def __init__(self, ssrc: int, *, size: int = 1100, fps: int = 30, rate: float = 100.0,
                 keyframe_interval: float = 2.0, pt: int = VIDEO_PT, clock: int = VIDEO_CLOCK) -> None:
        minimum = self.HEADER + self.DESCRIPTOR + self.FRAME_HEADER + _TRAILER_LEN
        if size < minimum:
            raise ValueError(f"packet size must be at least {minimum}")
        self.ssrc = ssrc
        self.size = size
        self.packets_per_frame = max(1, round(rate / fps))
        self.ts_step = clock // fps
        self.pt = pt
        self.frames_per_keyframe = max(1, round(keyframe_interval * fps))
        self.seq = random.getrandbits(16)
        self.timestamp = random.getrandbits(32)
        self.picture_id = random.getrandbits(15)
        self.counter = 0  # original packets sent
        self.frame = 0
        self.keyframes = 0
        self._in_frame = 0  # index of the next packet within the frame
        self._keyframe_requested = True  # the first frame is a key frame
        self._is_key = False
        buf = bytearray(os.urandom(size))
        buf[0] = 0x80  # V=2
        struct.pack_into("!I", buf, 8, ssrc)
        self._buf = buf
        self._key = _vp8_keyframe_header()
        self._inter = _vp8_interframe_header()

    def request_keyframe(self) -> None:
        self._keyframe_requested = True

    def next_packet(self, now_ns: int) -> tuple[int, int, bytes]:
        """(sequence number, counter, plaintext RTP packet)."""
        buf = self._buf
        i = self._in_frame
        if i == 0:
            self._is_key = self._keyframe_requested or self.frame % self.frames_per_keyframe == 0
            if self._is_key:
                self._keyframe_requested = False
                self.keyframes += 1
            buf[16:26] = self._key if self._is_key else self._inter
            buf[12] = 0x90  # X, S=1, PID 0
        else:
            buf[12] = 0x80
        last = i == self.packets_per_frame - 1
        buf[1] = (0x80 if last else 0) | self.pt
        seq = self.seq
        struct.pack_into("!HI", buf, 2, seq, self.timestamp)
        struct.pack_into("!BBB", buf, 13, 0x80, 0x80 | (self.picture_id >> 8), self.picture_id & 0xFF)
        counter = self.counter
        TRAILER.pack_into(buf, self.size - _TRAILER_LEN, MAGIC, counter, now_ns)
        self.seq = (seq + 1) & 0xFFFF
        self.counter = counter + 1
        if last:
            self._in_frame = 0
            self.frame += 1
            self.timestamp = (self.timestamp + self.ts_step) & 0xFFFFFFFF
            self.picture_id = (self.picture_id + 1) & 0x7FFF
        else:
            self._in_frame = i + 1
        return seq, counter, bytes(buf)


def parse_feedback(data: bytes) -> list[tuple[str, int, list[int]]]:
    """The feedback in a plaintext compound RTCP packet: ("pli" | "fir" |
    "nack", media SSRC, lost sequence numbers). RFC 4585 §6.1-6.3,
    RFC 5104 §4.3.1. Other packets are skipped; ValueError when truncated."""
    out: list[tuple[str, int, list[int]]] = []
    pos = 0
    n = len(data)
    while pos + 4 <= n:
        first, pt, words = struct.unpack_from("!BBH", data, pos)
        if first >> 6 != 2:
            raise ValueError("RTCP version is not 2")
        end = pos + 4 + 4 * words
        if end > n:
            raise ValueError("truncated RTCP packet")
        fmt = first & 0x1F
        if pt in (205, 206) and end - pos >= 12:
            media_ssrc = struct.unpack_from("!I", data, pos + 8)[0]
            if pt == 206 and fmt == 1:
                out.append(("pli", media_ssrc, []))
            elif pt == 206 and fmt == 4 and end - pos >= 20:
                out.append(("fir", struct.unpack_from("!I", data, pos + 12)[0], []))
            elif pt == 205 and fmt == 1:
                lost = []
                for fci in range(pos + 12, end - 3, 4):
                    pid, blp = struct.unpack_from("!HH", data, fci)
                    lost.append(pid)
                    lost.extend((pid + bit + 1) & 0xFFFF for bit in range(16) if blp >> bit & 1)
                out.append(("nack", media_ssrc, lost))
        pos = end
    if pos != n:
        raise ValueError("trailing bytes after RTCP packets")
    return out


@dataclass
class ReceiveStats:
    """What one viewer received, by the publisher's payload counter.

    `seen` has one byte per counter value, so loss over any counter range
    can be computed after the fact, and duplicates are told apart.
    """

    packets: int = 0
    bytes: int = 0
    duplicates: int = 0
    foreign: int = 0  # RTP without our trailer
    srtp_errors: int = 0
    rtcp: int = 0
    first_counter: int | None = None
    seen: bytearray = field(default_factory=bytearray)
    latencies_us: array | None = None  # filled only while recording

    def on_rtp(self, plain: bytes, now_ns: int) -> None:
        try:
            magic, counter, sent_ns = TRAILER.unpack_from(plain, len(plain) - _TRAILER_LEN)
        except struct.error:
            self.foreign += 1
            return
        if magic != MAGIC:
            self.foreign += 1
            return
        self.packets += 1
        self.bytes += len(plain)
        seen = self.seen
        if counter >= len(seen):
            seen.extend(bytes(counter + 1024 - len(seen)))
        if seen[counter]:
            self.duplicates += 1
            return
        seen[counter] = 1
        if self.first_counter is None:
            self.first_counter = counter
        if self.latencies_us is not None:
            self.latencies_us.append((now_ns - sent_ns) / 1000.0)

    def received_between(self, start: int, end: int) -> int:
        """Distinct packets received with counter in [start, end)."""
        return self.seen[start:end].count(1)


# ---------------------------------------------------------------------------
# asyncio glue
# ---------------------------------------------------------------------------


class Participant(asyncio.DatagramProtocol):
    """One publisher or viewer with its own UDP socket (connected to the SFU)."""

    def __init__(self, role: str, certificate: Certificate, *, rate: float = 100.0,
                 size: int = 1100, fps: int = 30, keyframe_interval: float = 2.0,
                 kind: str = "video", video_sections: int = 1) -> None:
        """``kind="audio"``: a publisher sends Opus-sized packets on its audio SSRC
        instead of video; ``video_sections``: a viewer's video m-sections (N-by-N)."""
        if role not in ("publish", "subscribe"):
            raise ValueError(role)
        if kind not in ("audio", "video"):
            raise ValueError(kind)
        self.kind = kind
        self.video_sections = video_sections
        self._raw: socket.socket | None = None  # the socket, once handed to a bench.sink.Sink
        self.role = role
        self.certificate = certificate
        self.ufrag = secrets.token_hex(4)
        self.pwd = secrets.token_hex(16)
        self.video_ssrc = random.getrandbits(32) or 1
        self.audio_ssrc = random.getrandbits(32) or 1
        self.rate = rate
        if role != "publish":
            self.source = None
        elif kind == "audio":
            self.source = VideoSource(self.audio_ssrc, size=size, fps=max(1, int(rate)), rate=rate,
                                      pt=AUDIO_PT, clock=48000)
        else:
            self.source = VideoSource(self.video_ssrc, size=size, fps=fps, rate=rate,
                                      keyframe_interval=keyframe_interval)
        self.stats = ReceiveStats()
        self.location: str | None = None
        self.answer: Answer | None = None
        self.handshake: Handshake | None = None
        self.srtp: SrtpPair | None = None
        self.connected = asyncio.Event()
        self.error: str | None = None
        self.closed = False
        self.token: str | None = None  # access token for WHIP/WHEP (Authorization: Bearer)
        # publisher feedback counters
        self.plis = 0
        self.firs = 0
        self.nacks = 0
        self._retransmitted = 0  # by the Python path; see the retransmitted property
        self._sent = 0  # original packets sent by the Python path; see the sent property
        self._native = None  # a bench.publisher.Publisher, once attached
        self._native_index = -1
        self._native_sending = False
        self._history: dict[int, bytes] = {}  # seq -> protected packet, for NACKs
        self._history_order: deque[int] = deque()
        self._udp: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._sender: asyncio.TimerHandle | None = None
        self._send_start = 0.0
        self._send_due = 0

    # -- signaling ------------------------------------------------------------

    def offer(self) -> str:
        return build_offer(self.role, self.ufrag, self.pwd, self.certificate.fingerprint(),
                           audio_ssrc=self.audio_ssrc, video_ssrc=self.video_ssrc,
                           video_sections=self.video_sections)

    async def connect(self, http, base_url: str, room: str, timeout: float = 15.0) -> None:
        """WHIP/WHEP offer/answer, then ICE and DTLS; raises on failure."""
        path = "whip" if self.role == "publish" else "whep"
        headers = {"Content-Type": "application/sdp"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        async with http.post(f"{base_url}/{path}/{room}", data=self.offer(), headers=headers) as resp:
            text = await resp.text()
            if resp.status != 201:
                raise RuntimeError(f"{path} POST: {resp.status} {text.strip()}")
            self.location = resp.headers.get("Location")
        self.answer = parse_answer(text)
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in self.answer.address[0] else socket.AF_INET,
                             socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind(("127.0.0.1" if ":" not in self.answer.address[0] else "::1", 0))
            sock.connect(self.answer.address)
            sock.setblocking(False)
            await self._loop.create_datagram_endpoint(lambda: self, sock=sock)
        except BaseException:
            sock.close()
            raise
        self.handshake = Handshake(self.certificate, self.ufrag, self.pwd, self.answer.ice_ufrag,
                                   self.answer.ice_pwd, self.answer.fingerprints, timeout=timeout)
        self.handshake.start(self._loop.time())
        self._service()
        await asyncio.wait_for(self.connected.wait(), timeout + 1.0)
        if self.error:
            raise RuntimeError(self.error)

    async def leave(self, http, base_url: str) -> None:
        self.close()
        if self.location:
            try:
                async with http.delete(base_url + self.location) as resp:
                    await resp.read()
            except Exception:
                pass
            self.location = None

    def close(self) -> None:
        self.closed = True
        self.stop_sending()
        if self._native is not None:
            self._native.remove(self._native_index)  # closes its duplicate of the socket
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    # -- sending (publisher) --------------------------------------------------

    @property
    def sent(self) -> int:
        """Original packets sent (retransmissions not counted)."""
        if self._native is not None:
            return self._sent + self._native.sent(self._native_index)
        return self._sent

    @property
    def retransmitted(self) -> int:
        """Packets resent for a NACK."""
        if self._native is not None:
            return self._retransmitted + self._native.stats(self._native_index)["resends"]
        return self._retransmitted

    @property
    def keyframes(self) -> int:
        if self.source is None:
            return 0
        if self._native is not None:  # the native publisher continued the source
            return self.source.keyframes + self._native.stats(self._native_index)["keyframes"]
        return self.source.keyframes

    @property
    def sending(self) -> bool:
        return self._native_sending if self._native is not None else self._sender is not None

    def attach_publisher(self, publisher) -> int:
        """Hand the sending to ``publisher`` (a bench.publisher.Publisher): it takes a duplicate
        of the socket, the outbound SRTP session and the source's state, and sends from its
        own thread from now on; this side keeps receiving (RTCP: PLI, FIR and NACK are passed
        on). Sending continues there if it was going on here. Returns the publisher's index."""
        if self.role != "publish" or self.source is None:
            raise RuntimeError("only a publisher can attach a native publisher")
        if self._udp is None or self.srtp is None:
            raise RuntimeError("not connected")
        if self._native is not None:
            raise RuntimeError("already attached")
        was_sending = self._sender is not None
        self.stop_sending()
        fd = self._udp.get_extra_info("socket").fileno()
        self._native_index = publisher.add(fd, self.srtp.tx, self.source)
        self._native = publisher
        if self.rate > 0:
            publisher.set_rate(self._native_index, self.rate)
        if was_sending:
            self.start_sending()
        return self._native_index

    def start_sending(self) -> None:
        """Send at `rate` packets/s until stop_sending (paced by the loop's timer, or by the
        attached native publisher's thread)."""
        assert self.source is not None and self.srtp is not None
        if self._native is not None:
            self._native.start_sending(self._native_index, self.rate)
            self._native_sending = True
            return
        self._send_start = self._loop.time()
        self._send_due = 0
        self._send_tick()

    def set_rate(self, rate: float) -> None:
        """Change the packet rate while sending (the pacing restarts from now)."""
        self.rate = rate
        if self._native is not None:
            self._native.set_rate(self._native_index, rate)
        elif self._sender is not None:
            self._sender.cancel()
            self._send_start = self._loop.time()
            self._send_due = 0
            self._send_tick()

    def detach_socket(self) -> socket.socket:
        """Stop reading in Python and return the socket (for bench.sink.Sink.add with
        ``self.srtp.rx``); consent checks keep going out through it."""
        if self._udp is None:
            raise RuntimeError("not connected")
        raw = socket.socket(fileno=os.dup(self._udp.get_extra_info("socket").fileno()))
        raw.setblocking(False)
        self._udp.close()  # the dup keeps the socket open
        self._udp = None
        self._raw = raw
        return raw

    def stop_sending(self) -> None:
        if self._native is not None and self._native_sending:
            self._native.stop_sending(self._native_index)
            self._native_sending = False
        if self._sender is not None:
            self._sender.cancel()
            self._sender = None

    def _send_tick(self) -> None:
        if self.closed or self._udp is None:
            return
        loop = self._loop
        now = loop.time()
        due = int((now - self._send_start) * self.rate) + 1
        # after a stall, do not burst more than 0.1 s of packets
        backlog = due - self._send_due
        if backlog > self.rate * 0.1:
            self._send_due = due - int(self.rate * 0.1)
        protect = self.srtp.tx.protect
        sendto = self._udp.sendto
        source = self.source
        now_ns = time.monotonic_ns()
        history = self._history
        order = self._history_order
        while self._send_due < due:
            seq, _counter, plain = source.next_packet(now_ns)
            data = protect(plain)
            sendto(data)
            history[seq] = data
            order.append(seq)
            if len(order) > 512:
                history.pop(order.popleft(), None)
            self._send_due += 1
            self._sent += 1
        self._sender = loop.call_at(self._send_start + self._send_due / self.rate, self._send_tick)

    # -- asyncio.DatagramProtocol ---------------------------------------------

    def connection_made(self, transport) -> None:
        self._udp = transport

    def connection_lost(self, exc) -> None:
        self._udp = None

    def error_received(self, exc) -> None:
        pass  # ICMP port unreachable while the SFU restarts etc.

    def datagram_received(self, data: bytes, addr) -> None:
        first = data[0]
        if 127 < first < 192 and self.srtp is not None:
            if 191 < data[1] < 224:  # RTCP, RFC 5761 §4
                self._receive_rtcp(data)
                return
            try:
                plain = self.srtp.rx.unprotect(data)
            except Exception:
                self.stats.srtp_errors += 1
                return
            self.stats.on_rtp(plain, time.monotonic_ns())
            return
        if self.handshake is not None:
            self.handshake.receive(data, self._loop.time())
            self._service()

    def _receive_rtcp(self, data: bytes) -> None:
        self.stats.rtcp += 1
        try:
            plain = self.srtp.rx.unprotect_rtcp(data)
            feedback = parse_feedback(plain)
        except Exception:
            self.stats.srtp_errors += 1
            return
        for kind, _ssrc, lost in feedback:
            if kind == "pli":
                self.plis += 1
            elif kind == "fir":
                self.firs += 1
            else:
                self.nacks += 1
            if self.source is None:
                continue
            if kind in ("pli", "fir"):
                if self._native is not None:
                    self._native.request_keyframe(self._native_index)
                else:
                    self.source.request_keyframe()
            elif self._native is not None:
                self._native.resend(self._native_index, lost)  # from its ring, in its thread
            elif self._udp is not None:
                for seq in lost:  # resend the protected packet as it was
                    packet = self._history.get(seq)
                    if packet is not None:
                        self._udp.sendto(packet)
                        self._retransmitted += 1

    # -- handshake servicing ----------------------------------------------------

    def _service(self) -> None:
        hs = self.handshake
        if hs is None or (self._udp is None and self._raw is None):
            return
        for datagram in hs.datagrams_to_send():
            if self._udp is not None:
                self._udp.sendto(datagram)
            else:
                try:
                    self._raw.send(datagram)
                except OSError:
                    pass
        while (ev := hs.next_event()) is not None:
            if isinstance(ev, Connected):
                self.srtp = SrtpPair(ev.srtp_profile, ev.local_key, ev.remote_key)
                self.connected.set()
            elif isinstance(ev, Failed):
                self.error = ev.reason
                self.connected.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = hs.get_timer()
        if deadline is not None and not self.closed:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.handshake is not None and not self.closed:
            self.handshake.handle_timer(self._loop.time())
            self._service()


# ---------------------------------------------------------------------------
# A small CLI: drive an already running SFU
# ---------------------------------------------------------------------------


async def _run_cli(args) -> None:
    import aiohttp

    cert = Certificate.generate()
    async with aiohttp.ClientSession() as http:
        publisher = Participant("publish", cert, rate=args.rate, size=args.size)
        viewers = [Participant("subscribe", cert) for _ in range(args.viewers)]
        try:
            await publisher.connect(http, args.url, args.room)
            await asyncio.gather(*(v.connect(http, args.url, args.room) for v in viewers))
            publisher.start_sending()
            await asyncio.sleep(args.seconds)
            publisher.stop_sending()
            await asyncio.sleep(0.3)
            for i, v in enumerate(viewers):
                print(f"viewer {i}: {v.stats.packets} packets, {v.stats.srtp_errors} srtp errors")
            print(f"publisher: sent {publisher.sent}, PLI {publisher.plis}, NACK {publisher.nacks}")
        finally:
            for p in [publisher, *viewers]:
                await p.leave(http, args.url)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="synthetic WebRTC participants (one publisher, N viewers)")
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--room", default="bench")
    parser.add_argument("--viewers", type=int, default=1)
    parser.add_argument("--rate", type=float, default=100.0, help="packets per second")
    parser.add_argument("--size", type=int, default=1100, help="RTP packet size in bytes")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    try:
        import uvloop
        uvloop.run(_run_cli(args))
    except ImportError:
        asyncio.run(_run_cli(args))


if __name__ == "__main__":
    main()
