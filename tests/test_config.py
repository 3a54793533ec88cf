import argparse

import pytest

from sfu import config


def parse(argv, environ=None):
    parser = argparse.ArgumentParser()
    config.add_serve_arguments(parser)
    return config.from_args(parser.parse_args(argv), environ or {})


def test_defaults():
    cfg = parse([])
    assert (cfg.host, cfg.http_port, cfg.rtc_port, cfg.data_dir) == ("127.0.0.1", 8080, 40000, "./var")
    assert cfg.candidate_ip == "127.0.0.1"


def test_environment_then_flags():
    env = {"SFU_HTTP_PORT": "9000", "SFU_RTC_PORT": "41000", "SFU_PUBLIC_IP": "192.0.2.1"}
    cfg = parse([], env)
    assert (cfg.http_port, cfg.rtc_port, cfg.candidate_ip) == (9000, 41000, "192.0.2.1")
    cfg = parse(["--http-port", "9100"], env)
    assert cfg.http_port == 9100  # the flag wins over the environment


def test_bad_environment_value_is_a_clear_error():
    with pytest.raises(SystemExit, match="SFU_HTTP_PORT"):
        parse([], {"SFU_HTTP_PORT": "eighty"})


def test_unknown_datapath_is_a_one_line_error():
    for argv, environ in ((["--datapath", "python"], {}), ([], {"SFU_DATAPATH": "fast"})):
        with pytest.raises(SystemExit) as exc:
            parse(argv, environ)
        message = str(exc.value)
        assert "must be c or pure" in message and "\n" not in message
    assert parse(["--datapath", "pure"]).datapath == "pure"
