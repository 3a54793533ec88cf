"""TLS of the HTTP listener (sfu/tls.py): `sfu serve --tls-cert F --tls-key F` serves
HTTPS and WSS, real clients refuse a certificate they do not trust, bad files stop
the server with one clear line and exit code 4, `--dev --tls-self-signed` makes its
certificate once and reuses it, and a server without TLS on an address other than
loopback warns at start (the decision is tested as a function: the tests never bind
anything but loopback)."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import pathlib
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import warnings

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sfu import server as server_module
from sfu import tls
from sfu.config import Config

from .conftest import ROOT, SfuProcess
from .sdp_offers import OfferPeer
from .test_static_origin import HARNESS, NODE, STATIC

pytestmark = pytest.mark.timeout(90)


def write_pair(directory, names=("localhost", "127.0.0.1", "::1"), stem="server"):
    """A self-signed certificate and its key as PEM files; returns (cert, key, x509)."""
    cert, key = tls.make_self_signed(list(names))
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return str(cert_path), str(key_path), cert


def trusting(cert_path: str) -> ssl.SSLContext:
    """A client context that trusts exactly this certificate (and nothing else)."""
    return ssl.create_default_context(cafile=cert_path)


class TlsSfuProcess(SfuProcess):
    """`sfu serve` over HTTPS; health is polled with a client that trusts ``ca``."""

    def __init__(self, tmp_path, ca: str, *extra: str) -> None:
        super().__init__(tmp_path, *extra)
        self.ca = ca

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 20.0) -> "TlsSfuProcess":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=self._log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sfu exited with {self.proc.returncode}: {self.log()}")
            if os.path.exists(self.ca):
                try:
                    with urllib.request.urlopen(self.url + "/healthz", timeout=1,
                                                context=trusting(self.ca)) as r:
                        if r.status == 200:
                            return self
                except (OSError, ssl.SSLError):
                    pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("sfu did not become healthy over https: " + self.log())


def sfu_serve(*args: str, timeout: float = 30, as_nobody: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [sys.executable, "-m", "sfu", "serve", "--host", "127.0.0.1", "--http-port", "0", "--rtc-port", "0",
           "--auth-secret", "x" * 40, *args]
    if as_nobody:  # root reads every file: drop to an ordinary user
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def one_plain_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == tls.EXIT_TLS == 4, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "SFU ready" not in proc.stdout
    plain = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert len(plain) == 1, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert any(r["msg"] == "tls settings unusable" and r["exit_code"] == 4 for r in records), proc.stderr
    return plain[0]


# -- a real server with a real certificate --------------------------------------------------

@pytest.fixture
def tls_sfu(tmp_path):
    cert, key, x = write_pair(tmp_path)
    server = TlsSfuProcess(tmp_path, cert, "--tls-cert", cert, "--tls-key", key).start()
    server.cert, server.x509 = cert, x
    yield server
    server.stop()


async def test_clients_refuse_an_untrusted_or_wrong_certificate(tls_sfu, tmp_path):
    url = tls_sfu.url + "/healthz"
    # the default trust store: a self-signed certificate is refused
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as caught:
            await http.get(url)
    assert "certificate verify failed" in str(caught.value)
    # a client that trusts another certificate (same names) refuses this one
    other, _key, _x = write_pair(tmp_path, stem="other")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(url, ssl=trusting(other))
    # the right certificate for a name it was not issued for is refused too
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorCertificateError) as caught:
            await http.get(url, ssl=trusting(tls_sfu.cert), server_hostname="sfu.example")
    assert "hostname" in str(caught.value).lower() or "mismatch" in str(caught.value).lower()
    # and the same client trusting exactly this certificate gets through
    async with aiohttp.ClientSession() as http:
        async with http.get(url, ssl=trusting(tls_sfu.cert)) as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
    # plain HTTP on the TLS port gets no answer
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            await http.get(f"http://127.0.0.1:{tls_sfu.http_port}/healthz")


async def test_tls_versions_and_the_logged_fingerprint(tls_sfu):
    client = trusting(tls_sfu.cert)
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        client.maximum_version = ssl.TLSVersion.TLSv1_1
        client.minimum_version = ssl.TLSVersion.TLSv1
    client.set_ciphers("ALL:@SECLEVEL=0")
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):
            await http.get(tls_sfu.url + "/healthz", ssl=client)
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        client = trusting(tls_sfu.cert)
        client.minimum_version = client.maximum_version = version
        reader, writer = await asyncio.open_connection("127.0.0.1", tls_sfu.http_port, ssl=client,
                                                       server_hostname="localhost")
        assert writer.get_extra_info("ssl_object").version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                                                 ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
        writer.close()
        await writer.wait_closed()
    records = [json.loads(line) for line in tls_sfu.log().splitlines() if line.startswith("{")]
    [enabled] = [r for r in records if r["msg"] == "tls enabled: https and wss"]
    assert enabled["sha256_fingerprint"] == tls.fingerprint(tls_sfu.x509)
    assert enabled["self_signed"] is True and enabled["created"] is False
    assert not any("no TLS" in r["msg"] for r in records)


async def test_api_whip_and_meeting_socket_over_tls(tls_sfu):
    client = trusting(tls_sfu.cert)
    host_token = tls_sfu.token("tls-room", "carol", host=True)
    async with aiohttp.ClientSession() as http:
        # the REST API
        async with http.post(tls_sfu.url + "/api/meetings", json={"topic": "over tls", "room": "tls-room"},
                             headers={"Authorization": f"Bearer {host_token}"}, ssl=client) as r:
            assert r.status == 201, await r.text()
            meeting = await r.json()
        # WHIP: an offer in, an answer out
        offer = OfferPeer().offer([("0", "audio", "sendonly"), ("1", "video", "sendonly")])
        async with http.post(tls_sfu.url + "/whip/tls-room", data=offer, ssl=client,
                             headers={"Content-Type": "application/sdp",
                                      "Authorization": f"Bearer {tls_sfu.token('tls-room', 'pub')}"}) as r:
            assert r.status == 201, await r.text()
            assert (await r.text()).startswith("v=0")
            location = r.headers["Location"]
        async with http.delete(tls_sfu.url + location, ssl=client,
                               headers={"Authorization": f"Bearer {tls_sfu.token('tls-room', 'pub')}"}) as r:
            assert r.status in (200, 204)
        # the meeting socket over WSS: join the meeting just made
        ws_url = tls_sfu.url.replace("https", "wss", 1) + "/ws?token=" + tls_sfu.token("tls-room", "dave")
        async with http.ws_connect(ws_url, ssl=client) as ws:
            await ws.send_json({"id": 1, "type": "join"})
            while True:
                message = await asyncio.wait_for(ws.receive_json(), 10)
                if message.get("type") == "response":
                    break
            assert message["ok"] and message["meeting"]["id"] == meeting["meeting_id"], message
        # a WSS client that does not trust the certificate never gets to send its token
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.ws_connect(ws_url)
        # /metrics shares the listener
        async with http.get(tls_sfu.url + "/metrics", ssl=client) as r:
            assert r.status == 200 and "sfu_" in await r.text()


async def test_a_silent_handshake_and_a_silent_request_are_closed(tmp_path):
    """--http-header-timeout also bounds the TLS handshake; after it, the guard's 408."""
    cert, key, _x = write_pair(tmp_path)
    server = TlsSfuProcess(tmp_path, cert, "--tls-cert", cert, "--tls-key", key, "--http-header-timeout", "1").start()
    try:
        # TCP only, no ClientHello: closed by the server, not held
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        try:
            assert await asyncio.wait_for(reader.read(100), 15) == b""
        except ConnectionResetError:
            pass
        writer.close()
        # handshake done, no request head: 408 over TLS
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port, ssl=trusting(cert),
                                                       server_hostname="localhost")
        head = await asyncio.wait_for(reader.read(100), 15)
        assert head.startswith(b"HTTP/1.1 408"), head
        writer.close()
    finally:
        server.stop()


