"""Connection diagnostics: a quality level per participant, with the reason.

Every ``INTERVAL`` seconds (on the control plane's clock, sfu.clock: never on the
media path) :class:`Diagnostics` reads the engine's counters
(``MediaEngine.media_stats()``) and grades, for each watched media session:

- the **uplink**, what the SFU receives from the participant: per published track,
  the share of sequence numbers that never arrived in the interval (packets repaired
  by a retransmission count as arrived; Opus audio has no repair, so its loss is the
  link's) and the interarrival jitter (RFC 3550 A.8); the worst track counts;
- the **downlink**, what the participant's receiver reports (RTCP receiver reports,
  RFC 3550 §6.4.1): fraction lost and jitter per received track, and the round trip
  time measured from the SFU's sender reports (LSR/DLSR). Loss and jitter a track
  already had when it reached the SFU (its publisher's uplink) are taken off, and the
  reports about every track of a publisher one of whose tracks reached the SFU with
  ``UPSTREAM_LOSSY`` percent loss or more in the last ``UPSTREAM_HOLD`` seconds are
  left out: that loss (and the late, repaired packets that follow it) is the
  publisher's, shown to the publisher, not to everyone who receives its tracks.

Bitrates (kbit/s each way, from the byte counters) are reported as figures, not
graded: a muted camera or a still picture sends little on a perfect link.

Levels: ``unknown`` (no figures yet), ``good``, ``fair``, ``poor``. The thresholds
(``THRESHOLDS``), per metric, "fair from / poor from":

========  ==========  ==========
metric    fair from   poor from
========  ==========  ==========
loss      3 %         10 %
jitter    30 ms       60 ms
rtt       300 ms      600 ms
========  ==========  ==========

Against flapping: each metric is smoothed (exponential average, weight
``SMOOTHING`` for the newest interval); a level gets worse after ``WORSE_AFTER``
consecutive intervals that say so, and better only after ``BETTER_AFTER``
consecutive intervals in which every metric is below ``RECOVERY`` times the
threshold it would have to cross. The participant's level is the worse of its two
directions, its reason that direction's worst metric, as one short sentence ("your
uplink loses 8% of packets"). Nothing in a report names a person or an address:
levels, numbers and fixed sentences only.

:class:`LinkMeter` (one direction) and :func:`sample_interval` (counters -> the
figures of one interval) are pure; :class:`Diagnostics` adds the timer and tells
the owner of a session (the meeting protocol, sfu/signaling.py) when its level or
reason changes.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from .clock import Clock, Timer

logger = logging.getLogger("sfu.diagnostics")

INTERVAL = 2.0  # seconds between two gradings
SMOOTHING = 0.5  # weight of the newest interval in a metric's average
WORSE_AFTER = 2  # consecutive intervals before a level gets worse
BETTER_AFTER = 3  # consecutive intervals before it gets better
RECOVERY = 0.8  # better only below this share of the threshold
UPSTREAM_LOSSY = 2.0  # percent: reports about a track that arrives this lossy are its publisher's
UPSTREAM_HOLD = 10.0  # seconds a publisher stays "lossy" after its last lossy interval
MIN_PACKETS = 10  # a track's loss counts from this many expected packets in the interval
EMPTY_AFTER = 3  # intervals without any figure before a direction is unknown again

UNKNOWN, GOOD, FAIR, POOR = "unknown", "good", "fair", "poor"
_RANK = {UNKNOWN: -1, GOOD: 0, FAIR: 1, POOR: 2}
_LEVELS = (GOOD, FAIR, POOR)

# metric -> (fair from, poor from); loss in percent, jitter and rtt in milliseconds
THRESHOLDS: dict[str, tuple[float, float]] = {
    "loss": (3.0, 10.0),
    "jitter": (30.0, 60.0),
    "rtt": (300.0, 600.0),
}

# (direction, metric) -> the sentence shown to the participant
REASONS: dict[tuple[str, str], str] = {
    ("uplink", "loss"): "your uplink loses {:.0f}% of packets",
    ("uplink", "jitter"): "packets from you arrive with {:.0f} ms of jitter",
    ("downlink", "loss"): "your downlink loses {:.0f}% of packets",
    ("downlink", "jitter"): "packets to you arrive with {:.0f} ms of jitter",
    ("downlink", "rtt"): "the round trip to the server takes {:.0f} ms",
}

# figures of a report, per metric: the key and its rounding
_FIGURES = {"loss": ("loss_percent", 1), "jitter": ("jitter_ms", 1), "rtt": ("rtt_ms", 0)}


def grade(metric: str, value: float) -> str:
    """The level one metric's value alone gives."""
    fair, poor = THRESHOLDS[metric]
    return POOR if value >= poor else FAIR if value >= fair else GOOD


@dataclass
class Sample:
    """One direction's figures over one interval (None: not measured in it)."""

    loss: float | None = None  # percent
    jitter: float | None = None  # ms
    rtt: float | None = None  # ms
    kbps: float | None = None

    def metrics(self) -> dict[str, float]:
        return {m: v for m, v in (("loss", self.loss), ("jitter", self.jitter), ("rtt", self.rtt)) if v is not None}


