"""The WHIP/WHEP request body is read to its end however it arrives (a real server, a raw socket)."""

from __future__ import annotations

import asyncio

import pytest

from sfu.auth import Grants, mint_token
from sfu.config import Config
from sfu.server import Server

from .sdp_offers import OfferPeer

pytestmark = pytest.mark.timeout(30)

SECRET = "api-body-secret"


async def post_in_pieces(port: int, path: str, body: bytes, token: str, pieces: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/sdp\r\n"
                      f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n"
                      "Connection: close\r\n\r\n").encode())
        step = -(-len(body) // pieces)
        for i in range(0, len(body), step):
            writer.write(body[i:i + step])
            await writer.drain()
            await asyncio.sleep(0.05)  # the server sees each piece arrive on its own
        return await asyncio.wait_for(reader.read(), 10.0)
    finally:
        writer.close()


async def test_an_offer_that_arrives_in_pieces_is_read_whole(tmp_path):
    server = Server(Config(host="127.0.0.1", http_port=0, rtc_port=0, data_dir=str(tmp_path / "data"),
                           auth_secret=SECRET, max_offer_sections=4))
    await server.start()
    try:
        token = mint_token(SECRET, "pub", "Pub", "r", Grants(publish=True), ttl=600.0)
        offer = OfferPeer().offer([("0", "audio", "sendonly"), ("1", "video", "sendonly")]).encode()
        answer = await post_in_pieces(server.http_port, "/whip/r", offer, token, pieces=4)
        assert answer.startswith(b"HTTP/1.1 201"), answer[:300]
        # a body over the section limit, in pieces: counted whole, not by its first piece
        big = OfferPeer().offer([(str(i), "video", "sendonly") for i in range(6)]).encode()
        answer = await post_in_pieces(server.http_port, "/whip/r", big, token, pieces=6)
        assert answer.startswith(b"HTTP/1.1 400"), answer[:300]
        assert b"offer has 6 media sections, at most 4 are allowed" in answer, answer[-300:]
    finally:
        await server.stop()
