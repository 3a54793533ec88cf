"""The Python data path: forwarding and NACK answers of the media engine in Python.

With ``--datapath python`` or ``pure`` every RTP packet comes through here; with the
default C data path (sfu._fast.datapath) none does, and this code is its reference:
the same input gives byte-identical output on all three (tests/test_datapath.py,
tests/test_nack_budget.py, tests/test_keyframe.py). :class:`MediaEngine` inherits it;
it uses the engine's ``send``, ``drop``, ``stats``, ``drops``, ``impl`` and
``_keyframe_needed``.
"""

from __future__ import annotations

import struct
import time

from pylibsrtp import Error as SrtpError

from .router import (
    KEYFRAME_RETRY, NACK_BUDGET_BURST, NACK_BUDGET_FLOOR, NACK_BUDGET_FRACTION, Consumer, Producer,
)
from .transport import build_rtx


class PythonForwarding:
    """forward / retransmit for the Python data paths (a part of sfu.engine.MediaEngine)."""

    def forward(self, producer: Producer, plain: bytes, seq: int, ts: int, now: float) -> None:
        consumers = producer.consumers
        if not consumers:
            self.drop("no_subscriber")
            return
        buf = self._buf
        sent = 0
        hold_ts = self._padding_only(plain)
        key = None  # does this packet start a keyframe (looked at once, when someone waits)
        for consumer in consumers:
            transport = consumer.transport
            srtp = transport.srtp
            if srtp is None or consumer.paused or transport.addr is None:
                continue
            if consumer.keyframe_wait:
                # the keyframe gate (Consumer.keyframe_wait): nothing sent or numbered before
                # the producer's next keyframe; from it the numbering continues (sync)
                if key is None:
                    key = self.impl.is_keyframe(consumer.keyframe_codec, plain)
                if not key:
                    self.stats["keyframe_waits"] += 1
                    if consumer.keyframe_since == 0.0:
                        consumer.keyframe_since = now
                    elif now - consumer.keyframe_since >= KEYFRAME_RETRY:
                        consumer.keyframe_since = now  # the request (or its keyframe) was lost: ask again
                        self._keyframe_needed(producer)
                    continue
                consumer.keyframe_wait = False
                consumer.keyframe_since = 0.0
                consumer.synced = False
            if not consumer.synced:
                consumer.sync(seq, ts, now)
            try:
                n = consumer.rewriter.rewrite(plain, buf)
            except ValueError:  # a header extension element overruns its block (RFC 8285)
                self.drop("malformed")
                break
            if n < 0:
                continue
            held = hold_ts and consumer.last_out_ts is not None
            if held:
                struct.pack_into("!I", buf, 4, consumer.last_out_ts)
            try:
                out = srtp.protect(bytes(buf[:n]))
            except SrtpError:
                self.drop("srtp_protect")
                continue
            self.send(out, transport.addr)
            consumer.last_out_seq = (seq + consumer.rewriter.seq_delta) & 0xFFFF
            if not held:
                consumer.last_out_ts = (ts + consumer.rewriter.ts_delta) & 0xFFFFFFFF
            consumer.last_out_time = now
            consumer.packets_sent += 1
            consumer.octets_sent += n
            sent += 1
        self.stats["rtp_forwarded"] += sent
        if self._latency_t0:
            self.latency_samples.append(time.perf_counter() - self._latency_t0)
            self._latency_t0 = 0.0

    def _padding_only(self, plain) -> bool:
        """A packet that carries only RTP padding (a sender's bandwidth probe, RFC 3550 §5.1).

        Forwarded with the subscriber's last timestamp instead of its own: libwebrtc gives
        padding-only packets a timestamp of their own when it has no RTX stream, and a
        receiver that assembles frames by timestamp (aiortc) would otherwise decode an
        empty frame, which flushes its decoder for good."""
        if not plain[0] & 0x20:
            return False
        return self.impl.parse_rtp_header(plain)[5] + plain[-1] == len(plain)

    def retransmit(self, consumer: Consumer, lost_seqs: list[int], now: float) -> None:
        """Answer a subscriber's NACK from the producer's packet cache (RTX when negotiated),
        within the subscriber's NackBudget: a number at most once per round trip, bytes
        within the budget; the rest dropped and counted ("nack_repeat", "nack_budget").
        On the C data path all of it is one call into C (Subscription.retransmit)."""
        producer = consumer.producer
        transport = consumer.transport
        if producer is None or transport.srtp is None or transport.addr is None:
            return
        window = consumer.nack_window()
        rtx_pt = consumer.codec.rtx_payload_type if consumer.rtx_ssrc is not None else None
        sub = getattr(consumer, "sub", None)
        if sub is not None:  # a FastConsumer: its producer is a FastProducer
            stream = producer.stream
            if stream is not None:
                sub.retransmit(stream, lost_seqs, now, window, -1 if rtx_pt is None else rtx_pt,
                               consumer.rtx_ssrc or 0, NACK_BUDGET_FRACTION, NACK_BUDGET_FLOOR,
                               NACK_BUDGET_BURST)
            return
        budget = consumer.nack_budget
        budget.refill(producer.bytes, now)
        buf = bytearray(2048)
        for out_seq in lost_seqs:
            sync_seq = consumer.sync_seq
            if consumer.keyframe_wait or not consumer.synced or sync_seq is None \
                    or (out_seq - sync_seq) & 0xFFFF >= 0x8000:
                # before this numbering started (before the keyframe gate opened, or of
                # another producer): the cache holds no packet of this subscriber for it
                self.stats["nack_misses"] += 1
                continue
            if budget.repeated(out_seq, now, window):
                self.drops["nack_repeat"] += 1
                continue
            in_seq = (out_seq - consumer.rewriter.seq_delta) & 0xFFFF
            plain = producer.cached(in_seq)
            if plain is None:
                self.stats["nack_misses"] += 1
                continue
            if not budget.spend(len(plain)):
                self.drops["nack_budget"] += 1
                continue
            budget.answered(out_seq, now)
            try:
                n = consumer.rewriter.rewrite(plain, buf)
            except ValueError:  # a cached packet with a malformed RFC 8285 element (forward dropped it)
                self.drop("malformed")
                continue
            if n < 0:
                continue
            if consumer.last_out_ts is not None and self._padding_only(plain):
                struct.pack_into("!I", buf, 4, consumer.last_out_ts)  # as forward() did
            packet = memoryview(buf)[:n]
            if rtx_pt is not None:
                hlen = self.impl.parse_rtp_header(packet)[5]
                consumer.rtx_seq = (consumer.rtx_seq + 1) & 0xFFFF
                data = build_rtx(packet, hlen, rtx_pt, consumer.rtx_seq, consumer.rtx_ssrc)
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
