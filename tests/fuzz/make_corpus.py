"""Write the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/.

    .venv/bin/python tests/fuzz/make_corpus.py [target ...]

The seeds come from what the test-suite already holds: the RFC 5769 STUN
vectors (tests/test_ice.py), checks laid out as browsers send them, RTP
vectors (tests/test_rtp.py), RTCP vectors (tests/test_rtcp.py), the real
offers of tests/fixtures/sdp, a real DTLS handshake between two endpoints,
and the meeting protocol's requests (docs/protocol.md). Files are named by
the hash of their content, so rerunning only adds what changed.
"""

from __future__ import annotations

import hashlib
import json
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

CORPUS = HERE / "corpus"
SDP_DIR = ROOT / "tests" / "fixtures" / "sdp"


def write(target: str, seeds: list[bytes]) -> None:
    out = CORPUS / target
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        (out / hashlib.sha1(seed).hexdigest()[:16]).write_bytes(seed)
    print(f"{target}: {len(seeds)} seeds in {out.relative_to(ROOT)}")


def module_bytes(module) -> list[bytes]:
    """The bytes constants of a test module (its vectors), and those of its dicts and lists."""
    out = []
    for value in vars(module).values():
        if isinstance(value, bytes):
            out.append(value)
        elif isinstance(value, dict):
            out += [v for v in value.values() if isinstance(v, bytes)]
        elif isinstance(value, (list, tuple)):
            out += [v for v in value if isinstance(v, bytes)]
    return out


def stun_checks() -> list[bytes]:
    """Binding requests as a browser sends them, to the fuzz session's ufrag (fuzz_stun.py)."""
    from aioice import stun

    import fuzz_stun

    out = []
    for username, key, extra in (
        (f"{fuzz_stun.LOCAL_UFRAG}:{fuzz_stun.REMOTE_UFRAG}", fuzz_stun.LOCAL_PWD, {"USE-CANDIDATE": None}),
        (f"{fuzz_stun.LOCAL_UFRAG}:{fuzz_stun.REMOTE_UFRAG}", fuzz_stun.LOCAL_PWD, {}),
        (f"{fuzz_stun.LOCAL_UFRAG}:other", fuzz_stun.LOCAL_PWD, {}),
        ("someone:else", "wrongpasswordwrongpasswd", {}),
    ):
        message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=bytes(range(12)))
        message.attributes["USERNAME"] = username
        message.attributes["PRIORITY"] = 1853824767
        message.attributes["ICE-CONTROLLING"] = 0x1122334455667788
        message.attributes.update(extra)
        message.add_message_integrity(key.encode())
        out.append(bytes(message))
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=bytes(12))
    response.attributes["XOR-MAPPED-ADDRESS"] = ("192.0.2.1", 50000)
    response.add_message_integrity(fuzz_stun.REMOTE_PWD.encode())
    out.append(bytes(response))
    plain = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, transaction_id=bytes(12))
    plain.add_fingerprint()
    out.append(bytes(plain))
    indication = stun.Message(stun.Method.BINDING, stun.Class.INDICATION, transaction_id=bytes(12))
    indication.add_fingerprint()
    out.append(bytes(indication))
    return out


def stun_seeds() -> list[bytes]:
    from tests import test_ice

    seeds = []
    for datagram in stun_checks() + module_bytes(test_ice):
        seeds += [b"\x00" + datagram, b"\x03" + datagram, b"\x13" + datagram]
    return seeds


def rtp_vectors() -> list[bytes]:
    from tests import test_rtp

    return [v for v in module_bytes(test_rtp) if len(v) >= 12]


def rtcp_vectors() -> list[bytes]:
    from tests import test_rtcp

    out = module_bytes(test_rtcp)
    for value in vars(test_rtcp).get("VECTORS", {}).values():  # name -> (wire bytes, packets)
        if isinstance(value, tuple) and value and isinstance(value[0], bytes):
            out.append(value[0])
    return out


def dtls_flights() -> list[bytes]:
    """The datagrams of a real DTLS 1.2 handshake (client and server) and of a close."""
    from sfu.dtls import Certificate, DtlsEndpoint

    a, b = Certificate.generate(), Certificate.generate()
    client = DtlsEndpoint(a, "client", [("sha-256", b.fingerprint())])
    server = DtlsEndpoint(b, "server", [("sha-256", a.fingerprint())])
    client.start(0.0)
    server.start(0.0)
    out = []
    for _ in range(10):
        moved = False
        for sender, receiver in ((client, server), (server, client)):
            for datagram in sender.datagrams_to_send():
                moved = True
                out.append(datagram)
                receiver.receive(datagram, 0.0)
        if not moved:
            break
    client.close()
    out += client.datagrams_to_send()
    return out


