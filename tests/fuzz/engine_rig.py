"""A MediaEngine on a fake clock with real, connected peers and no socket, for
the fuzz targets that go through the engine (fuzz_demux.py, fuzz_datapath.py).

Each peer connects for real: its offer (bench.loadgen.build_offer) goes
through ``create_session``, a signed STUN Binding request selects its address
(sfu.ice), a DTLS handshake with a client ``DtlsEndpoint`` runs through the
engine's receive path, and the exported keys give the peer its own
``SrtpPair``. What the engine sends is captured (its forwarding plane, C or
pure, made with ``capture=True``) and handed to the peers by address during
the handshake, dropped afterwards.
"""

from __future__ import annotations

import random
import secrets
from dataclasses import dataclass
from types import SimpleNamespace

from aioice import stun

from bench.loadgen import build_offer
from sfu.config import Config
from sfu.dtls import Certificate, DtlsEndpoint, HandshakeComplete
from sfu.engine import MediaEngine
from sfu.srtp import SrtpPair

CLIENT_CERT = Certificate.generate()


@dataclass
class Peer:
    name: str
    role: str
    addr: tuple
    ufrag: str
    pwd: str
    session: str
    srtp: SrtpPair
    ssrcs: tuple[int, ...]
    keys: tuple[str, bytes, bytes]  # profile, local key, remote key: another SrtpPair like srtp


class Rig:
    def __init__(self, mode: str) -> None:
        random.seed(9)
        self.mode = mode
        self.now = 1000.0
        self.engine = MediaEngine(Config(consent_timeout=1e9, datapath=mode), capture=True)
        self.engine._loop = SimpleNamespace(time=lambda: self.now)
        self.out = self.engine.plane.captured
        self.peers: dict[str, Peer] = {}

    # -- driving ---------------------------------------------------------------------------
    def feed(self, data: bytes, addr: tuple) -> None:
        self.engine.plane.feed(data, addr, self.now)

    def take(self) -> list[tuple[bytes, tuple]]:
        out = list(self.out)
        self.out.clear()
        return out

    def tick(self, seconds: float) -> None:
        self.now += seconds
        self.engine.tick(self.now)

    # -- peers -----------------------------------------------------------------------------
    def connect(self, name: str, role: str, port: int, room: str = "room") -> Peer:
        """A peer that publishes (audio and video SSRCs) or views, connected for real."""
        ufrag, pwd = secrets.token_hex(4), secrets.token_hex(12)
        ssrcs = (random.getrandbits(32), random.getrandbits(32)) if role == "publish" else ()
        offer = build_offer(role, ufrag, pwd, CLIENT_CERT.fingerprint(),
                            audio_ssrc=ssrcs[0] if ssrcs else None, video_ssrc=ssrcs[1] if ssrcs else None)
        info = self.engine.create_session(room, role, offer)
        transport = self.engine.transports[info.id]
        addr = ("127.0.0.1", port)
        check = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
        check.attributes["USERNAME"] = f"{transport.local_ufrag}:{ufrag}"
        check.attributes["PRIORITY"] = 1853824767
        check.attributes["ICE-CONTROLLING"] = 1
        check.attributes["USE-CANDIDATE"] = None
        check.add_message_integrity(transport.local_pwd.encode())
        self.feed(bytes(check), addr)
        client = DtlsEndpoint(CLIENT_CERT, "client", [("sha-256", self.engine.certificate.fingerprint())])
        client.start(self.now)
        for _ in range(20):
            moved = False
            for datagram in client.datagrams_to_send():
                moved = True
                self.feed(datagram, addr)
            for datagram, to in self.take():
                if to == addr and datagram and 20 <= datagram[0] <= 63:
                    moved = True
                    client.receive(datagram, self.now)
            if not moved:
                break
        done = None
        while (ev := client.next_event()) is not None:
            if isinstance(ev, HandshakeComplete):
                done = ev
        if done is None or transport.state != "connected":
            raise RuntimeError(f"{name} did not connect: {transport.state}")
        peer = Peer(name, role, addr, ufrag, pwd, info.id,
                    SrtpPair(done.srtp_profile, done.local_key, done.remote_key), ssrcs,
                    (done.srtp_profile, done.local_key, done.remote_key))
        self.peers[name] = peer
        self.tick(0.02)
        self.take()
        return peer

    def alive(self, name: str) -> bool:
        peer = self.peers.get(name)
        return peer is not None and self.engine.has_session(peer.session)


def made_up_ssrcs(mode: str, kind: str, batches: int = 60) -> float:
    """RSS growth (MiB) while a connected viewer sends ``batches`` x 1,000 authenticated
    SRTP ("rtp") or SRTCP ("rtcp") packets, each from another SSRC. Run it in a fresh
    process (tests/test_fuzz_smoke.py does): free heap left by others would hide growth."""
    import gc
    import os
    import struct

    from sfu import rtcp

    def rss_mb() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    rig = Rig(mode)
    rig.connect("pub", "publish", 5000)
    viewer = rig.connect("viewer", "subscribe", 5001)
    before = rss_mb()
    for batch in range(batches):
        client = SrtpPair(*viewer.keys)  # a fresh one per batch: the sender's side stays small
        for i in range(1000):
            ssrc = 0x10000000 + batch * 1000 + i
            if kind == "rtp":
                rig.feed(client.protect(struct.pack("!BBHII", 0x80, 96, i, 0, ssrc) + bytes(100)), viewer.addr)
            else:
                rig.feed(client.protect_rtcp(rtcp.serialize([rtcp.ReceiverReport(ssrc, [])])), viewer.addr)
        del client
        rig.take()
    gc.collect()
    assert rig.alive("viewer")
    return rss_mb() - before
