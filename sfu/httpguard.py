"""Guard of the HTTP listener against connections that hold a descriptor and never
finish a request (slowloris, half-open connections).

aiohttp reads a request head for as long as the client keeps the connection open,
so 1,000 connections that never send their blank line fill the descriptor table
and every other client is refused. :class:`ConnectionGuard` wraps the protocol
factory of aiohttp's ``web.Server`` (see :class:`GuardedSite`) and

- closes a connection that has not sent a complete request head (the blank line
  that ends it) within ``header_timeout`` seconds of connecting, with a
  ``408 Request Timeout``;
- refuses a connection at accept, with a ``429 Too Many Requests`` and a close,
  when its source (an IPv4 address, an IPv6 /64) already has ``max_per_source``
  connections open.

With TLS (``--tls-cert``) the listener accepts plain TCP and each admitted
connection starts its handshake from :class:`GuardedProtocol`, so that both
bounds also hold for connections that never finish their handshake.

Idle keep-alive connections (between requests) are bounded by aiohttp's own
``keepalive_timeout`` (``--http-idle-timeout``), which also closes a connection
whose next request head never completes. :func:`raise_fd_limit` raises the
process's descriptor limit to the hard limit at start.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import time
from typing import Callable

from aiohttp import web

from .log import event

logger = logging.getLogger("sfu.httpguard")

REFUSED = (b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain\r\nConnection: close\r\n"
           b"Content-Length: 39\r\n\r\ntoo many connections from this address\n")
TIMED_OUT = (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: text/plain\r\nConnection: close\r\n"
             b"Content-Length: 38\r\n\r\nthe request head did not come in time\n")
MAX_EARLY = 1024 * 1024  # request bytes kept while a finished TLS handshake is handed over (more: closed)
LOG_INTERVAL = 10.0  # seconds between two log lines about refused / timed-out connections


def source_of(peername) -> str:
    """The unit the per-source cap counts: an IPv4 address (also when IPv4-mapped),
    an IPv6 /64 (what one subscriber usually gets), or "local" (Unix socket)."""
    if not isinstance(peername, tuple) or not peername:
        return "local"
    try:
        address = ipaddress.ip_address(peername[0])
    except ValueError:
        return str(peername[0])
    if address.version == 6:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


def head_complete(tail: bytes, data: bytes) -> bool:
    """True if ``tail + data`` holds the blank line that ends a request head (CRLF
    CRLF, or a lenient bare LF LF); ``tail`` is the last bytes seen before ``data``."""
    chunk = tail + data
    return b"\r\n\r\n" in chunk or b"\n\n" in chunk


class ConnectionGuard:
    """Counts connections per source and builds the guarded protocols."""

    def __init__(self, header_timeout: float = 10.0, max_per_source: int = 256,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.header_timeout = header_timeout  # 0: no header timeout
        self.max_per_source = max_per_source  # 0: no cap
        self.clock = clock
        self.per_source: dict[str, int] = {}
        self.open = 0
        self.refused = 0  # connections closed at accept (cap per source)
        self.timed_out = 0  # connections closed for an unfinished request head
        self._logged_at = -LOG_INTERVAL
        self._logged = (0, 0)

    def admit(self, source: str) -> bool:
        count = self.per_source.get(source, 0)
        if self.max_per_source and count >= self.max_per_source:
            self.refused += 1
            self._log()
            return False
        self.per_source[source] = count + 1
        self.open += 1
        return True

    def release(self, source: str) -> None:
        count = self.per_source.get(source, 0) - 1
        if count > 0:
            self.per_source[source] = count
        else:
            self.per_source.pop(source, None)
        self.open -= 1

    def expired(self) -> None:
        self.timed_out += 1
        self._log()

    def _log(self) -> None:
        now = self.clock()
        if now - self._logged_at < LOG_INTERVAL or (self.refused, self.timed_out) == self._logged:
            return
        self._logged_at = now
        self._logged = (self.refused, self.timed_out)
        event(logger, "http connections closed by the guard", logging.WARNING, refused_total=self.refused,
              header_timeouts_total=self.timed_out, open=self.open, sources=len(self.per_source))

    def wrap(self, factory: Callable[[], asyncio.Protocol],
             tls: ssl.SSLContext | None = None) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server``: each connection's protocol
        from ``factory`` (aiohttp's ``web.Server``) behind a :class:`GuardedProtocol`,
        which upgrades it to TLS with ``tls`` once admitted."""
        return lambda: GuardedProtocol(self, factory(), tls)


