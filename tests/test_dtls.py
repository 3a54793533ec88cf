"""DTLS-SRTP endpoint: in-memory client/server pairs with a fake clock."""

import asyncio
import datetime
import os
import random
import time

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL

from sfu.dtls import (
    EXPORTER_LABEL,
    HASHES,
    Certificate,
    Closed,
    DtlsEndpoint,
    HandshakeComplete,
    RESEND_INTERVAL,
    HandshakeFailed,
    pack_datagrams,
    split_records,
)

CERT_A = Certificate.generate()
CERT_B = Certificate.generate()


def rsa_certificate() -> Certificate:
    """A self-signed RSA certificate, as GStreamer's webrtcbin uses."""
    return Certificate.self_signed(rsa.generate_private_key(public_exponent=65537, key_size=2048), "gstreamer")


def pair(client_cert=CERT_A, server_cert=CERT_B, client_kwargs=None, server_kwargs=None):
    client = DtlsEndpoint(
        client_cert, "client", [("sha-256", server_cert.fingerprint())], **(client_kwargs or {})
    )
    server = DtlsEndpoint(
        server_cert, "server", [("sha-256", client_cert.fingerprint())], **(server_kwargs or {})
    )
    return client, server


def exchange(a, b, now=0.0, rounds=20, drop=lambda sender, datagram: False, sizes=None):
    """Move datagrams between two endpoints until neither has any."""
    for _ in range(rounds):
        moved = False
        for sender, receiver in ((a, b), (b, a)):
            for datagram in sender.datagrams_to_send():
                moved = True
                if sizes is not None:
                    sizes.append(len(datagram))
                if not drop(sender, datagram):
                    receiver.receive(datagram, now)
        if not moved:
            return


def events(endpoint):
    out = []
    while (event := endpoint.next_event()) is not None:
        out.append(event)
    return out


def handshake(client, server, now=0.0, **kwargs):
    client.start(now)
    server.start(now)
    exchange(client, server, now, **kwargs)
    return events(client), events(server)


# -- Certificate -------------------------------------------------------------


def test_certificate():
    cert = Certificate.generate()
    assert cert.cert.signature_hash_algorithm.name == "sha256"
    assert cert.cert.public_key().curve.name == "secp256r1"
    now = datetime.datetime.now(tz=datetime.timezone.utc)
    assert cert.cert.not_valid_before_utc < now - datetime.timedelta(hours=23)
    assert cert.cert.not_valid_after_utc > now + datetime.timedelta(days=29)
    assert cert.cert.subject != Certificate.generate().cert.subject  # random CN
    for algorithm, length in (("sha-1", 20), ("sha-256", 32), ("sha-384", 48), ("sha-512", 64)):
        value = cert.fingerprint(algorithm)
        parts = value.split(":")
        assert len(parts) == length
        assert all(len(p) == 2 and p == p.upper() for p in parts)
        assert bytes.fromhex("".join(parts)) == cert.cert.fingerprint(HASHES[algorithm]())


# -- Record framing ------------------------------------------------------------


def test_split_and_pack_records():
    # RFC 6347 §4.1: 13-byte header, 2-byte length at offset 11.
    def record(n):
        return bytes([22, 0xFE, 0xFD]) + bytes(8) + n.to_bytes(2, "big") + bytes([n % 256]) * n

    records = [record(100), record(500), record(700), record(10)]
    data = b"".join(records)
    assert split_records(data) == records
    assert split_records(data + b"\x16\xfe") == records + [b"\x16\xfe"]
    assert split_records(b"") == []
    datagrams = pack_datagrams(records, 1200)
    assert datagrams == [records[0] + records[1], records[2] + records[3]]
    assert b"".join(datagrams) == data
    assert pack_datagrams([record(2000)], 1200) == [record(2000)]  # never split


# -- Handshake -----------------------------------------------------------------


