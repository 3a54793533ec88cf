"""One peer's bundled WebRTC transport on the shared UDP port.

A Transport combines the sans-I/O pieces: ICE-lite consent and addressing
(:mod:`sfu.ice`), the DTLS handshake (:mod:`sfu.dtls`) and the SRTP sessions
(:mod:`sfu.srtp`).  Its RTP is the forwarding plane's (``sfu.plane``): once
DTLS is through, its SRTP keys go to the plane, and the transport keeps an SRTP
session of its own for RTCP only (and the padding probes of consumers not
confirmed yet: see ``sfu.tracks.Consumer.confirmed`` and ``Transport._probe``).

It handles RTCP for the producers it publishes and the consumers it receives,
which it reads from ``tracks``: the read-only :class:`sfu.router.SessionTracks`
that the router (sfu.router) keeps for it; it never changes membership. It holds
no engine: it reports to a :class:`TransportHost` (what it sends, its timers, its
counters, what happened to it, keyframe requests, NACKs to answer, consumers
confirmed by a receiver report) and never touches a socket itself.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import struct
from collections import Counter
from typing import Protocol

from pylibsrtp import Error as SrtpError

from . import rtcp
from .dtls import Certificate, Closed, DtlsEndpoint, HandshakeComplete, HandshakeFailed
from .events import CloseReason
from .ice import IceLite
from .log import event
from .router import Consumer, Producer, SessionTracks
from .tracks import PROBE_SEQS
from .srtp import PROFILES, SrtpPair

logger = logging.getLogger("sfu.transport")

SDES_MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
PROBE_INTERVAL = 0.1  # seconds between two padding probes of a consumer not confirmed yet
PROBE_TIMEOUT = 3.0  # seconds of probing without a receiver report: the consumer is confirmed anyway
PROBE_PADDING = 32  # bytes of RTP padding in a probe
# The DTLS endpoint frees its OpenSSL objects (~70 KiB) as soon as the handshake
# completes and answers a retransmitted final flight from a stored copy; the
# peer's close_notify is then not seen: ICE consent or signalling ends the
# session instead (sfu.dtls, module docstring).
DTLS_RELEASE_AFTER = 0.0
# libsrtp keeps an inbound stream (~370 bytes) for every SSRC it authenticated: a peer may
# send RTCP from this many SSRCs it did not announce; beyond, each is forgotten at once
MAX_RTCP_SSRCS = 32


class TransportHost(Protocol):
    """What a Transport reports to and asks of its owner (sfu.engine.MediaEngine)."""

    stats: Counter  # counters by name (sfu.metrics)
    drops: Counter  # dropped packets by reason

    def send(self, data: bytes, addr: tuple) -> None:
        """Send one datagram (STUN, DTLS, SRTCP) from the shared port."""

    def schedule(self, transport: "Transport", when: float) -> None:
        """Call ``transport.tick`` at the first timer tick at or after ``when``."""

    def drop(self, reason: str) -> None: ...

    def address_changed(self, transport: "Transport", old: tuple | None, new: tuple) -> None:
        """ICE selected ``new``: datagrams from it are this transport's, media goes there."""

    def srtp_keys(self, transport: "Transport", profile: int, local_key: bytes, remote_key: bytes) -> None:
        """DTLS is through: the forwarding plane gets the keys for the transport's RTP."""

    def transport_connected(self, transport: "Transport", now: float) -> None: ...

    def transport_closed(self, transport: "Transport", reason: CloseReason) -> None: ...

    def request_keyframe(self, producer: Producer, now: float) -> None:
        """A subscriber asked (PLI, FIR) for a keyframe of ``producer``."""

    def retransmit(self, consumer: Consumer, lost_seqs: list[int], now: float) -> None:
        """A subscriber's NACK of these sequence numbers (its numbering)."""

    def consumer_confirmed(self, consumer: Consumer, now: float) -> None:
        """The subscriber receives the consumer's SSRC (a receiver report names it, or
        probing timed out): forwarding may start."""


