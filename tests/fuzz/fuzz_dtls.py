"""Fuzz target: DTLS datagrams into ``DtlsEndpoint.receive`` (sfu/dtls.py).

Input: one control byte, then the datagram. Control & 3 picks the endpoint:

0. a fresh server endpoint (what a new transport has when the first DTLS
   datagram arrives);
1. a server that completed a real handshake and keeps its OpenSSL objects
   (records are decrypted and authenticated by OpenSSL);
2. a server that completed a real handshake and released them
   (``release_after=0``, as the engine runs it: it answers a retransmitted
   final flight from a stored copy);
3. a client that sent its ClientHello and waits for the server's flight.

Bits 2-4 advance the clock (0..7 x 0.25 s) before the datagram, so that timers
and the resend interval come into play; ``handle_timer`` runs after it.

Property: ``receive`` and ``handle_timer`` never raise (the module says so),
``split_records`` and ``pack_datagrams`` keep every byte; the endpoint ends
in one of its states, only with its own events; what it sends is DTLS
records and, once connected, at most one copy of its last flight per input;
the number of datagrams waiting to be sent stays bounded.
"""

from __future__ import annotations

import sys

from harness import fuzz_imports, run

with fuzz_imports():
    from sfu import dtls
    from sfu.dtls import Certificate, Closed, DtlsEndpoint, HandshakeComplete, HandshakeFailed

CLIENT = Certificate.generate()
SERVER = Certificate.generate()
STATES = {"new", "connecting", "connected", "closed", "failed"}
clock = [0.0]


def server(**kwargs) -> DtlsEndpoint:
    return DtlsEndpoint(SERVER, "server", [("sha-256", CLIENT.fingerprint())], **kwargs)


def client() -> DtlsEndpoint:
    return DtlsEndpoint(CLIENT, "client", [("sha-256", SERVER.fingerprint())])


def connected(**kwargs) -> tuple[DtlsEndpoint, list[bytes]]:
    """A server after a real handshake; also the datagrams of its last flight."""
    c, s = client(), server(**kwargs)
    now = clock[0]
    c.start(now)
    s.start(now)
    last: list[bytes] = []
    for _ in range(10):
        moved = False
        for datagram in c.datagrams_to_send():
            moved = True
            s.receive(datagram, now)
        sent = s.datagrams_to_send()
        if sent:
            moved = True
            last = sent
        for datagram in sent:
            c.receive(datagram, now)
        if not moved:
            break
    assert s.state == "connected", s.state
    while s.next_event() is not None:
        pass
    return s, last


endpoints: dict[int, tuple[DtlsEndpoint, list[bytes]]] = {}


def endpoint(kind: int) -> tuple[DtlsEndpoint, list[bytes]]:
    current = endpoints.get(kind)
    if kind == 0:
        return server(), []
    if kind == 3:
        if current is None or current[0].state != "connecting":
            c = client()
            c.start(clock[0])
            endpoints[kind] = (c, c.datagrams_to_send())
        return endpoints[kind]
    if current is None or current[0].state != "connected":
        endpoints[kind] = connected(release_after=None if kind == 1 else 0.0)
    return endpoints[kind]


def one_input(data: bytes) -> None:
    if not data:
        return
    control, datagram = data[0], data[1:]
    records = dtls.split_records(datagram)
    assert b"".join(records) == datagram
    assert b"".join(dtls.pack_datagrams(records, 1200)) == datagram
    kind = control & 3
    ep, last_flight = endpoint(kind)
    clock[0] += ((control >> 2) & 7) * 0.25
    ep.receive(datagram, clock[0])
    ep.handle_timer(clock[0])
    assert ep.state in STATES, ep.state
    sent = ep.datagrams_to_send()
    for out in sent:
        assert out and 20 <= out[0] <= 63, out[:1]  # DTLS records only (RFC 7983 §7)
    if kind in (1, 2):
        assert len(sent) <= max(len(last_flight), 1) + 1, (len(sent), len(last_flight))
    else:
        assert len(sent) <= 16, len(sent)
    while (event := ep.next_event()) is not None:
        assert isinstance(event, (HandshakeComplete, HandshakeFailed, Closed)), event
        if kind == 0 and isinstance(event, HandshakeComplete):
            raise AssertionError("a server completed a handshake from one datagram")
    if ep.get_timer() is not None:
        assert ep.get_timer() >= 0


if __name__ == "__main__":
    run(one_input)
    sys.exit(0)
