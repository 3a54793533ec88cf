"""Headless Chromium on the meeting page's own history ("View history meetings"):
one page joins two meetings (creating both), a second page joins one of them; each
page's history lists only its own meetings and times, and only the creator's rows
have the attendance export, which downloads; every read and the export are in the
audit log (GET /api/audit)."""

from __future__ import annotations

import json
import urllib.request

import pytest

from ..conftest import SfuProcess
from .cdp import Chromium, Tab
from .test_meeting_browser import diagnose, open_meeting

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(150)]


@pytest.fixture
def dev_sfu(tmp_path, netns):
    server = SfuProcess(tmp_path, "--dev").start()
    yield server
    server.stop()


async def join(tab: Tab, sfu, room: str) -> None:
    await tab.evaluate(f"document.getElementById('room').value = {json.dumps(room)}; "
                       "document.getElementById('join-form').requestSubmit(); true")
    assert await tab.wait_for("window.meetingState.joined || window.meetingState.error", 20), \
        await diagnose(tab, sfu)
    assert await tab.evaluate("window.meetingState.error") is None, await diagnose(tab, sfu)


async def leave(tab: Tab) -> None:
    await tab.evaluate("document.getElementById('leave').click()")
    assert await tab.wait_for("!window.meetingState.joined && "
                              "!document.getElementById('join-form').hidden", 10)


async def open_history(tab: Tab) -> dict:
    await tab.evaluate("document.getElementById('history-open').click()")
    assert await tab.wait_for("['shown', 'error'].includes(window.meetingHistory.status)", 10)
    history = await tab.evaluate("window.meetingHistory")
    assert history["status"] == "shown", history
    return history


async def rows(tab: Tab) -> list[dict]:
    return await tab.evaluate("""[...document.querySelectorAll('#history-rows tr')].map((tr) => ({
        id: tr.dataset.meetingId, topic: tr.cells[0].textContent,
        times: [...tr.querySelectorAll('time')].map((t) => t.dateTime),
        duration: tr.querySelector('td.duration').textContent,
        exports: [...tr.querySelectorAll('button.export')].map((b) => b.dataset.format)}))""")


def audit_log(sfu, query: str = "") -> list[dict]:
    request = urllib.request.Request(f"{sfu.url}/api/audit{query}", headers={
        "Authorization": "Bearer " + sfu.token(None, identity="root", admin=True)})
    with urllib.request.urlopen(request, timeout=5) as r:
        return json.loads(r.read())["entries"]


async def test_history_view_lists_own_meetings_and_the_creators_export(dev_sfu, chromium):
    ivy = await open_meeting(chromium, dev_sfu, name="Ivy", camera=0, mic=0)
    # nothing joined yet: the view says how to get a history
    await ivy.evaluate("document.getElementById('history-open').click()")
    assert await ivy.wait_for("window.meetingHistory.status === 'no token'", 5)

    await join(ivy, dev_sfu, "hist-a")
    a = await ivy.evaluate("window.meetingState.meetingId")
    await leave(ivy)
    await join(ivy, dev_sfu, "hist-b")  # the same person (the page keeps its dev identity)
    b = await ivy.evaluate("window.meetingState.meetingId")
    bob = await open_meeting(chromium, dev_sfu, room="hist-b", name="Bob", camera=0, mic=0, autojoin=1)
    assert await bob.wait_for("window.meetingState.joined || window.meetingState.error", 20), \
        await diagnose(bob, dev_sfu)
    assert await bob.evaluate("window.meetingState.meetingId") == b
    await leave(bob)
    await leave(ivy)

    # Ivy created both meetings: both listed with her own times, each with the export
    history = await open_history(ivy)
    assert [m["meeting_id"] for m in history["meetings"]] == [b, a]
    shown = await rows(ivy)
    assert [r["id"] for r in shown] == [b, a]
    for row, entry in zip(shown, history["meetings"]):
        assert row["times"] == [entry["joined_at"], entry["left_at"]] and entry["left_at"], (row, entry)
        assert row["exports"] == ["csv", "json"] and entry["creator"] is True
        assert row["duration"].endswith(" s") or "min" in row["duration"], row
    section = await ivy.evaluate("document.getElementById('history').textContent")
    assert "Bob" not in section and "Bob" not in json.dumps(history["meetings"])
    ivy_identity = history["identity"]
    assert ivy_identity.startswith("dev-")

    # Bob attended hist-b only, did not create it: his own row, no export, nothing of Ivy's
    bob_history = await open_history(bob)
    bob_rows = await rows(bob)
    assert [r["id"] for r in bob_rows] == [b] and bob_rows[0]["exports"] == []
    assert "Ivy" not in await bob.evaluate("document.getElementById('history').textContent")
    assert ivy_identity not in json.dumps(bob_history)

    # the creator downloads the attendance (CSV): everyone's sessions are in it
    await ivy.evaluate(f"document.querySelector('#history-rows tr[data-meeting-id=\"{b}\"] "
                       "button.export[data-format=\"csv\"]').click()")
    assert await ivy.wait_for("window.meetingHistory.exported !== null", 10), \
        await ivy.evaluate("window.meetingHistory")
    exported = await ivy.evaluate("window.meetingHistory.exported")
    assert exported["meetingId"] == b and exported["format"] == "csv" and exported["bytes"] > 0
    names = {line.split(",")[4] for line in exported["text"].splitlines()[1:]}
    assert names == {"Ivy", "Bob"}, exported["text"]

    # the audit log has both pages' reads and the export, by identity
    entries = audit_log(dev_sfu)
    by = [(e["actor"], e["action"], e["object_id"], e["detail"]) for e in entries]
    assert (ivy_identity, "read", "*", "own") in by
    assert (ivy_identity, "export", b, "creator csv") in by
    assert sum(1 for e in entries if e["actor"] != ivy_identity and e["detail"] == "own") == 1  # Bob's read
    for tab in (ivy, bob):
        assert not [line for line in tab.console if line.startswith("exception")], tab.console
