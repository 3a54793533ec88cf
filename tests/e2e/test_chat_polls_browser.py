"""Headless Chromium on the meeting page: chat between two pages (to everyone, to
one, a host turning chat off and on, an error shown), and a named and an
anonymous poll with the host's view (results with names / counts only) and the
participants' (vote, change a named vote, results once closed). Pages join
without camera and microphone: chat and polls need only the WebSocket."""

from __future__ import annotations

import json
import urllib.parse

import pytest

from ..conftest import SfuProcess
from .cdp import Chromium, Tab

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.fixture
def chat_sfu(tmp_path, netns):
    server = SfuProcess(tmp_path, "--keep-chat").start()
    yield server
    server.stop()


async def page(browser: Chromium, sfu, room: str, name: str, host: bool = False) -> Tab:
    token = sfu.token(room, identity=f"{name.lower()}@example.com", name=name, host=host)
    query = urllib.parse.urlencode({"room": room, "name": name, "token": token, "autojoin": 1,
                                    "camera": 0, "mic": 0})
    tab = await browser.new_tab(f"{sfu.url}/?{query}")
    assert await tab.wait_for("window.meetingState && (window.meetingState.joined || window.meetingState.error)",
                              15), tab.console
    assert await tab.evaluate("window.meetingState.error") is None, await tab.evaluate("window.meetingState")
    return tab


def js(value) -> str:
    return json.dumps(value)


async def say(tab: Tab, text: str, to_name: str | None = None) -> None:
    pick = ("const s = document.getElementById('chat-to');"
            f"s.value = [...s.options].find((o) => o.textContent === {js(to_name)}).value;") if to_name else \
        "document.getElementById('chat-to').value = '';"
    await tab.evaluate(f"(() => {{ {pick} document.getElementById('chat-text').value = {js(text)};"
                       "document.getElementById('chat-send').click(); })()")


async def chat_lines(tab: Tab) -> list[str]:
    return await tab.evaluate("[...document.querySelectorAll('#chat-log li')].map((li) => "
                              "li.querySelector('.who').textContent.split(' · ')[0] + ': ' + "
                              "li.querySelector('.text').textContent)")


async def test_chat_between_two_pages(chat_sfu, chromium):
    alice = await page(chromium, chat_sfu, "chat-room", "Alice", host=True)
    bob = await page(chromium, chat_sfu, "chat-room", "Bob")
    assert await alice.wait_for("document.getElementById('chat-to').options.length === 2", 5)
    assert await bob.evaluate("document.getElementById('chat').hidden") is False
    assert "kept with the meeting" in await bob.evaluate("document.getElementById('chat-status').textContent")
    assert await bob.evaluate("document.getElementById('chat-toggle').hidden") is True
    assert await alice.evaluate("document.getElementById('chat-toggle').hidden") is False

    await say(bob, "Hello <b>everyone</b>")
    assert await alice.wait_for("document.querySelectorAll('#chat-log li').length === 1", 5)
    assert await chat_lines(alice) == ["Bob: Hello <b>everyone</b>"]  # text, never HTML
    assert await alice.evaluate("document.querySelector('#chat-log b')") is None
    assert await bob.wait_for("document.querySelectorAll('#chat-log li').length === 1", 5)
    assert await chat_lines(bob) == ["You: Hello <b>everyone</b>"]

    await say(alice, "just for you, Bob", to_name="Bob")
    assert await bob.wait_for("document.querySelectorAll('#chat-log li').length === 2", 5)
    assert (await chat_lines(bob))[1] == "Alice to you: just for you, Bob"
    assert await bob.evaluate("document.querySelectorAll('#chat-log li.private').length") == 1
    state = await bob.evaluate("window.meetingChatState")
    assert state["messages"][1]["from"]["name"] == "Alice" and "@example.com" not in json.dumps(state)

    # the host turns chat off: Bob's page shows it and cannot send; back on, it can
    await alice.evaluate("document.getElementById('chat-toggle').click()")
    assert await bob.wait_for("document.getElementById('chat').dataset.enabled === 'false'", 5)
    assert "turned chat off" in await bob.evaluate("document.getElementById('chat-status').textContent")
    assert await bob.evaluate("document.getElementById('chat-text').disabled") is True
    assert await alice.evaluate("document.getElementById('chat-toggle').textContent") == "Turn chat on"
    await alice.evaluate("document.getElementById('chat-toggle').click()")
    assert await bob.wait_for("document.getElementById('chat').dataset.enabled === 'true'", 5)
    assert await bob.evaluate("document.getElementById('chat-text').disabled") is False

    # a refused message shows the server's error and reaches nobody
    await say(bob, "x" * 2001)
    assert await bob.wait_for("document.getElementById('chat-error').textContent.length > 0", 5)
    assert "2000 characters" in await bob.evaluate("document.getElementById('chat-error').textContent")
    assert len(await chat_lines(alice)) == 2
    for tab in (alice, bob):
        assert not [line for line in tab.console if line.startswith("exception")], tab.console


