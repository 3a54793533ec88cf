"""The media engine of one worker: one UDP socket, its transports and rooms.

Its public surface is a small command interface, so that the control plane can
later talk to it across a process boundary with the same calls:

- ``create_session(room, role, offer_sdp) -> SessionInfo`` (WHIP publish / WHEP subscribe)
- ``close_session(session_id) -> bool``
- ``set_paused(session_id, paused)``
- ``snapshot() -> dict`` (counters and population)

and events (dicts with a ``type``) given to every listener added with
``add_listener(callback)``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable

from pylibsrtp import Error as SrtpError

from . import demux, sdp
from .config import Config
from .dtls import Certificate
from .ice import peek_local_ufrag
from .log import event
from .router import Consumer, Producer, Room, load_packet_impl
from .transport import Transport, build_rtx

logger = logging.getLogger("sfu.engine")

TICK_INTERVAL = 0.02  # seconds: DTLS timers, NACK generation, reports, consent

PUBLISHER_EXTENSIONS = {
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "urn:3gpp:video-orientation",
}
SUBSCRIBER_EXTENSIONS = {
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "urn:3gpp:video-orientation",
}
PUBLISHER_FEEDBACK = {"nack", "nack pli", "ccm fir", "goog-remb"}
SUBSCRIBER_FEEDBACK = {"nack", "nack pli", "ccm fir"}


@dataclass
class SessionInfo:
    id: str
    room: str
    role: str
    answer: str


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, engine: "MediaEngine") -> None:
        self.engine = engine

    def datagram_received(self, data: bytes, addr) -> None:
        self.engine.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.engine.drop("socket_error")


class MediaEngine:
    def __init__(self, config: Config, pure_python: bool = False) -> None:
        self.config = config
        self.impl = load_packet_impl(pure_python)
        self.certificate = Certificate.generate()
        self.transports: dict[str, Transport] = {}
        self.by_ufrag: dict[str, Transport] = {}
        self.by_addr: dict[tuple, Transport] = {}
        self.rooms: dict[str, Room] = {}
        self.stats: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()
        self._listeners: list[Callable[[dict], None]] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task | None = None
        self._buf = bytearray(2048)
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
        self._udp, _ = await self._loop.create_datagram_endpoint(lambda: _Protocol(self), sock=sock)
        self._ticker = asyncio.create_task(self._tick_loop())

    async def stop(self) -> None:
        for transport in list(self.transports.values()):
            transport.close("server stopped")
        if self._ticker is not None:
            self._ticker.cancel()
            try:
                await self._ticker
            except asyncio.CancelledError:
                pass
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK_INTERVAL)
            now = loop.time()
            for transport in list(self.transports.values()):
                try:
                    transport.tick(now)
                except Exception:  # a bug in one transport must not stop the others
                    logger.exception("transport tick failed", extra={"fields": {"transport": transport.id}})
                    transport.close("internal error")

    def now(self) -> float:
        return self._loop.time() if self._loop is not None else time.monotonic()

    # -- commands ----------------------------------------------------------------
    def create_session(self, room_name: str, role: str, offer_sdp: str) -> SessionInfo:
        """Negotiate a WHIP ("publish") or WHEP ("subscribe") session. SdpError on a bad offer."""
        offer = sdp.parse_sdp(offer_sdp)
        sdp.validate_offer(offer, role)
        room = self.rooms.get(room_name) or Room(room_name)
        now = self.now()

        first = next(m for m in offer.media if not m.rejected)
        dtls_role = "client" if first.setup == "passive" else "server"
        transport = Transport(self, room_name, role, first.ice_ufrag, first.fingerprints, dtls_role, now)

        answers: list[sdp.AnswerMedia] = []
        producers: list[Producer] = []
        consumers: list[Consumer] = []
        for media in offer.media:
            answer = self._negotiate(media, role, room, transport, producers, consumers)
            answers.append(answer)
        if not producers and not consumers:
            raise sdp.SdpError(
                "offer has no audio or video track to publish" if role == "publish"
                else "offer has no audio or video section to receive"
            )
        local = sdp.LocalTransport(
            ice_ufrag=transport.local_ufrag,
            ice_pwd=transport.local_pwd,
            fingerprint=self.certificate.fingerprint("sha-256"),
            setup="active" if dtls_role == "client" else "passive",
            host=self.config.candidate_ip,
            port=self.port or self.config.rtc_port,
        )
        answer_sdp = sdp.build_answer(offer, local, answers)

        # commit: nothing above left state behind if it raised
        self.rooms[room_name] = room
        self.transports[transport.id] = transport
        self.by_ufrag[transport.local_ufrag] = transport
        transport.on_close = self._transport_closed
        for producer in producers:
            transport.producers.append(producer)
            transport.producers_by_mid[producer.mid] = producer
            if producer.ssrc is not None:
                transport.producers_by_ssrc[producer.ssrc] = producer
            room.add_producer(producer, self._consumer_attached)
            self._emit({"type": "track_published", "room": room_name, "session": transport.id,
                        "kind": producer.kind, "codec": producer.codec.name})
        for consumer in consumers:
            transport.consumers.append(consumer)
            transport.consumers_by_ssrc[consumer.ssrc] = consumer
            room.add_consumer(consumer, self._consumer_attached)
        event(logger, "session created", session=transport.id, room=room_name, role=role,
              tracks=len(producers) + len(consumers))
        self._emit({"type": "session_created", "room": room_name, "session": transport.id, "role": role})
        return SessionInfo(transport.id, room_name, role, answer_sdp)

    def _negotiate(self, media, role, room, transport, producers, consumers) -> sdp.AnswerMedia:
        reject = sdp.AnswerMedia(mid=media.mid, kind=media.kind, direction="inactive", codecs=[],
                                 extensions={}, rejected=True)
        if media.rejected or media.kind not in ("audio", "video"):
            return reject
        defaults = self.config.audio_codecs if media.kind == "audio" else self.config.video_codecs
        prefs = room.codec_preference(media.kind, defaults)
        if role == "publish":
            if media.direction not in ("sendonly", "sendrecv"):
                return sdp.AnswerMedia(mid=media.mid, kind=media.kind, direction="inactive",
                                       codecs=sdp.select_codecs(media, prefs, PUBLISHER_FEEDBACK)[:1],
                                       extensions={}, rejected=False)
            codecs = sdp.select_codecs(media, prefs, PUBLISHER_FEEDBACK)
            if not codecs:
                return reject
            codec = codecs[0]
            codec.rtx_payload_type = None  # publishers retransmit on the media SSRC
            extensions = sdp.select_extensions(media, PUBLISHER_EXTENSIONS)
            ssrc = _media_ssrc(media)
            producer = Producer(transport, media.kind, media.mid, codec, ssrc, extensions, self.impl)
            producers.append(producer)
            for ext_id, uri in extensions.items():
                if uri == "urn:ietf:params:rtp-hdrext:sdes:mid":
                    transport.mid_ext_id = ext_id
            return sdp.AnswerMedia(mid=media.mid, kind=media.kind, direction="recvonly",
                                   codecs=[codec], extensions=extensions)
        # subscribe
        if media.direction not in ("recvonly", "sendrecv"):
            return reject
        codecs = sdp.select_codecs(media, prefs, SUBSCRIBER_FEEDBACK)
        if not codecs:
            return reject
        codec = codecs[0]
        extensions = sdp.select_extensions(media, SUBSCRIBER_EXTENSIONS)
        consumer = Consumer(transport, media.kind, media.mid, codec, extensions, self.impl)
        consumers.append(consumer)
        return sdp.AnswerMedia(mid=media.mid, kind=media.kind, direction="sendonly", codecs=[codec],
                               extensions=extensions, ssrc=consumer.ssrc, rtx_ssrc=consumer.rtx_ssrc,
                               cname=consumer.cname, msid=consumer.msid)

    def close_session(self, session_id: str, reason: str = "closed by client") -> bool:
        transport = self.transports.get(session_id)
        if transport is None:
            return False
        transport.close(reason)
        return True

    def has_session(self, session_id: str) -> bool:
        return session_id in self.transports

    def set_paused(self, session_id: str, paused: bool) -> bool:
        transport = self.transports.get(session_id)
        if transport is None:
            return False
        for consumer in transport.consumers:
            consumer.paused = paused
            if not paused:
                consumer.synced = False
        return True

    def snapshot(self) -> dict:
        return {
            "transports": len(self.transports),
            "rooms": len(self.rooms),
            "producers": sum(len(r.producers) for r in self.rooms.values()),
            "consumers": sum(len(r.consumers) for r in self.rooms.values()),
            "stats": dict(self.stats),
            "drops": dict(self.drops),
        }

    # -- callbacks from transports ---------------------------------------------------
    def _transport_closed(self, transport: Transport, reason: str) -> None:
        self.transports.pop(transport.id, None)
        self.by_ufrag.pop(transport.local_ufrag, None)
        if transport.addr is not None and self.by_addr.get(transport.addr) is transport:
            del self.by_addr[transport.addr]
        room = self.rooms.get(transport.room_name)
        if room is not None:
            for producer in transport.producers:
                room.remove_producer(producer, self._consumer_attached)
            for consumer in transport.consumers:
                room.remove_consumer(consumer)
            if room.is_empty():
                del self.rooms[room.name]
        if transport.srtp is not None:
            for producer in transport.producers:
                if producer.ssrc is not None:
                    transport.srtp.remove_inbound_stream(producer.ssrc)
            for consumer in transport.consumers:
                transport.srtp.remove_outbound_stream(consumer.ssrc)
        transport.producers.clear()
        transport.consumers.clear()
        transport.producers_by_ssrc.clear()
        transport.consumers_by_ssrc.clear()
        transport.srtp = None
        self._emit({"type": "session_closed", "room": transport.room_name, "session": transport.id,
                    "reason": reason})

    def address_changed(self, transport: Transport, old, new) -> None:
        if old is not None and self.by_addr.get(old) is transport:
            del self.by_addr[old]
        self.by_addr[new] = transport

    def transport_connected(self, transport: Transport, now: float) -> None:
        for consumer in transport.consumers:
            if consumer.producer is not None:
                self.request_keyframe(consumer.producer, now)
        self._emit({"type": "session_connected", "room": transport.room_name, "session": transport.id})

    def _consumer_attached(self, consumer: Consumer) -> None:
        if consumer.transport.state == "connected" and consumer.producer is not None:
            self.request_keyframe(consumer.producer, self.now())

    def request_keyframe(self, producer: Producer, now: float) -> None:
        packet = producer.request_keyframe(now, self.config.keyframe_interval_min)
        if packet is not None:
            self.stats["keyframe_requests_sent"] += 1
            producer.transport.send_rtcp([packet])

    def add_listener(self, callback: Callable[[dict], None]) -> None:
        """Call ``callback(event_dict)`` for every engine event (on the engine's loop)."""
        self._listeners.append(callback)

    def _emit(self, ev: dict) -> None:
        for callback in self._listeners:
            try:
                callback(ev)
            except Exception:
                logger.exception("event listener failed")

    # -- data path ---------------------------------------------------------------
    def send(self, data: bytes, addr) -> None:
        if self._udp is not None:
            self._udp.sendto(data, addr)

    def drop(self, reason: str) -> None:
        self.drops[reason] += 1

    def datagram_received(self, data: bytes, addr) -> None:
        now = self._loop.time()
        kind = demux.classify(data)
        if kind == demux.STUN:
            ufrag = peek_local_ufrag(data)
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
            if kind == demux.RTP:
                transport.receive_rtp(data, now)
            elif kind == demux.RTCP:
                transport.receive_rtcp(data, now)
            elif kind == demux.DTLS:
                transport.receive_dtls(data, now)
            else:
                self.drop("malformed")
        except Exception:  # never let one bad packet kill the worker
            self.drop("internal_error")
            logger.exception("packet handling failed", extra={"fields": {"transport": transport.id}})

    def forward(self, producer: Producer, plain: bytes, seq: int, ts: int, now: float) -> None:
        consumers = producer.consumers
        if not consumers:
            self.drop("no_subscriber")
            return
        buf = self._buf
        sent = 0
        for consumer in consumers:
            transport = consumer.transport
            srtp = transport.srtp
            if srtp is None or consumer.paused or transport.addr is None:
                continue
            if not consumer.synced:
                consumer.sync(seq, ts, now)
            n = consumer.rewriter.rewrite(plain, buf)
            if n < 0:
                continue
            try:
                out = srtp.protect(bytes(buf[:n]))
            except SrtpError:
                self.drop("srtp_protect")
                continue
            self.send(out, transport.addr)
            consumer.last_out_seq = (seq + consumer.rewriter.seq_delta) & 0xFFFF
            consumer.last_out_ts = (ts + consumer.rewriter.ts_delta) & 0xFFFFFFFF
            consumer.last_out_time = now
            consumer.packets_sent += 1
            consumer.octets_sent += n
            sent += 1
        self.stats["rtp_forwarded"] += sent

    def retransmit(self, consumer: Consumer, lost_seqs: list[int]) -> None:
        """Answer a subscriber's NACK from the producer's packet cache (RTX when negotiated)."""
        producer = consumer.producer
        transport = consumer.transport
        if producer is None or transport.srtp is None or transport.addr is None:
            return
        buf = bytearray(2048)
        for out_seq in lost_seqs:
            in_seq = (out_seq - consumer.rewriter.seq_delta) & 0xFFFF
            plain = producer.cached(in_seq)
            if plain is None:
                self.stats["nack_misses"] += 1
                continue
            n = consumer.rewriter.rewrite(plain, buf)
            if n < 0:
                continue
            packet = memoryview(buf)[:n]
            if consumer.rtx_ssrc is not None and consumer.codec.rtx_payload_type is not None:
                hlen = self.impl.parse_rtp_header(packet)[5]
                consumer.rtx_seq = (consumer.rtx_seq + 1) & 0xFFFF
                data = build_rtx(packet, hlen, consumer.codec.rtx_payload_type, consumer.rtx_seq, consumer.rtx_ssrc)
            else:
                data = bytes(packet)
            try:
                out = transport.srtp.protect(data)
            except SrtpError:
                self.drop("srtp_protect")
                continue
            self.send(out, transport.addr)
            consumer.retransmissions += 1
            self.stats["retransmissions"] += 1


def _media_ssrc(media) -> int | None:
    """The primary SSRC of an m-section (the first of its FID group, else its first SSRC)."""
    for semantics, ssrcs in media.ssrc_groups:
        if semantics.upper() in ("FID", "SIM") and ssrcs:
            return ssrcs[0]
    return media.ssrcs[0] if media.ssrcs else None
