"""Recording requests of the meeting protocol (sfu/recording.py through sfu/signaling.py)
without sockets: who may start and stop, the notice to everyone, the recorder started only
once every page told has acknowledged it (or left, or NOTICE_WAIT passed), late joiners,
the meeting's end. A real engine that only negotiates (not started) and a real recorder
process."""

from __future__ import annotations

import asyncio

import pytest

from sfu import recording
from sfu.config import Config
from sfu.events import EndReason
from sfu.signaling import Signaling

from .conftest import new_engine
from .test_signaling import HOST, FakeMeetings, joined
from .waiting import wait_until

import av  # noqa: E402,F401 (a test dependency: the recorder needs it)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def config(tmp_path):
    return Config(data_dir=str(tmp_path))


@pytest.fixture
async def signaling(config, datapath_mode):
    meetings = FakeMeetings()
    signaling = Signaling(new_engine(config, datapath_mode), meetings, clock=lambda: 1234.5)
    yield signaling
    await signaling.recordings.shutdown()


def active(signaling):
    return next(iter(signaling.recordings.active.values()), None)


async def started(signaling) -> bool:
    return await wait_until(lambda: active(signaling) is not None and active(signaling).room_recording is not None
                            and active(signaling).room_recording.peer is not None, 15)


async def test_only_a_host_starts_and_stops(signaling):
    host = await joined(signaling, "ann", "Ann", grants=HOST)
    guest = await joined(signaling, "ben", "Ben")
    response = await guest.request("recording_start")
    assert response["code"] == "forbidden" and not response["ok"]
    response = await host.request("recording_stop")
    assert response["code"] == "not_recording"
    assert host.sent[0]["permissions"]["record"] is True and guest.sent[0]["permissions"]["record"] is False


async def test_the_recorder_waits_for_every_acknowledgement(signaling):
    host = await joined(signaling, "ann", "Ann", grants=HOST)
    guest = await joined(signaling, "ben", "Ben")
    response = await host.request("recording_start")
    assert response["ok"] and response["recording"] == "starting"
    notice = response["notice"]
    for client in (host, guest):
        [ev] = client.events("recording_changed")
        assert ev["recording"] is True and ev["source"] == "sfu" and ev["notice"] == notice
    assert (await host.request("recording_start"))["code"] == "already_recording"
    assert (await host.request("recording_ack", notice=notice))["acknowledged"] is True
    await asyncio.sleep(0.5)
    assert active(signaling).room_recording is None  # Ben has not acknowledged
    assert (await guest.request("recording_ack", notice="other"))["acknowledged"] is False
    assert (await guest.request("recording_ack", notice=notice))["acknowledged"] is True
    assert await started(signaling)
    # a late joiner is told in its join response, and its acknowledgement is accepted
    late = await joined(signaling, "cat", "Cat")
    assert late.sent[0]["recording"] is True and late.sent[0]["sfu_recording"]["notice"] == notice
    assert (await late.request("recording_ack", notice=notice))["acknowledged"] is True
    assert (await host.request("recording_stop"))["recording"] is False
    for client in (host, guest, late):
        ev = client.events("recording_changed")[-1]
        assert ev["recording"] is False and ev["reason"] == "stopped"
    assert signaling.recordings.state(host.participant.meeting_id) is None


async def test_a_participant_who_leaves_is_not_waited_for(signaling):
    host = await joined(signaling, "ann", "Ann", grants=HOST)
    guest = await joined(signaling, "ben", "Ben")
    notice = (await host.request("recording_start"))["notice"]
    await host.request("recording_ack", notice=notice)
    await guest.request("leave")
    assert await started(signaling)
    await host.request("recording_stop")


async def test_without_acknowledgements_it_starts_after_the_wait(signaling, monkeypatch):
    monkeypatch.setattr(recording, "NOTICE_WAIT", 0.3)
    host = await joined(signaling, "ann", "Ann", grants=HOST)
    await joined(signaling, "ben", "Ben")
    await host.request("recording_start")
    assert await started(signaling)
    await host.request("recording_stop")


async def test_stopped_while_waiting_records_nothing(signaling):
    host = await joined(signaling, "ann", "Ann", grants=HOST)
    await joined(signaling, "ben", "Ben")
    await host.request("recording_start")
    assert (await host.request("recording_stop"))["ok"]
    await asyncio.sleep(0.3)
    assert active(signaling) is None
    assert host.events("recording_changed")[-1]["reason"] == "stopped"


async def test_the_meeting_end_stops_it(signaling):
    host = await joined(signaling, "ann", "Ann", grants=HOST)
    guest = await joined(signaling, "ben", "Ben")
    notice = (await host.request("recording_start"))["notice"]
    for client in (host, guest):
        await client.request("recording_ack", notice=notice)
    assert await started(signaling)
    signaling.meetings.end(host.participant.meeting_id, EndReason.ENDED_BY_HOST)
    assert await wait_until(lambda: active(signaling) is None, 15)


async def test_turned_off(tmp_path, datapath_mode):
    signaling = Signaling(new_engine(Config(data_dir=str(tmp_path), no_recording=True), datapath_mode),
                          FakeMeetings(), clock=lambda: 1.0)
    host = await joined(signaling, "ann", "Ann", grants=HOST)
    response = await host.request("recording_start")
    assert response["code"] == "recording_unavailable" and "turned off" in response["error"]
    assert host.events("recording_changed") == []