# -- the connection guard in front of the handshake, on both event loops ------------------------

def guarded_tls_scenario(cert: str, key: str) -> dict:
    """A GuardedSite with TLS in this process: the cap per source counts connections
    still in their handshake, a silent handshake is timed out, every slot comes back."""
    from aiohttp import web

    from sfu.httpguard import ConnectionGuard, GuardedSite

    async def scenario() -> dict:
        context, _info = tls.server_context(cert, key)
        app = web.Application()
        async def index(request):
            return web.Response(text="secure" if request.secure else "plain")

        app.router.add_get("/", index)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        guard = ConnectionGuard(header_timeout=1.0, max_per_source=2)
        site = GuardedSite(runner, "127.0.0.1", 0, guard=guard, ssl_context=context)
        await site.start()
        port = runner.addresses[0][1]
        out = {}
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"https://127.0.0.1:{port}/", ssl=trusting(cert)) as r:
                    out["body"] = await r.text()
            # two connections that never send a ClientHello fill this source's slots
            silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            await asyncio.sleep(0.2)
            out["open_while_silent"] = guard.open
            try:
                await asyncio.open_connection("127.0.0.1", port, ssl=trusting(cert), server_hostname="localhost")
                out["third"] = "connected"
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                out["third"] = "refused"
            out["refused"] = guard.refused
            # the silent ones are closed by the header timer
            for reader, writer in silent:
                try:
                    out.setdefault("silent_read", []).append(await asyncio.wait_for(reader.read(10), 15))
                except ConnectionResetError:
                    out.setdefault("silent_read", []).append(b"")
                writer.close()
            out["timed_out"] = guard.timed_out
            async with aiohttp.ClientSession() as http:
                async with http.get(f"https://127.0.0.1:{port}/", ssl=trusting(cert)) as r:
                    out["after"] = r.status
            # a client refusing the certificate: its slot comes back too
            async with aiohttp.ClientSession() as http:
                try:
                    await http.get(f"https://127.0.0.1:{port}/")
                except aiohttp.ClientConnectorCertificateError:
                    out["untrusting"] = "refused"
            for _ in range(50):
                if guard.open == 0:
                    break
                await asyncio.sleep(0.05)
            out["open_at_end"] = guard.open
        finally:
            await runner.cleanup()
        return out

    return scenario


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_guard_admits_before_the_handshake(tmp_path, loop):
    import uvloop

    cert, key, _x = write_pair(tmp_path)
    scenario = guarded_tls_scenario(cert, key)
    out = (uvloop.run if loop == "uvloop" else asyncio.run)(scenario())
    assert out["body"] == "secure"
    assert out["open_while_silent"] == 2
    assert out["third"] == "refused" and out["refused"] == 1, out
    assert out["silent_read"] == [b"", b""] and out["timed_out"] == 2, out
    assert out["after"] == 200 and out["untrusting"] == "refused"
    assert out["open_at_end"] == 0, out