def test_handshake_completes_and_keys_mirror():
    client, server = pair()
    assert client.state == server.state == "new"
    client_events, server_events = handshake(client, server)
    assert client.state == server.state == "connected"
    [c] = client_events
    [s] = server_events
    assert isinstance(c, HandshakeComplete) and isinstance(s, HandshakeComplete)
    # GCM preferred; RFC 7714 §12: 16-byte key, 12-byte salt.
    assert c.srtp_profile == s.srtp_profile == "SRTP_AEAD_AES_128_GCM"
    assert len(c.local_key) == len(c.remote_key) == 28
    assert c.local_key == s.remote_key
    assert c.remote_key == s.local_key
    assert c.local_key != c.remote_key
    assert client.get_timer() is None and server.get_timer() is None


@pytest.mark.parametrize(
    "client_profiles, server_profiles, expected, key_length",
    [
        (["SRTP_AES128_CM_SHA1_80"], None, "SRTP_AES128_CM_SHA1_80", 30),
        (None, ["SRTP_AES128_CM_SHA1_80"], "SRTP_AES128_CM_SHA1_80", 30),
        (["SRTP_AEAD_AES_128_GCM"], None, "SRTP_AEAD_AES_128_GCM", 28),
        (
            ["SRTP_AES128_CM_SHA1_80", "SRTP_AEAD_AES_128_GCM"],
            None,
            "SRTP_AEAD_AES_128_GCM",  # the server's preference decides
            28,
        ),
    ],
)
def test_srtp_profile_negotiation(client_profiles, server_profiles, expected, key_length):
    # RFC 5764 §4.1.2, §4.2: key 16 bytes, salt 14 (AES-CM) or 12 (GCM).
    client, server = pair(
        client_kwargs={"srtp_profiles": client_profiles} if client_profiles else None,
        server_kwargs={"srtp_profiles": server_profiles} if server_profiles else None,
    )
    [c], [s] = handshake(client, server)
    assert c.srtp_profile == s.srtp_profile == expected
    assert len(c.local_key) == key_length
    assert c.local_key == s.remote_key and c.remote_key == s.local_key


def test_key_split_follows_rfc5764():
    # RFC 5764 §4.2: client_write_key, server_write_key, client_write_salt,
    # server_write_salt, from the "EXTRACTOR-dtls_srtp" exporter.
    client, server = pair(client_kwargs={"srtp_profiles": ["SRTP_AES128_CM_SHA1_80"]})
    [c], _ = handshake(client, server)
    material = client._ssl.export_keying_material(EXPORTER_LABEL, 60)
    assert c.local_key == material[0:16] + material[32:46]
    assert c.remote_key == material[16:32] + material[46:60]


def test_no_common_srtp_profile_fails():
    client, server = pair(
        client_kwargs={"srtp_profiles": ["SRTP_AES128_CM_SHA1_80"]},
        server_kwargs={"srtp_profiles": ["SRTP_AEAD_AES_128_GCM"]},
    )
    client_events, server_events = handshake(client, server)
    assert any(isinstance(e, HandshakeFailed) for e in client_events + server_events)
    assert not any(isinstance(e, HandshakeComplete) for e in client_events + server_events)


@pytest.mark.parametrize("mtu", [300, 1200])
def test_datagrams_fit_the_mtu(mtu):
    client, server = pair(client_kwargs={"mtu": mtu}, server_kwargs={"mtu": mtu})
    sizes = []
    [c], [s] = handshake(client, server, sizes=sizes)
    assert isinstance(c, HandshakeComplete) and isinstance(s, HandshakeComplete)
    assert max(sizes) <= mtu


def test_invalid_arguments():
    with pytest.raises(ValueError):
        DtlsEndpoint(CERT_A, "auto", [])
    with pytest.raises(ValueError):
        DtlsEndpoint(CERT_A, "client", [], srtp_profiles=["SRTP_NULL"])


# -- Fingerprints (RFC 8122 §5) ---------------------------------------------------


