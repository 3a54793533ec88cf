"""Connection diagnostics (sfu/diagnostics.py): the thresholds, the hysteresis, the
reason sentences, the figures of one interval from the engine's counters, and the
service on a ManualClock."""

from __future__ import annotations

import json

import pytest

from sfu import diagnostics as d
from sfu.clock import ManualClock
from sfu.diagnostics import (BETTER_AFTER, FAIR, GOOD, POOR, UNKNOWN, WORSE_AFTER, Counters, Diagnostics,
                             LinkMeter, Sample, grade, sample_interval)
from sfu.log import redact
from sfu.rtcp import ReportBlock


@pytest.mark.parametrize("metric, value, level", [
    ("loss", 0.0, GOOD), ("loss", 2.9, GOOD), ("loss", 3.0, FAIR), ("loss", 9.9, FAIR), ("loss", 10.0, POOR),
    ("jitter", 29.0, GOOD), ("jitter", 30.0, FAIR), ("jitter", 60.0, POOR),
    ("rtt", 299.0, GOOD), ("rtt", 300.0, FAIR), ("rtt", 599.0, FAIR), ("rtt", 600.0, POOR),
])
def test_thresholds(metric, value, level):
    assert grade(metric, value) == level


def feed(meter: LinkMeter, n: int, **figures) -> list[str]:
    levels = []
    for _ in range(n):
        meter.update(Sample(**figures))
        levels.append(meter.level)
    return levels


def test_first_figures_set_the_level_at_once_then_worse_after_two_better_after_three():
    up = LinkMeter("uplink")
    assert up.level == UNKNOWN and up.text() is None
    assert feed(up, 1, loss=0.5, jitter=5.0) == [GOOD]
    # 20 % loss: the average passes 10 % at once, the level follows after WORSE_AFTER intervals
    assert feed(up, WORSE_AFTER, loss=20.0) == [GOOD] * (WORSE_AFTER - 1) + [POOR]
    assert up.text() == f"your uplink loses {up.values['loss']:.0f}% of packets"
    # a clean link again: better only after BETTER_AFTER intervals under the margin
    levels = feed(up, 8, loss=0.0)
    assert levels[-1] == GOOD and POOR in levels[:BETTER_AFTER]
    assert up.text() is None and up.reason is None


def test_no_flapping_around_a_threshold():
    """Loss alternating just above and below 3 %: no change either way."""
    meter = LinkMeter("downlink")
    feed(meter, 1, loss=0.0)
    levels = []
    for i in range(40):
        meter.update(Sample(loss=3.6 if i % 2 else 2.6))
        levels.append(meter.level)
    assert set(levels) == {GOOD}, levels
    feed(meter, 3, loss=5.0)
    assert meter.level == FAIR
    levels = []
    for i in range(40):
        meter.update(Sample(loss=3.6 if i % 2 else 2.6))
        levels.append(meter.level)
    assert set(levels) == {FAIR}, levels
    # one good interval is not enough to come back, nor are values just under the threshold
    feed(meter, 5, loss=2.7)
    assert meter.level == FAIR
    feed(meter, 8, loss=0.5)
    assert meter.level == GOOD


def test_a_single_bad_interval_does_not_change_the_level():
    meter = LinkMeter("uplink")
    feed(meter, 3, loss=0.0)
    meter.update(Sample(loss=30.0))
    assert meter.level == GOOD
    feed(meter, 1, loss=0.0)
    feed(meter, 5, loss=0.0)
    assert meter.level == GOOD


@pytest.mark.parametrize("direction, figures, text", [
    ("uplink", {"loss": 8.0}, "your uplink loses 8% of packets"),
    ("uplink", {"jitter": 45.0}, "packets from you arrive with 45 ms of jitter"),
    ("downlink", {"loss": 12.4}, "your downlink loses 12% of packets"),
    ("downlink", {"jitter": 70.0}, "packets to you arrive with 70 ms of jitter"),
    ("downlink", {"rtt": 420.0}, "the round trip to the server takes 420 ms"),
])
def test_reason_sentences(direction, figures, text):
    meter = LinkMeter(direction)
    feed(meter, 1, **figures)
    assert meter.level in (FAIR, POOR) and meter.text() == text