async def poll_text(tab: Tab, question: str) -> str:
    return await tab.evaluate(
        f"(() => {{ const b = [...document.querySelectorAll('#poll-list fieldset')].find((f) => "
        f"f.querySelector('legend').textContent === {js(question)}); return b ? b.innerText : ''; }})()")


async def vote(tab: Tab, question: str, options: list[str]) -> None:
    await tab.evaluate(
        f"(() => {{ const b = [...document.querySelectorAll('#poll-list fieldset')].find((f) => "
        f"f.querySelector('legend').textContent === {js(question)});"
        f"for (const l of b.querySelectorAll('.choices label')) {{"
        f"  const i = l.querySelector('input'); i.checked = {js(options)}.includes(l.textContent.trim()); }}"
        "b.querySelector('button.vote').click(); })()")


async def open_poll(tab: Tab, question: str, options: list[str], anonymous: bool) -> None:
    await tab.evaluate(
        f"(() => {{ document.getElementById('poll-question').value = {js(question)};"
        f"document.getElementById('poll-options').value = {js(chr(10).join(options))};"
        f"document.getElementById('poll-anonymous').checked = {js(anonymous)};"
        "document.getElementById('poll-create').click(); })()")


def voted(question: str, n: int) -> str:
    return (f"Object.values(window.meetingChatState.polls).some((e) => e.poll.question === {js(question)}"
            f" && e.results && e.results.voters === {n})")


async def test_named_and_anonymous_polls_with_the_hosts_view(chat_sfu, chromium):
    host = await page(chromium, chat_sfu, "poll-room", "Hana", host=True)
    ann = await page(chromium, chat_sfu, "poll-room", "Ann")
    ben = await page(chromium, chat_sfu, "poll-room", "Ben")
    assert await ann.evaluate("document.getElementById('poll-form').hidden") is True
    assert await host.evaluate("document.getElementById('poll-form').hidden") is False

    # a named poll: hosts see who chose what while it is open; voters may change their vote
    await open_poll(host, "Lunch?", ["Pizza", "Sushi"], anonymous=False)
    for tab in (ann, ben):
        assert await tab.wait_for("document.querySelectorAll('#poll-list fieldset').length === 1", 5)
    await vote(ann, "Lunch?", ["Sushi"])
    await vote(ben, "Lunch?", ["Pizza"])
    assert await host.wait_for(voted("Lunch?", 2), 5)
    assert await ann.wait_for("document.querySelector('#poll-list button.vote').textContent === 'Change vote'", 5)
    await vote(ann, "Lunch?", ["Pizza"])
    assert await host.wait_for(
        "document.querySelector('#poll-list fieldset').innerText.includes('Pizza: 2 (Ann, Ben)')", 5), \
        await poll_text(host, "Lunch?")
    assert "Sushi: 0" in await poll_text(host, "Lunch?")
    assert "Pizza: 2" not in await poll_text(ann, "Lunch?")  # attendees see no results while open
    await host.evaluate("document.querySelector('#poll-list button.close').click()")
    assert await ann.wait_for(
        "document.querySelector('#poll-list fieldset').innerText.includes('Pizza: 2')", 5)
    text = await poll_text(ann, "Lunch?")
    assert "Ann, Ben" not in text and "closed" in text  # counts for all, names for hosts only

    # an anonymous poll: counts only, and a vote is final
    await open_poll(host, "Happy?", ["Yes", "No"], anonymous=True)
    for tab in (ann, ben):
        assert await tab.wait_for("document.querySelectorAll('#poll-list fieldset').length === 2", 5)
    assert "Anonymous" in await poll_text(ann, "Happy?")
    await vote(ann, "Happy?", ["Yes"])
    await vote(ben, "Happy?", ["No"])
    assert await host.wait_for(voted("Happy?", 2), 5)
    hosts_view = await poll_text(host, "Happy?")
    assert "Yes: 1" in hosts_view and "No: 1" in hosts_view and "Ann" not in hosts_view and "Ben" not in hosts_view
    assert await ann.wait_for(
        "(() => { const b = document.querySelector('#poll-list fieldset');"
        " return b.querySelector('button.vote').disabled && b.querySelector('input').disabled; })()", 5)
    results = await host.evaluate(
        "Object.values(window.meetingChatState.polls).find((e) => e.poll.anonymous).results")
    assert all("voters" not in option for option in results["options"]), results
    await host.evaluate("document.querySelector('#poll-list fieldset button.close').click()")
    assert await ben.wait_for(
        "document.querySelector('#poll-list fieldset').innerText.includes('2 voted')", 5)
    for tab in (host, ann, ben):
        assert not [line for line in tab.console if line.startswith("exception")], tab.console
