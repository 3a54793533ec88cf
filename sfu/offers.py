"""What an offer asks for, read before anything is built for it (sans-I/O).

The media engine decides a session from these checks first and commits only when
the whole offer is accepted (sfu.engine: create_session, update_session): a
refused offer changes nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import sdp

if TYPE_CHECKING:
    from .router import Producer


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
