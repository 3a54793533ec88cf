"""The media engine of one worker: one UDP socket, its transports, and the
commands of the control plane.

Its public surface is a small command interface, so that the control plane can
later talk to it across a process boundary with the same calls:

- ``create_session(room, role, offer_sdp, subscriptions=None) -> SessionInfo``
  (WHIP "publish", WHEP "subscribe", or "meeting": one transport that publishes
  its sendonly sections and receives, in each recvonly section, exactly the
  producer that ``subscriptions[mid]`` names)
- ``update_session(session_id, offer_sdp, subscriptions) -> answer_sdp``
  (renegotiation of a meeting session on the same ICE/DTLS/SRTP transport)
- ``describe_session(session_id) -> dict | None`` (its producers and consumers by mid)
- ``close_session(session_id) -> bool``
- ``set_paused(session_id, paused)``
- ``pause_producer(producer_id, paused)`` (hold one published track for everyone)
- ``record(room, directory, owner, on_stopped) -> RoomRecording`` (a recorder of the room's
  tracks: sfu/recording.py)
- ``snapshot() -> dict`` (counters and population)

and events (the dataclasses of sfu/events.py) given to every listener added with
``add_listener(callback)``.

Who owns what:

- the engine owns the socket, the transports (by id, ICE username, address, plane
  peer id), the timer heap, the limits (sessions connecting, tracks) and the
  counters. It negotiates: an offer and the session's state give a plan (the
  answer, the tracks to add, keep, rebind and remove) computed without side
  effects (sfu.offers.Negotiator); only an accepted plan is committed, in one
  step, so a refused offer changes nothing anywhere;
- the router (``self.router``, sfu.router) alone owns membership: rooms,
  producers, consumers, who receives what, with indexes by session, mid and
  SSRC; the commit hands it the plan and it gives the forwarding plane the
  commands (peer, stream, subscription, bind, pause, removals);
- each transport (sfu.transport) owns its ICE, DTLS and RTCP SRTP state and
  reports to the engine as its TransportHost; it reads its tracks from the
  router's read-only SessionTracks;
- the forwarding plane (``self.plane``, sfu/plane.py: CPlane for ``datapath="c"``,
  PythonPlane for ``"pure"``) owns the packets; the engine is its listener
  (``slow_path``: STUN, DTLS, RTCP; ``unknown_ssrc``; ``keyframe_needed``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import math
import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from . import demux, offers, sdp
from .config import Config
from .dtls import Certificate
from .events import (
    CloseReason, EngineEvent, SessionClosed, SessionConnected, SessionCreated, SessionUpdated, TrackPublished,
    TrackUnpublished,
)
from .ice import peek_ufrag
from .limits import ROOM_FULL, SERVER_BUSY, TOO_MANY_TRACKS, LimitExceeded
from .log import event
from .plane import ForwardingPlane
from .router import Consumer, Producer, Router
from .transport import Transport

logger = logging.getLogger("sfu.engine")

TICK_INTERVAL = 0.02  # seconds: DTLS timers, NACK generation, reports, consent (of the transports due)
SERVER_FULL_RETRY_AFTER = 30.0  # seconds (Retry-After) when the server-wide track limit refuses a session



@dataclass
class SessionInfo:
    id: str
    room: str
    role: str
    answer: str


DATAPATHS = ("c", "pure")


class MediaEngine:
    def __init__(self, config: Config, pure_python: bool = False, *, capture: bool = False) -> None:
        """``capture``: the plane sends nothing, it records (tests)."""
        self.config = config
        mode = "pure" if pure_python else getattr(config, "datapath", "c")
        if mode not in DATAPATHS:
            raise ValueError(f"datapath must be c or pure, not {mode!r}")
        self.datapath_mode = mode
        if mode == "c":
            from .plane_c import CPlane as plane_class
        else:
            from .plane_py import PythonPlane as plane_class
        self.plane: ForwardingPlane = plane_class(self, capture=capture)
        # membership (rooms, producers, consumers, subscriptions) is the router's alone
        self.router = Router(self.plane, self._consumer_attached)
        self._plane_ids = itertools.count(1)  # plane ids (peers, streams, subscriptions)
        self.negotiator = offers.Negotiator(config, self.router, lambda: next(self._plane_ids))
        self._sock: socket.socket | None = None
        self.certificate = Certificate.generate()
        self.transports: dict[str, Transport] = {}
        self.by_ufrag: dict[str, Transport] = {}
        self.by_addr: dict[tuple, Transport] = {}
        self.pending: dict[str, Transport] = {}  # sessions not connected yet, oldest first
        self.pending_by_room: dict[str, dict[str, Transport]] = {}  # the same by room
        self.peers: dict[int, Transport] = {}  # plane peer id -> transport
        self.stats: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self._listeners: list[Callable[[dict], None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task | None = None
        # transport timers: a heap of (due, push number, transport); an entry whose due is
        # not its transport's timer_at any more is stale and skipped (see schedule)
        self._timers: list[tuple[float, int, Transport]] = []
        self._pushes = itertools.count()
        self._transport_order = itertools.count()
        self.port: int | None = None

    # -- life cycle ------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 4 * 1024 * 1024)
            except OSError:
                pass
        sock.bind((self.config.host, self.config.rtc_port))
        sock.setblocking(False)
        self.port = sock.getsockname()[1]
        self._sock = sock
        self.plane.open(sock, self._loop)
        self._ticker = asyncio.create_task(self._tick_loop())

    async def stop(self) -> None:
        for transport in list(self.transports.values()):
            transport.close(CloseReason.SERVER_STOPPED)
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
        if self._sock is not None:
            self.plane.close()
            self._sock.close()
            self._sock = None

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            self.tick(loop.time())

    def tick(self, now: float) -> None:
        """Timers of the transports that are due (DTLS, NACK, reports, consent); tests call
        it with a fake clock. A transport is due at its ``Transport.next_timer`` or when
        something it must answer happens (``schedule``): its NACK log gained events, a
        keyframe request was throttled, DTLS moved, it connected. Ticking a transport
        that has nothing to do is harmless, so early is fine, late is not; the ones due
        tick in creation order, as when every transport ticked every time."""
        self._fold_counters()
        for stream in self.plane.take_dirty():  # streams that logged NACK events
            producer = self.router.stream(stream)
            if producer is not None:
                self.schedule(producer.transport, now)
        timers = self._timers
        due: list[Transport] = []
        while timers and timers[0][0] <= now:
            when, _, transport = heapq.heappop(timers)
            if when == transport.timer_at:
                transport.timer_at = math.inf
                due.append(transport)
        if len(due) > 1:
            due.sort(key=_creation_order)
        for transport in due:
            if transport.state == "closed":
                continue
            try:
                transport.tick(now)
                if transport.state != "closed":
                    self.schedule(transport, transport.next_timer(now))
            except Exception:  # a bug in one transport must not stop the others
                logger.exception("transport tick failed", extra={"fields": {"transport": transport.id}})
                transport.close(CloseReason.INTERNAL_ERROR)

    def schedule(self, transport: Transport, when: float) -> None:
        """Tick ``transport`` at the first engine tick at or after ``when`` (the earliest request wins)."""
        if when < transport.timer_at:
            transport.timer_at = when
            heapq.heappush(self._timers, (when, next(self._pushes), transport))
            if len(self._timers) > 2 * len(self.transports) + 64:
                self._compact_timers()

    def _compact_timers(self) -> None:
        """Drop the entries that tick would skip: those of closed transports (which would
        otherwise keep them, their DTLS and SRTP state, until due: up to consent_timeout
        after a close) and those superseded by an earlier one. Amortised: it runs when
        the heap is twice the live transports, and leaves at most one entry each."""
        self._timers = [entry for entry in self._timers
                        if entry[0] == entry[2].timer_at and entry[2].state != "closed"]
        heapq.heapify(self._timers)

    def now(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    # -- commands ----------------------------------------------------------------
    def create_session(self, room_name: str, role: str, offer_sdp: str,
                       subscriptions: dict[str, str] | None = None) -> SessionInfo:
        """Negotiate a WHIP ("publish"), WHEP ("subscribe") or "meeting" session.
        SdpError on a bad offer. For "meeting", ``subscriptions`` maps the mid of
        each recvonly section to the id of the producer it carries (an unmapped
        section stays silent until a renegotiation maps it). LimitExceeded when a
        limit of the config refuses it (README.md, "Limits"); nothing is built then."""
        now = self.now()
        self._check_pending(room_name, now)
        offer = sdp.parse_sdp(offer_sdp, self.config.max_offer_sections)
        offers.validate(offer, role, creating=True)
        if role == "meeting" and subscriptions is None:
            subscriptions = {}
        self._check_tracks(room_name, *offers.planned_tracks(offer, role))

        first = next(m for m in offer.media if not m.rejected)
        dtls_role = "client" if first.setup == "passive" else "server"
        config = self.config
        transport = Transport(self, room_name, role, first.ice_ufrag, first.fingerprints, dtls_role, now,
                              certificate=self.certificate, consent_timeout=config.consent_timeout,
                              keyframe_interval=config.keyframe_interval_min,
                              publisher_bitrate=config.publisher_bitrate, remote_pwd=first.ice_pwd,
                              plane_id=next(self._plane_ids))

        plan = self.negotiator.plan(offer, role, transport, subscriptions)
        answers, producers, consumers, binds = plan.answers, plan.producers, plan.consumers, plan.binds
        if not producers and not consumers:
            raise sdp.SdpError(
                "offer has no audio or video track to publish" if role == "publish"
                else "offer has no audio or video section to receive" if role == "subscribe"
                else "offer has no audio or video section to send or receive"
            )
        offers.check_ssrcs(producers, ())
        answer_sdp = self._answer(transport, offer, answers)

        # commit: nothing above left state behind if it raised (the transport and its
        # tracks are only built; the router gives the plane its peer and tracks here)
        transport.sdp_version += 1
        self.router.open_session(transport)
        self.peers[transport.plane_id] = transport
        self.transports[transport.id] = transport
        self.by_ufrag[transport.local_ufrag] = transport
        self.pending[transport.id] = transport
        self.pending_by_room.setdefault(room_name, {})[transport.id] = transport
        transport.order = next(self._transport_order)
        self.schedule(transport, now)
        self._add_tracks(transport, producers, consumers, binds)
        event(logger, "session created", session=transport.id, room=room_name, role=role,
              tracks=len(producers) + len(consumers))
        self._emit(SessionCreated(room_name, transport.id, role))
        return SessionInfo(transport.id, room_name, role, answer_sdp)

    def _check_pending(self, room_name: str, now: float) -> None:
        """LimitExceeded (503) while max_pending_sessions sessions of the server, or
        max_room_pending_sessions of the room, are still connecting; they connect or are
        reaped by the consent timeout, the oldest first."""
        in_room = self.pending_by_room.get(room_name, {})
        for pending, limit, where in ((self.pending, self.config.max_pending_sessions, ""),
                                      (in_room, self.config.max_room_pending_sessions, " in this room")):
            if 0 < limit <= len(pending):
                oldest = next(iter(pending.values()))
                timeout = self.config.consent_timeout
                wait = min(max(1.0, oldest.created + timeout - now), timeout)
                self._refuse(LimitExceeded(
                    SERVER_BUSY, f"{len(pending)} sessions{where} are still connecting, at most {limit} are "
                                 "allowed: try again later", retry_after=wait))

    def _connected_or_closed(self, transport: Transport) -> None:
        """It does not count as connecting any more (max_pending_sessions)."""
        if self.pending.pop(transport.id, None) is not None:
            in_room = self.pending_by_room.get(transport.room_name)
            if in_room is not None:
                in_room.pop(transport.id, None)
                if not in_room:
                    del self.pending_by_room[transport.room_name]

    def _check_tracks(self, room_name: str, published: int, received: int,
                      had_tracks: int = 0, had_published: int = 0) -> None:
        """LimitExceeded unless a session may hold ``published`` + ``received`` tracks
        in the room (it held ``had_tracks`` of them before this offer)."""
        config = self.config
        tracks = published + received
        if 0 < config.max_session_published < published and published > had_published:
            self._refuse(LimitExceeded(TOO_MANY_TRACKS, f"offer publishes {published} tracks, at most "
                                                        f"{config.max_session_published} are allowed per session"))
        if 0 < config.max_session_tracks < tracks and tracks > had_tracks:
            self._refuse(LimitExceeded(TOO_MANY_TRACKS, f"offer has {tracks} tracks to send or receive, at most "
                                                        f"{config.max_session_tracks} are allowed per session"))
        added = tracks - had_tracks
        if added <= 0:
            return
        in_room = self.router.track_count(room_name)
        if 0 < config.max_room_tracks < in_room + added:
            self._refuse(LimitExceeded(ROOM_FULL, f"room {room_name} is full: it has {in_room} tracks, "
                                                  f"at most {config.max_room_tracks} are allowed"))
        total = self.router.total_tracks
        if 0 < config.max_server_tracks < total + added:
            self._refuse(LimitExceeded(SERVER_BUSY, "the server is full (track limit reached): try again later",
                                       retry_after=SERVER_FULL_RETRY_AFTER))

    def _refuse(self, exc: LimitExceeded) -> None:
        self.stats["sessions_refused_" + exc.code] += 1
        event(logger, "session refused", logging.INFO, code=exc.code, reason=exc.message)
        raise exc

    def _answer(self, transport: Transport, offer: sdp.SessionDescription, answers: list) -> str:
        local = sdp.LocalTransport(
            ice_ufrag=transport.local_ufrag,
            ice_pwd=transport.local_pwd,
            fingerprint=self.certificate.fingerprint("sha-256"),
            setup="active" if transport.dtls_role == "client" else "passive",
            host=self.config.candidate_ip,
            port=self.port or self.config.rtc_port,
        )
        # RFC 3264 §8: each new answer keeps the o= session id and increments its version
        # (transport.sdp_version, counted by the commit: a refused offer leaves it)
        answer = sdp.build_answer(offer, local, answers, session_id=transport.sdp_session_id)
        return answer.replace(f"o=- {transport.sdp_session_id} 2 ",
                              f"o=- {transport.sdp_session_id} {transport.sdp_version + 1} ", 1)

    def _add_tracks(self, transport: Transport, producers: list[Producer], consumers: list[Consumer],
                    binds: list[tuple[Consumer, Producer | None]]) -> None:
        """Commit the tracks an accepted offer made (the router; built by the negotiator, which changed nothing)."""
        self.router.add_tracks(transport, producers, consumers, binds)
        for producer in producers:
            self._emit(TrackPublished(transport.room_name, transport.id, producer.kind, producer.codec.name,
                                      producer.id, producer.mid))

    def _retire(self, producers, consumers) -> None:
        """Keep the traffic counts of tracks that go away, so per-kind totals never go down."""
        stats = self.stats
        for producer in producers:
            received = producer.stats()
            stats["rtp_packets_received_" + producer.kind] += received.packets
            stats["rtp_bytes_received_" + producer.kind] += received.bytes
        for consumer in consumers:
            sent = consumer.stats()
            stats["rtp_packets_forwarded_" + consumer.kind] += sent.packets_sent
            stats["rtp_bytes_forwarded_" + consumer.kind] += sent.octets_sent
            stats["rtx_sent_" + consumer.kind] += sent.retransmissions

    def update_session(self, session_id: str, offer_sdp: str,
                       subscriptions: dict[str, str] | None = None) -> str:
        """Renegotiate a meeting session (RFC 9429 §5.2.2 subsequent offer) on the
        same transport: same ICE credentials, DTLS and SRTP. A new sendonly section
        publishes a new producer, one that goes inactive, recvonly or port 0
        (RFC 3264 §8.2) unpublishes it; each recvonly section carries exactly the
        producer ``subscriptions[mid]`` names (or nothing). KeyError for an
        unknown session, SdpError for an unusable offer; nothing changes then."""
        transport = self.transports.get(session_id)
        if transport is None:
            raise KeyError(session_id)
        if transport.role != "meeting":
            raise sdp.SdpError("only meeting sessions can be renegotiated")
        offer = sdp.parse_sdp(offer_sdp, self.config.max_offer_sections)
        offers.validate(offer, "meeting", creating=False)
        remote_fingerprints = set(transport.dtls.remote_fingerprints)
        for media in offer.media:
            if media.rejected:
                continue
            if media.ice_ufrag != transport.ice.remote_ufrag or not media.ice_pwd:
                raise sdp.SdpError("ICE restart is not supported (the offer changed a=ice-ufrag)")
            if not {(a.lower(), v.upper()) for a, v in media.fingerprints} & remote_fingerprints:
                raise sdp.SdpError("the offer changed its DTLS fingerprint")
        subscriptions = dict(subscriptions or {})
        room_name = transport.room_name
        self._check_tracks(room_name, *offers.planned_tracks(offer, "meeting"),
                           had_tracks=len(transport.producers) + len(transport.consumers),
                           had_published=len(transport.producers))
        plan = self.negotiator.plan_update(offer, transport, subscriptions)
        new_producers, new_consumers, binds = plan.producers, plan.consumers, plan.binds
        kept_producers, rebinds = plan.kept, plan.rebinds
        answers = plan.answers
        offers.check_ssrcs(new_producers, kept_producers)
        answer_sdp = self._answer(transport, offer, answers)

        # commit, in one step now that the whole offer is accepted (nothing above changed
        # the transport, the room or a data path): removals first (a mid may change from
        # publishing to receiving, an SSRC move to another mid)
        transport.sdp_version += 1
        kept_consumers = {c for c, _, _ in rebinds}
        router = self.router
        for producer in [p for p in transport.producers if p not in kept_producers]:
            self._retire((producer,), ())
            router.remove_producer(producer)
            self._emit(TrackUnpublished(room_name, transport.id, producer.kind, producer.id, producer.mid,
                                        CloseReason.UNPUBLISHED))
        for consumer in [c for c in transport.consumers if c not in kept_consumers]:
            self._retire((), (consumer,))
            router.remove_consumer(consumer)
        for consumer, codec, target in rebinds:
            router.rebind(consumer, codec, target)
        if transport.state == "connected":
            # a new video SSRC is unknown to the client until it applied this answer: the
            # plane holds it until a receiver report names it (Transport._probe)
            for consumer in new_consumers:
                consumer.confirmed = consumer.kind != "video" or consumer.codec.rtx_payload_type is None
        self._add_tracks(transport, new_producers, new_consumers, binds)
        self.schedule(transport, self.now())  # new producers: their timers start; probes
        event(logger, "session updated", session=transport.id, room=room_name,
              producers=len(transport.producers), consumers=len(transport.consumers))
        self._emit(SessionUpdated(room_name, transport.id))
        return answer_sdp

    def describe_session(self, session_id: str) -> dict | None:
        """What a session holds, by mid: its producers and what each consumer receives."""
        transport = self.transports.get(session_id)
        if transport is None:
            return None
        return {
            "room": transport.room_name,
            "role": transport.role,
            "state": transport.state,
            "producers": {p.mid: {"id": p.id, "kind": p.kind} for p in transport.producers},
            "consumers": {c.mid: {"kind": c.kind, "producer": c.producer.id if c.producer else None}
                          for c in transport.consumers},
        }

    def close_session(self, session_id: str, reason: CloseReason | str = CloseReason.CLIENT) -> bool:
        """Close a session; ``reason`` is a CloseReason (or its value). False if there is none."""
        transport = self.transports.get(session_id)
        if transport is None:
            return False
        transport.close(reason)
        return True

    def has_session(self, session_id: str) -> bool:
        return session_id in self.transports

    def set_paused(self, session_id: str, paused: bool) -> bool:
        if session_id not in self.transports:
            return False
        for consumer in self.router.hold(session_id, paused):
            self._consumer_attached(consumer)  # resumed video: ask for a keyframe at once
        return True

    def pause_producer(self, producer_id: str, paused: bool) -> bool:
        """Hold (or resume) forwarding of one published track to every subscriber,
        present and future (a host mute); False if there is no such producer.
        Resuming video asks the publisher for a keyframe."""
        producer = self.router.producer(producer_id)
        if producer is None:
            return False
        if self.router.pause_producer(producer, paused):
            self.request_keyframe(producer, self.now())
        return True

    def record(self, room: str, directory: str, owner, on_stopped):
        """A recorder of ``room``'s current and future tracks into ``directory``: one more plane
        peer, with no WebRTC (sfu/recording.py: ``await .start()``, ``await .stop()``)."""
        from .recording import RoomRecording

        return RoomRecording(self, room, directory, owner, on_stopped, lambda: next(self._plane_ids))

    def snapshot(self) -> dict:
        self._fold_counters()
        return {
            "transports": len(self.transports),
            "rooms": len(self.router.rooms),
            "producers": self.router.totals["producers"],
            "consumers": self.router.totals["consumers"],
            "connecting": len(self.pending),
            "stats": dict(self.stats),
            "drops": dict(self.drops),
        }

    # -- TransportHost (sfu.transport): what transports report -----------------------------
    def transport_closed(self, transport: Transport, reason: CloseReason) -> None:
        if self.transports.get(transport.id) is not transport:
            return  # never committed (a refused offer's)
        self._connected_or_closed(transport)
        self._retire(transport.producers, transport.consumers)
        for producer in self.router.close_session(transport):
            self._emit(TrackUnpublished(transport.room_name, transport.id, producer.kind, producer.id,
                                        producer.mid, reason))
        self.peers.pop(transport.plane_id, None)
        self.transports.pop(transport.id, None)
        self.by_ufrag.pop(transport.local_ufrag, None)
        if transport.addr is not None and self.by_addr.get(transport.addr) is transport:
            del self.by_addr[transport.addr]
        transport.srtp = None
        self._emit(SessionClosed(transport.room_name, transport.id, reason))

    def address_changed(self, transport: Transport, old, new) -> None:
        if old is not None and self.by_addr.get(old) is transport:
            del self.by_addr[old]
        self.by_addr[new] = transport
        self.plane.set_address(transport.plane_id, new)

    def srtp_keys(self, transport: Transport, profile: int, local_key: bytes, remote_key: bytes) -> None:
        self.plane.set_keys(transport.plane_id, profile, local_key, remote_key)

    def transport_connected(self, transport: Transport, now: float) -> None:
        self._connected_or_closed(transport)
        for consumer in transport.consumers:
            if consumer.producer is not None:
                self.request_keyframe(consumer.producer, now)
        self.schedule(transport, now)  # reports, NACKs from now on
        self._emit(SessionConnected(transport.room_name, transport.id))

    def retransmit(self, consumer: Consumer, lost_seqs: list[int], now: float) -> None:
        """A subscriber's NACK: the plane answers it from the producer's packet cache
        within the subscriber's NACK budget (a number at most once per round trip)."""
        if consumer.plane is not None:
            self.plane.retransmit(consumer.plane_id, lost_seqs, now, consumer.nack_window())

    def consumer_confirmed(self, consumer: Consumer, now: float) -> None:
        """The subscriber receives a new consumer's SSRC (Transport._probe): forward it
        from its producer's next keyframe, asked for now."""
        if not consumer.confirmed:
            consumer.transport.finish_probes(consumer)  # before any media of it
            self.router.confirm(consumer)
            self.stats["consumers_confirmed"] += 1

    def _consumer_attached(self, consumer: Consumer) -> None:
        if consumer.transport.state == "connected" and consumer.producer is not None and consumer.confirmed:
            self.request_keyframe(consumer.producer, self.now())

    def request_keyframe(self, producer: Producer, now: float) -> None:
        packet = producer.request_keyframe(now, self.config.keyframe_interval_min)
        if packet is not None:
            self.stats["keyframe_requests_sent"] += 1
            producer.transport.send_rtcp([packet])
        elif producer._keyframe_pending:  # throttled: Transport.tick sends it when due
            self.schedule(producer.transport, now)

    @property
    def rooms(self):
        """The router's rooms by name (read-only)."""
        return self.router.rooms

    @property
    def track_totals(self) -> Counter:
        return self.router.totals

    def add_listener(self, callback: Callable[[EngineEvent], None]) -> None:
        """Call ``callback(event)`` for every engine event (sfu/events.py), on the engine's loop."""
        self._listeners.append(callback)

    def _emit(self, ev: EngineEvent) -> None:
        for callback in self._listeners:
            try:
                callback(ev)
            except Exception:
                logger.exception("event listener failed")

    # -- the forwarding plane ----------------------------------------------------------
    def send(self, data: bytes, addr) -> None:
        self.plane.send(data, addr)

    def drop(self, reason: str) -> None:
        self.drops[reason] += 1

    def _fold_counters(self) -> None:
        """Add what the plane counted since the last call to stats/drops."""
        stats, drops = self.plane.take_counters()
        self.stats.update(stats)
        self.drops.update(drops)

    def latency(self) -> dict:
        """The plane's forwarding-latency histogram (sfu.metrics)."""
        return self.plane.latency()

    def queued_bytes(self) -> int:
        """Bytes in the plane's user-space send queue (sfu.metrics)."""
        return self.plane.queued_bytes()

    @property
    def socket(self) -> socket.socket | None:
        """The bound UDP socket while started (sfu.metrics reads its queues)."""
        return self._sock

    def media_stats(self) -> list[dict]:
        """Per session, plain data: role, created, and per track its kind and counters
        (sfu.metrics reads this, not the tracks)."""
        out = []
        for transport in list(self.transports.values()):
            producers = []
            for producer in transport.producers:
                s = producer.stats()
                producers.append({"id": producer.id, "kind": producer.kind, "packets": s.packets, "bytes": s.bytes,
                                  "first_packet_time": s.first_packet_time,
                                  # uplink quality (sfu.diagnostics): numbers the publisher sent
                                  # (highest - first + 1) and interarrival jitter in seconds
                                  "expected": s.highest_ext_seq - s.base_ext_seq + 1 if s.base_ext_seq is not None
                                  else 0, "jitter": s.jitter / producer.codec.clock_rate})
            consumers = []
            for consumer in transport.consumers:
                s = consumer.stats()
                consumers.append({"id": consumer.id, "kind": consumer.kind, "attached": consumer.producer is not None,
                                  "packets": s.packets_sent, "bytes": s.octets_sent,
                                  "retransmissions": s.retransmissions, "first_packet_time": s.first_packet_time,
                                  "report": consumer.last_report, "clock_rate": consumer.codec.clock_rate,
                                  "rtt": consumer.rtt,
                                  "producer": consumer.producer.id if consumer.producer is not None else None})
            out.append({"id": transport.id, "role": transport.role, "created": transport.created,
                        "producers": producers, "consumers": consumers})
        return out

    # -- PlaneListener ---------------------------------------------------------------
    def unknown_ssrc(self, peer: int, ssrc: int, packet: bytes) -> bool:
        """The plane met an SSRC it has no stream for: bind it by MID (Router.learn_ssrc)."""
        transport = self.peers.get(peer)
        if transport is None or transport.state == "closed":
            return False
        return self.router.learn_ssrc(transport.id, ssrc, packet) is not None

    def keyframe_needed(self, stream: int) -> None:
        """A subscriber held by the keyframe gate has waited KEYFRAME_RETRY seconds more:
        ask again (throttled as every request)."""
        producer = self.router.stream(stream)
        if producer is not None and producer.room is not None:
            self.request_keyframe(producer, self.now())

    def slow_path(self, data: bytes, addr) -> None:
        """A datagram the plane does not forward itself: STUN, DTLS, RTCP."""
        now = self._loop.time()
        kind = demux.classify(data)
        if kind == demux.STUN:
            # requests by USERNAME, answers to our checks by transaction id (sfu.ice)
            ufrag = peek_ufrag(data)
            transport = self.by_ufrag.get(ufrag) if ufrag is not None else None
            if transport is None:
                self.drop("unknown_ufrag")
                return
            transport.receive_stun(data, addr, now)
            return
        transport = self.by_addr.get(addr)
        if transport is None:
            self.drop("unknown_source")
            return
        try:
            if kind == demux.RTCP:
                transport.receive_rtcp(data, now)
            elif kind == demux.DTLS:
                transport.receive_dtls(data, now)
            elif kind == demux.RTP:
                self.drop("not_connected")
            else:
                self.drop("malformed")
        except Exception:  # never let one bad packet kill the worker
            self.drop("internal_error")
            logger.exception("packet handling failed", extra={"fields": {"transport": transport.id}})


def _creation_order(transport: Transport) -> int:
    return transport.order