@pytest.mark.parametrize("side", ["client", "server"])
def test_fingerprint_mismatch_fails(side):
    other = Certificate.generate()
    client = DtlsEndpoint(
        CERT_A,
        "client",
        [("sha-256", (other if side == "client" else CERT_B).fingerprint())],
    )
    server = DtlsEndpoint(
        CERT_B,
        "server",
        [("sha-256", (other if side == "server" else CERT_A).fingerprint())],
    )
    client_events, server_events = handshake(client, server)
    checking = client if side == "client" else server
    checking_events = client_events if side == "client" else server_events
    assert checking.state == "failed"
    assert checking_events == [HandshakeFailed("remote certificate fingerprint mismatch")]
    # The other side learns of it by the alert and fails as well.
    for event in client_events + server_events:
        assert isinstance(event, HandshakeFailed)


@pytest.mark.parametrize("algorithm", ["sha-1", "sha-256", "sha-384", "sha-512"])
def test_fingerprint_any_algorithm(algorithm):
    client = DtlsEndpoint(CERT_A, "client", [(algorithm.upper(), CERT_B.fingerprint(algorithm).lower())])
    server = DtlsEndpoint(CERT_B, "server", [(algorithm, CERT_A.fingerprint(algorithm))])
    [c], [s] = handshake(client, server)
    assert isinstance(c, HandshakeComplete) and isinstance(s, HandshakeComplete)


def test_fingerprint_most_preferred_algorithm_decides():
    wrong = Certificate.generate()
    # sha-512 preferred over sha-256: right sha-512 wins over a wrong sha-256.
    client = DtlsEndpoint(
        CERT_A,
        "client",
        [("sha-256", wrong.fingerprint("sha-256")), ("sha-512", CERT_B.fingerprint("sha-512"))],
    )
    server = DtlsEndpoint(CERT_B, "server", [("sha-256", CERT_A.fingerprint())])
    [c], _ = handshake(client, server)
    assert isinstance(c, HandshakeComplete)
    # ... and a wrong sha-512 loses despite a right sha-256.
    client = DtlsEndpoint(
        CERT_A,
        "client",
        [("sha-256", CERT_B.fingerprint("sha-256")), ("sha-512", wrong.fingerprint("sha-512"))],
    )
    server = DtlsEndpoint(CERT_B, "server", [("sha-256", CERT_A.fingerprint())])
    c_events, _ = handshake(client, server)
    assert c_events == [HandshakeFailed("remote certificate fingerprint mismatch")]
    # Several fingerprints of the chosen algorithm: one must match.
    client = DtlsEndpoint(
        CERT_A,
        "client",
        [("sha-256", wrong.fingerprint()), ("sha-256", CERT_B.fingerprint())],
    )
    server = DtlsEndpoint(CERT_B, "server", [("sha-256", CERT_A.fingerprint())])
    [c], _ = handshake(client, server)
    assert isinstance(c, HandshakeComplete)


def test_no_supported_fingerprint_algorithm_fails():
    client = DtlsEndpoint(CERT_A, "client", [("md5", "00:11")])
    server = DtlsEndpoint(CERT_B, "server", [("sha-256", CERT_A.fingerprint())])
    c_events, _ = handshake(client, server)
    assert c_events == [HandshakeFailed("remote certificate fingerprint mismatch")]


# -- Timers and loss ---------------------------------------------------------------


def test_first_flight_dropped_is_retransmitted():
    # RFC 6347 §4.2.4: the client retransmits its flight when the timer
    # fires. OpenSSL's timer runs on the wall clock (initially 1 s), so this
    # one test has to let about a second of real time pass.
    client, server = pair()
    client.start(0.0)
    server.start(0.0)
    lost = client.datagrams_to_send()
    assert lost and lost[0][0] == 22  # ClientHello
    deadline = client.get_timer()
    assert 0.5 <= deadline <= 1.0
    client.handle_timer(deadline - 0.1)  # too early: nothing
    assert client.datagrams_to_send() == []
    retransmitted = []
    wall_deadline = time.monotonic() + 5.0
    now = deadline
    while not retransmitted and time.monotonic() < wall_deadline:
        client.handle_timer(now)
        retransmitted = client.datagrams_to_send()
        if not retransmitted:
            time.sleep(0.05)
            now = max(now, client.get_timer())
    assert retransmitted and client.retransmissions == 1
    # OpenSSL doubles the timer (RFC 6347 §4.2.4.1).
    assert client.get_timer() - now > 1.5
    for datagram in retransmitted:
        server.receive(datagram, now)
    exchange(client, server, now)
    assert isinstance(events(client)[0], HandshakeComplete)
    assert isinstance(events(server)[0], HandshakeComplete)


