"""DTLS 1.2 for DTLS-SRTP (RFC 5764), sans-I/O, over pyOpenSSL memory BIOs.

One `DtlsEndpoint` per transport: datagrams and `now` in; datagrams, events
and a timer deadline out. Its job is the handshake: authenticate the peer by
the certificate fingerprint from its SDP (RFC 8122 §5, RFC 8827 §6.5),
negotiate an SRTP protection profile (RFC 5764 §4.1.2) and export the SRTP
master keys (RFC 5764 §4.2). Application data (SCTP for data channels) is not
carried: it is read and dropped.

Use::

    endpoint = DtlsEndpoint(certificate, "server", [("sha-256", "AB:CD:...")])
    endpoint.start(now)
    endpoint.receive(datagram, now)            # for each DTLS datagram
    for datagram in endpoint.datagrams_to_send(): send(datagram)
    deadline = endpoint.get_timer()            # call handle_timer(now) then
    while (event := endpoint.next_event()) is not None: ...

OpenSSL keeps its retransmission timer on its own clock (the wall clock):
`get_timer` converts the time it reports left into a deadline on the
caller's clock, and `handle_timer` retransmits when OpenSSL's timer has also
run out. The give-up deadline (`handshake_timeout`) is on the caller's clock.

Once connected, the endpoint has done its job (the SRTP keys are out), but
OpenSSL's SSL object still holds ~70 KiB (certificates, handshake hashes,
record layer) per transport. With `release_after` set, that many seconds
after the handshake (0: at once, in the call that completes it) the endpoint
frees it (`released` becomes True) and keeps only the bytes of our last
flight: RFC 6347 §4.2.4 asks the sender of the last flight to answer a
retransmission of the peer's last flight by its own for as long as the peer
may retransmit, and a byte-identical copy does that (a peer that lost our
flight has seen none of its records). It answers only what looks like that
retransmission (a datagram of whole records with the ChangeCipherSpec, or a
Handshake record of epoch 1: the encrypted Finished), at most once per
`RESEND_INTERVAL` and `max_retransmissions` times in all: a short or forged
record never makes it a reflector (at most one flight of ~75 bytes per
half second, eight in all). The trade-off: without the record
layer's keys, a released endpoint cannot authenticate what the peer sends.
Its close_notify (and any other alert or application data) is ignored, so a
peer that goes away is noticed by ICE consent (RFC 7675) or signalling
instead, and `close()` sends no close_notify (RFC 5246 §7.2.1 lets a side
close without waiting; consent and signalling end the peer's side too).
Releasing at once, before the caller allocates its SRTP sessions, also lets
the next handshake reuse the freed memory instead of fragmenting the heap.
"""

from __future__ import annotations

import binascii
import datetime
import os
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

__all__ = [
    "Certificate",
    "Closed",
    "DtlsEndpoint",
    "DtlsEvent",
    "HandshakeComplete",
    "HandshakeFailed",
    "SRTP_PROFILES",
]

# RFC 5764 §4.1.2 profiles, preferred first, with the master key and salt
# lengths of each (RFC 5764 §4.1.2, RFC 7714 §12).
SRTP_PROFILES: dict[str, tuple[int, int]] = {
    "SRTP_AEAD_AES_128_GCM": (16, 12),
    "SRTP_AES128_CM_SHA1_80": (16, 14),
}

# RFC 5764 §4.2: the exporter label of DTLS-SRTP.
EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"

# Our ECDSA certificate selects the ECDSA suites when we are the server (the
# only kind aiortc offers); the RSA suites let us, as the client, talk to a
# server with an RSA certificate (GStreamer's webrtcbin). No static RSA.
CIPHER_LIST = b":".join(
    [
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-AES256-GCM-SHA384",
        b"ECDHE-RSA-AES256-GCM-SHA384",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-RSA-CHACHA20-POLY1305",
        b"ECDHE-ECDSA-AES128-SHA",
        b"ECDHE-RSA-AES128-SHA",
        b"ECDHE-ECDSA-AES256-SHA",
        b"ECDHE-RSA-AES256-SHA",
    ]
)