def test_uplink_has_no_rtt_reason_and_the_reason_sticks_to_one_metric():
    meter = LinkMeter("downlink")
    feed(meter, 1, loss=5.0, jitter=35.0)
    assert meter.level == FAIR and meter.reason == "loss"  # 5/3 past its threshold, jitter 35/30
    feed(meter, 4, loss=4.0, jitter=45.0)  # jitter now further past: the reason stays loss
    assert meter.reason == "loss"
    feed(meter, 6, loss=0.0, jitter=45.0)
    assert meter.level == FAIR and meter.reason == "jitter"
    assert "rtt_ms" not in LinkMeter("uplink").public() and "rtt_ms" in meter.public()


def test_no_figures_for_a_while_is_unknown_again():
    meter = LinkMeter("uplink")
    feed(meter, 3, loss=20.0)
    assert meter.level == POOR
    feed(meter, d.EMPTY_AFTER - 1)
    assert meter.level == POOR
    feed(meter, 1)
    assert meter.level == UNKNOWN and meter.public() == {"level": UNKNOWN, "loss_percent": None,
                                                         "jitter_ms": None, "kbps": meter.public()["kbps"]}


# -- counters -> figures --------------------------------------------------------------------

def producer(pid, packets, expected, size=0, jitter=0.0):
    return {"id": pid, "kind": "audio", "packets": packets, "expected": expected, "bytes": size, "jitter": jitter,
            "first_packet_time": 0.0}


def consumer(cid, producer_id, size=0, report=None, rtt=None, clock_rate=48000):
    return {"id": cid, "kind": "audio", "attached": producer_id is not None, "packets": 0, "bytes": size,
            "retransmissions": 0, "first_packet_time": 0.0, "report": report, "clock_rate": clock_rate,
            "rtt": rtt, "producer": producer_id}


def rr(fraction_percent, jitter_ms=0.0, clock_rate=48000):
    return ReportBlock(ssrc=1, fraction_lost=round(fraction_percent * 256 / 100), packets_lost=0,
                       highest_sequence=0, jitter=int(jitter_ms * clock_rate / 1000), lsr=0, dlsr=0)


def session(sid, producers=(), consumers=()):
    return {"id": sid, "role": "meeting", "created": 0.0, "producers": list(producers), "consumers": list(consumers)}


def test_interval_figures_from_counters():
    counters = Counters()
    first = [session("A", [producer("A:0", 100, 100, 10_000, 0.004)]),
             session("B", [producer("B:0", 100, 100)], [consumer("B:1", "A:0", 5_000, rr(0.0), rtt=0.05)])]
    out = sample_interval(first, counters, 10.0)
    assert out["A"][0].loss is None and out["A"][0].kbps is None  # the baseline only
    # 2 s later: A's uplink lost 10 of 100, sent 25 kB; B reports 12 % on A's track
    second = [session("A", [producer("A:0", 190, 200, 35_000, 0.004)]),
              session("B", [producer("B:0", 200, 200)],
                      [consumer("B:1", "A:0", 30_000, rr(12.0, 20.0), rtt=0.05)])]
    out = sample_interval(second, counters, 12.0)
    up_a, down_a = out["A"]
    assert up_a.loss == pytest.approx(10.0) and up_a.jitter == pytest.approx(4.0) and up_a.kbps == pytest.approx(100.0)
    assert down_a.loss is None and down_a.kbps is None  # A receives nothing
    up_b, down_b = out["B"]
    assert up_b.loss == 0.0
    # the 12 % B reports on A's track is A's uplink loss (10 % >= UPSTREAM_LOSSY): left out
    assert down_b.loss is None and down_b.rtt == pytest.approx(50.0) and down_b.kbps == pytest.approx(100.0)
    # the same report object again: no new report, no figure
    third = [session("A", [producer("A:0", 290, 300)]),
             session("B", [], [consumer("B:1", "A:0", 30_000, second[1]["consumers"][0]["report"], rtt=0.05)])]
    assert sample_interval(third, counters, 14.0)["B"][1].loss is None
    # A's track clean again, but A was lossy less than UPSTREAM_HOLD ago: B's reports on
    # it (late repaired packets) are still left out
    fourth = [session("A", [producer("A:0", 389, 390)]),
              session("B", [], [consumer("B:1", "A:0", 30_000, rr(7.0, 12.0), rtt=0.05)])]
    assert sample_interval(fourth, counters, 12.0 + d.UPSTREAM_HOLD - 0.5)["B"][1].loss is None
    # past the hold: B reports 7 %, 1 % of it A's: 6 % is B's downlink; jitter minus A's
    fifth = [session("A", [producer("A:0", 488, 490, 0, 0.002)]),
             session("B", [], [consumer("B:1", "A:0", 30_000, rr(7.0, 12.0), rtt=0.05)])]
    down_b = sample_interval(fifth, counters, 12.0 + d.UPSTREAM_HOLD + 1.5)["B"][1]
    assert down_b.loss == pytest.approx(7.03 - 1.0, abs=0.1) and down_b.jitter == pytest.approx(10.0, abs=0.1)


