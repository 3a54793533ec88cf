"""A Transport holds no engine: it reports to a TransportHost (sfu.transport), given
the config values and the certificate it needs at construction."""

from __future__ import annotations

import inspect
from collections import Counter

from aioice import stun

from sfu.dtls import Certificate
from sfu.engine import MediaEngine
from sfu.events import CloseReason
from sfu.transport import Transport, TransportHost

CERT = Certificate.generate()


class RecordingHost:
    """Every call a transport makes, recorded (nothing else is there to call)."""

    def __init__(self) -> None:
        self.stats: Counter = Counter()
        self.drops: Counter = Counter()
        self.calls: list[tuple] = []
        self.sent: list[tuple] = []

    def send(self, data, addr) -> None:
        self.sent.append((data, addr))

    def schedule(self, transport, when) -> None:
        self.calls.append(("schedule", when))

    def drop(self, reason) -> None:
        self.drops[reason] += 1

    def address_changed(self, transport, old, new) -> None:
        self.calls.append(("address_changed", old, new))

    def srtp_keys(self, transport, profile, local_key, remote_key) -> None:
        self.calls.append(("srtp_keys", profile))

    def transport_connected(self, transport, now) -> None:
        self.calls.append(("connected", now))

    def transport_closed(self, transport, reason) -> None:
        self.calls.append(("closed", reason))

    def request_keyframe(self, producer, now) -> None:
        self.calls.append(("request_keyframe", producer))

    def retransmit(self, consumer, lost_seqs, now) -> None:
        self.calls.append(("retransmit", consumer, lost_seqs))


def protocol_members() -> set[str]:
    return {name for name in dir(TransportHost) if not name.startswith("_")} | set(TransportHost.__annotations__)


def test_the_engine_is_a_transport_host():
    missing = [name for name in protocol_members()
               if not hasattr(MediaEngine, name) and name not in ("stats", "drops")]
    assert missing == []
    for name in protocol_members() - {"stats", "drops"}:
        ours = inspect.signature(getattr(MediaEngine, name))
        theirs = inspect.signature(getattr(TransportHost, name))
        assert list(ours.parameters)[1:] == list(theirs.parameters)[1:], name


def test_a_transport_reports_ice_and_its_close_to_its_host():
    host = RecordingHost()
    transport = Transport(host, "room", "publish", "remoteufrag", [("sha-256", CERT.fingerprint())], "server",
                          100.0, certificate=CERT, consent_timeout=5.0, keyframe_interval=0.5,
                          publisher_bitrate=1_000_000, remote_pwd="p" * 24)
    check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    check.attributes["USERNAME"] = f"{transport.local_ufrag}:remoteufrag"
    check.attributes["PRIORITY"] = 1853824767
    check.attributes["ICE-CONTROLLING"] = 1
    check.attributes["USE-CANDIDATE"] = None
    check.add_message_integrity(transport.local_pwd.encode())
    addr = ("127.0.0.1", 5000)
    transport.receive_stun(bytes(check), addr, 100.0)
    assert ("address_changed", None, addr) in host.calls
    assert host.sent and host.sent[0][1] == addr  # the STUN answer, from the host's socket
    transport.receive_rtcp(b"\x80\xc9\x00\x01" + bytes(4), 100.1)  # before DTLS: dropped, counted
    assert host.drops["not_connected"] == 1 and host.stats["rtcp_packets_received"] == 1
    # the consent timeout (config value given at construction), reported as a close
    transport.tick(106.0)
    assert host.calls[-1] == ("closed", CloseReason.CONSENT_TIMEOUT)
    assert host.stats["consent_timeouts"] == 1 and transport.state == "closed"
    assert not hasattr(transport, "engine")