# RFC 8122 §5: fingerprint hash functions, most preferred first.
HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha-512": hashes.SHA512,
    "sha-384": hashes.SHA384,
    "sha-256": hashes.SHA256,
    "sha-1": hashes.SHA1,
}

MTU = 1200  # UDP payload; leaves room for IPv6 + UDP + TURN headers
HANDSHAKE_TIMEOUT = 30.0
MAX_RETRANSMISSIONS = 8  # OpenSSL doubles from 1 s: 1+2+4+...: > 30 s anyway
# RFC 6347 §4.1 / RFC 5246 §6.2.1 content types that a retransmitted last
# flight of the peer carries (ChangeCipherSpec, Handshake).
_CHANGE_CIPHER_SPEC = 20
_HANDSHAKE = 22

DTLS1_2_VERSION = 0xFEFD  # RFC 6347 §4.1: {254, 253}
# a released endpoint answers the peer's retransmitted final flight at most this often
RESEND_INTERVAL = 0.5
_RECORD_HEADER = 13  # RFC 6347 §4.1: type, version, epoch, sequence, length


def _format_fingerprint(digest: bytes) -> str:
    return ":".join(f"{b:02X}" for b in digest)


class Certificate:
    """A key pair and self-signed certificate; builds the SSL contexts."""

    def __init__(self, key, cert: x509.Certificate) -> None:
        self.key = key
        self.cert = cert
        self._contexts: dict[tuple[str, ...], SSL.Context] = {}

    @classmethod
    def generate(cls) -> Certificate:
        """ECDSA P-256, valid from yesterday for 30 days, random CN."""
        return cls.self_signed(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def self_signed(cls, key, common_name: str | None = None) -> Certificate:
        """A self-signed certificate for ``key`` (any type), valid from yesterday for 30 days."""
        cn = common_name or binascii.hexlify(os.urandom(16)).decode()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
        now = datetime.datetime.now(tz=datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert)

    def fingerprint(self, algorithm: str = "sha-256") -> str:
        """The SDP a=fingerprint value (RFC 8122 §5): "AB:CD:..." upper case."""
        return _format_fingerprint(self.cert.fingerprint(HASHES[algorithm.lower()]()))

    def context(self, srtp_profiles: Sequence[str]) -> SSL.Context:
        """The SSL context for these profiles, shared by all endpoints."""
        key = tuple(srtp_profiles)
        context = self._contexts.get(key)
        if context is None:
            context = SSL.Context(SSL.DTLS_METHOD)
            context.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_QUERY_MTU)
            # free the record buffers (~2 x 17 KiB) whenever they are empty
            context.set_mode(SSL.MODE_RELEASE_BUFFERS)
            # DTLS 1.2 only: RFC 8827 §6.5 forbids 1.0; 1.3 would keep a
            # timer after the handshake, which this endpoint does not run.
            context.set_min_proto_version(DTLS1_2_VERSION)
            context.set_max_proto_version(DTLS1_2_VERSION)
            # Ask for the client's certificate as server; peers are
            # self-signed, so the callback decides by fingerprint alone.
            context.set_verify(
                SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_callback
            )
            context.use_certificate(self.cert)
            context.use_privatekey(self.key)
            context.check_privatekey()
            context.set_cipher_list(CIPHER_LIST)
            context.set_tlsext_use_srtp(":".join(srtp_profiles).encode())
            self._contexts[key] = context
        return context


def _verify_callback(connection: SSL.Connection, cert, errno, depth, ok) -> bool:
    # RFC 8827 §6.5: the certificate is authenticated by its fingerprint.
    # Only the end-entity certificate (depth 0) is pinned; a chain above it
    # would add nothing.
    if depth != 0:
        return True
    endpoint = connection.get_app_data()
    try:
        return endpoint is not None and endpoint._fingerprint_matches(
            cert.to_cryptography()
        )
    except Exception:
        return False


