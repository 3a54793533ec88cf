"""Headless Chromium and the meeting page over HTTPS (sfu serve --dev --tls-self-signed):
a browser that does not trust the certificate refuses the page; one told to trust
exactly that key (--ignore-certificate-errors-spki-list, the SPKI hash the server
logs) loads it and joins over wss:// (a ws:// socket from an https:// page would be
blocked as mixed content)."""

from __future__ import annotations

import json

import pytest
from cryptography import x509

from sfu import tls

from ..test_tls import TlsSfuProcess
from .cdp import Chromium
from .test_meeting_browser import diagnose

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture
def tls_dev_sfu(tmp_path, netns):
    cert_path = tmp_path / "data" / tls.DEV_CERT_FILE
    server = TlsSfuProcess(tmp_path, str(cert_path), "--dev", "--tls-self-signed").start()
    server.x509 = x509.load_pem_x509_certificate(cert_path.read_bytes())
    yield server
    server.stop()


async def test_meeting_page_over_https_and_wss(tls_dev_sfu, tmp_path):
    page = f"{tls_dev_sfu.url}/?room=tls-meet&name=Alice&autojoin=1"
    # a browser that does not trust the certificate shows its error page, never the meeting
    browser = Chromium(tmp_path / "untrusting")
    await browser.start()
    try:
        tab = await browser.new_tab(page)
        assert await tab.wait_for("location.href.startsWith('chrome-error://')", timeout=15), tab.console
        assert await tab.evaluate("typeof window.meetingState") == "undefined"
    finally:
        await browser.close()
    assert browser.processes() == []
    log = [json.loads(line) for line in tls_dev_sfu.log().splitlines() if line.startswith("{")]
    assert not any(r.get("msg", "").startswith("participant") for r in log)

    # trusting exactly the key the server logged
    [enabled] = [r for r in log if r["msg"] == "tls enabled: https and wss"]
    assert enabled["spki_sha256"] == tls.spki_sha256(tls_dev_sfu.x509)
    browser = Chromium(tmp_path / "trusting",
                       extra_flags=(f"--ignore-certificate-errors-spki-list={enabled['spki_sha256']}",))
    await browser.start()
    try:
        tab = await browser.new_tab(page)
        assert await tab.wait_for("typeof window.meetingState === 'object'", timeout=15), tab.console
        assert await tab.wait_for("window.meetingState.joined || window.meetingState.error", 20), \
            await diagnose(tab, tls_dev_sfu)
        state = await tab.evaluate("window.meetingState")
        assert state["joined"] and not state.get("error"), await diagnose(tab, tls_dev_sfu)
        assert await tab.evaluate("location.protocol") == "https:"
        # the camera and microphone reach the SFU (DTLS-SRTP on the UDP port, unchanged by TLS)
        assert await tab.wait_for("window.meetingStats().then((s) => s.connection === 'connected')", 30), \
            await diagnose(tab, tls_dev_sfu)
    finally:
        await browser.close()
    assert browser.processes() == []
    log = [json.loads(line) for line in tls_dev_sfu.log().splitlines() if line.startswith("{")]
    assert any(r.get("msg") == "participant joined meeting" for r in log)
