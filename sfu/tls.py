"""TLS for the HTTP listener: HTTPS for the API, WHIP/WHEP, the pages and
/metrics, WSS for the meeting socket.

Media is always encrypted (DTLS-SRTP on the UDP port); this module covers what
travels over TCP: signalling, chat, access tokens.

- :func:`server_context` checks a certificate and key given with ``--tls-cert``
  and ``--tls-key`` (readable, PEM, matching) and builds the ``ssl.SSLContext``:
  TLS 1.2 or 1.3, forward-secret AEAD suites only, no compression, no
  renegotiation, ALPN ``http/1.1``.
- :func:`dev_certificate` makes (once, then reuses) a self-signed certificate
  for ``localhost``, ``127.0.0.1`` and ``::1`` in the data directory, for
  ``--dev --tls-self-signed``.
- :func:`exposed_without_tls` decides whether the start-up warning is due: no
  TLS on an address other than loopback.

Every problem with the files is a :class:`TlsConfigError` naming the file, the
problem and what to do, on one line; ``sfu serve`` exits with :data:`EXIT_TLS`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

EXIT_TLS = 4  # `sfu serve` exit code when the TLS settings or files cannot be used

DEV_CERT_FILE = "tls_dev_cert.pem"
DEV_KEY_FILE = "tls_dev_key.pem"
DEV_NAMES = ("localhost", "127.0.0.1", "::1")
DEV_VALIDITY = datetime.timedelta(days=365)
DEV_RENEW_BEFORE = datetime.timedelta(days=7)  # a reused dev certificate this close to its end is remade
EXPIRY_WARNING = datetime.timedelta(days=14)

# TLS 1.2 suites (TLS 1.3 has only AEAD suites and forward secrecy already):
# ECDHE key exchange, AES-GCM or ChaCha20-Poly1305; ECDSA or RSA certificates
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


class TlsConfigError(Exception):
    """The TLS settings or files cannot be used.  ``where`` names the file (or the
    flags), ``problem`` says what is wrong, ``advice`` what to do; ``str()`` is all
    three on one line."""

    def __init__(self, where: str, problem: str, advice: str) -> None:
        self.where = where
        self.problem = problem
        self.advice = advice
        super().__init__(f"TLS {where}: {problem}; {advice}")


@dataclass(frozen=True)
class TlsInfo:
    """What the server logs about the certificate it serves."""

    cert_path: str
    key_path: str
    fingerprint: str  # SHA-256 of the DER certificate, colon-separated hex (what browsers show)
    spki_sha256: str  # base64 SHA-256 of the public key (Chromium's --ignore-certificate-errors-spki-list)
    not_after: datetime.datetime
    self_signed: bool
    created: bool = False  # a dev certificate made by this start


# -- the decision of the start-up warning -----------------------------------------------

def is_loopback(host: str | None) -> bool:
    """True if binding ``host`` only listens on loopback: ``localhost``, 127.0.0.0/8,
    ``::1`` (also IPv4-mapped).  The wildcard (``""``, ``0.0.0.0``, ``::``), another
    address or a host name that is not ``localhost`` is not loopback (no name is
    resolved: the answer must not depend on DNS)."""
    if host is None:
        return False
    name = host.strip().strip("[]").rstrip(".").lower()
    if name in ("localhost", "localhost.localdomain") or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name.split("%", 1)[0])
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def exposed_without_tls(host: str | None, tls_enabled: bool) -> bool:
    """True if the server should warn at start: no TLS, and the HTTP listener is
    reachable from other machines."""
    return not tls_enabled and not is_loopback(host)


CLEARTEXT_WARNING = ("no TLS on an address other than loopback: media is encrypted (DTLS-SRTP) but "
                     "signalling, chat and access tokens travel in clear")
CLEARTEXT_ADVICE = ("give --tls-cert FILE --tls-key FILE (or SFU_TLS_CERT / SFU_TLS_KEY), or bind "
                    "--host 127.0.0.1 behind a reverse proxy that terminates TLS")


# -- certificates and keys --------------------------------------------------------------

def fingerprint(cert: x509.Certificate) -> str:
    digest = cert.fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def spki_sha256(cert: x509.Certificate) -> str:
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def _read(path: str, what: str) -> bytes:
    who = f"uid {os.getuid()}" if hasattr(os, "getuid") else "this user"
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TlsConfigError(f"{what} {path}", "no such file", f"check the path given with --tls-{what}") from None
    except IsADirectoryError:
        raise TlsConfigError(f"{what} {path}", "is a directory", f"--tls-{what} names a PEM file") from None
    except PermissionError:
        raise TlsConfigError(f"{what} {path}", "permission denied", f"the file must be readable by {who}") from None
    except OSError as exc:
        raise TlsConfigError(f"{what} {path}", f"cannot be read ({exc.strerror or exc})",
                             "check the disk and the file's permissions") from None


def _public_der(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_pair(cert_path: str, key_path: str):
    """The certificate chain and private key of the two files; TlsConfigError if a
    file is missing, unreadable, not PEM, an encrypted key, or if the key is not
    the certificate's."""
    cert_pem = _read(cert_path, "cert")
    key_pem = _read(key_path, "key")
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsConfigError(f"cert {cert_path}", "not a PEM certificate (no valid BEGIN CERTIFICATE block)",
                             "give the server certificate, followed by its intermediates, in PEM") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        raise TlsConfigError(f"key {key_path}", "the private key is encrypted with a passphrase",
                             "give an unencrypted key file (mode 0600), e.g. openssl pkey -in KEY -out KEY.plain") \
            from None
    except Exception:  # cryptography raises ValueError or UnsupportedAlgorithm
        raise TlsConfigError(f"key {key_path}", "not a PEM private key",
                             "give the certificate's private key in PEM (BEGIN PRIVATE KEY)") from None
    if _public_der(chain[0].public_key()) != _public_der(key.public_key()):
        raise TlsConfigError(f"key {key_path}", f"does not match the certificate {cert_path}",
                             "give the key the certificate was issued for (the first certificate of the file "
                             "must be the server's own)")
    return chain, key


