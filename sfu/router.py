"""Media objects of a room: Producer (a published track), Consumer (one
subscriber's copy of a track), Room (who forwards to whom).

Control plane only: the packets are received, cached, rewritten and sent by a
forwarding plane (``sfu.plane``: the C data path or the pure-Python reference),
which these objects command at the moments the control plane decides (a
producer opened at commit adds its stream, a consumer attached binds its
subscription, a pause pauses it). Everything in this module is driven by the
engine with ``now`` passed in; it never touches a socket.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import TYPE_CHECKING, Callable, Iterable

from . import rtcp
from .plane import GAP, RECOVERED, ForwardingPlane, StreamStats, SubscriptionStats
from .rtp import CODEC_OTHER, codec_id
from .sdp import Codec

if TYPE_CHECKING:  # pragma: no cover
    from .transport import Transport

CACHE_SIZE = 1024  # packets kept per published stream for NACK (power of two; <= sfu.srtp.TX_WINDOW)
NACK_MAX_TRIES = 8
NACK_RETRY_INTERVAL = 0.03  # seconds between two NACKs of the same packet
NACK_MAX_AGE = 1.0  # give up on a packet lost this long ago
NACK_MAX_GAP = 256  # a larger gap is a stream restart, not loss

# Answers to a subscriber's NACKs (NackBudget; the C data path does the same in
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

    ``plane_id`` names its stream on the plane; the stream exists from the commit that
    opens it (``open``) once its SSRC is known (announced, or learnt from the MID
    header extension: ``learn_ssrc``), until ``close``."""

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
        self.room: Room | None = None
        self.kind = kind
        self.mid = mid
        self.codec = codec
        self.ssrc = ssrc
        self.extensions = extensions
        self.consumers: tuple[Consumer, ...] = ()
        self.plane: ForwardingPlane | None = None  # from open to close
        self.streaming = False  # the plane has its stream
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

    # -- the forwarding plane ---------------------------------------------------
    def open(self, plane: ForwardingPlane) -> None:
        """Start receiving: called when the offer that made this producer is committed
        (MediaEngine._add_tracks). Building one changes nothing on any plane, so a
        refused offer leaves nothing behind."""
        self.plane = plane
        self._add_stream()

    def learn_ssrc(self, ssrc: int) -> None:
        """Its SSRC, learnt from the MID header extension: the plane receives it from now on."""
        self.ssrc = ssrc
        self._add_stream()

    def _add_stream(self) -> None:
        plane = self.plane
        if plane is None or self.streaming or self.ssrc is None:
            return
        plane.add_stream(self.plane_id, self.transport.plane_id, self.ssrc, self.codec.payload_type,
                         self.codec.clock_rate, nack=self.supports_nack, nack_max_gap=NACK_MAX_GAP,
                         cache_packets=CACHE_SIZE,
                         cache_bytes=VIDEO_CACHE_BYTES if self.kind == "video" else AUDIO_CACHE_BYTES)
        self.streaming = True
        for consumer in self.consumers:
            consumer.bind_plane()

    def close(self) -> None:
        """Unpublished: its SSRC is unknown to the plane again."""
        if self.plane is not None and self.streaming:
            self.plane.remove_stream(self.plane_id)
        self.streaming = False
        self.plane = None

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

    def set_consumers(self, consumers: Iterable["Consumer"]) -> None:
        self.consumers = tuple(consumers)

    def set_paused(self, paused: bool) -> None:
        """Hold (or resume) forwarding of this track to all its consumers, present and future."""
        self.paused = paused
        for consumer in self.consumers:
            consumer.update_paused()