@dataclass(frozen=True)
class HandshakeComplete:
    """Keys are master key || master salt: `local_key` protects what we send,
    `remote_key` unprotects what we receive."""

    srtp_profile: str
    local_key: bytes
    remote_key: bytes


@dataclass(frozen=True)
class HandshakeFailed:
    reason: str


@dataclass(frozen=True)
class Closed:
    """The peer closed the association (close_notify or fatal alert)."""


DtlsEvent = Union[HandshakeComplete, HandshakeFailed, Closed]


def split_records(data: bytes) -> list[bytes]:
    """Split concatenated DTLS records (RFC 6347 §4.1) into records.

    A trailing partial record is returned whole, as the last item.
    """
    records = []
    pos = 0
    while pos < len(data):
        if pos + _RECORD_HEADER > len(data):
            records.append(data[pos:])
            break
        length = int.from_bytes(data[pos + 11 : pos + 13], "big")
        end = pos + _RECORD_HEADER + length
        records.append(data[pos:end])
        pos = end
    return records


def pack_datagrams(records: Iterable[bytes], mtu: int) -> list[bytes]:
    """Pack whole records into datagrams of at most `mtu` bytes where they fit
    (RFC 6347 §4.1.1: a record never spans datagrams; several may share one)."""
    datagrams: list[bytes] = []
    current = b""
    for record in records:
        if current and len(current) + len(record) > mtu:
            datagrams.append(current)
            current = b""
        current += record
    if current:
        datagrams.append(current)
    return datagrams