class Transport:
    def __init__(
        self,
        host: TransportHost,
        room_name: str,
        role: str,
        remote_ufrag: str,
        remote_fingerprints: list[tuple[str, str]],
        dtls_role: str,
        now: float,
        *,
        certificate: Certificate,
        consent_timeout: float,
        keyframe_interval: float,
        publisher_bitrate: int,
        remote_pwd: str | None = None,
        plane_id: int = 0,
    ) -> None:
        self.host = host
        self.keyframe_interval = keyframe_interval  # seconds between two keyframe requests to a publisher
        self.publisher_bitrate = publisher_bitrate  # REMB to publishers (bits/s)
        self.id = secrets.token_hex(8)
        self.plane_id = plane_id  # its peer on the forwarding plane (added when the session is committed)
        self.room_name = room_name
        self.role = role  # "publish" | "subscribe"
        self.local_ufrag = secrets.token_hex(4)
        self.local_pwd = secrets.token_hex(16)
        self.cname = secrets.token_hex(8)
        self.rtcp_ssrc = random.getrandbits(32) or 1
        self.sdp_session_id = random.getrandbits(62)  # o= line of our answers (RFC 3264 §5, §8)
        self.sdp_version = 1
        self.created = now
        self.ice = IceLite(
            self.local_ufrag,
            self.local_pwd,
            remote_ufrag=remote_ufrag,
            consent_timeout=consent_timeout,
            created=now,
            remote_pwd=remote_pwd,  # verifies a new address before media moves there (sfu.ice)
        )
        self.dtls = DtlsEndpoint(certificate, dtls_role, remote_fingerprints,
                                 release_after=DTLS_RELEASE_AFTER)
        self.dtls_role = dtls_role
        self.srtp: SrtpPair | None = None
        self.addr: tuple | None = None
        self.state = "new"  # new -> connected -> closed
        # what it publishes and receives: the router's (it replaces this empty one when
        # the session is committed), read-only here
        self.tracks = SessionTracks(self.id, room_name)
        self._next_report = now + 1.0
        # the host's timer heap (MediaEngine.schedule): when this transport ticks next
        self.timer_at = math.inf
        self.order = 0  # creation order, set by the host
        self._dtls_started = False
        self.rtcp_errors = 0
        self._rtcp_ssrcs: set[int] = set()  # unannounced RTCP senders whose SRTP stream is kept

    # -- its tracks (the router's SessionTracks, read-only) -----------------------------
    @property
    def producers(self) -> tuple[Producer, ...]:
        return self.tracks.producers

    @property
    def consumers(self) -> tuple[Consumer, ...]:
        return self.tracks.consumers

    @property
    def producers_by_mid(self):
        return self.tracks.producers_by_mid

    @property
    def producers_by_ssrc(self):
        return self.tracks.producers_by_ssrc

    @property
    def consumers_by_ssrc(self):
        return self.tracks.consumers_by_ssrc

    @property
    def mid_ext_id(self) -> int | None:
        return self.tracks.mid_ext_id

    def forget_ssrc(self, ssrc: int, inbound: bool) -> None:
        """A track went (the router): its SSRC's state in the RTCP session goes too (~370 bytes)."""
        if self.srtp is not None:
            if inbound:
                self.srtp.remove_inbound_stream(ssrc)
            else:
                self.srtp.remove_outbound_stream(ssrc)

    # -- sending ---------------------------------------------------------------
    def _flush_dtls(self) -> None:
        if self.addr is None:
            return
        for datagram in self.dtls.datagrams_to_send():
            self.host.send(datagram, self.addr)

    def send_rtcp(self, packets: list) -> None:
        if self.srtp is None or self.addr is None or not packets:
            return
        try:
            data = self.srtp.protect_rtcp(rtcp.serialize(packets))
        except (SrtpError, ValueError):
            self.rtcp_errors += 1
            return
        self.host.send(data, self.addr)
        stats = self.host.stats
        stats["rtcp_packets_sent"] += 1
        stats["rtcp_bytes_sent"] += len(data)
        for packet in packets:
            name = _RTCP_SENT_STATS.get(type(packet))
            if name is not None:
                stats[name] += 1

    # -- receiving -------------------------------------------------------------
    def receive_stun(self, data: bytes, addr: tuple, now: float) -> None:
        ice = self.ice
        limited = ice.errors_ratelimited
        response = ice.receive(data, addr, now)
        if response is not None:
            self.host.send(response, addr)
        elif ice.errors_ratelimited != limited:
            self.host.drop("stun_error_ratelimited")
        self._flush_ice(now)
        self._follow_ice(now)

    def _flush_ice(self, now: float) -> None:
        """Send our verification requests (sfu.ice) and keep their timer."""
        for datagram, to in self.ice.datagrams_to_send():
            self.host.stats["ice_verification_requests_sent"] += 1
            self.host.send(datagram, to)
        timer = self.ice.get_timer()
        if timer is not None:
            self.host.schedule(self, timer)

    def _follow_ice(self, now: float) -> None:
        """Send to the address ICE selected: the first one (and start DTLS there),
        or a new one that answered our verification request."""
        selected = self.ice.selected_address
        if selected is not None and selected != self.addr:
            old = self.addr
            self.addr = selected
            if old is not None:
                self.host.stats["ice_address_changes"] += 1
                event(logger, "transport address changed", transport=self.id, role=self.role)
            self.host.address_changed(self, old, selected)
            if not self._dtls_started:
                self._dtls_started = True
                self.dtls.start(now)
                self._flush_dtls()
                self.host.schedule(self, now)  # the handshake's timers

    def receive_dtls(self, data: bytes, now: float) -> None:
        self.dtls.receive(data, now)
        self._flush_dtls()
        self._drain_dtls_events(now)
        if self.state != "closed":
            self.host.schedule(self, now)  # the handshake's timers may have moved

    def _drain_dtls_events(self, now: float) -> None:
        while True:
            ev = self.dtls.next_event()
            if ev is None:
                return
            if isinstance(ev, HandshakeComplete):
                self.connect_srtp(ev.srtp_profile, ev.local_key, ev.remote_key, now)
            elif isinstance(ev, HandshakeFailed):
                self.host.stats["dtls_failures"] += 1
                event(logger, "dtls handshake failed", logging.WARNING, transport=self.id, reason=ev.reason)
                self.close(CloseReason.DTLS_FAILED)
            elif isinstance(ev, Closed):
                self.close(CloseReason.DTLS_CLOSED)

    def connect_srtp(self, profile: str, local_key: bytes, remote_key: bytes, now: float) -> None:
        """DTLS is through: the plane forwards this peer's RTP with these keys; the
        transport keeps a session of its own, with the same keys, for RTCP."""
        self.srtp = SrtpPair(profile, local_key, remote_key)
        self.host.srtp_keys(self, PROFILES[profile], local_key, remote_key)
        self.state = "connected"
        event(logger, "transport connected", transport=self.id, role=self.role,
              room=self.room_name, srtp_profile=profile)
        self.host.transport_connected(self, now)

    def receive_rtcp(self, data: bytes, now: float) -> None:
        self.host.stats["rtcp_packets_received"] += 1
        self.host.stats["rtcp_bytes_received"] += len(data)
        if self.srtp is None:
            self.host.drop("not_connected")
            return
        try:
            plain = self.srtp.unprotect_rtcp(data)
        except SrtpError as exc:
            self.host.drop("srtp_replay" if "replay" in str(exc) else "srtp_auth")
            return
        except ValueError:  # longer than pylibsrtp's buffer (1500 bytes), as the C path's "too_long"
            self.host.drop("too_long")
            return
        ssrc = int.from_bytes(data[4:8], "big")  # the stream libsrtp authenticated it with
        if ssrc not in self.producers_by_ssrc and ssrc not in self._rtcp_ssrcs:
            if len(self._rtcp_ssrcs) < MAX_RTCP_SSRCS:
                self._rtcp_ssrcs.add(ssrc)
            else:
                self.srtp.remove_inbound_stream(ssrc)
        try:
            packets = rtcp.parse_compound(plain)
        except ValueError:
            self.host.drop("malformed")
            return
        for packet in packets:
            handler = _RTCP_HANDLERS.get(type(packet))
            if handler is not None:
                handler(self, packet, now)

    # -- RTCP handlers (table at the end of the module) ---------------------------
    def _on_sender_report(self, sr: rtcp.SenderReport, now: float) -> None:
        producer = self.producers_by_ssrc.get(sr.ssrc)
        if producer is None:
            return
        producer.last_sr_ntp = sr.ntp_timestamp
        producer.last_sr_time = now
        # translate the SR for every subscriber so that their audio and video stay in sync
        for consumer in self.tracks.subscribers(producer):
            stats = consumer.stats()
            if not stats.synced:
                continue
            translated = rtcp.SenderReport(
                ssrc=consumer.ssrc,
                ntp_timestamp=sr.ntp_timestamp,
                rtp_timestamp=(sr.rtp_timestamp + stats.ts_delta) & 0xFFFFFFFF,
                packet_count=stats.packets_sent & 0xFFFFFFFF,
                octet_count=stats.octets_sent & 0xFFFFFFFF,
                reports=[],
            )
            consumer.transport.send_rtcp([translated])
            sent = consumer.sr_sent  # for the RTT from the subscriber's LSR/DLSR
            sent[rtcp.ntp_middle32(sr.ntp_timestamp)] = now
            if len(sent) > 8:
                del sent[next(iter(sent))]

    def _on_receiver_report(self, rr, now: float) -> None:
        tracks = self.tracks
        for block in rr.reports:
            consumer = tracks.reported(block.ssrc)
            if consumer is None:
                continue
            if not consumer.confirmed and consumer.report_ssrc in (None, rr.ssrc):
                # the subscriber's receiver of that section receives the SSRC (another one
                # of its receivers may have been handed the probes before it knew the SSRC)
                self.host.consumer_confirmed(consumer, now)
            if block.ssrc == consumer.ssrc:
                consumer.last_report = block
                # RFC 3550 §6.4.1: RTT = arrival - LSR - DLSR (LSR echoes the SR we sent)
                sent_at = consumer.sr_sent.get(block.lsr) if block.lsr else None
                if sent_at is not None:
                    consumer.rtt = max(0.0, now - sent_at - block.dlsr / 65536.0)

    def _on_nack(self, nack: rtcp.Nack, now: float) -> None:
        consumer = self.consumers_by_ssrc.get(nack.media_ssrc)
        self.host.stats["nacks_received"] += 1
        if nack.ignored:  # numbers past rtcp.NACK_MAX_SEQS: never expanded, never answered
            self.host.drops["nack_overflow"] += nack.ignored
        if consumer is None or consumer.producer is None or not consumer.stats().synced:
            return
        self.host.retransmit(consumer, nack.lost, now)

    def _on_pli(self, pli: rtcp.Pli, now: float) -> None:
        self.host.stats["plis_received"] += 1
        consumer = self.consumers_by_ssrc.get(pli.media_ssrc)
        if consumer is not None and consumer.producer is not None:
            self.host.request_keyframe(consumer.producer, now)

    def _on_fir(self, fir: rtcp.Fir, now: float) -> None:
        self.host.stats["firs_received"] += 1
        for ssrc, _seq in fir.entries:
            consumer = self.consumers_by_ssrc.get(ssrc)
            if consumer is not None and consumer.producer is not None:
                self.host.request_keyframe(consumer.producer, now)

    # -- timers ----------------------------------------------------------------
    def tick(self, now: float) -> None:
        if self.state == "closed":
            return
        if self.ice.is_expired(now):
            self.host.stats["consent_timeouts"] += 1
            self.close(CloseReason.CONSENT_TIMEOUT)
            return
        if self.ice.get_timer() is not None:  # a new address being verified (sfu.ice)
            failed = self.ice.verifications_failed
            self.ice.handle_timer(now)
            if self.ice.verifications_failed != failed:
                self.host.stats["ice_verifications_failed"] += 1
            self._flush_ice(now)  # and its next timer (next_timer does not know it)
        timer = self.dtls.get_timer()
        if timer is not None and timer <= now:
            self.dtls.handle_timer(now)
            self._flush_dtls()
            self._drain_dtls_events(now)
            if self.state == "closed":
                return
        if self.srtp is None:
            return
        feedback: list = []
        for producer in self.producers:
            nack = producer.poll_nack(now)
            if nack is not None:
                feedback.append(nack)
            pli = producer.poll_keyframe(now, self.keyframe_interval)
            if pli is not None:
                feedback.append(pli)
        if now >= self._next_report:
            self._next_report = now + 1.0
            feedback.extend(self._reports(now))
        if feedback:
            self.host.stats["nacks_sent"] += sum(isinstance(p, rtcp.Nack) for p in feedback)
            self.send_rtcp(feedback)
        if self._probing(now):
            self._probe(now)

    # -- probes: consumers not confirmed yet ---------------------------------------------
    def _probing(self, now: float) -> bool:
        return any(not c.confirmed for c in self.tracks.consumers)

    def _probe(self, now: float) -> None:
        """The next padding-only packet on the SSRC of each consumer not confirmed yet,
        with its codec's RTX payload type, so that the subscriber's receiver report
        names the SSRC once it applied the answer; after PROBE_TIMEOUT without one (a
        client that does not report it) it is confirmed anyway.

        Nothing is decoded from a probe: it has no payload, and a receiver treats the
        RTX payload type on a media SSRC as a retransmission it cannot map (even one
        that a client hands it by payload type before it knew the SSRC: aiortc does).
        The probes are numbered just before the plane's numbering (PROBE_SEQS of them,
        ``finish_probes`` sends the rest), with the timestamp its first packet will
        have: the subscriber sees one gapless stream. Their SRTP indexes are never the
        plane's."""
        for consumer in self.tracks.consumers:
            if consumer.confirmed:
                continue
            if consumer.probe_since is None:
                consumer.probe_since = now
            if now - consumer.probe_since >= PROBE_TIMEOUT or consumer.probes_sent >= PROBE_SEQS:
                self.host.stats["probe_timeouts"] += 1
                event(logger, "consumer not confirmed by a receiver report", transport=self.id, mid=consumer.mid,
                      ssrc=consumer.ssrc)
                self.host.consumer_confirmed(consumer, now)
                continue
            self._send_probe(consumer)

    def finish_probes(self, consumer: Consumer) -> None:
        """The consumer is confirmed: the rest of its probes, up to the plane's first
        sequence number, so that the subscriber sees no gap (before any media of it)."""
        if consumer.probes_sent:
            while consumer.probes_sent < PROBE_SEQS:
                self._send_probe(consumer)

    def _send_probe(self, consumer: Consumer) -> None:
        seq = (consumer.initial_seq - PROBE_SEQS + consumer.probes_sent) & 0xFFFF
        consumer.probes_sent += 1
        if self.addr is None or self.srtp is None:
            return
        header = struct.pack("!BBHII", 0xA0, consumer.codec.rtx_payload_type or 0, seq, consumer.initial_ts,
                             consumer.ssrc)
        try:
            data = self.srtp.protect(header + bytes(PROBE_PADDING - 1) + bytes([PROBE_PADDING]))
        except (SrtpError, ValueError):
            return
        self.host.send(data, self.addr)
        self.host.stats["probes_sent"] += 1

    def next_timer(self, now: float) -> float:
        """When ``tick`` has something to do next; ``now`` means the next engine tick.

        Early is harmless (tick checks every condition itself), so deadlines that
        tick compares by subtraction are taken a little early against rounding."""
        ice = self.ice
        consent = ice.last_consent if ice.last_consent is not None else ice.created
        when = (consent if consent is not None else now) + ice.consent_timeout - _EARLY
        timer = self.dtls.get_timer()
        if timer is not None and timer < when:
            when = timer
        if self.srtp is None:
            return when
        if self._next_report < when:
            when = self._next_report
        if self._probing(now) and now + PROBE_INTERVAL < when:
            when = now + PROBE_INTERVAL
        throttle = self.keyframe_interval
        for producer in self.producers:
            if producer.missing:  # NACK retries are polled on every tick
                return now
            if producer._keyframe_pending:
                due = producer._last_keyframe_request + throttle - _EARLY
                if due < when:
                    when = due
        return when

    def _reports(self, now: float) -> list:
        blocks = [b for b in (p.report_block(now) for p in self.producers) if b is not None]
        out: list = [rtcp.ReceiverReport(ssrc=self.rtcp_ssrc, reports=blocks[:31])]
        remb_ssrcs = [p.ssrc for p in self.producers if p.supports_remb and p.ssrc is not None]
        if remb_ssrcs:
            out.append(rtcp.Remb(sender_ssrc=self.rtcp_ssrc, bitrate=self.publisher_bitrate,
                                 ssrcs=remb_ssrcs))
        return out if blocks or remb_ssrcs else []

    # -- life cycle ------------------------------------------------------------
    def close(self, reason: CloseReason | str) -> None:
        """``reason`` is a CloseReason; one of their values is accepted too (ValueError otherwise)."""
        reason = CloseReason(reason)
        if self.state == "closed":
            return
        if self.dtls.state == "connected":
            self.dtls.close()
            self._flush_dtls()
        self.state = "closed"
        event(logger, "transport closed", transport=self.id, role=self.role, room=self.room_name, reason=reason)
        self.host.transport_closed(self, reason)


