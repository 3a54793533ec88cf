"""The forwarding-plane interface: what the control plane tells the data path, and
what the data path tells back.

The control plane (``sfu.engine``, ``sfu.router``, ``sfu.transport``) decides who
receives what; a forwarding plane moves the packets. The router (sfu.router) gives
every membership command (streams, subscriptions, bind, pause, removals), the
engine the peer's address and keys, retransmissions and the reads (stats,
counters, NACK log, latency, send queue). It owns the UDP socket's
receive loop, the SRTP sessions used for RTP, the receive statistics, the packet
cache, the fan-out with its rewriting, the keyframe gate and the answers to NACKs.
The control plane never sees an RTP packet of a known stream.

Two implementations of the same interface:

- ``sfu.plane_c.CPlane``: the C data path (``sfu._fast.datapath``), the default;
- ``sfu.plane_py.PythonPlane``: pure Python (``sfu.rtp``, pylibsrtp), the reference
  that stays the oracle: fed the same datagrams and commands, both send the same
  bytes and count the same counters (``tests/test_plane.py``).

Every command takes plain data only (``int``, ``float``, ``bool``, ``bytes``,
``str``, tuples, lists and dicts of those) and every event carries plain data, so
that a later change can put the data path in another process: objects on either
side are named by integer ids that the control plane chooses (a peer is one
transport, a stream one received SSRC, a subscription one subscriber's copy of a
stream). An unknown id is a ``KeyError``; removing an unknown id does nothing.

Events go to a :class:`PlaneListener` given at construction; NACK-log events and
statistics are pulled (``take_dirty``/``drain_events``, ``stream_stats``,
``subscription_stats``, ``take_counters``, ``latency``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple, Protocol

# NACK log events (drain_events): missing extended seqs [a, b), a recovered, all forgotten
GAP = "gap"
RECOVERED = "recovered"
CLEAR = "clear"


# upper bounds (seconds) of the forwarding-latency histogram of every plane (``latency()``;
# the last bucket is +Inf); sfu.metrics serves it, sfu/_fast/_latency.pxi keeps the same in µs
LATENCY_BUCKETS = (0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.01, 0.05)


class PlaneListener(Protocol):
    """What a forwarding plane reports to the control plane (called on the plane's loop)."""

    def slow_path(self, data: bytes, addr: tuple) -> None:
        """A datagram the plane does not handle itself: STUN, DTLS, RTCP (still SRTCP),
        and anything from a known address that is not RTP of a connected peer."""

    def unknown_ssrc(self, peer: int, ssrc: int, packet: bytes) -> bool:
        """RTP from ``peer`` (authenticated and decrypted: ``packet`` is plaintext) with an
        SSRC none of its streams has. The listener may call ``add_stream`` for it right
        away (e.g. learnt from the MID header extension) and return True: the packet is
        then received as that stream's. False: the packet is dropped ("unknown_ssrc")."""

    def keyframe_needed(self, stream: int) -> None:
        """A subscription of ``stream`` held by the keyframe gate has waited
        ``KEYFRAME_RETRY`` seconds more without a keyframe: ask the publisher again."""


class StreamStats(NamedTuple):
    packets: int
    bytes: int
    base_ext_seq: int | None  # None before the first packet
    highest_ext_seq: int  # -1 before the first packet
    jitter: float  # RFC 3550 A.8, in timestamp units
    first_packet_time: float | None


class SubscriptionStats(NamedTuple):
    packets_sent: int
    octets_sent: int
    retransmissions: int
    synced: bool  # the output numbering is running (false before the first packet, while gated)
    seq_delta: int  # output seq = input seq + seq_delta (mod 2^16)
    ts_delta: int  # output timestamp = input timestamp + ts_delta (mod 2^32)
    last_out_seq: int | None
    last_out_ts: int | None
    last_out_time: float
    first_packet_time: float | None
    keyframe_wait: bool  # held by the keyframe gate
    rtx_seq: int
    nack_tokens: float | None  # bytes the NACK budget allows now (None before the first NACK)


class ForwardingPlane(ABC):
    """One worker's data path. ``name`` is "c" or "pure"."""

    name: str
    captured: list  # capture=True: the datagrams that would have been sent, as (bytes, addr)

    # -- the socket ----------------------------------------------------------------------
    @abstractmethod
    def open(self, sock, loop) -> None:
        """Receive from and send on the bound, non-blocking UDP socket ``sock`` on ``loop``."""

    @abstractmethod
    def close(self) -> None:
        """Stop reading the socket (the socket itself is the caller's)."""

    @abstractmethod
    def feed(self, data: bytes, addr: tuple, now: float) -> None:
        """Sans-I/O entry (tests, fuzzing): one datagram received from ``addr`` at ``now``."""

    @abstractmethod
    def send(self, data: bytes, addr: tuple) -> None:
        """Send one datagram for the control plane (STUN, DTLS, SRTCP), behind what is queued."""

    # -- peers ---------------------------------------------------------------------------
    @abstractmethod
    def add_peer(self, peer: int) -> None:
        """A transport; it receives nothing until ``set_address``, forwards no RTP until ``set_keys``."""

    @abstractmethod
    def set_address(self, peer: int, addr: tuple) -> None:
        """Datagrams from ``addr`` are this peer's, and what it is sent goes there (ICE chose it)."""

    @abstractmethod
    def set_keys(self, peer: int, profile: int, local_key: bytes, remote_key: bytes) -> None:
        """SRTP for this peer's RTP (the DTLS-SRTP keys, ``sfu.srtp`` profile numbers):
        its RTP is now received and forwarded by the plane. The control plane keeps its
        own SRTP session, with the same keys, for RTCP only."""

    @abstractmethod
    def remove_peer(self, peer: int) -> None:
        """Forget the peer, its address, keys and streams, and the subscriptions that send to it."""

    # -- streams (a published track: one received SSRC) ------------------------------------
    @abstractmethod
    def add_stream(self, stream: int, peer: int, ssrc: int, payload_type: int, clock_rate: int, *,
                   nack: bool = True, nack_max_gap: int = 256, cache_packets: int = 1024,
                   cache_bytes: int = 512 * 1024) -> None:
        """Receive ``ssrc`` from ``peer``: statistics, NACK gap log (when ``nack``; a gap
        larger than ``nack_max_gap`` is a restart), a cache of the last ``cache_packets``
        packets (a power of two) within ``cache_bytes``. Packets of another payload type
        are dropped ("unknown_payload_type"). ValueError when the peer has a stream for
        ``ssrc`` already."""

    @abstractmethod
    def remove_stream(self, stream: int) -> None:
        """Stop receiving it (its SSRC is unknown again, libsrtp forgets its replay state);
        its subscriptions are unbound."""

    # -- subscriptions (one subscriber's copy of a stream) ----------------------------------
    @abstractmethod
    def add_subscription(self, sub: int, peer: int, ssrc: int, clock_rate: int, *, initial_seq: int,
                         initial_ts: int, rtx_ssrc: int = 0, rtx_payload_type: int = -1, rtx_seq: int = 0) -> None:
        """Send to ``peer`` as SSRC ``ssrc``; numbering starts at ``initial_seq``/``initial_ts``
        (drawn by the control plane, so both planes number alike). Unbound: sends nothing."""

    @abstractmethod
    def bind(self, sub: int, stream: int | None, pt_map: dict[int, int], ext_map: dict[int, int],
             keyframe_codec: int, rtx_payload_type: int | None = None) -> None:
        """Forward ``stream`` (None: nothing) to the subscription, rewriting payload types
        (``pt_map``) and header-extension ids (``ext_map``; others are removed). The
        numbering continues where it stopped, so the subscriber sees one stream. With a
        ``keyframe_codec`` other than ``sfu.rtp.CODEC_OTHER`` nothing is sent before a packet
        that starts a keyframe of that codec (the keyframe gate). ``rtx_payload_type``:
        the RTX payload type of the subscriber's codec from now on (-1: no RTX, answers
        to NACKs are plain retransmissions; None: unchanged), as a renegotiation that
        changed the codec decided; it needs the RTX SSRC given at ``add_subscription``."""

    @abstractmethod
    def set_paused(self, sub: int, paused: bool) -> None:
        """Hold the subscription (nothing sent, nothing numbered). Resuming continues the
        numbering and re-arms the keyframe gate."""

    @abstractmethod
    def remove_subscription(self, sub: int) -> None:
        """Forget it, and the libsrtp state of its SSRC (and RTX SSRC) on its peer."""

    @abstractmethod
    def retransmit(self, sub: int, seqs: list[int], now: float, window: float) -> None:
        """Answer a NACK of the subscriber (``seqs`` in its numbering) from the bound stream's
        cache, as RTX when the subscription has an RTX SSRC and payload type, within its
        NACK budget (``sfu.plane_py_state.NackBudget``): a number at most once per ``window``
        seconds ("nack_repeat"), bytes within the budget ("nack_budget"); misses count
        "nack_misses"."""

    # -- what comes back ---------------------------------------------------------------------
    @abstractmethod
    def take_dirty(self) -> list[int]:
        """The streams that logged NACK events since the last call, each once."""

    @abstractmethod
    def drain_events(self, stream: int) -> list[tuple]:
        """The stream's NACK log since the last call: (GAP, first, end, t) for the missing
        extended seqs [first, end), (RECOVERED, ext, None, t), (CLEAR, 0, 0, t)."""

    @abstractmethod
    def stream_stats(self, stream: int) -> StreamStats: ...

    @abstractmethod
    def subscription_stats(self, sub: int) -> SubscriptionStats: ...

    @abstractmethod
    def cached(self, stream: int, seq: int) -> bytes | None:
        """The cached plaintext packet ``seq`` of ``stream`` (tests and diagnostics)."""

    @abstractmethod
    def take_counters(self) -> tuple[dict[str, int], dict[str, int]]:
        """(stats, drops): what each counter gained since the last call (non-zero only)."""

    @abstractmethod
    def latency(self) -> dict:
        """Forwarding latency histogram: {"buckets": [(upper bound s, cumulative count)...],
        "count", "sum"} (the buckets of ``LATENCY_BUCKETS``)."""

    @abstractmethod
    def queued_bytes(self) -> int:
        """Bytes waiting in the plane's user-space send queue (the socket was full)."""

    @abstractmethod
    def memory(self) -> int:
        """Bytes of packet caches and logs mapped now (abandoned-session tests)."""