def test_server_final_flight_dropped_is_answered_again():
    # RFC 6347 §4.2.4: the server's last flight (ChangeCipherSpec, Finished)
    # is lost; the client's timer resends its own last flight and the
    # (already connected) server answers it with its flight again.
    client, server = pair()
    client.start(0.0)
    server.start(0.0)
    exchange(client, server, drop=lambda sender, _: sender is server and server.state == "connected")
    assert server.state == "connected" and client.state == "connecting"
    assert isinstance(events(server)[0], HandshakeComplete)
    now = client.get_timer()
    wall_deadline = time.monotonic() + 5.0
    retransmitted = []
    while not retransmitted and time.monotonic() < wall_deadline:
        client.handle_timer(now)
        retransmitted = client.datagrams_to_send()
        if not retransmitted:
            time.sleep(0.05)
            now = max(now, client.get_timer())
    assert retransmitted
    for datagram in retransmitted:
        server.receive(datagram, now)
    exchange(client, server, now)
    assert client.state == "connected"
    [c] = events(client)
    assert isinstance(c, HandshakeComplete)
    assert events(server) == []  # completed once


# -- Release of the OpenSSL objects after the handshake (RFC 6347 §4.2.4) ----------


def test_release_after_the_handshake_frees_the_ssl_object():
    client, server = pair(server_kwargs={"release_after": 2.0})
    handshake(client, server, now=10.0)
    assert server.get_timer() == 12.0 and not server.released
    server.handle_timer(11.9)
    assert not server.released and server._ssl is not None
    server.handle_timer(12.0)
    assert server.released and server._ssl is None
    assert server.state == "connected" and server.get_timer() is None
    assert events(server) == [] and server.datagrams_to_send() == []
    # what the peer sends now cannot be authenticated: ignored, no output
    client._ssl.send(b"sctp would go here")
    client.close()  # close_notify, flushed with the data record
    for datagram in client.datagrams_to_send():
        server.receive(datagram, 13.0)
    server.receive(os.urandom(60), 13.0)
    assert events(server) == [] and server.datagrams_to_send() == []
    assert server.state == "connected"
    # and our close is silent (no close_notify without the keys)
    server.close()
    assert server.state == "closed" and server.datagrams_to_send() == []


def test_no_release_by_default():
    client, server = pair()
    handshake(client, server)
    assert server.get_timer() is None
    server.handle_timer(1e9)
    assert not server.released and server.state == "connected"


def test_released_server_answers_a_retransmitted_final_flight():
    # The server's last flight is lost and the server has already released
    # its SSL object: the stored copy of that flight still answers the
    # client's retransmission (RFC 6347 §4.2.4), and the client completes.
    client, server = pair(server_kwargs={"release_after": 0.0})
    client.start(0.0)
    server.start(0.0)
    exchange(client, server, drop=lambda sender, _: sender is server and server.state == "connected")
    assert isinstance(events(server)[0], HandshakeComplete)
    assert server.released and client.state == "connecting"  # released at once
    now = client.get_timer()
    wall_deadline = time.monotonic() + 5.0
    retransmitted = []
    while not retransmitted and time.monotonic() < wall_deadline:
        client.handle_timer(now)
        retransmitted = client.datagrams_to_send()
        if not retransmitted:
            time.sleep(0.05)
            now = max(now, client.get_timer())
    assert retransmitted
    for datagram in retransmitted:
        server.receive(datagram, now)
    answer = server.datagrams_to_send()
    assert answer
    for datagram in answer:
        client.receive(datagram, now)
    assert client.state == "connected"
    [c] = events(client)
    assert isinstance(c, HandshakeComplete)
    assert events(server) == []