# -- files and flags that cannot be used: one line, exit code 4, nothing started --------------

def test_only_one_of_the_two_flags(tmp_path):
    cert, key, _x = write_pair(tmp_path)
    line = one_plain_line(sfu_serve("--data-dir", str(tmp_path / "d"), "--tls-cert", cert))
    assert "--tls-cert is given without --tls-key" in line
    env_line = one_plain_line(sfu_serve("--data-dir", str(tmp_path / "d"), "--tls-key", key))
    assert "--tls-key is given without --tls-cert" in env_line


def test_a_missing_file_is_named(tmp_path):
    cert, _key, _x = write_pair(tmp_path)
    missing = str(tmp_path / "nope.key")
    line = one_plain_line(sfu_serve("--data-dir", str(tmp_path / "d"), "--tls-cert", cert, "--tls-key", missing))
    assert missing in line and "no such file" in line


def test_a_key_that_is_not_the_certificates(tmp_path):
    cert, _key, _x = write_pair(tmp_path, stem="a")
    _cert, other_key, _x = write_pair(tmp_path, stem="b")
    line = one_plain_line(sfu_serve("--data-dir", str(tmp_path / "d"), "--tls-cert", cert, "--tls-key", other_key))
    assert other_key in line and "does not match the certificate" in line


def test_files_that_are_not_pem_or_encrypted(tmp_path):
    cert, key, _x = write_pair(tmp_path)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    line = one_plain_line(sfu_serve("--data-dir", str(tmp_path / "d"), "--tls-cert", str(garbage), "--tls-key", key))
    assert str(garbage) in line and "not a PEM certificate" in line
    # the cert and key swapped
    line = one_plain_line(sfu_serve("--data-dir", str(tmp_path / "d"), "--tls-cert", cert, "--tls-key", cert))
    assert "not a PEM private key" in line
    encrypted = tmp_path / "encrypted.key"
    private = serialization.load_pem_private_key(open(key, "rb").read(), None)
    encrypted.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.BestAvailableEncryption(b"passphrase")))
    line = one_plain_line(sfu_serve("--data-dir", str(tmp_path / "d"), "--tls-cert", cert,
                                    "--tls-key", str(encrypted)))
    assert "encrypted with a passphrase" in line


