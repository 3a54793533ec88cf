"""Chat and polls of the meeting protocol (sfu/chat.py, sfu/polls.py) through the
protocol core (sfu/signaling.py) with the real meeting service and a real history
store (SQLite and PostgreSQL), a hand-moved clock; no sockets (see
tests/test_chat_polls_api.py for the same over a real WebSocket and the REST API)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from sfu.auth import Grants
from sfu.chat import clean_text, RequestRefused
from sfu.clock import ManualClock
from sfu.config import Config
from sfu.history import HistoryStore
from sfu.meetings import MeetingService
from sfu.signaling import Signaling

from .conftest import new_engine
from .test_signaling import Client

pytestmark = pytest.mark.timeout(60)
T0 = 1_800_000_000.0
ATTENDEE = Grants(publish=True, subscribe=True)
HOST = Grants(publish=True, subscribe=True, host=True)


@pytest.fixture
def clock():
    return ManualClock(wall=T0)


async def _setup(history_db, tmp_path, clock, **config):
    service = MeetingService(HistoryStore.from_config(history_db, str(tmp_path)), clock=clock)
    await service.start()
    cfg = Config(chat_burst=3, chat_per_minute=60.0, chat_max_chars=50, **config)
    return service, Signaling(new_engine(cfg, "pure"), service, clock=clock)


@pytest.fixture
async def kept(history_db, tmp_path, clock):
    service, signaling = await _setup(history_db, tmp_path, clock, keep_chat=True)
    yield signaling
    if service.started:
        await service.stop()


@pytest.fixture
async def plain(history_db, tmp_path, clock):
    service, signaling = await _setup(history_db, tmp_path, clock)
    yield signaling
    if service.started:
        await service.stop()


async def join(signaling, identity, name, grants=ATTENDEE, room="r") -> Client:
    client = Client(signaling, identity, name, room=room, grants=grants)
    response = await client.request("join")
    assert response["ok"], response
    return client


async def rows(signaling, sql, params=()):
    store = signaling.meetings.store
    return await store._run(store.backend.query, sql, params)


def leaks_identity(client: Client, *identities: str) -> bool:
    text = json.dumps(client.sent)
    return any(i in text for i in identities)


# -- chat ---------------------------------------------------------------------------------

async def test_chat_to_everyone_and_to_one(plain, clock):
    host = await join(plain, "host@example.com", "Hana", HOST)
    ann = await join(plain, "ann@example.com", "Ann")
    bob = await join(plain, "+15550001", "Bob")
    assert host.sent[0]["chat"] == {"enabled": True, "kept": False, "max_chars": 50}
    sent = await ann.request("chat", text="hello all")
    assert sent["ok"], sent
    msg = sent["message"]
    assert msg["from"] == {"id": ann.participant.id, "name": "Ann"} and msg["to"] is None
    assert msg["time"] == T0 and len(msg["message_id"]) == 16
    for other in (host, bob):
        [ev] = other.events("chat")
        assert ev == {"type": "event", "event": "chat", **msg}
    assert ann.events("chat") == []  # the sender has it in its response
    private = await bob.request("chat", text="psst", to=ann.participant.id)
    assert private["ok"] and private["message"]["to"] == {"id": ann.participant.id, "name": "Ann"}
    assert [e["text"] for e in ann.events("chat")] == ["psst"]
    assert [e["text"] for e in host.events("chat")] == ["hello all"]  # nobody else sees a private one
    for bad_to, code in (("nobody", "not_found"), (bob.participant.id, "not_found"), (7, "bad_request")):
        refused = await bob.request("chat", text="x", to=bad_to)
        assert refused["code"] == code, refused
    # the token identity (an e-mail, a phone number) never reaches anyone
    for client in (host, ann, bob):
        assert not leaks_identity(client, "host@example.com", "ann@example.com", "+15550001")
    # not kept without --keep-chat
    assert await rows(plain, "SELECT * FROM chat_messages") == []


@pytest.mark.parametrize("text, code", [
    ("", "bad_request"), ("   ", "bad_request"), (None, "bad_request"), (["x"], "bad_request"),
    ("x" * 51, "too_large"), ("nul\x00byte", "bad_request"), ("bell\x07", "bad_request"),
    ("\ud800", "bad_request"),
])
async def test_chat_refuses_bad_text(plain, text, code):
    ann = await join(plain, "ann", "Ann")
    bob = await join(plain, "bob", "Bob")
    refused = await ann.request("chat", text=text)
    assert not refused["ok"] and refused["code"] == code, refused
    assert bob.events("chat") == []
    ok = await ann.request("chat", text="x" * 50 + "")  # exactly the limit; newlines and tabs are fine
    assert ok["ok"] and (await ann.request("chat", text="a\n\tb"))["ok"]


async def test_chat_rate_limit_is_a_token_bucket(plain, clock):
    ann = await join(plain, "ann", "Ann")
    bob = await join(plain, "bob", "Bob")
    for i in range(3):  # the burst
        assert (await ann.request("chat", text=f"m{i}"))["ok"]
    refused = await ann.request("chat", text="one too many")
    assert refused["code"] == "rate_limited" and refused["retry_after"] == 1.0, refused
    assert [e["text"] for e in bob.events("chat")] == ["m0", "m1", "m2"]
    assert (await bob.request("chat", text="bob has his own bucket"))["ok"]
    second_tab = await join(plain, "ann", "Ann")  # the same person on a new connection: the same bucket
    assert (await second_tab.request("chat", text="from my other tab"))["code"] == "rate_limited"
    clock.advance(1.0)  # 60 per minute: one more
    assert (await ann.request("chat", text="again"))["ok"]
    assert (await ann.request("chat", text="and again"))["code"] == "rate_limited"
    # a refused message (too long, refused) costs no token
    clock.advance(1.0)
    assert (await ann.request("chat", text="x" * 99))["code"] == "too_large"
    assert (await ann.request("chat", text="fits"))["ok"]


async def test_hosts_turn_chat_off_and_on_for_everyone(plain):
    host = await join(plain, "h", "Hana", HOST)
    ann = await join(plain, "ann", "Ann")
    assert (await ann.request("chat_enable", enabled=False))["code"] == "forbidden"
    assert (await host.request("chat_enable", enabled="no"))["code"] == "bad_request"
    off = await host.request("chat_enable", enabled=False)
    assert off["ok"] and off["enabled"] is False
    for client in (host, ann):
        assert client.events("chat_state") == [{"type": "event", "event": "chat_state", "enabled": False,
                                                "by": {"id": host.participant.id, "name": "Hana"}}]
    refused = await ann.request("chat", text="hi")
    assert refused["code"] == "chat_disabled" and "turned chat off" in refused["error"]
    assert (await host.request("chat", text="hosts may still speak"))["ok"]
    late = await join(plain, "cat", "Cat")
    assert late.sent[0]["chat"]["enabled"] is False
    assert (await host.request("chat_enable", enabled=False))["ok"]
    assert len(ann.events("chat_state")) == 1  # no change, no event
    assert (await host.request("chat_enable", enabled=True))["ok"]
    assert [e["enabled"] for e in late.events("chat_state")] == [True]
    assert (await ann.request("chat", text="back"))["ok"]


async def test_kept_chat_is_stored_with_the_sender_and_recipient(kept):
    ann = await join(kept, "ann@example.com", "Ann")
    bob = await join(kept, "bob@example.com", "Bob")
    assert ann.sent[0]["chat"]["kept"] is True
    await ann.request("chat", text="to all")
    await bob.request("chat", text="to ann", to=ann.participant.id)
    stored = await rows(kept, "SELECT meeting_id, sender_identity, sender_name, sender_participant, "
                              "recipient_identity, recipient_name, body FROM chat_messages ORDER BY body")
    mid = ann.participant.meeting_id
    assert stored == [
        (mid, "ann@example.com", "Ann", ann.participant.id, None, None, "to all"),
        (mid, "bob@example.com", "Bob", bob.participant.id, "ann@example.com", "Ann", "to ann"),
    ]


def test_clean_text_rules():
    assert clean_text("héllo\nwörld", "text", 11) == "héllo\nwörld"
    with pytest.raises(RequestRefused) as exc:
        clean_text("x" * 12, "text", 11)
    assert exc.value.code == "too_large"


# -- polls --------------------------------------------------------------------------------

async def test_named_poll_hosts_see_names_while_open_votes_change(plain):
    host = await join(plain, "h", "Hana", HOST)
    cohost = await join(plain, "h2", "Hugo", HOST)
    ann = await join(plain, "ann", "Ann")
    bob = await join(plain, "bob", "Bob")
    refused = await ann.request("poll_create", question="q?", options=["a", "b"])
    assert refused["code"] == "forbidden"
    for bad in ({"question": "", "options": ["a", "b"]}, {"question": "q", "options": ["a"]},
                {"question": "q", "options": "ab"}, {"question": "q", "options": ["a", "b"], "multiple": 1}):
        assert (await host.request("poll_create", **bad))["code"] == "bad_request", bad
    created = await host.request("poll_create", question="Lunch?", options=["Pizza", "Sushi", "Soup"],
                                 multiple=False, anonymous=False)
    assert created["ok"], created
    poll_id = created["poll"]["poll_id"]
    for client in (cohost, ann, bob):
        [ev] = client.events("poll_opened")
        assert ev["poll"]["question"] == "Lunch?" and ev["poll"]["open"] is True
    assert (await ann.request("poll_vote", poll_id=poll_id, choices=[0]))["ok"]
    assert (await bob.request("poll_vote", poll_id=poll_id, choices=[1]))["ok"]
    for bad in ([0, 1], [], [3], ["0"], [True], None):
        assert (await bob.request("poll_vote", poll_id=poll_id, choices=bad))["code"] == "bad_request", bad
    changed = await bob.request("poll_vote", poll_id=poll_id, choices=[0])
    assert changed["ok"] and changed["changed"] is True and changed["final"] is False
    # only hosts got results, with names; attendees none while it is open
    last = cohost.events("poll_results")[-1]["results"]
    assert last["voters"] == 2 and last["options"][0] == {"option": "Pizza", "votes": 2, "voters": ["Ann", "Bob"]}
    assert last["options"][1] == {"option": "Sushi", "votes": 0, "voters": []}
    assert host.events("poll_results")[-1]["results"] == last
    assert ann.events("poll_results") == [] and bob.events("poll_results") == []
    # a late joiner sees the open poll and whether it voted; a late host the results
    late_ann = await join(plain, "ann", "Ann")
    [info] = late_ann.sent[0]["polls"]
    assert info["voted"] is True and info["choices"] == [0] and "results" not in info
    assert (await ann.request("poll_close", poll_id=poll_id))["code"] == "forbidden"
    closed = await cohost.request("poll_close", poll_id=poll_id)
    assert closed["ok"] and closed["results"]["options"][0]["votes"] == 2
    [ev] = bob.events("poll_closed")
    assert ev["results"]["options"][0] == {"option": "Pizza", "votes": 2}  # counts for all, names for hosts
    assert host.events("poll_closed")[0]["results"]["options"][0]["voters"] == ["Ann", "Bob"]
    assert (await bob.request("poll_vote", poll_id=poll_id, choices=[2]))["code"] == "poll_closed"
    assert (await host.request("poll_close", poll_id=poll_id))["code"] == "poll_closed"
    stored = await rows(plain, "SELECT voter_identity, voter_name, choices FROM poll_votes ORDER BY voter_identity")
    assert stored == [("ann", "Ann", "[0]"), ("bob", "Bob", "[0]")]
    counts = await rows(plain, "SELECT option_index, votes FROM poll_counts ORDER BY option_index")
    assert counts == [(0, 2), (1, 0), (2, 0)]


async def test_anonymous_poll_keeps_no_link_between_voter_and_choice(plain):
    host = await join(plain, "h", "Hana", HOST)
    voters = [await join(plain, f"voter{i}@example.com", f"V{i}") for i in range(3)]
    created = await host.request("poll_create", question="Secret?", options=["yes", "no", "maybe"],
                                 multiple=True, anonymous=True)
    poll_id = created["poll"]["poll_id"]
    picks = [[0], [1, 2], [0, 2]]
    for client, choice in zip(voters, picks):
        answer = await client.request("poll_vote", poll_id=poll_id, choices=choice)
        assert answer["ok"] and answer["final"] is True
    again = await voters[0].request("poll_vote", poll_id=poll_id, choices=[1])
    assert again["code"] == "already_voted"
    # memory: counts and who voted; nothing maps a voter to a choice
    poll = plain.polls.poll(host.participant.meeting_id, poll_id)
    state = dataclasses.asdict(poll)
    assert state["votes"] == {} and state["counts"] == [2, 1, 2]
    assert state["voted"] == {(f"voter{i}@example.com", f"V{i}") for i in range(3)}
    assert isinstance(poll.voted, set)  # no order of arrival either
    for value in state.values():  # no other field holds a voter or a choice list
        assert not (isinstance(value, dict) and value)
    # the hosts' live results: counts and the number of voters, no names
    results = host.events("poll_results")[-1]["results"]
    assert results == {"poll_id": poll_id, "voters": 3, "open": True, "options": [
        {"option": "yes", "votes": 2}, {"option": "no", "votes": 1}, {"option": "maybe", "votes": 2}]}
    told = json.dumps(host.events("poll_results") + host.sent[-1:])
    assert "V0" not in told and "voter0" not in told
    # the database: nothing per vote while open
    assert await rows(plain, "SELECT * FROM poll_votes") == []
    assert await rows(plain, "SELECT * FROM poll_voters") == []
    assert await rows(plain, "SELECT * FROM poll_counts") == []
    await host.request("poll_close", poll_id=poll_id)
    assert await rows(plain, "SELECT * FROM poll_votes") == []
    assert await rows(plain, "SELECT option_index, votes FROM poll_counts ORDER BY option_index") == [
        (0, 2), (1, 1), (2, 2)]
    voted = await rows(plain, "SELECT * FROM poll_voters")
    assert voted == sorted(voted) and [r[1:] for r in voted] == [(f"voter{i}@example.com", f"V{i}") for i in range(3)]


async def test_polls_limits_and_unknown_polls(plain):
    host = await join(plain, "h", "Hana", HOST)
    for i in range(10):
        assert (await host.request("poll_create", question=f"q{i}", options=["a", "b"]))["ok"]
    assert (await host.request("poll_create", question="q", options=["a", "b"]))["code"] == "too_many"
    assert (await host.request("poll_vote", poll_id="nope", choices=[0]))["code"] == "not_found"
    assert (await host.request("poll_close", poll_id=7))["code"] == "not_found"
    many = await host.request("poll_create", question="q", options=[str(i) for i in range(11)])
    assert many["code"] == "bad_request"


async def test_meeting_end_closes_open_polls_and_records_them(plain, clock):
    host = await join(plain, "h", "Hana", HOST)
    ann = await join(plain, "ann", "Ann")
    anon = (await host.request("poll_create", question="a?", options=["x", "y"], anonymous=True))["poll"]
    named = (await host.request("poll_create", question="n?", options=["x", "y"]))["poll"]
    await ann.request("poll_vote", poll_id=anon["poll_id"], choices=[1])
    await ann.request("poll_vote", poll_id=named["poll_id"], choices=[0])
    assert (await host.request("end_meeting"))["ok"]
    await plain.meetings.wait_idle()
    store = plain.meetings.store
    await store._run(lambda: None)  # the close was queued on the store's worker before this
    closed = await rows(plain, "SELECT poll_id, closed_at FROM polls ORDER BY question")
    assert [c[1] is not None for c in closed] == [True, True]
    assert await rows(plain, "SELECT votes FROM poll_counts WHERE poll_id = ? ORDER BY option_index",
                      (anon["poll_id"],)) == [(0,), (1,)]
    assert plain.polls.poll(host.participant.meeting_id, anon["poll_id"]) is None  # memory freed


async def test_purge_and_erasure_reach_chat_and_polls(kept, clock):
    host = await join(kept, "h@example.com", "Hana", HOST)
    ann = await join(kept, "ann@example.com", "Ann")
    await ann.request("chat", text="my secret")
    await host.request("chat", text="for ann", to=ann.participant.id)
    named = (await host.request("poll_create", question="n?", options=["x", "y"]))["poll"]
    anon = (await host.request("poll_create", question="a?", options=["x", "y"], anonymous=True))["poll"]
    await ann.request("poll_vote", poll_id=named["poll_id"], choices=[1])
    await ann.request("poll_vote", poll_id=anon["poll_id"], choices=[1])
    await host.request("poll_close", poll_id=anon["poll_id"])
    store = kept.meetings.store
    await store.erase_identity("ann@example.com")
    dump = json.dumps([await rows(kept, f"SELECT * FROM {t}")
                       for t in ("chat_messages", "polls", "poll_votes", "poll_voters", "poll_counts")])
    assert "ann@example.com" not in dump and '"Ann"' not in dump and "my secret" not in dump
    assert "for ann" in dump and "erased-" in dump
    await host.request("end_meeting")
    await kept.meetings.wait_idle()
    await store._run(lambda: None)
    assert await store.purge(T0 + 1) == 1
    for table in ("chat_messages", "polls", "poll_votes", "poll_voters", "poll_counts"):
        assert await rows(kept, f"SELECT * FROM {table}") == [], table


async def test_meeting_end_forgets_chat_state(plain):
    host = await join(plain, "h", "Hana", HOST)
    await host.request("chat_enable", enabled=False)
    mid = host.participant.meeting_id
    assert plain.chat.join_info(mid)["enabled"] is False
    await plain.meetings.end_meeting(mid, host.claims)  # the real service tells its listeners
    assert plain.chat.join_info(mid)["enabled"] is True


def test_chat_flags_and_environment():
    import argparse

    from sfu.config import add_serve_arguments, from_args

    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    defaults = from_args(parser.parse_args([]), {})
    assert (defaults.keep_chat, defaults.chat_max_chars, defaults.chat_burst, defaults.chat_per_minute) == \
        (False, 2000, 10, 30.0)
    cfg = from_args(parser.parse_args(["--chat-max-chars", "500"]),
                    {"SFU_KEEP_CHAT": "1", "SFU_CHAT_PER_MINUTE": "6", "SFU_CHAT_MAX_CHARS": "9"})
    assert (cfg.keep_chat, cfg.chat_max_chars, cfg.chat_per_minute) == (True, 500, 6.0)
    assert from_args(parser.parse_args(["--keep-chat"]), {}).keep_chat is True


async def test_a_server_stop_records_the_open_anonymous_polls(plain, history_db, tmp_path):
    host = await join(plain, "h", "Hana", HOST)
    ann = await join(plain, "ann", "Ann")
    anon = (await host.request("poll_create", question="a?", options=["x", "y"], anonymous=True))["poll"]
    await ann.request("poll_vote", poll_id=anon["poll_id"], choices=[1])
    await plain.meetings.stop()  # ends the meeting, then closes the store: the polls' write runs first
    store = HistoryStore.from_config(history_db, str(tmp_path))
    await store.open()
    try:
        counts = await store._run(store.backend.query, "SELECT option_index, votes FROM poll_counts "
                                  "WHERE poll_id = ? ORDER BY option_index", (anon["poll_id"],))
        voters = await store._run(store.backend.query, "SELECT voter_identity FROM poll_voters", ())
        closed = await store._run(store.backend.query, "SELECT closed_at FROM polls", ())
    finally:
        await store.close()
    assert counts == [(0, 0), (1, 1)] and voters == [("ann",)] and closed[0][0] is not None


async def test_garbage_in_chat_and_poll_requests_gets_an_error_code_never_an_exception(plain):
    import random

    rng = random.Random(11)
    host = await join(plain, "h", "Hana", HOST)
    ann = await join(plain, "ann", "Ann")
    poll_id = (await host.request("poll_create", question="q", options=["a", "b"], multiple=True))["poll"]["poll_id"]
    values = [None, True, False, 0, -1, 1, 2**70, 1.5, "", "x", "\x00", "\ud800", [], {}, [0], [0, 0], [1, 0],
              ["a", "b"], [{}], [[1]], {"0": 1}, poll_id, ann.participant.id, "x" * 5000]
    fields = ["text", "to", "enabled", "question", "options", "multiple", "anonymous", "poll_id", "choices"]
    for _ in range(600):
        message = {k: rng.choice(values) for k in rng.sample(fields, rng.randint(0, len(fields)))}
        message["type"] = rng.choice(["chat", "chat_enable", "poll_create", "poll_vote", "poll_close"])
        who = rng.choice([host, ann])
        response = await plain.handle(who.participant, {"id": 1, **message})
        assert response["type"] == "response" and isinstance(response["ok"], bool)
        if not response["ok"]:
            assert response["code"] != "internal_error", (message, response)