class LinkMeter:
    """One direction of one participant: smoothed metrics, level with hysteresis, reason."""

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.values: dict[str, float] = {}  # smoothed, per metric
        self.kbps: float | None = None
        self.level = UNKNOWN
        self.reason: str | None = None  # the metric that sets the level (None when good/unknown)
        self._pending: str | None = None  # the level the last intervals proposed
        self._streak = 0
        self._empty = 0

    def update(self, sample: Sample) -> None:
        figures = sample.metrics()
        self.kbps = sample.kbps if sample.kbps is not None else self.kbps
        if not figures:
            self._empty += 1
            if self._empty >= EMPTY_AFTER and self.level != UNKNOWN:
                self.values.clear()
                self.level, self.reason, self._pending, self._streak = UNKNOWN, None, None, 0
            return
        self._empty = 0
        for metric, value in figures.items():
            old = self.values.get(metric)
            self.values[metric] = value if old is None else old + SMOOTHING * (value - old)
        proposed = self._worst(1.0)
        if self.level != UNKNOWN and _RANK[proposed] < _RANK[self.level]:
            # better only with a margin: graded as if each value were 1/RECOVERY larger
            proposed = self._worst(1.0 / RECOVERY)
            if _RANK[proposed] >= _RANK[self.level]:
                proposed = self.level
        if proposed == self.level:
            self._pending, self._streak = None, 0
        else:
            if proposed == self._pending:
                self._streak += 1
            else:
                self._pending, self._streak = proposed, 1
            needed = 1 if self.level == UNKNOWN else WORSE_AFTER if _RANK[proposed] > _RANK[self.level] \
                else BETTER_AFTER
            if self._streak >= needed:
                self.level, self._pending, self._streak = proposed, None, 0
        self.reason = self._reason()

    def _worst(self, scale: float) -> str:
        worst = GOOD
        for metric, value in self.values.items():
            level = grade(metric, value * scale)
            if _RANK[level] > _RANK[worst]:
                worst = level
        return worst

    def _reason(self) -> str | None:
        """The metric behind the level: the current one while it still grades at the
        level (no switching between two metrics at the same level), else the one
        furthest past its threshold."""
        if self.level in (UNKNOWN, GOOD):
            return None
        index = _LEVELS.index(self.level) - 1  # FAIR -> fair threshold, POOR -> poor threshold
        margin = 1.0 / RECOVERY
        if self.reason in self.values and _RANK[grade(self.reason, self.values[self.reason] * margin)] \
                >= _RANK[self.level]:
            return self.reason
        candidates = [(value / THRESHOLDS[m][index], m) for m, value in self.values.items()]
        return max(candidates)[1] if candidates else None

    def text(self) -> str | None:
        if self.reason is None:
            return None
        return REASONS.get((self.direction, self.reason), "").format(self.values[self.reason]) or None

    def public(self) -> dict:
        out: dict[str, Any] = {"level": self.level}
        for metric, (key, digits) in _FIGURES.items():
            if (self.direction, metric) in REASONS:
                value = self.values.get(metric)
                out[key] = round(value, digits) if value is not None else None
        out["kbps"] = round(self.kbps) if self.kbps is not None else None
        return out


class Quality:
    """A participant's two directions and what it was last told."""

    def __init__(self) -> None:
        self.uplink = LinkMeter("uplink")
        self.downlink = LinkMeter("downlink")
        self.told: tuple | None = None  # (level, reason key) of the last report sent

    def worst(self) -> LinkMeter:
        up, down = self.uplink, self.downlink
        return down if _RANK[down.level] > _RANK[up.level] else up

    @property
    def level(self) -> str:
        return self.worst().level

    def key(self) -> tuple:
        meter = self.worst()
        return (meter.level, meter.direction if meter.reason else None, meter.reason)

    def report(self) -> dict:
        meter = self.worst()
        return {"level": meter.level, "reason": meter.text(), "uplink": self.uplink.public(),
                "downlink": self.downlink.public(), "interval": INTERVAL}


# -- counters -> one interval's figures ---------------------------------------------------

class Counters:
    """The counters of the previous grading, per producer and consumer id."""

    def __init__(self) -> None:
        self.producers: dict[str, tuple[int, int, int]] = {}  # id -> (packets, expected, bytes)
        self.consumers: dict[str, tuple[int, Any]] = {}  # id -> (bytes, last report)
        self.lossy_until: dict[str, float] = {}  # publishing session id -> end of its lossy hold
        self.time: float | None = None