class DtlsEndpoint:
    """One DTLS association of a transport, client or server."""

    def __init__(
        self,
        certificate: Certificate,
        role: str,
        remote_fingerprints: Sequence[tuple[str, str]],
        *,
        srtp_profiles: Sequence[str] = tuple(SRTP_PROFILES),
        mtu: int = MTU,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        max_retransmissions: int = MAX_RETRANSMISSIONS,
        release_after: float | None = None,
    ) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', not {role!r}")
        unknown = [p for p in srtp_profiles if p not in SRTP_PROFILES]
        if unknown or not srtp_profiles:
            raise ValueError(f"unsupported SRTP profiles: {unknown or srtp_profiles}")
        self.role = role
        self.remote_fingerprints = [
            (algorithm.lower(), value.upper()) for algorithm, value in remote_fingerprints
        ]
        self.mtu = mtu
        self.handshake_timeout = handshake_timeout
        self.max_retransmissions = max_retransmissions
        self.release_after = release_after  # None: keep the OpenSSL objects
        self.released = False
        self.state = "new"
        self.retransmissions = 0
        self.srtp_profile: str | None = None

        self._ssl = SSL.Connection(certificate.context(srtp_profiles), None)
        self._ssl.set_app_data(self)
        self._ssl.set_ciphertext_mtu(mtu)
        if role == "server":
            self._ssl.set_accept_state()
        else:
            self._ssl.set_connect_state()
        self._events: deque[DtlsEvent] = deque()
        self._outgoing: list[bytes] = []
        self._timer_at: float | None = None  # OpenSSL's retransmission timer
        self._give_up_at: float | None = None
        self._fingerprint_failed = False
        self._release_at: float | None = None
        self._last_flight: list[bytes] = []  # what answers the peer's retransmission once released
        self._resend_at = 0.0  # when the stored flight may be sent again
        self.resends = 0  # answers from the stored flight

    # -- input ------------------------------------------------------------

    def start(self, now: float) -> None:
        """Begin: the client sends its ClientHello, the server waits for one."""
        if self.state != "new":
            return
        self.state = "connecting"
        self._give_up_at = now + self.handshake_timeout
        if self.role == "client":
            self._handshake(now)

    def receive(self, data: bytes, now: float) -> None:
        """Handle one DTLS datagram. Never raises on bad input."""
        if self.state == "new":
            self.start(now)
        if self.state not in ("connecting", "connected"):
            return
        if self.released:
            self._answer_retransmission(data, now)
            return
        try:
            self._ssl.bio_write(data)
        except Exception:
            return
        if self.state == "connecting":
            self._handshake(now)
        else:
            self._read()

    def handle_timer(self, now: float) -> None:
        """Retransmit the last flight if due; give up after the timeout;
        once connected, release the OpenSSL objects when due."""
        if self.state == "connected":
            if self._release_at is not None and now >= self._release_at:
                self._release()
            return
        if self.state != "connecting":
            return
        if self._give_up_at is not None and now >= self._give_up_at:
            self._fail("handshake timed out")
            return
        if self._timer_at is None or now < self._timer_at:
            return
        try:
            retransmitted = self._ssl.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            self._fail(f"retransmission failed: {exc}")
            return
        if retransmitted:
            self.retransmissions += 1
            if self.retransmissions > self.max_retransmissions:
                self._fail("handshake timed out (too many retransmissions)")
                return
        self._flush()
        self._update_timer(now)

    def close(self) -> None:
        """Send close_notify (RFC 5246 §7.2.1), unless released; no event on this side."""
        if self.state == "connected" and not self.released:
            try:
                self._ssl.shutdown()
            except SSL.Error:
                pass
            self._flush()
        if self.state not in ("failed",):
            self.state = "closed"
        self._timer_at = None
        self._release_at = None

    # -- output -----------------------------------------------------------

    def datagrams_to_send(self) -> list[bytes]:
        datagrams, self._outgoing = self._outgoing, []
        return datagrams

    def get_timer(self) -> float | None:
        """The caller's time at which `handle_timer` is due, or None."""
        if self.state == "connected":
            return self._release_at
        if self.state != "connecting":
            return None
        if self._timer_at is None:
            return self._give_up_at
        if self._give_up_at is None:
            return self._timer_at
        return min(self._timer_at, self._give_up_at)

    def next_event(self) -> DtlsEvent | None:
        return self._events.popleft() if self._events else None

    # -- internals --------------------------------------------------------

    def _handshake(self, now: float) -> None:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            self._flush()
            self._update_timer(now)
            return
        except SSL.Error as exc:
            self._flush()  # the alert, if OpenSSL wrote one
            if self._fingerprint_failed:
                self._fail("remote certificate fingerprint mismatch")
            else:
                self._fail(f"handshake failed: {_describe(exc)}")
            return
        queued = len(self._outgoing)
        self._flush()
        self._complete(now)
        if self.state == "connected":
            self._last_flight = self._outgoing[queued:]  # empty for a client (the server's is last)
            self._read()  # records that came in the same datagram
            if self.state == "connected" and self._release_at is not None and now >= self._release_at:
                self._release()

    def _complete(self, now: float) -> None:
        # The verify callback already pinned the certificate; check that
        # there was one to pin (a client must present one, too).
        cert = self._ssl.get_peer_certificate(as_cryptography=True)
        if cert is None or not self._fingerprint_matches(cert):
            self._fail("remote certificate fingerprint mismatch")
            return
        profile = self._ssl.get_selected_srtp_profile().decode()
        if profile not in SRTP_PROFILES:
            self._fail(f"no SRTP profile negotiated ({profile!r})")
            return
        # RFC 5764 §4.2: client key, server key, client salt, server salt.
        key_len, salt_len = SRTP_PROFILES[profile]
        material = self._ssl.export_keying_material(
            EXPORTER_LABEL, 2 * (key_len + salt_len)
        )
        client_key = material[:key_len]
        server_key = material[key_len : 2 * key_len]
        client_salt = material[2 * key_len : 2 * key_len + salt_len]
        server_salt = material[2 * key_len + salt_len :]
        client, server = client_key + client_salt, server_key + server_salt
        if self.role == "client":
            local_key, remote_key = client, server
        else:
            local_key, remote_key = server, client
        self.srtp_profile = profile
        self.state = "connected"
        self._timer_at = None
        if self.release_after is not None:
            self._release_at = now + self.release_after
        self._events.append(HandshakeComplete(profile, local_key, remote_key))

    def _read(self) -> None:
        # After the handshake: drop application data, notice the end. OpenSSL
        # discards records that fail authentication (RFC 6347 §4.1.2.7) and
        # answers a retransmitted final flight by its own (§4.2.4) here.
        while True:
            try:
                self._ssl.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._closed_by_peer()
                break
            except SSL.Error:
                self._closed_by_peer()
                break
        self._flush()

    def _release(self) -> None:
        # Break the endpoint <-> connection cycle so that SSL_free runs now.
        self._ssl.set_app_data(None)
        self._ssl = None
        self.released = True
        self._release_at = None

    def _answer_retransmission(self, data: bytes, now: float) -> None:
        # RFC 6347 §4.2.4: the peer resends its last flight (ChangeCipherSpec,
        # Finished) while it has not seen ours; answer with ours again -- at
        # most once per RESEND_INTERVAL, max_retransmissions times in all.
        if (
            not self._last_flight
            or now < self._resend_at
            or self.resends >= self.max_retransmissions
            or not _looks_like_final_flight(data)
        ):
            return
        self.resends += 1
        self._resend_at = now + RESEND_INTERVAL
        self._outgoing.extend(self._last_flight)

    def _closed_by_peer(self) -> None:
        self.state = "closed"
        self._events.append(Closed())

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        self._timer_at = None
        self._events.append(HandshakeFailed(reason))

    def _flush(self) -> None:
        data = b""
        while True:
            try:
                chunk = self._ssl.bio_read(65536)
            except SSL.WantReadError:
                break
            if not chunk:
                break
            data += chunk
        if data:
            self._outgoing.extend(pack_datagrams(split_records(data), self.mtu))

    def _update_timer(self, now: float) -> None:
        left = self._ssl.DTLSv1_get_timeout()
        self._timer_at = None if left is None else now + left

    def _fingerprint_matches(self, cert: x509.Certificate) -> bool:
        # RFC 8122 §5: use the most preferred hash function the peer gave;
        # the certificate must match one fingerprint of that function.
        for algorithm, hash_class in HASHES.items():
            expected = {v for a, v in self.remote_fingerprints if a == algorithm}
            if expected:
                ok = _format_fingerprint(cert.fingerprint(hash_class())) in expected
                if not ok:
                    self._fingerprint_failed = True
                return ok
        self._fingerprint_failed = True
        return False


def _looks_like_final_flight(data: bytes) -> bool:
    """Whole DTLS 1.2 records, among them the ChangeCipherSpec (epoch 0, the
    one byte 1) or a Handshake record of epoch 1 long enough for an encrypted
    Finished (12 bytes of verify_data, 12 of header, the cipher's overhead)."""
    found = False
    pos, size = 0, len(data)
    while pos < size:
        if pos + _RECORD_HEADER > size:
            return False
        content_type = data[pos]
        version = (data[pos + 1] << 8) | data[pos + 2]
        epoch = (data[pos + 3] << 8) | data[pos + 4]
        length = (data[pos + 11] << 8) | data[pos + 12]
        end = pos + _RECORD_HEADER + length
        if end > size or version != DTLS1_2_VERSION and version != 0xFEFF:
            return False
        if content_type == _CHANGE_CIPHER_SPEC and epoch == 0 and length == 1 and data[pos + 13] == 1:
            found = True
        elif content_type == _HANDSHAKE and epoch == 1 and length >= 24 + 16:
            found = True
        pos = end
    return found


def _describe(exc: SSL.Error) -> str:
    try:
        return "; ".join(str(reason[2]) for reason in exc.args[0]) or repr(exc)
    except Exception:
        return repr(exc)