def test_released_server_is_no_reflector():
    # Issue 9: a 13-byte record made the released server send its whole final
    # flight, for every packet. Now: only what looks like the peer's final
    # flight is answered, at most once per RESEND_INTERVAL, max_retransmissions
    # times in all.
    client, server = pair(server_kwargs={"release_after": 0.0})
    handshake(client, server)
    assert server.released
    header = bytes([0xFE, 0xFD]) + bytes(8)
    short = [bytes([22]) + header + b"\x00\x00", bytes([20]) + header + b"\x00\x00",
             bytes([22, 0xFE, 0xFD, 0, 1]) + bytes(6) + b"\x00\x00", bytes([23]) + header + b"\x00\x00"]
    sent_in = sent_out = 0
    for i in range(1000):
        datagram = short[i % len(short)]
        server.receive(datagram, 1.0 + i * 0.01)
        sent_in += len(datagram)
        sent_out += sum(map(len, server.datagrams_to_send()))
    assert sent_out == 0
    # a forged ChangeCipherSpec (14 bytes) looks like a retransmission: answered, rarely
    ccs = bytes([20]) + header + b"\x00\x01\x01"
    flight = sum(map(len, server._last_flight))
    for i in range(10000):  # 100 s at 100 packets/s
        server.receive(ccs, 20.0 + i * 0.01)
        sent_in += len(ccs)
        sent_out += sum(map(len, server.datagrams_to_send()))
    assert sent_out == flight * server.max_retransmissions
    assert sent_out / sent_in < 0.01  # was ~6 (75 bytes for 13)


def test_released_server_answers_at_most_once_per_interval():
    client, server = pair(server_kwargs={"release_after": 0.0})
    handshake(client, server)
    ccs = bytes([20, 0xFE, 0xFD]) + bytes(8) + b"\x00\x01\x01"
    server.receive(ccs, 5.0)
    assert server.datagrams_to_send() == server._last_flight
    server.receive(ccs, 5.0 + RESEND_INTERVAL / 2)
    assert server.datagrams_to_send() == []
    server.receive(ccs + b"\x16", 5.0 + RESEND_INTERVAL)  # a torn record: not a flight
    assert server.datagrams_to_send() == []
    server.receive(ccs, 5.0 + RESEND_INTERVAL)
    assert server.datagrams_to_send() == server._last_flight


def test_released_client_has_no_last_flight_to_answer():
    # In a full handshake the server sends the last flight (RFC 6347 §4.2.4).
    client, server = pair(client_kwargs={"release_after": 0.0})
    handshake(client, server)
    assert client.released and client._last_flight == []
    client.receive(bytes([22, 0xFE, 0xFD]) + bytes(8) + b"\x00\x01" + b"x", 1.0)
    assert client.datagrams_to_send() == []


def test_handshake_gives_up_after_timeout():
    client, server = pair()
    client.start(0.0)
    server.start(0.0)
    client.datagrams_to_send()
    assert client.get_timer() <= 1.0
    client.handle_timer(29.9)
    assert client.state == "connecting"
    client.handle_timer(30.0)
    assert client.state == "failed"
    assert events(client) == [HandshakeFailed("handshake timed out")]
    assert client.get_timer() is None
    # A server that never hears a ClientHello gives up too.
    assert server.get_timer() == 30.0
    server.handle_timer(30.0)
    assert events(server) == [HandshakeFailed("handshake timed out")]


# -- Close -------------------------------------------------------------------------


@pytest.mark.parametrize("closing", ["client", "server"])
def test_close_gives_closed_on_the_other_side(closing):
    client, server = pair()
    handshake(client, server)
    a, b = (client, server) if closing == "client" else (server, client)
    a.close()
    assert a.state == "closed"
    datagrams = a.datagrams_to_send()
    assert datagrams  # close_notify
    for datagram in datagrams:
        b.receive(datagram, 1.0)
    assert events(b) == [Closed()]
    assert b.state == "closed"
    assert events(a) == []
    b.receive(os.urandom(50), 2.0)  # ignored from now on
    assert events(b) == []