def sample_interval(stats: list[dict], counters: Counters, now: float) -> dict[str, tuple[Sample, Sample]]:
    """Per media session id: (uplink, downlink) figures of the interval since the last
    call (whose counters ``counters`` holds and is updated with). The first call for
    a track only sets its baseline."""
    dt = now - counters.time if counters.time is not None else None
    counters.time = now
    prev_p, prev_c = counters.producers, counters.consumers
    next_p: dict[str, tuple[int, int, int]] = {}
    next_c: dict[str, tuple[int, Any]] = {}
    upstream: dict[str, tuple[str, float | None, float]] = {}  # producer id -> (session, loss %, jitter ms)
    lossy_until = {sid: t for sid, t in counters.lossy_until.items() if t > now}
    uplinks: dict[str, Sample] = {}
    for session in stats:
        losses, jitters, kbits = [], [], 0.0
        for p in session["producers"]:
            pid = p.get("id")
            now_c = (p["packets"], p.get("expected", 0), p["bytes"])
            next_p[pid] = now_c
            old = prev_p.get(pid)
            jitter_ms = p.get("jitter", 0.0) * 1000.0
            loss = None
            if old is not None:
                received, expected = now_c[0] - old[0], now_c[1] - old[1]
                if expected >= MIN_PACKETS:
                    loss = 100.0 * max(0, expected - received) / expected
                    losses.append(loss)
                if received > 0:
                    jitters.append(jitter_ms)
                kbits += (now_c[2] - old[2]) * 8 / 1000.0
            upstream[pid] = (session["id"], loss, jitter_ms)
        if losses and max(losses) >= UPSTREAM_LOSSY:
            lossy_until[session["id"]] = now + UPSTREAM_HOLD
        uplinks[session["id"]] = Sample(loss=max(losses) if losses else None,
                                        jitter=max(jitters) if jitters else None,
                                        kbps=kbits / dt if dt and session["producers"] else None)
    out: dict[str, tuple[Sample, Sample]] = {}
    for session in stats:
        losses, jitters, rtts, kbits = [], [], [], 0.0
        for c in session["consumers"]:
            cid, report = c["id"], c.get("report")
            next_c[cid] = (c["bytes"], report)
            old = prev_c.get(cid)
            if c.get("rtt") is not None and c.get("attached"):
                rtts.append(c["rtt"] * 1000.0)
            if old is None:
                continue
            kbits += (c["bytes"] - old[0]) * 8 / 1000.0
            if report is None or report is old[1] or not c.get("attached"):
                continue  # no new receiver report in this interval
            publisher, up_loss, up_jitter = upstream.get(c.get("producer"), (None, None, 0.0))
            loss = 100.0 * report.fraction_lost / 256.0
            if publisher not in lossy_until:
                losses.append(max(0.0, loss - (up_loss or 0.0)))
                jitters.append(max(0.0, report.jitter * 1000.0 / c["clock_rate"] - up_jitter))
        down = Sample(loss=max(losses) if losses else None, jitter=max(jitters) if jitters else None,
                      rtt=statistics.median(rtts) if rtts else None,
                      kbps=kbits / dt if dt and session["consumers"] else None)
        out[session["id"]] = (uplinks[session["id"]], down)
    counters.producers, counters.consumers, counters.lossy_until = next_p, next_c, lossy_until
    return out


# -- the service --------------------------------------------------------------------------

class Diagnostics:
    """Grades the watched media sessions every ``interval`` seconds on ``clock`` and calls
    ``notify(owner, report)`` when a session's level or reason changes (the first time
    when its level is first known). The timer runs while a session is watched."""

    def __init__(self, media_stats: Callable[[], list[dict]], clock: Clock,
                 notify: Callable[[Any, dict], None], interval: float = INTERVAL) -> None:
        self._media_stats = media_stats
        self._clock = clock
        self._notify = notify
        self.interval = interval
        self._watched: dict[str, tuple[Any, Quality]] = {}  # session id -> (owner, quality)
        self._counters = Counters()
        self._timer: Timer | None = None

    def watch(self, session_id: str, owner: Any) -> None:
        if session_id not in self._watched:
            self._watched[session_id] = (owner, Quality())
        if self._timer is None:
            self._timer = self._clock.call_later(self.interval, self._run)

    def forget(self, session_id: str | None) -> None:
        self._watched.pop(session_id, None)
        if not self._watched and self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._counters = Counters()

    def report(self, session_id: str | None) -> dict | None:
        entry = self._watched.get(session_id)
        return entry[1].report() if entry is not None else None

    def watched(self) -> Iterable[str]:
        return list(self._watched)

    def _run(self) -> None:
        self._timer = None
        try:
            self.tick()
        except Exception:  # a bug costs one grading, never the timer
            logger.exception("diagnostics failed")
        if self._watched:
            self._timer = self._clock.call_later(self.interval, self._run)

    def tick(self) -> None:
        """Grade every watched session now; tell the owners whose level or reason changed."""
        samples = sample_interval(self._media_stats(), self._counters, self._clock.now())
        for session_id, (owner, quality) in list(self._watched.items()):
            up, down = samples.get(session_id, (Sample(), Sample()))
            quality.uplink.update(up)
            quality.downlink.update(down)
            key = quality.key()
            if key != quality.told and (quality.told is not None or quality.level != UNKNOWN):
                quality.told = key
                self._notify(owner, quality.report())


__all__ = ["Diagnostics", "LinkMeter", "Quality", "Sample", "THRESHOLDS", "REASONS", "INTERVAL",
           "grade", "sample_interval"]
