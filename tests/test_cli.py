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