def test_application_data_is_dropped():
    client, server = pair()
    handshake(client, server)
    client._ssl.send(b"sctp would go here")
    for datagram in client.datagrams_to_send() + [client._ssl.bio_read(65536)]:
        server.receive(datagram, 1.0)
    assert events(server) == []
    assert server.state == "connected"


# -- Robustness --------------------------------------------------------------------


def mutate(rng, data):
    data = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data[: rng.randrange(1, len(data) + 1)])


def test_garbage_never_raises():
    rng = random.Random(3)
    # Before and during the handshake.
    client, server = pair()
    client.start(0.0)
    server.start(0.0)
    hello = client.datagrams_to_send()[0]
    for _ in range(300):
        server.receive(os.urandom(rng.randrange(0, 200)), 0.0)
        server.receive(mutate(rng, hello), 0.0)
        client.receive(b"\x16\xfe\xfd" + os.urandom(rng.randrange(0, 200)), 0.0)
    server.datagrams_to_send()
    client.datagrams_to_send()
    events(client)
    events(server)

    # After the handshake: records that fail authentication are dropped.
    client, server = pair()
    handshake(client, server)
    client._ssl.send(b"x" * 100)
    record = client._ssl.bio_read(65536)
    for _ in range(300):
        server.receive(os.urandom(rng.randrange(0, 200)), 1.0)
        server.receive(mutate(rng, record), 1.0)
    for event in events(server):
        assert isinstance(event, Closed)  # an alert in the noise may close it


def test_garbage_after_handshake_keeps_connection():
    client, server = pair()
    handshake(client, server)
    client._ssl.send(b"x" * 100)
    record = client._ssl.bio_read(65536)
    tampered = record[:-1] + bytes([record[-1] ^ 1])  # bad GCM tag
    server.receive(tampered, 1.0)
    server.receive(b"\x17\xfe\xfd" + bytes(10), 1.0)
    assert server.state == "connected" and events(server) == []


# -- Interoperability ----------------------------------------------------------------


class RawPeer:
    """A pyOpenSSL DTLS connection over memory BIOs, configured by the test."""

    def __init__(self, context: SSL.Context, role: str):
        self.ssl = SSL.Connection(context, None)
        if role == "client":
            self.ssl.set_connect_state()
        else:
            self.ssl.set_accept_state()
        self.done = False
        self.outgoing = []

    def step(self):
        try:
            self.ssl.do_handshake()
            self.done = True
        except SSL.WantReadError:
            pass
        self.flush()

    def flush(self):
        while True:
            try:
                self.outgoing.append(self.ssl.bio_read(1500))
            except SSL.WantReadError:
                break

    def receive(self, data, now):
        self.ssl.bio_write(data)
        self.step()

    def datagrams_to_send(self):
        out, self.outgoing = self.outgoing, []
        return out


def test_our_server_with_aiortc_client():
    # aiortc's DTLS client offers only ECDSA cipher suites; it uses its own
    # context factory here, so the test follows aiortc's configuration.
    from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate

    aiortc_cert = RTCCertificate.generateCertificate()
    peer = RawPeer(aiortc_cert._create_ssl_context(srtp_profiles=SRTP_PROFILES), "client")
    fingerprints = [(f.algorithm, f.value) for f in aiortc_cert.getFingerprints()]
    server = DtlsEndpoint(CERT_B, "server", fingerprints)
    server.start(0.0)
    peer.step()
    exchange(peer, server)
    assert peer.done
    [s] = events(server)
    assert isinstance(s, HandshakeComplete)
    assert s.srtp_profile == "SRTP_AEAD_AES_128_GCM"
    assert peer.ssl.get_cipher_name().startswith("ECDHE-ECDSA")
    material = peer.ssl.export_keying_material(EXPORTER_LABEL, 56)
    assert s.remote_key == material[0:16] + material[32:44]  # the client's
    assert s.local_key == material[16:32] + material[44:56]


