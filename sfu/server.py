"""The asyncio glue: start the media engine and the HTTP server, stop on a signal."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import signal

from aiohttp import web

from . import log
from .api import make_app
from .auth import keyring_from_config
from .config import Config
from .engine import MediaEngine
from .history import HistoryStore
from .metrics import METRICS_KEY
from .httpguard import ConnectionGuard, GuardedSite, raise_fd_limit
from .meetings import MeetingService
from .tls import CLEARTEXT_ADVICE, CLEARTEXT_WARNING, EXPIRY_WARNING, TlsInfo, context_from_config, \
    exposed_without_tls, key_file_too_open

logger = logging.getLogger("sfu.server")


class Server:
    """Engine + HTTP site; usable from tests inside a running loop."""

    def __init__(self, config: Config, pure_python: bool = False) -> None:
        self.config = config
        self.engine = MediaEngine(config, pure_python=pure_python)
        self.meetings = MeetingService(HistoryStore.from_config(config.db, config.data_dir),
                                       grace_period=config.grace_period,
                                       heartbeat_interval=config.heartbeat_interval,
                                       retention_days=config.retention_days,
                                       audit_retention_days=config.audit_retention_days)
        self.auth_secret: str | None = config.auth_secret
        self._runner: web.AppRunner | None = None
        self.http_guard = ConnectionGuard(config.http_header_timeout, config.http_max_per_source)
        self.http_port: int | None = None
        self.tls: TlsInfo | None = None

    async def start(self) -> None:
        os.makedirs(self.config.data_dir, exist_ok=True)
        # TLS files are checked before anything opens (TlsConfigError: sfu/cli.py exits with EXIT_TLS)
        tls = context_from_config(self.config)
        ssl_context, self.tls = tls if tls is not None else (None, None)
        self.auth_secret = keyring_from_config(self.config)  # the primary key is still a str
        await self.meetings.start()  # closes what a crash left open, before anyone joins
        await self.engine.start()
        app = make_app(self.engine, self.meetings, self.auth_secret, dev=self.config.dev)
        app[METRICS_KEY].http_guard = self.http_guard  # its refusals in /metrics
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     keepalive_timeout=self.config.http_idle_timeout)
        await self._runner.setup()
        # header timeout and cap per source (sfu/httpguard.py)
        site = GuardedSite(self._runner, self.config.host, self.config.http_port, guard=self.http_guard,
                           ssl_context=ssl_context)  # TLS after admission, within the header timeout
        await site.start()
        self.http_port = self._runner.addresses[0][1]

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"{'https' if self.tls else 'http'}://{host}:{self.http_port}"

    async def stop(self) -> None:
        await self.engine.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.meetings.started:
            await self.meetings.stop()  # open sessions end with "server stopped"


async def serve(config: Config) -> None:
    before, nofile, hard = raise_fd_limit()  # every HTTP connection and media session holds descriptors
    log.event(logger, "open file limit", nofile=nofile, raised_from=before, hard=hard)
    server = Server(config)
    await server.start()
    url = server.url
    # the structured log never carries addresses; the one human line on stdout does
    log.event(logger, "sfu serving", http_port=server.http_port, rtc_port=server.engine.port)
    if config.dev:
        log.event(logger, "development mode: anyone may get an access token from /api/dev/token",
                  logging.WARNING)
    log_tls(server.tls, config.host)
    print(f"SFU ready: page {url}/  WHIP {url}/whip/<room>  WHEP {url}/whep/<room>  "
          f"health {url}/healthz  media udp/{server.engine.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.event(logger, "sfu stopping")
    await server.stop()
    log.event(logger, "sfu stopped")


def log_tls(tls: TlsInfo | None, host: str) -> None:
    """The certificate served, or the warning that signalling travels in clear."""
    if tls is None:
        if exposed_without_tls(host, False):
            log.event(logger, CLEARTEXT_WARNING, logging.WARNING, advice=CLEARTEXT_ADVICE)
        return
    log.event(logger, "tls enabled: https and wss", cert=tls.cert_path, sha256_fingerprint=tls.fingerprint,
              spki_sha256=tls.spki_sha256, not_after=tls.not_after.isoformat(), self_signed=tls.self_signed,
              created=tls.created)
    if tls.created:
        log.event(logger, "tls: made a self-signed development certificate", logging.WARNING, cert=tls.cert_path,
                  key=tls.key_path, sha256_fingerprint=tls.fingerprint)
    left = tls.not_after - datetime.datetime.now(datetime.timezone.utc)
    if left < EXPIRY_WARNING:
        log.event(logger, "tls: the certificate expires soon" if left.total_seconds() > 0
                  else "tls: the certificate has expired", logging.WARNING, cert=tls.cert_path,
                  not_after=tls.not_after.isoformat())
    if key_file_too_open(tls.key_path):
        log.event(logger, "tls: the private key file is readable by group or others: chmod 600 it",
                  logging.WARNING, key=tls.key_path)


def run(config: Config) -> int:
    log.setup(config.log_level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
    return 0
