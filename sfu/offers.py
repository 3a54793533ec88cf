"""Deciding an offer, before anything is committed (sans-I/O).

The checks of what an offer asks for (``validate``, ``planned_tracks``,
``check_ssrcs``) and the :class:`Negotiator`, which turns an offer and the
session's state into a :class:`Plan` (the answer sections, the tracks to add,
keep, rebind) without side effects. The media engine commits a plan only when
the whole offer is accepted (sfu.engine: create_session, update_session), through
the router (sfu.router): a refused offer changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from . import sdp
from .tracks import Consumer, Producer

if TYPE_CHECKING:
    from .router import Router


def validate(offer: sdp.SessionDescription, role: str, creating: bool) -> None:
    """WHIP/WHEP offers as sdp.validate_offer; a meeting offer by what it sends or
    receives, with a mid on every section (subscriptions are keyed by mid)."""
    if role != "meeting":
        sdp.validate_offer(offer, role)
        return
    if any(m.mid is None for m in offer.media):
        raise sdp.SdpError("a meeting offer needs a=mid on every section")
    active = [m for m in offer.media if not m.rejected and m.kind in ("audio", "video")]
    if any(m.direction in ("sendonly", "sendrecv") for m in active):
        sdp.validate_offer(offer, "publish")
    elif any(m.direction == "recvonly" for m in active):
        sdp.validate_offer(offer, "subscribe")
    elif creating:
        raise sdp.SdpError("offer has no audio or video section to send or receive")


def planned_tracks(offer: sdp.SessionDescription, role: str) -> tuple[int, int]:
    """(published, received): the most tracks an offer can make (one per usable
    audio/video section, by its direction), counted before anything is built."""
    published = received = 0
    for media in offer.media:
        if media.rejected or media.kind not in ("audio", "video"):
            continue
        sends = media.direction in ("sendonly", "sendrecv")
        if role == "publish":
            published += sends
        elif role == "subscribe":
            received += media.direction in ("recvonly", "sendrecv")
        elif sends:
            published += 1
        elif media.direction == "recvonly":
            received += 1
    return published, received


def check_ssrcs(new: list[Producer], kept) -> None:
    """SdpError when a new published section announces an SSRC that another one sends
    too (one SSRC is one source on the bundled transport, RFC 3550 §8):
    checked while deciding, so that the commit cannot fail half-way on it."""
    taken = {p.ssrc: p for p in kept if p.ssrc is not None}
    for producer in new:
        if producer.ssrc is None:
            continue
        other = taken.setdefault(producer.ssrc, producer)
        if other is not producer:
            raise sdp.SdpError(f"m={producer.kind} mid {producer.mid}: SSRC {producer.ssrc} is already "
                               f"sent in mid {other.mid}")


def codec_preference(codec: sdp.Codec) -> str:
    """A select_codecs preference naming this codec (H264: its profile)."""
    if codec.name.lower() == "h264" and "profile-level-id" in codec.fmtp:
        return f"H264/{codec.fmtp['profile-level-id']}"
    return codec.name


def media_ssrc(media) -> int | None:
    """The primary SSRC of an m-section (the first of its FID group, else its first SSRC)."""
    for semantics, ssrcs in media.ssrc_groups:
        if semantics.upper() in ("FID", "SIM") and ssrcs:
            return ssrcs[0]
    return media.ssrcs[0] if media.ssrcs else None


PUBLISHER_EXTENSIONS = {
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "urn:3gpp:video-orientation",
}
SUBSCRIBER_EXTENSIONS = {
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "urn:3gpp:video-orientation",
}
PUBLISHER_FEEDBACK = {"nack", "nack pli", "ccm fir", "goog-remb"}
SUBSCRIBER_FEEDBACK = {"nack", "nack pli", "ccm fir"}


@dataclass
class Plan:
    """What an accepted offer changes: its answer sections, the tracks it adds (built,
    not committed), the explicit targets of the new consumers, and for a renegotiation
    the producers it keeps and the consumers it keeps with their codec and target."""

    answers: list[sdp.AnswerMedia] = field(default_factory=list)
    producers: list[Producer] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    binds: list[tuple[Consumer, Producer | None]] = field(default_factory=list)
    kept: set[Producer] = field(default_factory=set)
    rebinds: list[tuple[Consumer, sdp.Codec, Producer | None]] = field(default_factory=list)


class Negotiator:
    """Offer + the session's state -> a :class:`Plan`, without side effects: it reads
    the router (the room's codecs, the producers subscriptions name) and builds
    tracks that nothing knows yet; the engine commits the plan, or drops it."""

    def __init__(self, config, router: "Router", new_id: Callable[[], int]) -> None:
        self.config = config
        self.router = router
        self.new_id = new_id  # plane ids of new tracks

    def plan(self, offer: sdp.SessionDescription, role: str, transport,
             subscriptions: dict[str, str] | None) -> Plan:
        """A new session: every section answered, its tracks built."""
        plan = Plan()
        for media in offer.media:
            plan.answers.append(self._section(media, role, transport.room_name, transport, plan.producers,
                                              plan.consumers, subscriptions, plan.binds))
        return plan

    def plan_update(self, offer: sdp.SessionDescription, transport, subscriptions: dict[str, str]) -> Plan:
        """A renegotiation of a meeting session: published sections kept (their codec may
        not change), recvonly sections kept and rebound, the others as new ones.
        SdpError when a section cannot be accepted."""
        plan = Plan()
        room_name = transport.room_name
        answers, new_producers, new_consumers, binds = plan.answers, plan.producers, plan.consumers, plan.binds
        kept_producers, rebinds = plan.kept, plan.rebinds
        consumers_by_mid = {c.mid: c for c in transport.consumers}
        for media in offer.media:
            producer = transport.producers_by_mid.get(media.mid)
            consumer = consumers_by_mid.get(media.mid)
            if (producer is not None and not media.rejected and media.kind == producer.kind
                    and media.direction in ("sendonly", "sendrecv")):
                codecs = sdp.select_codecs(media, [codec_preference(producer.codec)], PUBLISHER_FEEDBACK)
                if not codecs or codecs[0].payload_type != producer.codec.payload_type:
                    raise sdp.SdpError(f"m={media.kind} mid {media.mid}: a published track cannot change codec")
                kept_producers.add(producer)
                answers.append(sdp.AnswerMedia(mid=media.mid, kind=media.kind, direction="recvonly",
                                               codecs=[producer.codec], extensions=producer.extensions))
                continue
            if (consumer is not None and not media.rejected and media.kind == consumer.kind
                    and media.direction == "recvonly"):
                target = self.router.producer(subscriptions.get(media.mid), room_name)
                defaults = self.config.audio_codecs if media.kind == "audio" else self.config.video_codecs
                prefs = self.router.codec_preference(room_name, media.kind, defaults)
                if target is not None and target.kind == media.kind:
                    prefs = [codec_preference(target.codec)] + prefs
                codecs = sdp.select_codecs(media, prefs, SUBSCRIBER_FEEDBACK)
                if not codecs:
                    raise sdp.SdpError(f"m={media.kind} mid {media.mid}: no codec in common")
                rebinds.append((consumer, codecs[0], target))
                answers.append(sdp.AnswerMedia(
                    mid=media.mid, kind=media.kind, direction="sendonly", codecs=[codecs[0]],
                    extensions=consumer.extensions, ssrc=consumer.ssrc, rtx_ssrc=consumer.rtx_ssrc,
                    cname=consumer.cname, msid=consumer.msid))
                continue
            answers.append(self._section(media, "meeting", room_name, transport, new_producers, new_consumers,
                                         subscriptions, binds))
        return plan

    def _section(self, media, role: str, room_name: str, transport, producers: list, consumers: list,
                 subscriptions: dict[str, str] | None = None, binds: list | None = None) -> sdp.AnswerMedia:
        """The answer to one section; a track it makes is only built (appended to
        ``producers``/``consumers``, with its explicit target to ``binds``)."""
        reject = sdp.AnswerMedia(mid=media.mid, kind=media.kind, direction="inactive", codecs=[],
                                 extensions={}, rejected=True)
        if media.rejected or media.kind not in ("audio", "video"):
            return reject
        defaults = self.config.audio_codecs if media.kind == "audio" else self.config.video_codecs
        prefs = self.router.codec_preference(room_name, media.kind, defaults)
        target = None
        explicit = role == "meeting" and media.direction == "recvonly"
        if role == "meeting":  # each section by its direction; recvonly ones bound explicitly
            role = "subscribe" if explicit else "publish"
        if explicit:
            target = self.router.producer((subscriptions or {}).get(media.mid), room_name)
            if target is not None and target.kind == media.kind:
                prefs = [codec_preference(target.codec)] + prefs
        if role == "publish":
            if media.direction not in ("sendonly", "sendrecv"):
                return sdp.AnswerMedia(mid=media.mid, kind=media.kind, direction="inactive",
                                       codecs=sdp.select_codecs(media, prefs, PUBLISHER_FEEDBACK)[:1],
                                       extensions={}, rejected=False)
            codecs = sdp.select_codecs(media, prefs, PUBLISHER_FEEDBACK)
            if not codecs:
                return reject
            codec = codecs[0]
            codec.rtx_payload_type = None  # publishers retransmit on the media SSRC
            extensions = sdp.select_extensions(media, PUBLISHER_EXTENSIONS)
            ssrc = media_ssrc(media)
            producer = Producer(transport, media.kind, media.mid, codec, ssrc, extensions, self.new_id())
            producers.append(producer)
            return sdp.AnswerMedia(mid=media.mid, kind=media.kind, direction="recvonly",
                                   codecs=[codec], extensions=extensions)
        # subscribe
        if media.direction not in ("recvonly", "sendrecv"):
            return reject
        codecs = sdp.select_codecs(media, prefs, SUBSCRIBER_FEEDBACK)
        if not codecs:
            return reject
        codec = codecs[0]
        extensions = sdp.select_extensions(media, SUBSCRIBER_EXTENSIONS)
        consumer = Consumer(transport, media.kind, media.mid, codec, extensions, self.new_id())
        consumer.report_ssrc = media_ssrc(media)
        consumers.append(consumer)
        if explicit:
            consumer.explicit = True
            if binds is not None:
                binds.append((consumer, target))
        return sdp.AnswerMedia(mid=media.mid, kind=media.kind, direction="sendonly", codecs=[codec],
                               extensions=extensions, ssrc=consumer.ssrc, rtx_ssrc=consumer.rtx_ssrc,
                               cname=consumer.cname, msid=consumer.msid)
