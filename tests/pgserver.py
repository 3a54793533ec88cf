"""A throw-away PostgreSQL server for tests, from Debian's ``postgresql`` package.

initdb makes a cluster in a temporary directory, ``pg_ctl`` starts it listening
on a Unix socket in that directory only (no TCP at all), and :meth:`stop`
removes it.  PostgreSQL refuses to run as root, so under root the server runs
as the ``postgres`` system user that the package creates.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid


def find_bindir() -> str | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "initdb")):
            return candidate
    initdb = shutil.which("initdb")
    return os.path.dirname(os.path.realpath(initdb)) if initdb else None


class PostgresServer:
    def __init__(self) -> None:
        self.bindir = find_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian package postgresql; "
                               "scripts/install-system-deps.sh installs it)")
        self.dir = tempfile.mkdtemp(prefix="sfu-pg-")
        self.data = os.path.join(self.dir, "data")
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self.started = False

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        cmd = list(args)
        if self.user is not None:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True,
                              stdin=subprocess.DEVNULL, cwd=self.dir)

    def start(self) -> "PostgresServer":
        bin_ = lambda name: os.path.join(self.bindir, name)  # noqa: E731
        self._run(bin_("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--no-sync", "--locale=C")
        options = f"-c listen_addresses='' -k {self.dir} -c fsync=off -c max_connections=40"
        try:
            self._run(bin_("pg_ctl"), "-D", self.data, "-o", options, "-l",
                      os.path.join(self.dir, "server.log"), "-w", "-t", "60", "start")
        except subprocess.CalledProcessError as exc:
            raise RuntimeError(f"pg_ctl start failed: {exc.stderr}\n{self.log()}") from None
        self.started = True
        return self

    def log(self) -> str:
        try:
            with open(os.path.join(self.dir, "server.log")) as f:
                return f.read()
        except OSError:
            return ""

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@/{dbname}?host={self.dir}"

    def create_database(self) -> str:
        """A fresh, empty database; returns its DSN."""
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self) -> None:
        if self.started:
            try:
                self._run(os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", "immediate",
                          "-w", "-t", "30", "stop")
            finally:
                self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)
