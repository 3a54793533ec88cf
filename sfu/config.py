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
    # HTTP connections: slow or half-open clients must not hold descriptors for long
    http_header_timeout: float = 10.0  # a connection's request head must be complete this soon (0: off)
    http_idle_timeout: float = 60.0  # an idle keep-alive connection is closed after this many seconds
    http_max_per_source: int = 256  # open connections per IPv4 address / IPv6 /64 (0: no cap)
    # TLS of the HTTP listener (HTTPS, WSS): both files or neither (sfu/tls.py)
    tls_cert: str | None = None  # PEM certificate chain, the server's certificate first
    tls_key: str | None = None  # PEM private key of that certificate, unencrypted
    tls_self_signed: bool = False  # with dev: a self-signed certificate made in data_dir
    # media policy
    audio_codecs: list[str] = field(default_factory=lambda: ["opus"])
    video_codecs: list[str] = field(default_factory=lambda: ["VP8", "H264", "VP9", "AV1"])
    publisher_bitrate: int = 2_500_000  # bits/s advertised to publishers in REMB
    keyframe_interval_min: float = 0.5  # throttle of keyframe requests per stream, seconds
    consent_timeout: float = 30.0  # RFC 7675: a peer with no STUN for this long is gone
    max_sdp_bytes: int = 64 * 1024
    # limits (README.md, "Limits"): refused with a clear 4xx/503 or protocol error
    max_offer_sections: int = 128  # media sections (m= lines) in one offer
    max_session_tracks: int = 128  # tracks one session publishes and receives
    max_session_published: int = 16  # tracks one session publishes
    max_room_tracks: int = 10_000  # tracks of all sessions of one room
    max_server_tracks: int = 20_000  # tracks of all rooms of this server (one worker)
    max_pending_sessions: int = 1_000  # sessions whose ICE/DTLS is not done yet (reaped by consent_timeout)
    max_room_pending_sessions: int = 500  # the same in one room
    # meetings, access tokens and history
    auth_secret: str | None = None  # default: <data_dir>/auth_secret, created on first start
    auth_kid: str | None = None  # key id written in tokens signed with auth_secret (rotation)
    auth_keys: str | None = None  # older keys still accepted: "kid:secret,kid:secret" (+ <data_dir>/auth_keys)
    auth_leeway: float = 30.0  # seconds of clock skew allowed on a token's exp and nbf
    db: str | None = None  # default: SQLite file <data_dir>/history.sqlite3; or postgresql://...
    retention_days: float = 180.0  # meetings that ended longer ago are purged
    audit_retention_days: float = 365.0  # audit log rows (sfu/audit.py) older than this are purged
    grace_period: float = 30.0  # an emptied meeting ends this many seconds after its last leave
    max_meetings_per_identity: int = 10  # running meetings one identity may create (0: no limit)
    meetings_per_minute: float = 10.0  # POST /api/meetings per identity and minute (0: no limit)
    heartbeat_interval: float = 10.0  # open sessions are marked alive in the store this often
    dev: bool = False  # the page may get a token for any room and name from the server
    # chat and polls of the meeting protocol (sfu/chat.py, sfu/polls.py, docs/protocol.md 4.8-4.10)
    keep_chat: bool = False  # store chat messages with the meeting's history (same retention, erasure)
    chat_max_chars: int = 2000  # characters of one chat message
    chat_burst: int = 10  # chat messages one participant may send at once ...
    chat_per_minute: float = 30.0  # ... and then per minute (a token bucket)
    # recording by the SFU (sfu/recording.py, sfu/recorder.py)
    recordings_dir: str | None = None  # default: <data_dir>/recordings
    no_recording: bool = False  # hosts may not start recordings
    # the forwarding plane (sfu/plane.py): "c" (sfu.plane_c over sfu._fast.datapath) or
    # "pure" (sfu.plane_py, all Python: the test oracle and benchmark baseline)
    datapath: str = "c"

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
    "http_header_timeout": (float, "seconds a new HTTP connection has to send a complete request head "
                                   "(0: no limit)"),
    "http_idle_timeout": (float, "seconds an idle keep-alive HTTP connection stays open"),
    "http_max_per_source": (int, "open HTTP/WebSocket connections per IPv4 address or IPv6 /64; more "
                                 "are refused with 429 (0: no cap; behind a reverse proxy: 0)"),
    "tls_cert": (str, "PEM certificate chain (the server's first): serve HTTPS and WSS; needs --tls-key"),
    "tls_key": (str, "PEM private key of --tls-cert (unencrypted; keep it mode 0600)"),
    "publisher_bitrate": (int, "bitrate in bit/s that the SFU advertises to publishers (REMB)"),
    "consent_timeout": (float, "seconds without ICE consent before a peer is dropped"),
    "max_offer_sections": (int, "media sections (m= lines) allowed in one SDP offer"),
    "max_session_tracks": (int, "tracks one session (WHIP, WHEP or meeting) may publish and receive"),
    "max_session_published": (int, "tracks one session may publish"),
    "max_room_tracks": (int, "tracks allowed in one room (all its sessions)"),
    "max_server_tracks": (int, "tracks allowed on this server (all its rooms)"),
    "max_pending_sessions": (int, "sessions not connected yet (ICE/DTLS not done) allowed at once"),
    "max_room_pending_sessions": (int, "sessions not connected yet allowed at once in one room"),
    "auth_secret": (str, "HS256 secret that signs access tokens (default: <data-dir>/auth_secret)"),
    "auth_kid": (str, "key id of --auth-secret, written in the header of the tokens it signs"),
    "auth_keys": (str, "older keys still accepted, kid:secret,... (also <data-dir>/auth_keys)"),
    "auth_leeway": (float, "seconds of clock skew allowed on a token's exp and nbf"),
    "db": (str, "history database: postgresql://... (default: SQLite in the data directory)"),
    "retention_days": (float, "days to keep the history of ended meetings"),
    "audit_retention_days": (float, "days to keep the audit log of reads, exports and deletions of history"),
    "grace_period": (float, "seconds an emptied meeting waits for someone to rejoin before it ends"),
    "max_meetings_per_identity": (int, "running meetings one identity may create with POST /api/meetings "
                                       "(0: no limit; admins are not limited)"),
    "meetings_per_minute": (float, "POST /api/meetings per identity and minute (0: no limit)"),
    "heartbeat_interval": (float, "seconds between history heartbeats of open sessions"),
    "chat_max_chars": (int, "characters allowed in one chat message"),
    "chat_burst": (int, "chat messages one participant may send in a burst"),
    "chat_per_minute": (float, "chat messages one participant may send per minute after the burst"),
    "recordings_dir": (str, "directory of the recordings made by the SFU (default: <data-dir>/recordings)"),
    "datapath": (str, "forwarding plane: c (the C data path) or pure (Python reference, benchmark baseline)"),
}
# boolean switches: a bare flag on the command line, SFU_<NAME>=1/true/yes in the environment
_SWITCHES: dict[str, str] = {
    "dev": "development mode: the page may ask the server for a token for any room and name",
    "keep_chat": "store meeting chat with the meeting's history (creator-readable; same retention and erasure)",
    "no_recording": "hosts may not record meetings with the SFU (recording_start is refused)",
    "tls_self_signed": "with --dev: serve HTTPS/WSS with a self-signed certificate made (once) in the data "
                       "directory, for localhost, 127.0.0.1 and ::1",
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
    for name, help_text in _SWITCHES.items():
        parser.add_argument("--" + name.replace("_", "-"), action="store_true", default=None,
                            help=f"{help_text} (env SFU_{name.upper()}=1)")


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
    for name in _SWITCHES:
        value = getattr(args, name, None)
        if value is None:
            value = environ.get("SFU_" + name.upper(), "").strip().lower() in ("1", "true", "yes", "on")
        values[name] = bool(value)
    if values.get("datapath", Config.datapath) not in ("c", "pure"):  # one line at start, not a traceback
        raise SystemExit(f"sfu: --datapath (SFU_DATAPATH) must be c or pure, not {values['datapath']!r}")
    return dataclasses.replace(Config(), **values)