def test_our_client_with_rsa_server():
    # GStreamer's webrtcbin: an RSA certificate, OpenSSL's default suites.
    gst = rsa_certificate()
    context = SSL.Context(SSL.DTLS_METHOD)
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *a: True)
    context.use_certificate(gst.cert)
    context.use_privatekey(gst.key)
    context.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80:SRTP_AEAD_AES_128_GCM")
    peer = RawPeer(context, "server")
    client = DtlsEndpoint(CERT_A, "client", [("sha-256", gst.fingerprint())])
    client.start(0.0)
    exchange(client, peer)
    assert peer.done
    [c] = events(client)
    assert isinstance(c, HandshakeComplete)
    assert c.srtp_profile == "SRTP_AES128_CM_SHA1_80"  # the server's choice
    assert peer.ssl.get_cipher_name().startswith("ECDHE-RSA")


def test_dtls_1_0_peer_refused():
    # RFC 8827 §6.5: DTLS 1.2 or later.
    context = SSL.Context(SSL.DTLS_METHOD)
    context.set_max_proto_version(0xFEFF)  # DTLS 1.0
    context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    context.set_verify(SSL.VERIFY_PEER, lambda *a: True)
    context.use_certificate(CERT_A.cert)
    context.use_privatekey(CERT_A.key)
    context.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
    peer = RawPeer(context, "client")
    server = DtlsEndpoint(CERT_B, "server", [("sha-256", CERT_A.fingerprint())])
    server.start(0.0)
    peer.step()
    try:
        exchange(peer, server)
    except SSL.Error:
        pass  # the peer sees our alert
    assert not peer.done
    [s] = events(server)
    assert s == HandshakeFailed("handshake failed: unsupported protocol")


def test_rsa_endpoint_pair():
    # Our own endpoint with an RSA certificate as server, ours as client.
    client, server = pair(server_cert=rsa_certificate())
    [c], [s] = handshake(client, server)
    assert isinstance(c, HandshakeComplete) and c.local_key == s.remote_key


class FakeIceTransport:
    """What RTCDtlsTransport uses of an RTCIceTransport: a role and datagrams."""

    def __init__(self, deliver):
        self.role = "controlled"  # -> aiortc picks the DTLS client role
        self.inbox = asyncio.Queue()
        self._deliver = deliver

    async def _recv(self):
        data = await self.inbox.get()
        if data is None:
            raise ConnectionError
        return data

    async def _send(self, data):
        self._deliver(data)


async def test_interop_with_aiortc_dtls_transport():
    # aiortc's real RTCDtlsTransport as client, our endpoint as server, in
    # memory: handshake, SRTP both ways, close_notify.
    from aiortc import RTCCertificate, RTCDtlsFingerprint, RTCDtlsParameters, RTCDtlsTransport

    from sfu.srtp import SrtpPair

    server = None

    def deliver(data):
        server.receive(data, time.monotonic())
        for datagram in server.datagrams_to_send():
            ice.inbox.put_nowait(datagram)

    ice = FakeIceTransport(deliver)
    aiortc_cert = RTCCertificate.generateCertificate()
    aiortc_dtls = RTCDtlsTransport(ice, [aiortc_cert])
    server = DtlsEndpoint(
        CERT_B,
        "server",
        [(f.algorithm, f.value) for f in aiortc_cert.getFingerprints()],
    )
    server.start(time.monotonic())
    await asyncio.wait_for(
        aiortc_dtls.start(
            RTCDtlsParameters(
                fingerprints=[RTCDtlsFingerprint("sha-256", CERT_B.fingerprint())]
            )
        ),
        timeout=10,
    )
    assert aiortc_dtls.state == "connected"
    [s] = events(server)
    assert isinstance(s, HandshakeComplete)
    assert s.srtp_profile == "SRTP_AEAD_AES_128_GCM"

    ours = SrtpPair(s.srtp_profile, s.local_key, s.remote_key)
    packet = bytes([0x80, 111, 0, 1, 0, 0, 0, 1, 0, 0, 0, 42]) + b"opus" * 20
    assert ours.unprotect(aiortc_dtls._tx_srtp.protect(packet)) == packet
    assert aiortc_dtls._rx_srtp.unprotect(ours.protect(packet)) == packet

    await aiortc_dtls.stop()
    assert events(server) == [Closed()]
    ice.inbox.put_nowait(None)