def test_an_unreadable_key():
    """As an ordinary user (root reads every file, so as root the server runs as uid
    65534, like the history database tests)."""
    root = os.getuid() == 0
    with tempfile.TemporaryDirectory(dir="/tmp") as scratch:
        directory = pathlib.Path(scratch)
        os.chmod(directory, 0o755)
        cert, key, _x = write_pair(directory)
        os.chmod(cert, 0o644)
        os.chmod(key, 0o600 if root else 0o000)  # root's: not readable by uid 65534
        data = directory / "data"
        data.mkdir()
        if root:
            os.chown(data, 65534, 65534)
        proc = sfu_serve("--data-dir", str(data), "--tls-cert", cert, "--tls-key", key, as_nobody=root)
        line = one_plain_line(proc)
        assert key in line and "permission denied" in line
        assert not root or "uid 65534" in line


def test_self_signed_needs_dev_and_excludes_given_files(tmp_path):
    line = one_plain_line(sfu_serve("--data-dir", str(tmp_path / "d"), "--tls-self-signed"))
    assert "--tls-self-signed is for development only" in line and "--dev" in line
    assert not (tmp_path / "d" / tls.DEV_CERT_FILE).exists()
    cert, key, _x = write_pair(tmp_path)
    with pytest.raises(tls.TlsConfigError, match="either"):
        tls.context_from_config(Config(data_dir=str(tmp_path / "d"), dev=True, tls_self_signed=True,
                                       tls_cert=cert, tls_key=key))


def test_flags_also_come_from_the_environment(tmp_path):
    from sfu.config import add_serve_arguments, from_args
    import argparse

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    config = from_args(parser.parse_args([]), {"SFU_TLS_CERT": "/c.pem", "SFU_TLS_KEY": "/k.pem",
                                               "SFU_TLS_SELF_SIGNED": "1"})
    assert (config.tls_cert, config.tls_key, config.tls_self_signed) == ("/c.pem", "/k.pem", True)
    config = from_args(parser.parse_args(["--tls-cert", "a", "--tls-key", "b"]), {"SFU_TLS_CERT": "/c.pem"})
    assert (config.tls_cert, config.tls_key, config.tls_self_signed) == ("a", "b", False)
    assert tls.context_from_config(Config()) is None  # default: plain HTTP


# -- the development certificate ----------------------------------------------------------------

def test_dev_certificate_is_made_once_and_reused(tmp_path):
    data = tmp_path / "data"
    first = TlsSfuProcess(tmp_path, str(data / tls.DEV_CERT_FILE), "--dev", "--tls-self-signed").start()
    first.stop()
    cert_path, key_path = data / tls.DEV_CERT_FILE, data / tls.DEV_KEY_FILE
    assert key_path.stat().st_mode & 0o777 == 0o600
    pem = cert_path.read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost"}
    assert {str(a) for a in san.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert f"SFU ready: page https://127.0.0.1:{first.http_port}/" in first.stdout
    second = TlsSfuProcess(tmp_path, str(cert_path), "--dev", "--tls-self-signed").start()
    second.stop()
    assert cert_path.read_bytes() == pem, "the certificate of the first start is reused"
    logs = [json.loads(line) for line in first.log().splitlines() if line.startswith("{")]
    enabled = [r for r in logs if r["msg"] == "tls enabled: https and wss"]
    assert [r["created"] for r in enabled] == [True, False]
    assert {r["sha256_fingerprint"] for r in enabled} == {tls.fingerprint(cert)}
    assert all(r["cert"] == str(cert_path) for r in enabled)


def test_dev_certificate_is_remade_when_unusable_or_for_new_names(tmp_path):
    cert_path, key_path, created = tls.dev_certificate(str(tmp_path))
    assert created
    again = tls.dev_certificate(str(tmp_path))
    assert again == (cert_path, key_path, False)
    # a --public-ip the old certificate does not cover: a new one, covering it
    names = tls.dev_names("127.0.0.1", "192.0.2.7")
    assert names == ["localhost", "127.0.0.1", "::1", "192.0.2.7"]
    assert tls.dev_names("0.0.0.0", None) == list(tls.DEV_NAMES)
    old = open(cert_path, "rb").read()
    assert tls.dev_certificate(str(tmp_path), names)[2] is True
    assert open(cert_path, "rb").read() != old
    assert tls.dev_certificate(str(tmp_path), names)[2] is False
    # a key that no longer matches (or is damaged): remade, never served
    with open(key_path, "wb") as f:
        f.write(ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    assert tls.dev_certificate(str(tmp_path), names)[2] is True
    tls.load_pair(cert_path, key_path)
    assert os.stat(key_path).st_mode & 0o777 == 0o600
    # an expiring one: remade
    cert, key = tls.make_self_signed(names, datetime.datetime.now(datetime.timezone.utc)
                                     - tls.DEV_VALIDITY + datetime.timedelta(days=1))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    assert tls.dev_certificate(str(tmp_path), names)[2] is True


# -- the warning about cleartext signalling -----------------------------------------------------

@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("LOCALHOST.", True), ("app.localhost", True), ("::ffff:127.0.0.1", True),
    ("0.0.0.0", False), ("::", False), ("", False), (None, False), ("192.0.2.10", False),
    ("2001:db8::1", False), ("sfu.example.com", False), ("fe80::1%eth0", False), ("10.0.0.1", False),
])
def test_which_binds_are_loopback(host, loopback):
    assert tls.is_loopback(host) is loopback
    assert tls.exposed_without_tls(host, tls_enabled=False) is (not loopback)
    assert tls.exposed_without_tls(host, tls_enabled=True) is False


