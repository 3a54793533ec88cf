"""Fuzz target: SDP offers (sfu/sdp.py ``parse_sdp``, ``validate_offer``) and the
answer the engine builds for them (``MediaEngine.create_session``, in-process,
no socket), with a line-aware mutator (tests/fuzz/harness.py ``line_mutator``)
seeded with the real offers of tests/fixtures/sdp.

Input: the offer's bytes (UTF-8); its length picks the role (publish,
subscribe, meeting). A publisher from a real Chromium offer stays in the
room so that viewers have something to receive.

Property: a bad offer raises SdpError (or a refusal by a limit,
sfu.limits.LimitExceeded), nothing else; an accepted offer gets an answer
that parses again with ``parse_sdp``; closing the session leaves the engine
with only the resident publisher (no transport, room or track left behind).
"""

from __future__ import annotations

import sys
from pathlib import Path

from harness import ROOT, fuzz_imports, line_mutator, run

with fuzz_imports():
    from sfu import sdp
    from sfu.config import Config
    from sfu.engine import MediaEngine

try:
    from sfu.limits import LimitExceeded
except ImportError:  # before the limits of issue 9
    class LimitExceeded(Exception):
        pass

FIXTURES = ROOT / "tests" / "fixtures" / "sdp"
ROLES = ("publish", "subscribe", "meeting")
engine = MediaEngine(Config(datapath="pure", consent_timeout=1e9))  # the resident never sends STUN
RESIDENT = engine.create_session("room", "publish", (FIXTURES / "chromium_publish.sdp").read_text()).id
DICTIONARY = sorted({line for path in Path(FIXTURES).glob("*.sdp") for line in path.read_bytes().split(b"\r\n")
                     if line})


def one_input(data: bytes) -> None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:  # the HTTP handlers refuse it (400); the parser still gets a look
        text = data.decode("utf-8", "replace")
    try:
        offer = sdp.parse_sdp(text)
    except sdp.SdpError:
        offer = None
    if offer is not None:
        for want in ("publish", "subscribe"):
            try:
                sdp.validate_offer(offer, want)
            except sdp.SdpError:
                pass
    role = ROLES[len(data) % 3]
    try:
        info = engine.create_session("room", role, text, {} if role == "meeting" else None)
    except (sdp.SdpError, LimitExceeded):
        assert set(engine.transports) == {RESIDENT}, \
            f"a refused offer left sessions behind: {[(t.role, t.state) for t in engine.transports.values()]}"
        return
    assert offer is not None, "create_session accepted what parse_sdp refuses"
    try:
        answer = sdp.parse_sdp(info.answer)
    finally:
        engine.close_session(info.id)
        engine.tick(engine.now())  # as the running engine does every 20 ms: its timer heap lets go
    assert answer.media, "an answer without media"
    assert len(answer.media) == len(offer.media), (len(answer.media), len(offer.media))


def bounded() -> None:
    assert set(engine.transports) == {RESIDENT}, len(engine.transports)
    assert list(engine.rooms) == ["room"], list(engine.rooms)
    room = engine.rooms["room"]
    tracks = getattr(room, "producers", None)
    if tracks is not None:
        assert len(tracks) <= 2, len(tracks)
    assert not getattr(room, "consumers", ()), len(room.consumers)


if __name__ == "__main__":
    run(one_input, bounded=bounded, custom_mutator=line_mutator(DICTIONARY))
    sys.exit(0)
