"""The router: the one owner of membership (rooms, producers, consumers, who
receives what) and the one place that commands the forwarding plane about it.

- :class:`Router` holds the rooms of one worker (created by the first commit that
  puts a track in them, deleted when the last goes), every session's tracks
  (:class:`SessionTracks`, indexed by mid and SSRC) and every stream by its plane
  id. The engine (sfu.engine) asks it to commit what a negotiation decided (add
  or remove tracks, bind a consumer, hold, pause, close a session); the router
  updates its indexes and gives the plane (sfu.plane) the matching commands:
  ``add_peer``/``remove_peer``, ``add_stream``/``remove_stream`` (a producer whose
  SSRC is known), ``add_subscription``/``remove_subscription``, ``bind`` (with the
  payload-type and extension maps, the keyframe gate's codec and the RTX payload
  type), ``set_paused``.
- :class:`Room` is the index of one room (producers by id and codec, the
  consumers of each producer, the automatic consumers waiting for a track); it
  decides nothing on its own and commands nothing.
- :class:`SessionTracks` is what one session publishes and receives, kept by the
  router and read-only to everyone else: the transport (sfu.transport) reads it
  for its RTCP (reports, NACKs, PLIs), never writes it.

Producer and Consumer are in sfu.tracks (re-exported here). Nothing in
this module touches a socket; ``now`` is passed in where it matters.
"""

from __future__ import annotations

from collections import Counter
from types import MappingProxyType
from typing import TYPE_CHECKING, Callable, Mapping

from . import rtp
from .plane import ForwardingPlane
from .rtp import CODEC_OTHER, codec_id
from .sdp import Codec
from .tracks import (
    AUDIO_CACHE_BYTES, CACHE_SIZE, FORWARDED_EXTENSIONS, KEYFRAME_RETRY, NACK_BUDGET_BURST, NACK_BUDGET_FLOOR,
    NACK_BUDGET_FRACTION, NACK_DEDUPE_SLOTS, NACK_MAX_AGE, NACK_MAX_GAP, NACK_MAX_TRIES, NACK_RETRY_INTERVAL,
    NACK_RTT_DEFAULT, NACK_RTT_MAX, NACK_RTT_MIN, NO_STREAM_STATS, NO_SUBSCRIPTION_STATS, VIDEO_CACHE_BYTES,
    Consumer, Producer, _same_codec,
)

if TYPE_CHECKING:  # pragma: no cover
    from .transport import Transport

__all__ = [  # the router, and the track names other modules and tests import from here
    "Router", "Room", "SessionTracks", "Producer", "Consumer", "AUDIO_CACHE_BYTES", "CACHE_SIZE",
    "FORWARDED_EXTENSIONS", "KEYFRAME_RETRY", "NACK_BUDGET_BURST", "NACK_BUDGET_FLOOR", "NACK_BUDGET_FRACTION",
    "NACK_DEDUPE_SLOTS", "NACK_MAX_AGE", "NACK_MAX_GAP", "NACK_MAX_TRIES", "NACK_RETRY_INTERVAL",
    "NACK_RTT_DEFAULT", "NACK_RTT_MAX", "NACK_RTT_MIN", "NO_STREAM_STATS", "NO_SUBSCRIPTION_STATS",
    "VIDEO_CACHE_BYTES", "_same_codec",
]

SDES_MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"


class SessionTracks:
    """What one session (transport) publishes and receives, by mid and SSRC.

    Kept by the :class:`Router` only; the attributes are tuples and read-only
    mappings, so the transport and the tests can read them and nobody else writes
    them."""

    __slots__ = ("session_id", "room_name", "producers", "consumers", "mid_ext_id", "_router", "_by_mid",
                 "_by_ssrc", "_consumers", "_by_rtx", "producers_by_mid", "producers_by_ssrc",
                 "consumers_by_ssrc")

    def __init__(self, session_id: str, room_name: str, router: "Router | None" = None) -> None:
        self.session_id = session_id
        self.room_name = room_name
        self._router = router
        self.producers: tuple[Producer, ...] = ()  # in publish order
        self.consumers: tuple[Consumer, ...] = ()
        self.mid_ext_id: int | None = None  # the MID header extension's id, when negotiated
        self._by_mid: dict[str, Producer] = {}
        self._by_ssrc: dict[int, Producer] = {}
        self._consumers: dict[int, Consumer] = {}  # by its SSRC
        self._by_rtx: dict[int, Consumer] = {}  # by its RTX SSRC
        self.producers_by_mid: Mapping[str, Producer] = MappingProxyType(self._by_mid)
        self.producers_by_ssrc: Mapping[int, Producer] = MappingProxyType(self._by_ssrc)
        self.consumers_by_ssrc: Mapping[int, Consumer] = MappingProxyType(self._consumers)

    def subscribers(self, producer: Producer) -> tuple[Consumer, ...]:
        """The consumers (of any session) that ``producer`` is forwarded to."""
        return self._router.subscribers(producer) if self._router is not None else ()

    def reported(self, ssrc: int) -> Consumer | None:
        """The consumer that a receiver report block about ``ssrc`` (its SSRC or RTX SSRC) is about."""
        return self._consumers.get(ssrc) or self._by_rtx.get(ssrc)


