"""A meeting participant's failed renegotiation, then its retry, with a real aiortc
client over the WebSocket protocol (docs/protocol.md), on each data path of the
server (`--datapath c`, the default, and `--datapath pure`).

Alice publishes audio and video, then adds a camera (a new sendonly video
section, mid 2). Her first offer lists mid 0, the new mid 2, then mid 1 with its
codec changed: the SFU answers bad_sdp ("a published track cannot change codec")
and nothing changes. Her correct offer (mids 0, 1, 2) is then accepted, and Bob,
who subscribes to the new track, decodes it. Before negotiation decided before
committing, the refused offer left mid 2's C stream on the peer and the retry
failed with internal_error on the C data path."""

from __future__ import annotations

import re

import pytest
from aiortc import RTCSessionDescription

from ..conftest import DATAPATHS, SfuProcess
from ..waiting import wait_until
from .ws_client import MeetingClient, MeetingError, PacedPatternTrack

pytestmark = [pytest.mark.e2e]

MEDIA_TIMEOUT = 30.0


@pytest.fixture(params=DATAPATHS)
def sfu_on(request, tmp_path, netns):
    server = SfuProcess(tmp_path, "--datapath", request.param).start()
    yield server
    server.stop()


def sections(offer: str) -> tuple[str, dict[str, str]]:
    """The session part of an SDP and its m-sections by mid."""
    head, *media = re.split(r"(?=^m=)", offer, flags=re.M)
    return head, {re.search(r"^a=mid:(\S+)", m, re.M).group(1): m for m in media}


def without_codec(section: str, name: str) -> str:
    """An m-section without the codec ``name`` (and its rtx): another codec comes first."""
    pts = set(re.findall(rf"^a=rtpmap:(\d+) {name}/", section, re.M))
    pts |= {rtx for rtx, apt in re.findall(r"^a=fmtp:(\d+) apt=(\d+)", section, re.M) if apt in pts}
    assert pts, f"no {name} in the section"
    lines = section.split("\r\n")
    first = lines[0].split(" ")
    lines[0] = " ".join(first[:3] + [pt for pt in first[3:] if pt not in pts])
    kept = [line for line in lines[1:] if not any(
        line.startswith(f"a={attr}:{pt} ") for pt in pts for attr in ("rtpmap", "rtcp-fb", "fmtp"))]
    return "\r\n".join([lines[0]] + kept)


@pytest.mark.timeout(120)
async def test_a_refused_renegotiation_then_the_correct_offer(sfu_on):
    sfu = sfu_on
    alice = MeetingClient(sfu.url, sfu.token("reneg", identity="alice", name="Alice"), fps=15, subscribe=False)
    bob = MeetingClient(sfu.url, sfu.token("reneg", identity="bob", name="Bob"), audio=False, video=False)
    try:
        await alice.join()
        await alice.publish()
        a = alice.participant_id
        await bob.join()
        await bob.negotiate()  # receives Alice's microphone and camera
        assert await wait_until(lambda: bob.frames[f"{a}-1"] >= 10, MEDIA_TIMEOUT), (bob.frames, bob.errors)
        assert sfu.health()["producers"] == 2

        # Alice adds a camera; her offer has mids 0, 1, 2 in that order
        camera = alice.pc.addTransceiver(PacedPatternTrack(fps=15), direction="sendonly")
        async with alice._lock:
            await alice.pc.setLocalDescription(await alice.pc.createOffer())
            good = alice.pc.localDescription.sdp
            assert camera.mid == "2"
            head, by_mid = sections(good)
            assert list(by_mid) == ["0", "1", "2"]
            bad = head + by_mid["0"] + by_mid["2"] + without_codec(by_mid["1"], "VP8")
            published = sum(e["event"] == "track_published" for e in bob.events)

            with pytest.raises(MeetingError, match="bad_sdp: .*cannot change codec"):
                await alice.request("offer", sdp=bad, tracks={"2": {"source": "screen"}})
            health = sfu.health()
            assert (health["producers"], health["consumers"], health["transports"]) == (2, 2, 2), health

            # the correct offer: accepted (on --datapath c it was internal_error)
            response = await alice.request("offer", sdp=good, tracks={"2": {"source": "screen"}})
            await alice.pc.setRemoteDescription(RTCSessionDescription(response["sdp"], "answer"))
        assert response["published"] == {"0": f"{a}-0", "1": f"{a}-1", "2": f"{a}-2"}
        assert sfu.health()["producers"] == 3

        # Bob is told of the new track once, subscribes (ws_client renegotiates) and decodes it
        assert await wait_until(lambda: bob.frames[f"{a}-2"] >= 10, MEDIA_TIMEOUT), (bob.frames, bob.errors)
        new = [e["track"] for e in bob.events if e["event"] == "track_published"][published:]
        assert new == [{"id": f"{a}-2", "kind": "video", "source": "screen", "muted": False}]
        assert bob.errors == [] and alice.errors == []
        # the first camera keeps flowing
        before = bob.frames[f"{a}-1"]
        assert await wait_until(lambda: bob.frames[f"{a}-1"] >= before + 10, MEDIA_TIMEOUT), bob.frames
        log = sfu.log()
        assert "already has a stream" not in log and "internal_error" not in log
    finally:
        await alice.close()
        await bob.close()
