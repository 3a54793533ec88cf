"""The asyncio glue: start the media engine and the HTTP server, stop on a signal."""

from __future__ import annotations

import asyncio
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

logger = logging.getLogger("sfu.server")


class Server:
    """Engine + HTTP site; usable from tests inside a running loop."""

    def __init__(self, config: Config, pure_python: bool = False) -> None:
        self.config = config
        self.engine = MediaEngine(config, pure_python=pure_python)
        self.meetings = MeetingService(HistoryStore.from_config(config.db, config.data_dir),
                                       grace_period=config.grace_period,
                                       heartbeat_interval=config.heartbeat_interval,
                                       retention_days=config.retention_days)
        self.auth_secret: str | None = config.auth_secret
        self._runner: web.AppRunner | None = None
        self.http_guard = ConnectionGuard(config.http_header_timeout, config.http_max_per_source)
        self.http_port: int | None = None

    async def start(self) -> None:
        os.makedirs(self.config.data_dir, exist_ok=True)
        self.auth_secret = keyring_from_config(self.config)  # the primary key is still a str
        await self.meetings.start()  # closes what a crash left open, before anyone joins
        await self.engine.start()
        app = make_app(self.engine, self.meetings, self.auth_secret, dev=self.config.dev)
        app[METRICS_KEY].http_guard = self.http_guard  # its refusals in /metrics
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     keepalive_timeout=self.config.http_idle_timeout)
        await self._runner.setup()
        # header timeout and cap per source (sfu/httpguard.py)
        site = GuardedSite(self._runner, self.config.host, self.config.http_port, guard=self.http_guard)
        await site.start()
        self.http_port = self._runner.addresses[0][1]

    @property
    def url(self) -> str:
        host = self.config.host if ":" not in self.config.host else f"[{self.config.host}]"
        return f"http://{host}:{self.http_port}"

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


def run(config: Config) -> int:
    log.setup(config.log_level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve(config))
    else:
        uvloop.run(serve(config))
    return 0