def test_too_few_packets_give_no_loss_figure():
    counters = Counters()
    sample_interval([session("A", [producer("A:0", 10, 10)])], counters, 0.0)
    up = sample_interval([session("A", [producer("A:0", 13, 15)])], counters, 2.0)["A"][0]
    assert up.loss is None and up.jitter is not None


# -- the service on a ManualClock ------------------------------------------------------------

class Stats:
    """The engine's media_stats() as data the test writes: A publishes one track."""

    def __init__(self) -> None:
        self.received = self.expected = 0

    def advance(self, packets: int, loss_percent: float) -> None:
        self.expected += packets
        self.received += round(packets * (1 - loss_percent / 100))

    def __call__(self) -> list[dict]:
        return [session("A", [producer("A:0", self.received, self.expected, self.received * 100)]),
                session("B", [producer("B:0", self.expected, self.expected)])]


def test_service_tells_each_owner_on_change_only():
    clock, stats, told = ManualClock(), Stats(), []
    diag = Diagnostics(stats, clock, lambda owner, report: told.append((owner, report)))
    diag.watch("A", "alice")
    diag.watch("B", "bob")
    assert clock.pending() == [d.INTERVAL]
    for loss in [0.0] * 3:
        stats.advance(100, loss)
        clock.advance(d.INTERVAL)
    # each learns its level once, when it is first known
    assert [(o, r["level"]) for o, r in told] == [("alice", GOOD), ("bob", GOOD)]
    told.clear()
    for _ in range(6):
        stats.advance(100, 20.0)
        clock.advance(d.INTERVAL)
    assert [o for o, _ in told] == ["alice"], told
    [(_, report)] = told
    assert report["level"] == POOR and report["reason"].startswith("your uplink loses ")
    assert report["uplink"]["level"] == POOR and report["downlink"]["level"] == UNKNOWN
    assert diag.report("B")["level"] == GOOD and diag.report("X") is None
    # nothing in it names a person or an address (the log masking finds nothing to mask)
    text = json.dumps(report)
    assert redact(text) == text and "alice" not in text
    # forgetting both stops the timer
    diag.forget("A")
    diag.forget("B")
    assert clock.pending() == []


def test_a_failing_stats_source_costs_one_grading_not_the_timer():
    clock, calls = ManualClock(), []

    def stats():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return []

    diag = Diagnostics(stats, clock, lambda owner, report: None)
    diag.watch("A", "alice")
    clock.advance(d.INTERVAL * 2)
    assert len(calls) == 2 and clock.pending()


def test_reports_on_any_track_of_a_lossy_publisher_are_left_out():
    """A's audio loses 20 % on its way in, its video (repaired by retransmissions) nothing:
    B's report of loss on A's video is A's late repaired packets, not B's downlink."""
    counters = Counters()

    def stats(n, report):
        return [session("A", [producer("A:0", n * 80 // 100, n), producer("A:1", 2 * n, 2 * n)]),
                session("B", [], [consumer("B:2", "A:1", n, report, clock_rate=90000)])]

    sample_interval(stats(100, None), counters, 0.0)
    down = sample_interval(stats(200, rr(12.0, clock_rate=90000)), counters, 2.0)["B"][1]
    assert down.loss is None and down.jitter is None
    assert sample_interval(stats(300, rr(12.0)), counters, 4.0)["A"][0].loss == pytest.approx(20.0)