class Consumer:
    """One subscriber's copy of a track: its own SSRC, numbering, PT and extension ids
    (control plane only: ``plane_id`` names its subscription on the forwarding plane,
    which holds the send state, from ``open`` to ``close``)."""

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
        self.plane: ForwardingPlane | None = None  # from open to close
        # bound by the control plane to one producer (meetings: Room.bind), never
        # given "the newest track of its kind" by the room (WHEP viewers are)
        self.explicit = False
        self.paused = False  # what forwarding obeys: held, or its producer is paused
        self.held = False  # paused by its subscriber's side (MediaEngine.set_paused)
        # keyframe gate: a video consumer that starts, resumes or moves to another producer
        # is sent nothing (and numbers nothing) until a packet starts a keyframe of its
        # producer's codec (sfu.rtp.is_keyframe; CODEC_OTHER: no detector, never gated)
        self.keyframe_codec = CODEC_OTHER
        # where the output numbering starts (random, RFC 3550 §5.1), drawn here so that
        # both planes start alike
        self.initial_seq = random.getrandbits(15)
        self.initial_ts = random.getrandbits(31)
        self.last_report: rtcp.ReportBlock | None = None
        # metrics (sfu.metrics): RTT from RR LSR/DLSR (RFC 3550 §6.4.1)
        self.sr_sent: dict[int, float] = {}  # middle 32 bits of a translated SR's NTP time -> when sent
        self.rtt: float | None = None

    def open(self, plane: ForwardingPlane) -> None:
        """Committed: the plane has its subscription (unbound until ``attach``)."""
        self.plane = plane
        rtx_pt = self.codec.rtx_payload_type
        plane.add_subscription(self.plane_id, self.transport.plane_id, self.ssrc, self.codec.clock_rate,
                               initial_seq=self.initial_seq, initial_ts=self.initial_ts,
                               rtx_ssrc=self.rtx_ssrc or 0,
                               rtx_payload_type=rtx_pt if self.rtx_ssrc is not None and rtx_pt is not None else -1,
                               rtx_seq=self.rtx_seq)

    def close(self) -> None:
        if self.plane is not None:
            self.plane.remove_subscription(self.plane_id)
        self.plane = None

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

    def attach(self, producer: Producer | None) -> None:
        """Forward ``producer`` (or nothing): the plane's subscription is bound to its
        stream (the keyframe gate armed for video), then paused or not as it is."""
        self.producer = producer
        self.keyframe_codec = codec_id(producer.codec.name) if producer is not None and self.kind == "video" \
            else CODEC_OTHER
        self.bind_plane()
        self.update_paused()

    def bind_plane(self) -> None:
        """Bind the plane's subscription to the producer's stream (when the plane has it)."""
        plane = self.plane
        if plane is None:
            return
        producer = self.producer
        if producer is None or not producer.streaming:
            plane.bind(self.plane_id, None, {}, {}, CODEC_OTHER)
            return
        by_uri = {uri: i for i, uri in self.extensions.items() if uri in FORWARDED_EXTENSIONS}
        plane.bind(self.plane_id, producer.plane_id, {producer.codec.payload_type: self.codec.payload_type},
                   {i: by_uri[uri] for i, uri in producer.extensions.items() if uri in by_uri},
                   self.keyframe_codec)

    def update_paused(self) -> None:
        """paused = held by the subscriber or its producer paused; on resume the plane
        continues the output numbering where it stopped and re-arms the keyframe gate."""
        paused = self.held or (self.producer is not None and self.producer.paused)
        if paused != self.paused:
            self.paused = paused
            if self.plane is not None:
                self.plane.set_paused(self.plane_id, paused)