class Room:
    """The index of one room: its producers (by id, by codec, newest last), the
    consumers of each producer, the automatic consumers (WHEP viewers) still
    waiting for a track, by codec. Adding or removing a track costs O(1) plus the
    consumers it hands over; ``codec_preference`` looks at one entry per codec.
    Changed by the :class:`Router` only."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.producers: dict[str, Producer] = {}  # id -> producer, in publish order
        self.consumers: dict[Consumer, None] = {}
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

    def best_producer(self, consumer: Consumer) -> Producer | None:
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


class Router:
    """Rooms, sessions' tracks and subscriptions of one worker, and the plane commands
    that follow from them. ``on_attach(consumer)`` is called when a consumer gets a
    producer to forward (the engine asks the publisher for a keyframe)."""

    def __init__(self, plane: ForwardingPlane | None, on_attach: Callable[[Consumer], None] = lambda c: None) -> None:
        self.plane = plane
        self._on_attach = on_attach
        self._rooms: dict[str, Room] = {}
        self.rooms: Mapping[str, Room] = MappingProxyType(self._rooms)
        self._sessions: dict[str, SessionTracks] = {}
        self._streams: dict[int, Producer] = {}  # plane stream id -> producer
        self.totals: Counter[str] = Counter()  # producers and consumers of all rooms

    # -- queries -------------------------------------------------------------------------
    def tracks(self, session_id: str) -> SessionTracks | None:
        return self._sessions.get(session_id)

    def producer(self, producer_id: str | None, room_name: str | None = None) -> Producer | None:
        """The producer of that id (``<session>:<mid>``), in ``room_name`` when given."""
        if not isinstance(producer_id, str):
            return None
        session, _, mid = producer_id.partition(":")
        tracks = self._sessions.get(session)
        if tracks is None or (room_name is not None and tracks.room_name != room_name):
            return None
        producer = tracks.producers_by_mid.get(mid)
        return producer if producer is not None and producer.room is not None else None

    def stream(self, plane_id: int) -> Producer | None:
        return self._streams.get(plane_id)

    def subscribers(self, producer: Producer) -> tuple[Consumer, ...]:
        room = producer.room
        subscribers = room._subscribers.get(producer) if room is not None else None
        return tuple(subscribers) if subscribers else ()

    def codec_preference(self, room_name: str, kind: str, defaults: list[str]) -> list[str]:
        room = self._rooms.get(room_name)
        return room.codec_preference(kind, defaults) if room is not None else list(defaults)

    def track_count(self, room_name: str) -> int:
        room = self._rooms.get(room_name)
        return room.track_count if room is not None else 0

    @property
    def total_tracks(self) -> int:
        return self.totals["producers"] + self.totals["consumers"]

    # -- sessions ------------------------------------------------------------------------
    def open_session(self, transport: "Transport") -> SessionTracks:
        """A committed session: the plane gets its peer, the transport its tracks (empty)."""
        self.plane.add_peer(transport.plane_id)
        tracks = SessionTracks(transport.id, transport.room_name, self)
        self._sessions[transport.id] = tracks
        transport.tracks = tracks
        return tracks

    def close_session(self, transport: "Transport") -> list[Producer]:
        """Everything of a closed session goes (its consumers handed over or left waiting);
        returns the producers it published."""
        tracks = self._sessions.pop(transport.id, None)
        if tracks is None:
            return []
        producers = list(tracks.producers)
        for producer in producers:
            self._remove_producer(tracks, producer)
        for consumer in tracks.consumers:
            self._remove_consumer(tracks, consumer)
        self.plane.remove_peer(transport.plane_id)  # out of the plane's tables before its SRTP sessions go
        self._tidy(tracks.room_name)
        return producers

    # -- commits ---------------------------------------------------------------------------
    def add_tracks(self, transport: "Transport", producers: list[Producer], consumers: list[Consumer],
                   binds: list[tuple[Consumer, Producer | None]]) -> None:
        """Commit the tracks an accepted offer made (built by the negotiation, which
        changed nothing): the plane receives the producers' SSRCs from now on, has the
        consumers' subscriptions; automatic consumers get the newest track, explicit
        ones what ``binds`` names."""
        tracks = self._sessions[transport.id]
        room = self._rooms.get(tracks.room_name)
        if room is None:  # the one place a room is created
            room = self._rooms[tracks.room_name] = Room(tracks.room_name)
        for producer in producers:
            for ext_id, uri in producer.extensions.items():
                if uri == SDES_MID_URI:
                    tracks.mid_ext_id = ext_id
            producer.plane = self.plane
            tracks.producers += (producer,)
            tracks._by_mid[producer.mid] = producer
            if producer.ssrc is not None:
                tracks._by_ssrc[producer.ssrc] = producer
            self._add_stream(producer)
            self._add_producer(room, producer)
        for consumer in consumers:
            codec = consumer.codec
            rtx_pt = codec.rtx_payload_type
            self.plane.add_subscription(
                consumer.plane_id, transport.plane_id, consumer.ssrc, codec.clock_rate,
                initial_seq=consumer.initial_seq, initial_ts=consumer.initial_ts, rtx_ssrc=consumer.rtx_ssrc or 0,
                rtx_payload_type=rtx_pt if consumer.rtx_ssrc is not None and rtx_pt is not None else -1,
                rtx_seq=consumer.rtx_seq)
            consumer.plane = self.plane
            if not consumer.confirmed:
                self._update_paused(consumer)  # held until the subscriber reports its SSRC
            tracks.consumers += (consumer,)
            tracks._consumers[consumer.ssrc] = consumer
            if consumer.rtx_ssrc is not None:
                tracks._by_rtx[consumer.rtx_ssrc] = consumer
            room.consumers[consumer] = None
            self.totals["consumers"] += 1
            target = None if consumer.explicit else room.best_producer(consumer)
            if target is not None:
                self._attach(room, consumer, target)
                self._on_attach(consumer)
            else:
                room._set_waiting(consumer)
        for consumer, target in binds:
            if target is not None:
                self.bind(consumer, target)
        self._tidy(tracks.room_name)

    def remove_producer(self, producer: Producer) -> None:
        """Unpublish one track: its consumers are handed over (automatic) or left silent (explicit)."""
        tracks = self._sessions.get(producer.transport.id)
        if tracks is not None:
            self._remove_producer(tracks, producer)
            self._tidy(tracks.room_name)

    def remove_consumer(self, consumer: Consumer) -> None:
        tracks = self._sessions.get(consumer.transport.id)
        if tracks is not None:
            self._remove_consumer(tracks, consumer)
            self._tidy(tracks.room_name)

    def bind(self, consumer: Consumer, producer: Producer | None) -> bool:
        """Forward exactly ``producer`` (or nothing) to an explicit consumer.
        False, and the consumer left unbound, when it cannot carry that producer
        (another kind or codec, its own track, or a producer not in its room)."""
        room = self._rooms.get(consumer.transport.room_name)
        current = consumer.producer
        if current is producer:
            return producer is not None
        if current is not None and room is not None:
            self._detach(room, consumer)
        if producer is None or room is None or producer.room is not room \
                or producer.transport is consumer.transport or not consumer.can_consume(producer):
            return False
        self._attach(room, consumer, producer)
        self._on_attach(consumer)
        return True

    def rebind(self, consumer: Consumer, codec: Codec, producer: Producer | None) -> None:
        """A renegotiated recvonly section: its codec (may change: the plane's RTX payload
        type with it) and exactly ``producer``."""
        if codec.payload_type != consumer.codec.payload_type or codec.name != consumer.codec.name:
            self.bind(consumer, None)
            consumer.codec = codec
            self._bind_plane(consumer)
        if consumer.producer is not producer or producer is None:
            self.bind(consumer, producer)

    def learn_ssrc(self, session_id: str, ssrc: int, plain: bytes) -> Producer | None:
        """An SSRC the offer did not announce, bound by the MID header extension (``plain``
        is the decrypted packet the plane met); the plane receives it from now on."""
        tracks = self._sessions.get(session_id)
        if tracks is None:
            return None
        if tracks.mid_ext_id is None:
            if len(tracks.producers) == 1 and tracks.producers[0].ssrc is None:
                producer = tracks.producers[0]
            else:
                return None
        else:
            try:
                mid = rtp.get_extension(plain, tracks.mid_ext_id)
            except ValueError:
                return None
            producer = tracks.producers_by_mid.get(mid.decode("ascii", "replace")) if mid else None
            if producer is None or producer.ssrc is not None:
                return None
        tracks._by_ssrc[ssrc] = producer
        producer.ssrc = ssrc
        self._add_stream(producer)
        return producer

    def hold(self, session_id: str, paused: bool) -> list[Consumer]:
        """Hold (or resume) everything a session receives; the video consumers resumed
        and now waiting for a keyframe are returned (to ask their publishers for one)."""
        tracks = self._sessions.get(session_id)
        resumed = []
        for consumer in tracks.consumers if tracks is not None else ():
            was = consumer.paused
            consumer.held = paused
            self._update_paused(consumer)
            if was and not consumer.paused and consumer.stats().keyframe_wait:
                resumed.append(consumer)
        return resumed

    def pause_producer(self, producer: Producer, paused: bool) -> bool:
        """Hold (or resume) one published track for all its consumers, present and future;
        True when it resumed with consumers (the publisher is asked for a keyframe)."""
        was = producer.paused
        producer.paused = paused
        subscribers = self.subscribers(producer)
        for consumer in subscribers:
            self._update_paused(consumer)
        return was and not paused and bool(subscribers)

    def confirm(self, consumer: Consumer) -> bool:
        """The subscriber receives the consumer's SSRC (a receiver report names it, or
        probing gave up): the plane forwards it from the producer's next keyframe."""
        if consumer.confirmed:
            return False
        consumer.confirmed = True
        consumer.probe_since = None
        self._update_paused(consumer)
        if consumer.producer is not None:
            self._on_attach(consumer)
        return True

    # -- inside ------------------------------------------------------------------------------
    def _tidy(self, room_name: str) -> None:
        """The one place a room is deleted: when its last track went."""
        room = self._rooms.get(room_name)
        if room is not None and room.is_empty():
            del self._rooms[room_name]

    def _add_stream(self, producer: Producer) -> None:
        plane = producer.plane
        if plane is None or producer.streaming or producer.ssrc is None:
            return
        plane.add_stream(producer.plane_id, producer.transport.plane_id, producer.ssrc, producer.codec.payload_type,
                         producer.codec.clock_rate, nack=producer.supports_nack, nack_max_gap=NACK_MAX_GAP,
                         cache_packets=CACHE_SIZE,
                         cache_bytes=VIDEO_CACHE_BYTES if producer.kind == "video" else AUDIO_CACHE_BYTES)
        producer.streaming = True
        self._streams[producer.plane_id] = producer
        for consumer in self.subscribers(producer):
            self._bind_plane(consumer)

    def _add_producer(self, room: Room, producer: Producer) -> None:
        if producer.id in room.producers:
            return
        producer.room = room
        room.producers[producer.id] = producer
        room._published += 1
        room._order[producer] = room._published
        key = _codec_key(producer.kind, producer.codec)
        room._by_codec.setdefault(key, {})[producer] = None
        room._subscribers[producer] = {}
        self.totals["producers"] += 1
        waiting = room._waiting.get(key)
        if not waiting:
            return
        served: set[int] = set()  # transports given this new track already (one section each)
        for consumer in list(waiting):
            transport = consumer.transport
            if transport is producer.transport or id(transport) in served:
                continue
            served.add(id(transport))
            self._attach(room, consumer, producer)
            self._on_attach(consumer)

    def _remove_producer(self, tracks: SessionTracks, producer: Producer) -> None:
        room = producer.room
        if room is not None:
            if room.producers.get(producer.id) is producer:
                del room.producers[producer.id]
                self.totals["producers"] -= 1
                key = _codec_key(producer.kind, producer.codec)
                same = room._by_codec.get(key)
                if same is not None:
                    same.pop(producer, None)
                    if not same:
                        del room._by_codec[key]
                room._order.pop(producer, None)
            for consumer in list(room._subscribers.pop(producer, ())):
                consumer.producer = None  # already out of the producer's subscribers
                self._set_producer(consumer, None)
                replacement = None if consumer.explicit else room.best_producer(consumer)
                if replacement is not None:
                    self._attach(room, consumer, replacement)
                    self._on_attach(consumer)
                else:
                    room._set_waiting(consumer)
            producer.room = None
        if producer.streaming:
            self.plane.remove_stream(producer.plane_id)
            self._streams.pop(producer.plane_id, None)
            producer.streaming = False
        producer.plane = None
        tracks.producers = tuple(p for p in tracks.producers if p is not producer)
        if tracks._by_mid.get(producer.mid) is producer:
            del tracks._by_mid[producer.mid]
        if producer.ssrc is not None and tracks._by_ssrc.get(producer.ssrc) is producer:
            del tracks._by_ssrc[producer.ssrc]
            producer.transport.forget_ssrc(producer.ssrc, inbound=True)

    def _remove_consumer(self, tracks: SessionTracks, consumer: Consumer) -> None:
        room = self._rooms.get(tracks.room_name)
        if room is not None:
            if consumer in room.consumers:
                del room.consumers[consumer]
                self.totals["consumers"] -= 1
            room._unset_waiting(consumer)
            self._detach(room, consumer)
        if consumer.plane is not None:
            self.plane.remove_subscription(consumer.plane_id)
            consumer.plane = None
        tracks.consumers = tuple(c for c in tracks.consumers if c is not consumer)
        if tracks._consumers.get(consumer.ssrc) is consumer:
            del tracks._consumers[consumer.ssrc]
            consumer.transport.forget_ssrc(consumer.ssrc, inbound=False)
        if consumer.rtx_ssrc is not None and tracks._by_rtx.get(consumer.rtx_ssrc) is consumer:
            del tracks._by_rtx[consumer.rtx_ssrc]

    def _attach(self, room: Room, consumer: Consumer, producer: Producer) -> None:
        room._unset_waiting(consumer)
        room._subscribers.setdefault(producer, {})[consumer] = None
        self._set_producer(consumer, producer)

    def _detach(self, room: Room, consumer: Consumer) -> None:
        producer = consumer.producer
        if producer is not None:
            subscribers = room._subscribers.get(producer)
            if subscribers is not None:
                subscribers.pop(consumer, None)
        self._set_producer(consumer, None)

    def _set_producer(self, consumer: Consumer, producer: Producer | None) -> None:
        """Forward ``producer`` (or nothing): the plane's subscription is bound to its
        stream (the keyframe gate armed for video), then paused or not as it is."""
        consumer.producer = producer
        consumer.keyframe_codec = codec_id(producer.codec.name) if producer is not None and consumer.kind == "video" \
            else CODEC_OTHER
        self._bind_plane(consumer)
        self._update_paused(consumer)

    def _bind_plane(self, consumer: Consumer) -> None:
        """Bind the plane's subscription to the producer's stream (when the plane has it)."""
        if consumer.plane is None:
            return
        producer = consumer.producer
        rtx_pt = consumer.codec.rtx_payload_type
        rtx_pt = rtx_pt if rtx_pt is not None and consumer.rtx_ssrc is not None else -1
        if producer is None or not producer.streaming:
            self.plane.bind(consumer.plane_id, None, {}, {}, CODEC_OTHER, rtx_payload_type=rtx_pt)
            return
        by_uri = {uri: i for i, uri in consumer.extensions.items() if uri in FORWARDED_EXTENSIONS}
        self.plane.bind(consumer.plane_id, producer.plane_id,
                        {producer.codec.payload_type: consumer.codec.payload_type},
                        {i: by_uri[uri] for i, uri in producer.extensions.items() if uri in by_uri},
                        consumer.keyframe_codec, rtx_payload_type=rtx_pt)

    def _update_paused(self, consumer: Consumer) -> None:
        """paused = held by the subscriber, its producer paused, or not confirmed yet; on
        resume the plane continues the output numbering where it stopped and re-arms
        the keyframe gate."""
        paused = consumer.held or not consumer.confirmed or (consumer.producer is not None
                                                             and consumer.producer.paused)
        if paused != consumer.paused:
            consumer.paused = paused
            if consumer.plane is not None:
                self.plane.set_paused(consumer.plane_id, paused)


def _codec_key(kind: str, codec: Codec) -> tuple:
    """Tracks of equal keys can be forwarded to each other's consumers (_same_codec)."""
    name = codec.name.lower()
    profile = codec.fmtp.get("profile-level-id", "42e01f")[:4].lower() if name == "h264" else ""
    return (kind, name, codec.clock_rate, profile)