def rtp_seeds() -> list[bytes]:
    settings = bytes([96, 100, 111, 111, 0, 5, 2, 0, 0x80, 0x10, 0, 1])  # 96->100, 111->111, ext 1->5, 3->drop
    return [settings + v for v in rtp_vectors()]


def rtcp_seeds() -> list[bytes]:
    return rtcp_vectors()


def dtls_seeds() -> list[bytes]:
    # control byte: which endpoint (fuzz_dtls.py), then the datagram
    return [bytes([mode]) + d for d in dtls_flights() for mode in range(4)]


def datapath_seeds() -> list[bytes]:
    seeds = []
    for v in rtp_vectors():
        seeds += [bytes([0x04 | 0x40]) + v, bytes([0x05 | 0x40 | 0x80]) + v, bytes([0x00]) + v]
    for v in rtcp_vectors():
        seeds += [bytes([0x09]) + v, bytes([0x08 | 0x80]) + v, bytes([0x02]) + v]
    # a video stream of the publisher (SSRC index 1, counted mode) and the viewer's feedback on it
    from sfu import rtcp

    for seq in range(24):
        packet = struct.pack("!BBHII", 0x90 if seq % 5 == 0 else 0x80, 96 | (0x80 if seq % 3 == 2 else 0),
                             seq, seq * 3000, 1) + bytes(range(seq, seq + 80))
        if seq % 5 == 0:  # an RFC 8285 one-byte extension block (mid = "1")
            packet = packet[:12] + bytes.fromhex("bede0001" "9031" "0000") + packet[12:]
        seeds.append(bytes([0x44 | (0x80 if seq % 4 == 0 else 0) | (0x10 if seq % 6 == 0 else 0)]) + packet)
    for packet in (rtcp.Nack(1, 0, [3, 4, 5, 9]), rtcp.Pli(1, 0), rtcp.Fir(1, [(0, 1)]),
                   rtcp.ReceiverReport(1, [])):
        seeds.append(bytes([0x09 | 0x80]) + rtcp.serialize([packet]))
    for check in stun_checks()[:2]:
        seeds += [bytes([0x0C]) + check, bytes([0x0E]) + check]
    for d in dtls_flights()[:2]:
        seeds += [bytes([0x00]) + d, bytes([0x01]) + d]
    return seeds


def demux_seeds() -> list[bytes]:
    seeds = []
    for v in rtp_vectors() + rtcp_vectors() + stun_checks() + dtls_flights()[:2]:
        seeds += [b"\x00" + v, b"\x01" + v]
    return seeds + [b"\x00", b"\x01\x80", b"\x00\x40\x00"]


def sdp_offers() -> list[bytes]:
    return [path.read_bytes() for path in sorted(SDP_DIR.glob("*.sdp"))]


def sdp_seeds() -> list[bytes]:
    # the target picks the role by the length mod 3: each offer in all three roles
    extra = b"a=ice-options:trickle\r\n"  # 23 bytes
    return [offer + extra * n for offer in sdp_offers() for n in range(3)]


def signaling_seeds() -> list[bytes]:
    """Requests of docs/protocol.md as JSON text (control byte 0), and bytes for the
    structured mode (control byte 1: atheris.FuzzedDataProvider picks the fields)."""
    from tests.sdp_offers import OfferPeer

    peer = OfferPeer()
    offers = [peer.offer([("0", "audio", "sendonly"), ("1", "video", "sendonly")]),
              peer.offer([("0", "audio", "sendonly"), ("1", "video", "recvonly")]),
              sdp_offers()[0].decode()]
    messages = [
        {"id": 1, "type": "ping"},
        {"id": 2, "type": "join", "room": "room"},
        {"id": "a", "type": "offer", "sdp": offers[0], "tracks": {"0": {"source": "microphone"}}},
        {"id": 4, "type": "offer", "sdp": offers[1], "subscriptions": {"1": "x-1"}},
        {"id": 5, "type": "offer", "sdp": offers[2]},
        {"id": 6, "type": "mute", "track_id": "x-0", "muted": True},
        {"id": 7, "type": "mute_participant", "participant_id": "p", "kind": "video"},
        {"id": 8, "type": "leave"},
        {"id": 9, "type": "end_meeting"},
        {"id": None, "type": "nope"},
        [1, 2],
    ]
    seeds = [bytes([c]) + json.dumps(m).encode() for m in messages for c in (0, 2)]
    seeds += [bytes([1]) + bytes([i, 255 - i]) * 40 for i in range(0, 256, 16)]
    return seeds


def main(targets: list[str]) -> None:
    makers = {
        "stun": stun_seeds,
        "rtp": rtp_seeds,
        "rtcp": rtcp_seeds,
        "dtls": dtls_seeds,
        "datapath": datapath_seeds,
        "demux": demux_seeds,
        "sdp": sdp_seeds,
        "signaling": signaling_seeds,
    }
    for name in targets or makers:
        write(name, makers[name]())


if __name__ == "__main__":
    main(sys.argv[1:])