class NackBudget:
    """What one subscriber may get back for its NACKs (RFC 4585 §6.2.1 leaves it to us).

    - a sequence number answered less than a round trip ago (``window``) is not
      answered again ("nack_repeat"): the table remembers the last
      ``NACK_DEDUPE_SLOTS`` numbers, indexed by their low bits;
    - retransmissions are paid from a token bucket of bytes (at most
      ``NACK_BUDGET_BURST``), refilled on each NACK with ``NACK_BUDGET_FRACTION``
      of the bytes the stream received since the previous one plus
      ``NACK_BUDGET_FLOOR`` bytes per second; each cached packet costs its size as
      received, and one the bucket cannot pay for is not sent ("nack_budget").

    So a viewer gets back at most a quarter of the stream's bitrate (plus 32 kbit/s)
    however many NACKs it sends. The C twin keeps the same fields in
    ``Subscription`` and does the same arithmetic in the same order (the outputs
    of both paths are compared byte for byte).
    """

    __slots__ = ("started", "tokens", "last_time", "last_bytes", "seqs", "times")

    def __init__(self) -> None:
        self.started = False
        self.tokens = 0.0
        self.last_time = 0.0
        self.last_bytes = 0
        self.seqs: list[int] | None = None  # allocated on the first answer
        self.times: list[float] | None = None

    def refill(self, received_bytes: int, now: float) -> None:
        """Once per NACK, before its numbers: ``received_bytes`` is the stream's byte count."""
        if not self.started:
            self.started = True
            self.tokens = NACK_BUDGET_BURST
        else:
            elapsed = now - self.last_time
            if elapsed < 0:
                elapsed = 0.0
            received = received_bytes - self.last_bytes if received_bytes > self.last_bytes else 0
            self.tokens = min(NACK_BUDGET_BURST, self.tokens + NACK_BUDGET_FRACTION * float(received)
                              + NACK_BUDGET_FLOOR * elapsed)
        self.last_bytes = received_bytes
        self.last_time = now

    def repeated(self, seq: int, now: float, window: float) -> bool:
        if self.seqs is None:
            return False
        i = seq & (NACK_DEDUPE_SLOTS - 1)
        return self.seqs[i] == seq and now - self.times[i] < window

    def spend(self, size: int) -> bool:
        if self.tokens < size:
            return False
        self.tokens -= size
        return True

    def answered(self, seq: int, now: float) -> None:
        if self.seqs is None:
            self.seqs = [-1] * NACK_DEDUPE_SLOTS
            self.times = [0.0] * NACK_DEDUPE_SLOTS
        i = seq & (NACK_DEDUPE_SLOTS - 1)
        self.seqs[i] = seq
        self.times[i] = now