def server_context(cert_path: str, key_path: str) -> tuple[ssl.SSLContext, TlsInfo]:
    """The server-side context for the HTTP listener, after checking the files."""
    chain, _key = load_pair(cert_path, key_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
                        | getattr(ssl, "OP_NO_RENEGOTIATION", 0))
    context.set_alpn_protocols(["http/1.1"])  # aiohttp speaks HTTP/1.1 (and WebSocket over it)
    try:
        context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise TlsConfigError(f"cert {cert_path}", f"refused by OpenSSL ({exc.reason or exc})",
                             "check that the certificate and key are PEM and belong together") from None
    leaf = chain[0]
    info = TlsInfo(cert_path=os.path.abspath(cert_path), key_path=os.path.abspath(key_path),
                   fingerprint=fingerprint(leaf), spki_sha256=spki_sha256(leaf),
                   not_after=leaf.not_valid_after_utc, self_signed=leaf.issuer == leaf.subject)
    return context, info


def key_file_too_open(key_path: str) -> bool:
    """True if group or others may read the key file."""
    try:
        return bool(os.stat(key_path).st_mode & 0o077)
    except OSError:
        return False


# -- the development certificate --------------------------------------------------------

def _san_entries(names) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def _covers(cert: x509.Certificate, names) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = set(san.get_values_for_type(x509.DNSName)) | {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    return all(str(e.value) in have for e in _san_entries(names))


def dev_names(host: str | None, public_ip: str | None) -> list[str]:
    """The names a dev certificate is valid for: loopback, plus --public-ip and a
    specific --host (so that another device on the LAN can be pointed at it)."""
    names = list(DEV_NAMES)
    for extra in (public_ip, host):
        if not extra:
            continue
        extra = extra.strip().strip("[]")
        try:
            if ipaddress.ip_address(extra).is_unspecified:
                continue
        except ValueError:
            pass
        if extra and extra not in names:
            names.append(extra)
    return names


def make_self_signed(names, now: datetime.datetime | None = None):
    """A new ECDSA P-256 key and a self-signed certificate for ``names``."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sfu development certificate")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + DEV_VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_san_entries(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _write_atomically(path: str, data: bytes, mode: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is cut by the umask; an old tmp file kept its mode
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    os.replace(tmp, path)


def _reusable(cert_path: str, key_path: str, names, now: datetime.datetime) -> bool:
    if not (os.path.exists(cert_path) and os.path.exists(key_path)):
        return False
    try:
        chain, _key = load_pair(cert_path, key_path)
    except TlsConfigError:
        return False
    cert = chain[0]
    return cert.not_valid_after_utc - now > DEV_RENEW_BEFORE and _covers(cert, names)


def dev_certificate(data_dir: str, names=DEV_NAMES) -> tuple[str, str, bool]:
    """``(cert_path, key_path, created)`` of the development certificate in
    ``data_dir``: the existing one if it is valid for ``names`` for a while yet,
    else a new one (key file mode 0600)."""
    os.makedirs(data_dir, exist_ok=True)
    cert_path = os.path.join(data_dir, DEV_CERT_FILE)
    key_path = os.path.join(data_dir, DEV_KEY_FILE)
    now = datetime.datetime.now(datetime.timezone.utc)
    if _reusable(cert_path, key_path, names, now):
        return cert_path, key_path, False
    cert, key = make_self_signed(names, now)
    try:
        _write_atomically(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()), 0o600)
        _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as exc:
        raise TlsConfigError(f"dev certificate in {data_dir}", f"cannot be written ({exc.strerror or exc})",
                             "the data directory must be writable") from None
    return cert_path, key_path, True


# -- from the settings --------------------------------------------------------------------

def context_from_config(config) -> tuple[ssl.SSLContext, TlsInfo] | None:
    """The listener's TLS context from ``--tls-cert``, ``--tls-key``,
    ``--tls-self-signed`` (with ``--dev``), or None for plain HTTP."""
    cert, key = config.tls_cert or None, config.tls_key or None
    if bool(cert) != bool(key):
        given, missing = ("--tls-cert", "--tls-key") if cert else ("--tls-key", "--tls-cert")
        raise TlsConfigError("settings", f"{given} is given without {missing}",
                             "give both (the certificate chain and its private key, PEM), or neither")
    if config.tls_self_signed:
        if cert:
            raise TlsConfigError("settings", "--tls-self-signed is given with --tls-cert/--tls-key",
                                 "give either your certificate or --tls-self-signed")
        if not config.dev:
            raise TlsConfigError("settings", "--tls-self-signed is for development only",
                                 "add --dev, or give a real certificate with --tls-cert/--tls-key")
        cert, key, created = dev_certificate(config.data_dir, dev_names(config.host, config.public_ip))
        context, info = server_context(cert, key)
        return context, dataclasses.replace(info, created=created)
    if not cert:
        return None
    return server_context(cert, key)


__all__ = [
    "EXIT_TLS", "TlsConfigError", "TlsInfo", "is_loopback", "exposed_without_tls", "CLEARTEXT_WARNING",
    "CLEARTEXT_ADVICE", "fingerprint", "spki_sha256", "load_pair", "server_context", "key_file_too_open",
    "dev_names", "make_self_signed", "dev_certificate", "context_from_config", "EXPIRY_WARNING",
]
