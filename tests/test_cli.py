"""`sfu serve` as a user runs it: ready line, /healthz, clean stop on a signal."""

import signal

import pytest

from .conftest import SfuProcess

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_starts_and_stops_cleanly(tmp_path, sig):
    server = SfuProcess(tmp_path).start()
    try:
        assert server.health()["status"] == "ok"
    finally:
        code = server.stop(sig)
    assert code == 0, server.log()
    assert f"http://127.0.0.1:{server.http_port}/whip/" in server.stdout
    assert f"udp/{server.rtc_port}" in server.stdout
    assert "127.0.0.1" not in server.log(), "structured logs carry no addresses"


def test_flags_from_environment(tmp_path):
    server = SfuProcess(tmp_path)
    # move the ports into the environment instead of flags
    args = server.args
    for flag in ("--http-port", "--rtc-port"):
        i = args.index(flag)
        del args[i : i + 2]
    server.env.update(SFU_HTTP_PORT=str(server.http_port), SFU_RTC_PORT=str(server.rtc_port))
    server.start()
    try:
        assert server.health()["status"] == "ok"
    finally:
        assert server.stop() == 0


# -- a history database that cannot be used: one line naming it, exit code 3 --------------

import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402

from sfu.history import EXIT_STORE_UNAVAILABLE, HistoryStore, SessionRecord, StoreUnavailable  # noqa: E402
from sfu.history import Meeting as _Meeting  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOBODY = 65534


def _sfu(*args, as_nobody=False, timeout=30):
    cmd = [sys.executable, "-m", "sfu", *args]
    if as_nobody:  # root reads and writes every file: drop to an ordinary user
        cmd = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def _serve(db, data_dir, **kw):
    return _sfu("serve", "--http-port", "0", "--rtc-port", "0", "--data-dir", str(data_dir),
                "--db", str(db), "--auth-secret", "x" * 40, **kw)


def _assert_one_line_naming(proc, path, words):
    assert proc.returncode == EXIT_STORE_UNAVAILABLE == 3, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "SFU ready" not in proc.stdout
    plain = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert len(plain) == 1, proc.stderr
    assert str(path) in plain[0] and words in plain[0], plain[0]
    return plain[0]


def _assert_json_error(proc, path):
    lines = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    errors = [e for e in lines if e["level"] == "error"]
    assert len(errors) == 1, proc.stderr
    assert errors[0]["database"] == str(path) and errors[0]["exit_code"] == 3 and errors[0]["advice"]


def _real_db(path, sessions=3000):
    async def fill():
        store = HistoryStore.from_config(str(path), str(path.parent))
        await store.open()
        await store.create_meeting(_Meeting("abc-def-ghj", "r1", "topic", "alice", "Alice", 1.0e9, None))
        for i in range(sessions):
            await store.add_session(SessionRecord(f"s{i:06d}", "abc-def-ghj", f"user{i}", f"User {i}",
                                                  1.0e9 + i, None, 1.0e9 + i, None))
        await store.close()
    asyncio.run(fill())


@pytest.fixture
def shared_dir():
    """A directory an ordinary user can enter (pytest's tmp_path is root's, mode 0700)."""
    path = tempfile.mkdtemp(prefix="sfu-db-")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_garbage_database_is_one_line_and_exit_3(tmp_path):
    db = tmp_path / "history.sqlite3"
    db.write_bytes(os.urandom(64 * 1024))
    proc = _serve(db, tmp_path / "data")
    line = _assert_one_line_naming(proc, db, "not a valid SQLite database")
    assert "backup" in line
    _assert_json_error(proc, db)
    # `sfu history` says the same, in one line, with the same exit code
    hist = _sfu("history", "list", "--admin", "--db", str(db))
    _assert_one_line_naming(hist, db, "not a valid SQLite database")


def test_truncated_copy_of_a_real_database(tmp_path):
    real = tmp_path / "real" / "history.sqlite3"
    real.parent.mkdir()
    _real_db(real)
    data = real.read_bytes()
    assert len(data) > 100_000 and data.startswith(b"SQLite format 3\0")
    db = tmp_path / "cut.sqlite3"
    db.write_bytes(data[: len(data) * 6 // 10])
    proc = _serve(db, tmp_path / "data")
    _assert_one_line_naming(proc, db, "not a valid SQLite database")
    _assert_json_error(proc, db)
    hist = _sfu("history", "show", "abc-def-ghj", "--admin", "--db", str(db))
    _assert_one_line_naming(hist, db, "not a valid SQLite database")
    # the intact original still opens
    ok = _sfu("history", "list", "--admin", "--db", str(real))
    assert ok.returncode == 0 and "abc-def-ghj" in ok.stdout, ok.stderr


def test_database_whose_parent_is_a_file_or_that_is_a_directory(tmp_path):
    (tmp_path / "plain").write_text("not a directory")
    db = tmp_path / "plain" / "history.sqlite3"
    _assert_one_line_naming(_serve(db, tmp_path / "data"), db, "not a directory")
    folder = tmp_path / "folder.sqlite3"
    folder.mkdir()
    _assert_one_line_naming(_serve(folder, tmp_path / "data"), folder, "cannot be opened")


def _need_setpriv():
    # setpriv (util-linux, installed by scripts/install-system-deps.sh) runs the server as
    # nobody: as root, permission bits would not make the file unreadable
    assert os.getuid() != 0 or shutil.which("setpriv"), "setpriv is missing: install util-linux"


def test_unreadable_database(shared_dir):
    _need_setpriv()
    db = os.path.join(shared_dir, "history.sqlite3")
    shutil.copy(os.path.join(ROOT, "tests", "test_cli.py"), db)  # any bytes: it is not read
    os.chmod(db, 0o000)
    data = os.path.join(shared_dir, "data")
    os.mkdir(data)
    os.chmod(data, 0o777)
    proc = _serve(db, data, as_nobody=os.getuid() == 0)
    line = _assert_one_line_naming(proc, db, "cannot be opened")
    assert "readable and writable" in line
    _assert_json_error(proc, db)


def test_read_only_database(shared_dir):
    _need_setpriv()
    real = os.path.join(shared_dir, "history.sqlite3")
    from pathlib import Path
    _real_db(Path(real), sessions=10)
    os.chmod(real, 0o444)  # the directory (0755, root's) is read-only for nobody too
    data = os.path.join(shared_dir, "data")
    os.mkdir(data)
    os.chmod(data, 0o777)
    proc = _serve(real, data, as_nobody=os.getuid() == 0)
    line = _assert_one_line_naming(proc, real, "")
    assert "read-only" in line or "cannot be opened" in line
    assert "writable" in line
    _assert_json_error(proc, real)


def test_store_unavailable_in_process_names_the_file(tmp_path):
    db = tmp_path / "bad.sqlite3"
    db.write_bytes(b"SQLite format 3\0" + os.urandom(5000))

    async def go():
        store = HistoryStore.from_config(str(db), str(tmp_path))
        with pytest.raises(StoreUnavailable) as err:
            await store.open()
        assert store._executor is None  # the worker thread is gone
        return err.value

    exc = asyncio.run(go())
    assert exc.where == str(db) and "\n" not in str(exc) and str(db) in str(exc)


def test_unreachable_postgresql_is_one_line_without_the_password():
    hist = _sfu("history", "list", "--admin", "--db", "postgresql://bob:hunter2@127.0.0.1:1/db")
    line = _assert_one_line_naming(hist, "postgresql://bob:***@127.0.0.1:1/db", "cannot be used")
    assert "hunter2" not in hist.stderr + hist.stdout and "server is up" in line