class GuardedProtocol(asyncio.Protocol):
    """Forwards everything to ``inner`` (aiohttp's RequestHandler) once admitted;
    times the first request head.

    With ``tls`` the listener is plain TCP and this protocol starts TLS itself
    (``loop.start_tls``) after the connection is admitted: the cap per source
    counts connections still in their handshake, and the header timer runs from
    the TCP connect, so a client that never finishes its handshake holds its
    descriptor no longer than one that never finishes its request head.  A
    connection refused or timed out before its handshake is done is closed
    without an answer (an HTTP answer would be garbage to a TLS client)."""

    __slots__ = ("guard", "inner", "tls", "transport", "source", "_timer", "_tail", "_admitted", "_made", "_early")

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol, tls: ssl.SSLContext | None = None) -> None:
        self.guard = guard
        self.inner = inner
        self.tls = tls
        self.transport: asyncio.Transport | None = None
        self.source = ""
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._admitted = False
        self._made = False  # inner.connection_made was called (after the handshake with TLS)
        self._early = b""  # with TLS: request bytes that came before the handover

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.source = source_of(transport.get_extra_info("peername"))
        if not self.guard.admit(self.source):
            if self.tls is None:
                transport.write(REFUSED)
                transport.close()
            else:
                transport.abort()
            return
        self._admitted = True
        if self.guard.header_timeout > 0:
            self._timer = asyncio.get_running_loop().call_later(self.guard.header_timeout, self._expire)
        if self.tls is not None:
            # start_tls must take over the transport before connection_made returns: the
            # loop starts reading right after it, and a ClientHello read by this protocol
            # would be lost to TLS (a task would start one loop iteration too late)
            start = asyncio.get_running_loop().start_tls(
                transport, self, self.tls, server_side=True,
                ssl_handshake_timeout=self.guard.header_timeout or None)
            run_eagerly(start, self._tls_ready, lambda _exc: self._tls_failed(transport))
            return
        self._made = True
        self.inner.connection_made(transport)

    def _tls_ready(self, tls_transport) -> None:
        if tls_transport is None or tls_transport.is_closing() or not self._admitted:
            # lost (start_tls then returns None) or timed out just as the handshake completed
            if tls_transport is not None:
                tls_transport.abort()
            self._release()
            return
        self.transport = tls_transport
        self._made = True
        self.inner.connection_made(tls_transport)
        early, self._early = self._early, b""
        if early:
            self.data_received(early)

    def _tls_failed(self, transport) -> None:
        """A failed or timed-out handshake, or a peer gone during it."""
        transport.abort()
        self._release()

    def data_received(self, data: bytes) -> None:
        if not self._made:
            if self._admitted and self.tls is not None:
                # decrypted right after the handshake, before start_tls has handed over the
                # transport (that takes one trip through the loop): kept for inner
                self._early += data
                if len(self._early) > MAX_EARLY and self.transport is not None:
                    self.transport.abort()
            return
        if self._timer is not None:
            if head_complete(self._tail, data):
                self._timer.cancel()
                self._timer = None
                self._tail = b""
            else:
                self._tail = (self._tail + data)[-3:]
        self.inner.data_received(data)

    def eof_received(self):
        if not self._made:
            return None
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        if self._made:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self._made:
            self.inner.resume_writing()

    def connection_lost(self, exc) -> None:
        made = self._made
        self._made = False
        self._release()
        if made:
            self.inner.connection_lost(exc)

    def _release(self) -> None:
        if not self._admitted:
            return
        self._admitted = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.guard.release(self.source)

    def _expire(self) -> None:
        self._timer = None
        if self.transport is None or self.transport.is_closing():
            return
        self.guard.expired()
        if not self._made:  # still in the TLS handshake
            self.transport.abort()
            return
        self.transport.write(TIMED_OUT)
        self.transport.close()


def run_eagerly(coro, on_result: Callable, on_error: Callable[[BaseException], None]) -> None:
    """Run ``coro`` now, up to its first wait, then on as each future it waits for
    completes (what a task does, minus the first trip through the loop: Python 3.12's
    eager tasks); its value goes to ``on_result``, an exception to ``on_error``."""
    try:
        future = coro.send(None)
    except StopIteration as stop:
        on_result(stop.value)
        return
    except (Exception, asyncio.CancelledError) as exc:  # noqa: BLE001 - handed over
        on_error(exc)
        return
    if future is None:  # a bare yield (asyncio.sleep(0)): once round the loop
        asyncio.get_running_loop().call_soon(run_eagerly, coro, on_result, on_error)
        return
    future.add_done_callback(lambda _done: run_eagerly(coro, on_result, on_error))


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections go through ``guard`` (same arguments;
    with ``ssl_context`` the guard admits each connection before its handshake)."""

    def __init__(self, runner: web.BaseRunner, host: str | None, port: int | None, *,
                 guard: ConnectionGuard, **kwargs) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.wrap(server, self._ssl_context), self._host, self._port,
            backlog=self._backlog, reuse_address=self._reuse_address, reuse_port=self._reuse_port)
        if self._server.sockets:
            self._bound_port = self._server.sockets[0].getsockname()[1]


def raise_fd_limit() -> tuple[int, int, int]:
    """Raise the soft limit of open descriptors (RLIMIT_NOFILE) to the hard limit
    where allowed; returns (before, now, hard)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return (-1, -1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    targets = [hard] if hard != resource.RLIM_INFINITY else [1 << 20, 1 << 16]
    for target in targets:
        if soft != resource.RLIM_INFINITY and soft >= target:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            continue
        soft = target
        break
    return before, soft, hard