class Room:
    """The producers and consumers of one room; decides who receives what.

    Indexed so that nothing is a scan of the room: producers by id and by codec
    (newest last), the consumers of each producer, the automatic consumers (WHEP
    viewers) still waiting for a track, by codec. Adding or removing a track costs
    O(1) plus the consumers it hands over; ``codec_preference`` looks at one entry
    per codec. ``totals`` (the engine's, shared by its rooms) counts the tracks of
    the whole server."""

    def __init__(self, name: str, totals: Counter | None = None) -> None:
        self.name = name
        self.producers: dict[str, Producer] = {}  # id -> producer, in publish order
        self.consumers: dict[Consumer, None] = {}
        self.totals: Counter = totals if totals is not None else Counter()
        self._by_codec: dict[tuple, dict[Producer, None]] = {}  # codec key -> producers, oldest first
        self._subscribers: dict[Producer, dict[Consumer, None]] = {}  # producer -> its consumers
        self._waiting: dict[tuple, dict[Consumer, None]] = {}  # codec key -> unbound automatic consumers
        self._order: dict[Producer, int] = {}  # publish order (codec_preference)
        self._published = 0

    def is_empty(self) -> bool:
        return not self.producers and not self.consumers

    @property
    def track_count(self) -> int:
        return len(self.producers) + len(self.consumers)

    def get_producer(self, producer_id: str | None) -> Producer | None:
        return self.producers.get(producer_id) if producer_id is not None else None

    def codec_preference(self, kind: str, defaults: list[str]) -> list[str]:
        """Codec names in preference order: what the room already forwards comes first
        (the codec of its newest track first), then ``defaults``."""
        newest: dict[str, tuple[int, str]] = {}  # lower-case name -> (publish order, name as written)
        for key, producers in self._by_codec.items():
            if key[0] != kind or not producers:
                continue
            last = next(reversed(producers))
            order = self._order[last]
            if key[1] not in newest or newest[key[1]][0] < order:
                newest[key[1]] = (order, last.codec.name)
        out = [name for _, name in sorted(newest.values(), reverse=True)]
        seen = set(newest)
        for name in defaults:
            if name.lower() not in seen:
                seen.add(name.lower())
                out.append(name)
        return out

    def add_producer(self, producer: Producer, on_attach: Callable[[Consumer], None]) -> None:
        if producer.id in self.producers:
            return
        producer.room = self
        self.producers[producer.id] = producer
        self._published += 1
        self._order[producer] = self._published
        key = _codec_key(producer.kind, producer.codec)
        self._by_codec.setdefault(key, {})[producer] = None
        self._subscribers[producer] = {c: None for c in producer.consumers}
        self.totals["producers"] += 1
        waiting = self._waiting.get(key)
        if not waiting:
            return
        served: set[int] = set()  # transports given this new track already (one section each)
        for consumer in list(waiting):
            transport = consumer.transport
            if transport is producer.transport or id(transport) in served:
                continue
            served.add(id(transport))
            self._attach(consumer, producer)
            on_attach(consumer)

    def remove_producer(self, producer: Producer, on_attach: Callable[[Consumer], None]) -> None:
        if self.producers.get(producer.id) is producer:
            del self.producers[producer.id]
            self.totals["producers"] -= 1
            key = _codec_key(producer.kind, producer.codec)
            same = self._by_codec.get(key)
            if same is not None:
                same.pop(producer, None)
                if not same:
                    del self._by_codec[key]
            self._order.pop(producer, None)
        subscribers = self._subscribers.pop(producer, None)
        consumers = list(subscribers) if subscribers is not None else list(producer.consumers)
        producer.set_consumers(())
        for consumer in consumers:
            consumer.attach(None)
            replacement = None if consumer.explicit else self._best_producer(consumer)
            if replacement is not None:
                self._attach(consumer, replacement)
                on_attach(consumer)
            else:
                self._set_waiting(consumer)
        producer.room = None

    def add_consumer(self, consumer: Consumer, on_attach: Callable[[Consumer], None]) -> None:
        if consumer in self.consumers:
            return
        self.consumers[consumer] = None
        self.totals["consumers"] += 1
        producer = None if consumer.explicit else self._best_producer(consumer)
        if producer is not None:
            self._attach(consumer, producer)
            on_attach(consumer)
        else:
            self._set_waiting(consumer)

    def remove_consumer(self, consumer: Consumer) -> None:
        if consumer in self.consumers:
            del self.consumers[consumer]
            self.totals["consumers"] -= 1
        self._unset_waiting(consumer)
        self._detach(consumer)

    def bind(self, consumer: Consumer, producer: Producer | None) -> bool:
        """Forward exactly ``producer`` (or nothing) to an explicit consumer.
        False, and the consumer left unbound, when it cannot carry that producer
        (another kind or codec, its own track, or a producer not in this room)."""
        current = consumer.producer
        if current is producer:
            return producer is not None
        if current is not None:
            self._detach(consumer)
        if producer is None or producer.room is not self or producer.transport is consumer.transport \
                or not consumer.can_consume(producer):
            return False
        self._attach(consumer, producer)
        return True

    def _best_producer(self, consumer: Consumer) -> Producer | None:
        """The newest compatible track that this consumer's transport does not already receive
        (a viewer offering two video sections gets the two newest video tracks)."""
        candidates = self._by_codec.get(_codec_key(consumer.kind, consumer.codec))
        if not candidates:
            return None
        taken = {c.producer for c in consumer.transport.consumers if c is not consumer}
        for producer in reversed(candidates):
            if producer.transport is not consumer.transport and producer not in taken:
                return producer
        return None

    def _attach(self, consumer: Consumer, producer: Producer) -> None:
        self._unset_waiting(consumer)
        consumer.attach(producer)
        subscribers = self._subscribers.setdefault(producer, {})
        subscribers[consumer] = None
        producer.set_consumers(subscribers)

    def _detach(self, consumer: Consumer) -> None:
        producer = consumer.producer
        if producer is not None:
            subscribers = self._subscribers.get(producer)
            if subscribers is not None:
                subscribers.pop(consumer, None)
                producer.set_consumers(subscribers)
            else:
                producer.set_consumers(c for c in producer.consumers if c is not consumer)
        consumer.attach(None)

    def _set_waiting(self, consumer: Consumer) -> None:
        """An automatic consumer without a track waits for the next compatible one."""
        if not consumer.explicit and consumer.producer is None and consumer in self.consumers:
            self._waiting.setdefault(_codec_key(consumer.kind, consumer.codec), {})[consumer] = None

    def _unset_waiting(self, consumer: Consumer) -> None:
        key = _codec_key(consumer.kind, consumer.codec)
        waiting = self._waiting.get(key)
        if waiting is not None and consumer in waiting:
            del waiting[consumer]
            if not waiting:
                del self._waiting[key]


def _codec_key(kind: str, codec: Codec) -> tuple:
    """Tracks of equal keys can be forwarded to each other's consumers (_same_codec)."""
    name = codec.name.lower()
    profile = codec.fmtp.get("profile-level-id", "42e01f")[:4].lower() if name == "h264" else ""
    return (kind, name, codec.clock_rate, profile)
