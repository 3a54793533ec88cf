"""Shared fixtures: a real SFU process on loopback, and a guard that WebRTC
tests only run inside a loopback-only network namespace (see scripts/netns-run.sh)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the signing secret of every test server (`--auth-secret`), so tests mint their own tokens
TEST_AUTH_SECRET = "test-secret-of-the-sfu-test-suite"


def mint_test_token(room: str | None, identity: str = "tester", name: str | None = None, *,
                    publish: bool = True, subscribe: bool = True, host: bool = False,
                    admin: bool = False, ttl: float = 3600.0, secret: str = TEST_AUTH_SECRET) -> str:
    from sfu.auth import Grants, mint_token

    return mint_token(secret, identity, name or identity, room,
                      Grants(publish=publish, subscribe=subscribe, host=host, admin=admin), ttl=ttl)


def loopback_only() -> bool:
    return all(name == "lo" for _index, name in socket.if_nameindex())


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SfuProcess:
    """`sfu serve` as a child process, with its log captured to a file."""

    def __init__(self, tmp_path, *extra: str, env: dict | None = None) -> None:
        self.http_port = free_port()
        self.rtc_port = free_port(socket.SOCK_DGRAM)
        self.data_dir = str(tmp_path / "data")
        self.log_path = tmp_path / "sfu.log"
        self.args = [
            sys.executable, "-m", "sfu", "serve",
            "--host", "127.0.0.1",
            "--http-port", str(self.http_port),
            "--rtc-port", str(self.rtc_port),
            "--data-dir", self.data_dir,
            *extra,
        ]
        if "--auth-secret" not in extra:
            self.args += ["--auth-secret", TEST_AUTH_SECRET]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.stdout = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def token(self, room: str | None, identity: str = "tester", name: str | None = None, **grants) -> str:
        """An access token for this server (publish and subscribe unless told otherwise)."""
        return mint_test_token(room, identity, name, **grants)

    def start(self, timeout: float = 20.0) -> "SfuProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.args, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=self._log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sfu exited with {self.proc.returncode}: {self.log()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sfu did not become healthy: " + self.log())

    def health(self) -> dict:
        import json
        with urllib.request.urlopen(self.url + "/healthz", timeout=5) as r:
            return json.loads(r.read())

    def log(self) -> str:
        try:
            return self.log_path.read_text()
        except OSError:
            return ""

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout:
            self.stdout = self.proc.stdout.read().decode(errors="replace")
            self.proc.stdout.close()
        self._log.close()
        return self.proc.returncode


# The data paths a MediaEngine forwards on: the C fast path (the default of `sfu serve`)
# and the pure-Python reference. The engine, meeting and signaling suites run on both.
DATAPATHS = ["c", "pure"]


@pytest.fixture(params=DATAPATHS)
def datapath_mode(request) -> str:
    return request.param


def new_engine(config, mode: str):
    """A MediaEngine on ``mode`` that is not started: it negotiates, no socket (a C
    data path without a socket still keeps its peers and streams)."""
    from sfu.engine import MediaEngine

    return MediaEngine(config, pure_python=True) if mode == "pure" else MediaEngine(config)


@pytest.fixture
def netns():
    """WebRTC clients must not see any interface but loopback."""
    if not loopback_only():
        pytest.fail(
            "this test starts WebRTC clients and must run in a loopback-only network "
            "namespace: use `make test` or `bash scripts/netns-run.sh .venv/bin/python -m pytest ...`"
        )


@pytest.fixture
def sfu(tmp_path, netns):
    server = SfuProcess(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (Debian's package) for this test session, on a Unix socket."""
    from .pgserver import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def history_db(request, tmp_path) -> str:
    """The `--db` value of an empty history database, once per backend."""
    if request.param == "sqlite":
        return str(tmp_path / "history.sqlite3")
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
async def store(history_db, tmp_path):
    """An open HistoryStore on that database."""
    from sfu.history import HistoryStore

    s = HistoryStore.from_config(history_db, str(tmp_path))
    await s.open()
    yield s
    await s.close()
