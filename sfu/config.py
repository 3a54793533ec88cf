"""Settings of the SFU: defaults, command-line flags and environment variables.

This is the only module that reads the environment.  Every flag of ``sfu serve``
can also be given as ``SFU_<FLAG>`` (``--http-port`` -> ``SFU_HTTP_PORT``); a flag
on the command line wins over the environment, which wins over the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Mapping


@dataclass
class Config:
    host: str = "127.0.0.1"
    http_port: int = 8080
    rtc_port: int = 40000
    public_ip: str | None = None  # address written in ICE candidates; default: host
    data_dir: str = "./var"
    log_level: str = "info"
    # media policy
    audio_codecs: list[str] = field(default_factory=lambda: ["opus"])
    video_codecs: list[str] = field(default_factory=lambda: ["VP8", "H264", "VP9", "AV1"])
    publisher_bitrate: int = 2_500_000  # bits/s advertised to publishers in REMB
    keyframe_interval_min: float = 0.5  # throttle of keyframe requests per stream, seconds
    consent_timeout: float = 30.0  # RFC 7675: a peer with no STUN for this long is gone
    max_sdp_bytes: int = 64 * 1024

    @property
    def candidate_ip(self) -> str:
        return self.public_ip or self.host


# flag name -> (type, help); the defaults come from Config
_FLAGS: dict[str, tuple[type, str]] = {
    "host": (str, "address to bind HTTP and media sockets to"),
    "http_port": (int, "HTTP signaling port (WHIP, WHEP, /healthz)"),
    "rtc_port": (int, "the one UDP port for all media (0: any free port)"),
    "public_ip": (str, "address put in ICE candidates (default: --host)"),
    "data_dir": (str, "directory for the certificate, database and other state"),
    "log_level": (str, "debug, info, warning or error"),
    "publisher_bitrate": (int, "bitrate in bit/s that the SFU advertises to publishers (REMB)"),
    "consent_timeout": (float, "seconds without ICE consent before a peer is dropped"),
}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Config()
    for name, (typ, help_text) in _FLAGS.items():
        flag = "--" + name.replace("_", "-")
        parser.add_argument(
            flag,
            type=typ,
            default=None,
            help=f"{help_text} (env SFU_{name.upper()}, default {getattr(defaults, name)!r})",
        )


def from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """Build a Config from parsed flags, falling back to the environment, then defaults."""
    environ = os.environ if environ is None else environ
    values = {}
    for name, (typ, _help) in _FLAGS.items():
        value = getattr(args, name, None)
        if value is None:
            raw = environ.get("SFU_" + name.upper())
            if raw not in (None, ""):
                try:
                    value = typ(raw)
                except ValueError:
                    raise SystemExit(f"invalid value for SFU_{name.upper()}: {raw!r}") from None
        if value is not None:
            values[name] = value
    return dataclasses.replace(Config(), **values)