def test_the_start_up_warning(caplog):
    """The start path's logging (sfu/server.py log_tls), for the decisions above."""
    caplog.set_level(logging.INFO, logger="sfu.server")
    server_module.log_tls(None, "0.0.0.0")
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    text = record.getMessage()
    assert "DTLS-SRTP" in text and "signalling, chat and access tokens travel in clear" in text
    assert "--tls-cert" in record.fields["advice"]
    for host in ("127.0.0.1", "::1", "localhost"):
        caplog.clear()
        server_module.log_tls(None, host)
        assert not caplog.records, host


def test_a_loopback_server_without_tls_stays_quiet(tmp_path):
    server = SfuProcess(tmp_path).start()
    server.stop()
    assert "travel in clear" not in server.log() and "tls" not in server.log().lower()
    assert "page http://127.0.0.1:" in server.stdout


# -- the meeting page joins over wss:// when it was served over https:// ----------------------

@pytest.mark.parametrize("origin, scheme", [("https://sfu.test:8443", "wss"), ("http://sfu.test:8080", "ws")])
def test_meeting_page_socket_follows_the_page_scheme(tmp_path, origin, scheme):
    assert NODE is not None, "node is not installed (scripts/install-system-deps.sh installs nodejs)"
    harness = tmp_path / "harness.js"
    harness.write_text(HARNESS)
    href = f"{origin}/?room=r1&name=Ann&autojoin=1"
    out = subprocess.run([NODE, str(harness), str(STATIC / "meeting.js"), href, "300"], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    requests = json.loads(out.stdout.strip().splitlines()[-1])
    [socket] = [r for r in requests if r["kind"] == "websocket"]
    host = origin.split("://", 1)[1]
    assert socket["url"].startswith(f"{scheme}://{host}/ws?token="), socket
    assert all(r["url"].startswith(origin) for r in requests if r["kind"] == "fetch"), requests


def test_warnings_about_the_certificate_served(tmp_path, caplog):
    """An expiring certificate and a key file others may read are logged at start."""
    cert, key = tls.make_self_signed(["localhost"], datetime.datetime.now(datetime.timezone.utc)
                                     - tls.DEV_VALIDITY + datetime.timedelta(days=3))
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o644)
    _context, info = tls.server_context(str(cert_path), str(key_path))
    caplog.set_level(logging.INFO, logger="sfu.server")
    server_module.log_tls(info, "0.0.0.0")
    warnings_logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings_logged == ["tls: the certificate expires soon",
                               "tls: the private key file is readable by group or others: chmod 600 it"]
    key_path.chmod(0o600)
    caplog.clear()
    _context, info = tls.server_context(*write_pair(tmp_path, stem="fresh")[:2])
    server_module.log_tls(info, "0.0.0.0")
    assert [r.getMessage() for r in caplog.records] == ["tls enabled: https and wss"]