def build_rtx(packet: bytes | bytearray | memoryview, header_length: int, rtx_pt: int, rtx_seq: int,
              rtx_ssrc: int) -> bytes:
    """RFC 4588 §4: the retransmission of an (already rewritten) packet on the RTX stream."""
    header = bytearray(packet[:header_length])
    osn = bytes(packet[2:4])
    payload_end = len(packet)
    if header[0] & 0x20:  # strip padding, RTX carries the payload only
        payload_end -= packet[-1]
        header[0] &= ~0x20 & 0xFF
    header[1] = (header[1] & 0x80) | rtx_pt
    struct.pack_into("!H", header, 2, rtx_seq)
    struct.pack_into("!I", header, 8, rtx_ssrc)
    return bytes(header) + osn + bytes(packet[header_length:payload_end])


_EARLY = 1e-6  # seconds (see Transport.next_timer)

_RTCP_SENT_STATS = {  # host.stats keys of the feedback we send (sfu.metrics)
    rtcp.Nack: "rtcp_nack_sent",
    rtcp.Pli: "rtcp_pli_sent",
    rtcp.Fir: "rtcp_fir_sent",
}

_RTCP_HANDLERS = {
    rtcp.SenderReport: Transport._on_sender_report,
    rtcp.ReceiverReport: Transport._on_receiver_report,
    rtcp.Nack: Transport._on_nack,
    rtcp.Pli: Transport._on_pli,
    rtcp.Fir: Transport._on_fir,
}
