"""The close reasons: what each audience is told stays what it was when four tables
translated the engine's strings (metrics labels, history end reasons, media_closed)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sfu.events import CloseReason, SessionClosed, TrackUnpublished
from sfu.history import END_REASONS

#  value                  sfu_session_leaves reason  history / participant_left  media_closed (docs/protocol.md)
EXPECTED = [
    ("closed by client",    "client",          "left",           "closed by client"),
    ("dtls closed",         "dtls_closed",     "left",           "closed by client"),
    ("ice consent timeout", "consent_timeout", "timed out",      "timed out"),
    ("dtls failed",         "dtls_failed",     "timed out",      "dtls failed"),
    ("server stopped",      "server_stopped",  "server stopped", "server stopped"),
    ("internal error",      "error",           "server stopped", "internal error"),
    ("kicked",              "other",           "kicked",         "kicked"),
    ("participant left",    "other",           "left",           "participant left"),
    ("unpublished",         "other",           "left",           "unpublished"),
]


@pytest.mark.parametrize("value, label, end_reason, told", EXPECTED)
def test_each_reason_says_what_it_said_before(value, label, end_reason, told):
    reason = CloseReason(value)
    assert (reason.label, reason.end_reason, reason.told) == (label, end_reason, told)
    assert end_reason in END_REASONS  # the history store accepts it


def test_every_reason_is_pinned_and_reads_as_its_value():
    assert [r.value for r in CloseReason] == [row[0] for row in EXPECTED]
    assert str(CloseReason.DTLS_FAILED) == "dtls failed" and f"{CloseReason.KICKED}" == "kicked"
    assert json.dumps({"reason": CloseReason.CONSENT_TIMEOUT}) == '{"reason": "ice consent timeout"}'
    with pytest.raises(ValueError):
        CloseReason("something new")


def test_events_are_frozen_values():
    ev = SessionClosed("r", "s", CloseReason.CLIENT)
    assert ev == SessionClosed("r", "s", CloseReason.CLIENT)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ev.reason = CloseReason.KICKED  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(TrackUnpublished)] == [
        "room", "session", "kind", "producer", "mid", "reason"]
