"""The meeting protocol's outbound queue (sfu/outbox.py, sfu/signaling.py's
websocket_handler), issue 9: a client that never reads costs a bounded number of
bytes and is cut off; long ids are not echoed; a participant that publishes a
burst of tracks does not get the honest participants closed as too slow, and
a client that asked for it gets the burst as one message."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time

import aiohttp
import pytest

from sfu.outbox import Outbox
from sfu.signaling import MAX_ID_LENGTH

from .conftest import SfuProcess
from .waiting import wait_until

# -- the queue on its own ---------------------------------------------------------------------


def pub(pid: str, n: int) -> dict:
    return {"type": "event", "event": "track_published", "participant_id": pid,
            "track": {"id": f"{pid}-{n}", "kind": "audio", "source": "microphone", "muted": False}}


def unpub(pid: str, n: int) -> dict:
    return {"type": "event", "event": "track_unpublished", "participant_id": pid, "track_id": f"{pid}-{n}"}


def drain(box: Outbox) -> list[dict]:
    out = []
    while box:
        out.append(json.loads(box.pop()))
    return out


def test_outbox_is_bounded_in_bytes_not_messages():
    box = Outbox(1000)
    big = {"id": 1, "type": "response", "ok": True, "sdp": "x" * 600}
    assert box.put(big)
    assert not box.put(big)  # would exceed 1000 bytes: refused, nothing queued
    assert len(box) == 1 and box.bytes == len(json.dumps(big, separators=(",", ":")))
    small = {"type": "event", "event": "kicked"}
    while box.put(small):
        pass
    assert box.bytes <= 1000 and box.peak == box.bytes
    assert json.loads(box.pop()) == big
    assert box.put(big)  # room again
    box.clear()
    assert len(box) == 0 and box.bytes == 0


def test_outbox_sends_events_one_by_one_unless_merging():
    box = Outbox(1 << 20)
    for n in range(3):
        box.put(pub("a", n))
    assert drain(box) == [pub("a", n) for n in range(3)]


def test_outbox_merges_consecutive_track_events_of_one_participant():
    box = Outbox(1 << 20, merge=True)
    for n in range(3):
        box.put(pub("a", n))
    box.put(pub("b", 0))  # another participant: a new message
    box.put(unpub("b", 0))
    box.put(unpub("b", 1))
    box.put({"type": "event", "event": "participant_left", "participant_id": "b", "reason": "left"})
    box.put(pub("b", 2))  # not merged across the participant_left
    box.put(unpub("a", 0))
    assert drain(box) == [
        {"type": "event", "event": "tracks_published", "participant_id": "a",
         "tracks": [pub("a", n)["track"] for n in range(3)]},
        pub("b", 0),  # alone: the usual form
        {"type": "event", "event": "tracks_unpublished", "participant_id": "b", "track_ids": ["b-0", "b-1"]},
        {"type": "event", "event": "participant_left", "participant_id": "b", "reason": "left"},
        pub("b", 2),
        unpub("a", 0),
    ]
    assert box.bytes == 0 and box.merged == 3


def test_outbox_merging_keeps_the_bound():
    box = Outbox(2000, merge=True)
    n = 0
    while box.put(pub("a", n)):
        n += 1
    assert 10 < n < 40 and len(box) == 1
    text = box.pop()
    assert len(text) <= 2000 and len(json.loads(text)["tracks"]) == n


# -- through a server process ------------------------------------------------------------------


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(field)


def frame(text: str) -> bytes:
    """A masked client text frame (RFC 6455 §5.2)."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", n)
    mask = os.urandom(4)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return head + mask + (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")


async def raw_websocket(port: int, token: str):
    """A WebSocket client that reads nothing after the handshake (tiny receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write((f"GET /ws?token={token} HTTP/1.1\r\nHost: sfu\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


class Honest:
    """A participant that reads everything (aiohttp client), counting messages."""

    def __init__(self, url: str, token: str, batch: bool = False) -> None:
        self.url, self.token, self.batch = url, token, batch
        self.messages: list[dict] = []
        self.closed: int | None = None

    async def join(self) -> dict:
        self.http = aiohttp.ClientSession()
        self.ws = await self.http.ws_connect(self.url + "/ws", params={"token": self.token})
        await self.ws.send_str(json.dumps({"id": 1, "type": "join", "batch_events": self.batch}))
        joined = json.loads((await self.ws.receive(timeout=10)).data)
        assert joined["ok"], joined
        self.reading = asyncio.ensure_future(self._read())
        return joined

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                break
            self.messages.append(json.loads(msg.data))
        self.closed = self.ws.close_code

    def events(self, *names: str) -> list[dict]:
        return [m for m in self.messages if m.get("type") == "event" and m["event"] in names]

    async def ping(self) -> bool:
        await self.ws.send_str(json.dumps({"id": "p", "type": "ping"}))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if any(m.get("id") == "p" and m.get("ok") for m in self.messages):
                return True
            await asyncio.sleep(0.05)
        return False

    async def close(self) -> None:
        await self.ws.close()
        self.reading.cancel()
        await asyncio.gather(self.reading, return_exceptions=True)
        await self.http.close()


@pytest.mark.timeout(240)
async def test_a_client_that_never_reads_is_cut_off_with_bounded_memory(tmp_path):
    server = SfuProcess(tmp_path).start()
    try:
        pid = server.proc.pid
        honest = Honest(server.url, server.token("r1", identity="ann@example.com", name="Ann"))
        await honest.join()
        reader, writer = await raw_websocket(server.http_port, server.token("r1", identity="eve", name="Eve"))
        writer.write(frame(json.dumps({"id": 1, "type": "join"})))
        assert await wait_until(lambda: honest.events("participant_joined"), 10)
        eve_id = honest.events("participant_joined")[0]["participant"]["id"]
        before = rss_kib(pid)

        # 400 requests with a 250 kB id (100 MB up): the server used to echo each back
        long_id = "i" * 250_000
        cut = False
        try:
            for _ in range(400):
                writer.write(frame(json.dumps({"id": long_id, "type": "ping"})))
                await asyncio.wait_for(writer.drain(), 30)
            # then pings with the longest id allowed, never read, until the server cuts the connection
            # (its responses first fill the kernel's socket buffers, up to tcp_wmem's 4 MB)
            pings = frame(json.dumps({"id": "i" * MAX_ID_LENGTH, "type": "ping"})) * 1000
            for _ in range(200):
                writer.write(pings)
                await asyncio.wait_for(writer.drain(), 30)
        except (ConnectionError, asyncio.TimeoutError):
            cut = True
        if not cut:  # everything went into the socket buffers: the server must cut it all the same,
            # while the client still reads nothing (reading here would unblock the server); a busy
            # machine may take a while to answer the pings still queued in the kernel
            assert await wait_until(lambda: honest.events("participant_left"), 120)
        peak = rss_kib(pid, "VmHWM")
        grown = rss_kib(pid) - before

        # Eve left (as "timed out"); Ann is still connected and was told
        assert await wait_until(lambda: honest.events("participant_left"), 15)
        assert honest.events("participant_left")[0] == {"type": "event", "event": "participant_left",
                                                         "participant_id": eve_id, "reason": "timed out"}
        assert honest.closed is None and await honest.ping()
        # memory: the queue is bounded (OUTBOX_BYTES) and long ids were never copied into it
        assert peak - before < 48 * 1024, (before, peak)
        assert grown < 24 * 1024, (before, grown)
        writer.close()
        await honest.close()
    finally:
        server.stop()
    assert "websocket client too slow" in server.log()


async def test_a_long_id_or_type_is_refused_without_echo(tmp_path):
    server = SfuProcess(tmp_path).start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url + "/ws", params={"token": server.token("r1")}) as ws:
                for bad in ["x" * (MAX_ID_LENGTH + 1), 2**60, -(2**60)]:
                    await ws.send_str(json.dumps({"id": bad, "type": "ping"}))
                    response = json.loads((await ws.receive(timeout=10)).data)
                    assert (response["id"], response["ok"], response["code"]) == (None, False, "bad_request")
                for good in ["x" * MAX_ID_LENGTH, 2**53, 7]:
                    await ws.send_str(json.dumps({"id": good, "type": "ping"}))
                    response = json.loads((await ws.receive(timeout=10)).data)
                    assert (response["id"], response["ok"]) == (good, True)
                # nor is a long type
                await ws.send_str(json.dumps({"id": 8, "type": "t" * 100_000}))
                response = json.loads((await ws.receive(timeout=10)).data)
                assert response["code"] == "unknown_type" and len(response["error"]) < 100
                # a message above the size limit closes the socket (1009, RFC 6455 §7.4.1)
                await ws.send_str(json.dumps({"id": 1, "type": "ping", "pad": "x" * 300_000}))
                assert (await ws.receive(timeout=10)).type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
                assert ws.close_code == 1009
    finally:
        server.stop()


def compact_offer(n: int) -> str:
    """A short offer with ``n`` sendonly audio sections (what a hostile client sends)."""
    lines = ["v=0", "o=- 1 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
             "a=group:BUNDLE " + " ".join(map(str, range(n))), "a=ice-ufrag:uburst", "a=ice-pwd:" + "p" * 24,
             "a=fingerprint:sha-256 " + ":".join(["AB"] * 32), "a=setup:actpass", "c=IN IP4 0.0.0.0"]
    for i in range(n):
        lines += ["m=audio 9 UDP/TLS/RTP/SAVPF 111", f"a=mid:{i}", "a=sendonly", "a=rtcp-mux",
                  "a=rtpmap:111 opus/48000/2", f"a=ssrc:{1000 + i} cname:c"]
    return "\n".join(lines) + "\n"


BURST = 2_100  # tracks in one offer: more events than the old queue's 2,000 messages


async def test_a_burst_of_published_tracks_keeps_the_others_connected(tmp_path):
    many = str(BURST + 10)
    server = SfuProcess(tmp_path, "--max-offer-sections", many, "--max-session-tracks", many,
                        "--max-session-published", many).start()
    try:
        plain = Honest(server.url, server.token("r1", identity="ann", name="Ann"))
        batching = Honest(server.url, server.token("r1", identity="ben", name="Ben"), batch=True)
        await plain.join()
        await batching.join()
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url + "/ws", params={"token": server.token("r1", identity="cy")},
                                       max_msg_size=0) as ws:
                await ws.send_str(json.dumps({"id": 1, "type": "join"}))
                assert json.loads((await ws.receive(timeout=10)).data)["ok"]
                offer = compact_offer(BURST)
                await ws.send_str(json.dumps({"id": 2, "type": "offer", "sdp": offer}))
                response = json.loads((await ws.receive(timeout=60)).data)
                assert response["ok"], response
                assert len(response["published"]) == BURST

                def tracks(client: Honest) -> int:
                    return (len(client.events("track_published"))
                            + sum(len(e["tracks"]) for e in client.events("tracks_published")))

                assert await wait_until(lambda: tracks(plain) == BURST and tracks(batching) == BURST, 30), \
                    (tracks(plain), tracks(batching))
                # both still connected; the one that asked got the burst merged
                assert plain.closed is None and batching.closed is None
                assert await plain.ping() and await batching.ping()
                assert len(plain.events("track_published")) == BURST
                assert len(batching.events("track_published", "tracks_published")) <= 3

                await ws.send_str(json.dumps({"id": 3, "type": "leave"}))
                assert await wait_until(lambda: plain.events("participant_left")
                                        and batching.events("participant_left"), 30)
                gone = sum(len(e["track_ids"]) for e in batching.events("tracks_unpublished"))
                assert gone + len(batching.events("track_unpublished")) == BURST
                assert len(batching.events("track_unpublished", "tracks_unpublished")) <= 3
                assert len(plain.events("track_unpublished")) == BURST
        await plain.close()
        await batching.close()
    finally:
        server.stop()
