"""Typed surface of the Cython module sfu._fast.datapath (the C forwarding path)."""

from collections.abc import Callable, Iterable
from typing import Any

from sfu._fast.packet import Rewriter

Address = tuple[Any, ...]  # socket-module address: (host, port) or (host, port, flowinfo, scope_id)

STAT_NAMES: tuple[str, ...]
DROP_NAMES: tuple[str, ...]
LATENCY_BUCKETS_US: tuple[int, ...]

def _load_libsrtp() -> None:
    """Take srtp_protect/srtp_unprotect from pylibsrtp's cffi module; ImportError if their type changed."""

class Subscription:
    """One subscriber's copy of a stream (sfu.plane_c.CPlane names it by an integer id)."""

    peer: Peer
    rewriter: Rewriter | None
    paused: bool
    synced: bool
    clock_rate: float
    initial_seq: int
    initial_ts: int
    last_out_time: float
    packets_sent: int
    octets_sent: int
    first_packet_time: float | None
    last_out_seq: int | None
    last_out_ts: int | None
    rtx_seq: int
    retransmissions: int
    keyframe_wait: bool
    keyframe_codec: int
    keyframe_since: float
    sync_seq: int | None
    @property
    def nack_tokens(self) -> float | None:
        """Bytes of retransmission the NACK budget allows now (None before the first NACK)."""
    def __init__(self, peer: Peer, rewriter: Rewriter | None, clock_rate: float) -> None: ...
    def retransmit(self, stream: Stream, lost: Iterable[int], now: float, window: float, rtx_pt: int,
                   rtx_ssrc: int, fraction: float, floor_rate: float, burst: float) -> None:
        """Answer a NACK in C within the policy of sfu.router.NackBudget (rtx_pt -1: no RTX)."""

class Stream:
    """A published SSRC of a Peer: receive statistics, NACK log, packet cache, fan-out snapshot."""

    peer: Peer
    ssrc: int
    payload_type: int
    owner: object
    closed: bool
    packets: int
    bytes: int
    jitter: float
    @property
    def subscriptions(self) -> tuple[Subscription, ...]: ...
    @property
    def first_packet_time(self) -> float | None: ...
    def set_subscriptions(self, subscriptions: Iterable[Subscription]) -> None: ...
    def cached(self, seq: int) -> bytes | None: ...
    @property
    def mapped(self) -> int:
        """Bytes of buffers mapped now: 0 before the first packet and once closed."""
    def stats(self) -> tuple[int, int, int | None, int, float]:
        """(packets, bytes, base_ext_seq, highest_ext_seq, jitter)"""
    def drain_events(self) -> list[tuple[str, int, int | None, float]]:
        """("gap", first, end, t) | ("recovered", ext, None, t) | ("clear", 0, 0, t)"""
    def close(self) -> None: ...

class Peer:
    """One transport: source/destination address, libsrtp sessions, published streams."""

    owner: object
    registered: bool
    closed: bool
    @property
    def connected(self) -> bool: ...
    @property
    def address(self) -> Address | None: ...
    @property
    def streams(self) -> tuple[Stream, ...]: ...
    def set_address(self, addr: Address) -> None: ...
    def set_srtp(self, pair: Any) -> None:
        """An sfu.srtp.SrtpPair; kept alive while the peer uses its srtp_t."""
    def add_stream(self, ssrc: int, payload_type: int, clock_rate: float, *, nack: bool = ...,
                   nack_max_gap: int = ..., cache_packets: int = ..., cache_bytes: int = ...,
                   owner: object = ...) -> Stream: ...
    def subscription(self, rewriter: Rewriter | None, clock_rate: float) -> Subscription: ...
    def close(self) -> None: ...

class Datapath:
    """The UDP socket's C data path: demux, unprotect, route, rewrite, protect, sendmmsg."""

    capture: bool
    captured: list[tuple[bytes, Address]]
    keyframe_needed: Callable[[object], None] | None  # (stream owner): a held subscriber asks again
    def __init__(self, slow_path: Callable[[bytes, Address], None],
                 unknown_ssrc: Callable[[object, bytes, int], bool] | None = ...,
                 *, capture: bool = ...) -> None: ...
    def new_peer(self, owner: object = ...) -> Peer: ...
    def open(self, fd: int, loop: Any = ...) -> None: ...
    def fail_sends(self, count: int, err: int = ...) -> None: ...
    def close(self) -> None: ...
    def on_readable(self) -> None: ...
    def feed(self, data: bytes, addr: Address, now: float) -> None: ...
    def sendto(self, data: bytes, addr: Address) -> None: ...
    def flush(self) -> None: ...
    @property
    def peers(self) -> int: ...
    @property
    def queued(self) -> int: ...
    @property
    def queued_bytes(self) -> int: ...
    def take_dirty(self) -> list[Stream]: ...
    def take_counters(self) -> tuple[dict[str, int], dict[str, int]]: ...
    def counters(self) -> dict[str, int]: ...
    def latency(self) -> dict[str, Any]: ...
    def drain_latency(self) -> list[float]: ...
