"""Bad input to the signaling and media ports: clear errors, nothing left behind,
and the server keeps serving a normal session afterwards."""

from __future__ import annotations

import asyncio
import os
import random
import socket

import aiohttp
import pytest

from .clients import Publisher, Viewer, post_sdp

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

GOOD_OFFER_SHAPE = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\na=sendonly\r\n"
    "a=rtcp-mux\r\na=rtpmap:96 VP8/90000\r\n{extra}"
)
FINGERPRINT = "a=fingerprint:sha-256 " + ":".join(["AB"] * 32) + "\r\n"
ICE = "a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=setup:actpass\r\n"


async def _assert_clean(sfu):
    health = sfu.health()
    assert health["transports"] == 0 and health["rooms"] == 0, health


@pytest.mark.parametrize(
    "body,reason_part",
    [
        ("", "empty"),
        ("this is not sdp", ""),
        ("\x00\xff garbage \x01", ""),
        (GOOD_OFFER_SHAPE.format(extra=ICE), "fingerprint"),
        (GOOD_OFFER_SHAPE.format(extra=FINGERPRINT + "a=setup:actpass\r\n"), "ICE"),
        (GOOD_OFFER_SHAPE.format(extra=ICE + FINGERPRINT).replace("VP8/90000", "FOO/90000"), "codec"),
        (GOOD_OFFER_SHAPE.format(extra=ICE + FINGERPRINT).replace("a=sendonly", "a=recvonly"), ""),
        (GOOD_OFFER_SHAPE.format(extra=ICE + FINGERPRINT).replace("a=rtcp-mux\r\n", ""), "rtcp-mux"),
    ],
)
async def test_unusable_offer_is_400_with_reason(sfu, body, reason_part):
    status, text, location = await post_sdp(sfu.url + "/whip/bad", body)
    assert status == 400, text
    assert location is None
    line = text.strip()
    assert line and "\n" not in line, "the reason is one line"
    assert reason_part.lower() in line.lower(), line
    await _assert_clean(sfu)


async def test_wrong_content_type_is_415(sfu):
    status, text, _ = await post_sdp(sfu.url + "/whip/bad", "v=0", content_type="text/plain")
    assert status == 415, text
    status, text, _ = await post_sdp(sfu.url + "/whep/bad", "v=0", content_type="application/json")
    assert status == 415, text
    await _assert_clean(sfu)


async def test_oversized_body_is_413(sfu):
    status, text, _ = await post_sdp(sfu.url + "/whip/bad", "a=x\r\n" * 20000)
    assert status == 413, text
    await _assert_clean(sfu)


async def test_cors_preflight_and_exposed_location(sfu):
    async with aiohttp.ClientSession() as http:
        async with http.options(
            sfu.url + "/whip/room",
            headers={"Origin": "http://example.test", "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "content-type"},
        ) as r:
            assert r.status in (200, 204)
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "POST" in r.headers["Access-Control-Allow-Methods"]
            assert "content-type" in r.headers["Access-Control-Allow-Headers"].lower()
            assert "Location" in r.headers["Access-Control-Expose-Headers"]
        async with http.post(sfu.url + "/whep/room", data=b"x", headers={
                "Content-Type": "application/sdp", "Authorization": "Bearer " + sfu.token("room")}) as r:
            assert r.status == 400
            assert r.headers["Access-Control-Allow-Origin"] == "*"
            assert "Location" in r.headers["Access-Control-Expose-Headers"]


async def test_patch_is_405_whether_or_not_the_session_exists(sfu):
    """No trickle ICE or ICE restart; the answer does not tell whether a session URL exists."""
    pub = Publisher(sfu.url, "patch")
    try:
        await pub.start()
        async with aiohttp.ClientSession() as http:
            async with http.patch(sfu.url + pub.location, data=b"a=end-of-candidates\r\n",
                                  headers={"Content-Type": "application/trickle-ice-sdpfrag"}) as r:
                assert r.status == 405
                real = await r.text()
            async with http.patch(sfu.url + "/whip/patch/nosuch", data=b"") as r:
                assert r.status == 405
                assert await r.text() == real
    finally:
        await pub.stop()


async def test_garbage_datagrams_then_normal_session(sfu):
    rng = random.Random(1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        samples = [b"", b"\x00", b"\x00\x01", b"\x16\xfe\xfd", b"\x80", b"\x80\x60\x00\x01"]
        samples += [os.urandom(rng.randrange(1, 1500)) for _ in range(300)]
        # STUN-looking, DTLS-looking, RTP- and RTCP-looking junk of every length
        for first in (0x00, 0x01, 0x16, 0x17, 0x80, 0x81, 0x90):
            for second in (0x00, 0x60, 0xC8, 0xC9, 0xCD):
                for n in (2, 4, 12, 20, 64):
                    samples.append(bytes([first, second]) + os.urandom(n))
        for data in samples:
            sock.sendto(data, ("127.0.0.1", sfu.rtc_port))
        await asyncio.sleep(0.5)
    finally:
        sock.close()
    assert sfu.proc.poll() is None, "the server survived"
    health = sfu.health()
    assert sum(health["drops"].values()) > 0
    # and a normal session still works
    pub, viewer = Publisher(sfu.url, "after"), Viewer(sfu.url, "after")
    try:
        await pub.start()
        await viewer.start()
        assert await viewer.wait_frames("video", 10, timeout=20) >= 10
    finally:
        await viewer.stop()
        await pub.stop()
