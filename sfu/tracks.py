"""The tracks of the control plane: Producer (a published track) and Consumer (one
subscriber's copy of a track). What a subscriber may get back for its NACKs is
the forwarding plane's (sfu.plane_py_state.NackBudget and its C twin); the
constants of that budget are here, where both planes read them.

Plain objects: who publishes and who receives what is the router's
(sfu.router.Router), which creates, binds, pauses and removes them and gives the
forwarding plane (sfu.plane) its commands. Here only what a track computes for
itself, with ``now`` passed in: feedback to the publisher (NACKs, keyframe
requests, receiver reports) from its stream's statistics, the numbering a
subscription starts with, the NACK window. Nothing here touches a socket or
issues a plane command; ``stats()``/``drain_nack_log()`` query the plane.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from . import rtcp
from .plane import GAP, RECOVERED, ForwardingPlane, StreamStats, SubscriptionStats
from .rtp import CODEC_OTHER
from .sdp import Codec

if TYPE_CHECKING:  # pragma: no cover
    from .router import Room
    from .transport import Transport

CACHE_SIZE = 1024  # packets kept per published stream for NACK (power of two; <= sfu.srtp.TX_WINDOW)
NACK_MAX_TRIES = 8
NACK_RETRY_INTERVAL = 0.03  # seconds between two NACKs of the same packet
NACK_MAX_AGE = 1.0  # give up on a packet lost this long ago
NACK_MAX_GAP = 256  # a larger gap is a stream restart, not loss

# Answers to a subscriber's NACKs (sfu.plane_py_state.NackBudget; the C data path does the same in
# sfu._fast.datapath.Subscription.retransmit). Parsing keeps at most
# rtcp.NACK_MAX_SEQS numbers per NACK ("nack_overflow" counts the rest).
NACK_DEDUPE_SLOTS = 1024  # sequence numbers remembered per subscriber (= the C path's NACK_SLOTS)
NACK_RTT_DEFAULT = 0.1  # seconds: a number is answered at most once per round trip; this without an RTT
NACK_RTT_MIN = 0.05  # bounds of the subscriber's RTT estimate (RR LSR/DLSR, which the subscriber writes)
NACK_RTT_MAX = 0.5
NACK_BUDGET_FRACTION = 0.25  # retransmitted bytes <= this share of the bytes the stream received ...
NACK_BUDGET_FLOOR = 4000.0  # ... plus this many bytes per second ...
NACK_BUDGET_BURST = 32768.0  # ... from a bucket that holds at most this many bytes
KEYFRAME_RETRY = 1.0  # seconds a subscriber held by the keyframe gate waits before asking again
PROBE_SEQS = 64  # sequence numbers kept before a consumer's numbering for its padding probes
VIDEO_CACHE_BYTES = 512 * 1024  # packet cache per published stream (bytes, on the plane)
AUDIO_CACHE_BYTES = 64 * 1024

NO_STREAM_STATS = StreamStats(0, 0, None, -1, 0.0, None)
NO_SUBSCRIPTION_STATS = SubscriptionStats(0, 0, 0, False, 0, 0, None, None, 0.0, None, False, 0, None)

# Header extensions forwarded to subscribers (when both sides negotiated them).
FORWARDED_EXTENSIONS = {
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "urn:3gpp:video-orientation",
}


def _same_codec(a: Codec, b: Codec) -> bool:
    if a.name.lower() != b.name.lower() or a.clock_rate != b.clock_rate:
        return False
    if a.name.lower() == "h264":
        pa = a.fmtp.get("profile-level-id", "42e01f")[:4].lower()
        pb = b.fmtp.get("profile-level-id", "42e01f")[:4].lower()
        return pa == pb
    return True


class Producer:
    """A track published into a room by one transport (control plane only: the packets
    of its stream are received by the forwarding plane, sfu.plane).

    ``plane_id`` names its stream on the plane; the router (sfu.router) adds the stream
    at the commit that publishes it once its SSRC is known (announced, or learnt from
    the MID header extension), and removes it when unpublished. Here: the feedback to
    the publisher (NACKs, keyframe requests, reports) from the plane's statistics."""

    def __init__(
        self,
        transport: "Transport",
        kind: str,
        mid: str,
        codec: Codec,
        ssrc: int | None,
        extensions: dict[int, str],
        plane_id: int = 0,
    ) -> None:
        self.id = f"{transport.id}:{mid}"
        self.plane_id = plane_id
        self.transport = transport
        self.kind = kind
        self.mid = mid
        self.codec = codec
        self.ssrc = ssrc
        self.extensions = extensions
        # set by the router (sfu.router) only: its room, the plane while it has its stream
        self.room: Room | None = None
        self.plane: ForwardingPlane | None = None
        self.streaming = False  # the plane has its stream (from the commit, once the SSRC is known)
        fb = set(codec.rtcp_fb)
        self.supports_nack = "nack" in fb
        self.supports_pli = "nack pli" in fb
        self.supports_fir = "ccm fir" in fb
        self.supports_remb = "goog-remb" in fb
        self._expected_prior = 0
        self._received_prior = 0
        self.last_sr_ntp = 0
        self.last_sr_time = 0.0
        # NACK generator: extended seq -> [time first missed, tries, last request], fed by
        # the plane's NACK log (drain_nack_log)
        self.missing: dict[int, list[float]] = {}
        # keyframe requests
        self._last_keyframe_request = -1e9
        self._keyframe_pending = False
        self._fir_seq = 0
        self.keyframe_requests_sent = 0
        self.nacks_sent = 0
        # forwarding held (a host muted it): every consumer of it is paused, also later ones
        self.paused = False

    # -- what the plane tells about its stream (queries) ------------------------
    def stats(self) -> StreamStats:
        """Receive statistics of its stream (zeros before the plane has one)."""
        if self.streaming:
            return self.plane.stream_stats(self.plane_id)
        return NO_STREAM_STATS

    def drain_nack_log(self) -> None:
        """Apply what the plane logged since the last call to ``missing``."""
        if not self.streaming:
            return
        missing = self.missing
        for kind, a, b, t in self.plane.drain_events(self.plane_id):
            if kind == GAP:
                for s in range(a, b):
                    missing[s] = [t, 0, 0.0]
            elif kind == RECOVERED:
                missing.pop(a, None)
            else:
                missing.clear()

    # -- feedback to the publisher ---------------------------------------------
    def request_keyframe(self, now: float, throttle: float) -> rtcp.Pli | rtcp.Fir | None:
        """A PLI (or FIR) to send now, or None when throttled (then sent later by poll_keyframe)."""
        if self.kind != "video" or self.ssrc is None:
            return None
        if now - self._last_keyframe_request < throttle:
            self._keyframe_pending = True
            return None
        self._last_keyframe_request = now
        self._keyframe_pending = False
        self.keyframe_requests_sent += 1
        if self.supports_pli or not self.supports_fir:
            return rtcp.Pli(sender_ssrc=self.transport.rtcp_ssrc, media_ssrc=self.ssrc)
        self._fir_seq = (self._fir_seq + 1) & 0xFF
        return rtcp.Fir(sender_ssrc=self.transport.rtcp_ssrc, entries=[(self.ssrc, self._fir_seq)])

    def poll_keyframe(self, now: float, throttle: float):
        if self._keyframe_pending:
            return self.request_keyframe(now, throttle)
        return None

    def poll_nack(self, now: float) -> rtcp.Nack | None:
        self.drain_nack_log()
        if not self.missing or self.ssrc is None:
            return None
        lost = []
        for ext, entry in list(self.missing.items()):
            first, tries, last = entry
            if now - first > NACK_MAX_AGE or tries >= NACK_MAX_TRIES:
                del self.missing[ext]
                continue
            if now - last >= NACK_RETRY_INTERVAL:
                entry[1] = tries + 1
                entry[2] = now
                lost.append(ext & 0xFFFF)
        if not lost:
            return None
        self.nacks_sent += 1
        return rtcp.Nack(sender_ssrc=self.transport.rtcp_ssrc, media_ssrc=self.ssrc, lost=lost)

    def report_block(self, now: float) -> rtcp.ReportBlock | None:
        """RFC 3550 §6.4.1 report block about this stream."""
        self.drain_nack_log()
        stats = self.stats()
        if stats.base_ext_seq is None or self.ssrc is None:
            return None
        expected = stats.highest_ext_seq - stats.base_ext_seq + 1
        lost = max(0, expected - stats.packets)
        expected_interval = expected - self._expected_prior
        received_interval = stats.packets - self._received_prior
        self._expected_prior = expected
        self._received_prior = stats.packets
        lost_interval = expected_interval - received_interval
        fraction = 0
        if expected_interval > 0 and lost_interval > 0:
            fraction = min(255, (lost_interval << 8) // expected_interval)
        dlsr = 0
        if self.last_sr_ntp:
            dlsr = int((now - self.last_sr_time) * 65536) & 0xFFFFFFFF
        return rtcp.ReportBlock(
            ssrc=self.ssrc,
            fraction_lost=fraction,
            packets_lost=min(lost, 0x7FFFFF),
            highest_sequence=stats.highest_ext_seq & 0xFFFFFFFF,
            jitter=int(stats.jitter) & 0xFFFFFFFF,
            lsr=rtcp.ntp_middle32(self.last_sr_ntp) if self.last_sr_ntp else 0,
            dlsr=dlsr,
        )


class Consumer:
    """One subscriber's copy of a track: its own SSRC, numbering, PT and extension ids
    (control plane only: ``plane_id`` names its subscription on the forwarding plane,
    which holds the send state; the router adds, binds, pauses and removes it)."""

    def __init__(
        self,
        transport: "Transport",
        kind: str,
        mid: str,
        codec: Codec,
        extensions: dict[int, str],
        plane_id: int = 0,
    ) -> None:
        self.id = f"{transport.id}:{mid}"
        self.plane_id = plane_id
        self.transport = transport
        self.kind = kind
        self.mid = mid
        self.codec = codec
        self.extensions = extensions
        self.ssrc = random.getrandbits(32) or 1
        self.rtx_ssrc = (random.getrandbits(32) or 1) if codec.rtx_payload_type is not None else None
        self.rtx_seq = random.getrandbits(16)  # where the RTX numbering starts
        self.cname = transport.cname
        self.msid = f"sfu-{transport.id} {kind}-{mid}"
        self.producer: Producer | None = None
        # set by the router (sfu.router) only ----------------------------------------
        self.plane: ForwardingPlane | None = None  # from the commit to the removal
        # bound by the control plane to one producer (meetings: Router.bind), never
        # given "the newest track of its kind" by the room (WHEP viewers are)
        self.explicit = False
        self.paused = False  # what forwarding obeys: held, producer paused, or not confirmed
        self.held = False  # paused by its subscriber's side (MediaEngine.set_paused)
        # the subscriber is known to receive its SSRC (a receiver report names it, see
        # Router.confirm); until then the plane holds it and the transport probes it with
        # padding: a renegotiation's new SSRC is unknown to a client until it applied
        # the answer, and what came before (the keyframe that opened the gate) is lost
        self.confirmed = True
        self.probe_since: float | None = None  # when probing began (the transport sets it)
        self.probes_sent = 0
        # the SSRC the offer's section announced, which its receiver sends its reports
        # from (aiortc does; None: any report confirms)
        self.report_ssrc: int | None = None
        # keyframe gate: a video consumer that starts, resumes or moves to another producer
        # is sent nothing (and numbers nothing) until a packet starts a keyframe of its
        # producer's codec (sfu.rtp.is_keyframe; CODEC_OTHER: no detector, never gated)
        self.keyframe_codec = CODEC_OTHER
        # where the output numbering starts (random, RFC 3550 §5.1), drawn here so that
        # both planes start alike
        # (above PROBE_SEQS: the padding probes go just before it without a wrap, Transport._probe)
        self.initial_seq = PROBE_SEQS + random.getrandbits(15)
        self.initial_ts = random.getrandbits(31)
        self.last_report: rtcp.ReportBlock | None = None
        # metrics (sfu.metrics): RTT from RR LSR/DLSR (RFC 3550 §6.4.1)
        self.sr_sent: dict[int, float] = {}  # middle 32 bits of a translated SR's NTP time -> when sent
        self.rtt: float | None = None

    def stats(self) -> SubscriptionStats:
        """Send statistics and numbering of its subscription (zeros before it has one)."""
        if self.plane is not None:
            return self.plane.subscription_stats(self.plane_id)
        return NO_SUBSCRIPTION_STATS

    def nack_window(self) -> float:
        """Seconds before a NACKed number is answered again: the RTT, bounded (the
        subscriber's reports set it, so a hostile one could claim zero)."""
        rtt = self.rtt
        if rtt is None:
            return NACK_RTT_DEFAULT
        return min(NACK_RTT_MAX, max(NACK_RTT_MIN, rtt))

    def can_consume(self, producer: Producer) -> bool:
        return producer.kind == self.kind and _same_codec(producer.codec, self.codec)
