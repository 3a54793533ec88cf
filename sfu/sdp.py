"""SDP offers in, SDP answers out, for an ICE-lite SFU (sans-I/O, no asyncio).

Parses the offers WebRTC clients send (JSEP, RFC 9429) into dataclasses,
validates them for WHIP (RFC 9725) / WHEP, picks one codec and the header
extensions per m-section, and writes the answer:

- SDP syntax: RFC 8866 (which obsoletes RFC 4566).
- BUNDLE: RFC 8843; a ``port 0`` m-section with ``a=bundle-only`` is *not*
  rejected (RFC 8843 section 6; GStreamer's webrtcbin offers this way).
- ICE attributes: RFC 8839; ICE-lite: RFC 8445 section 2.5.
- DTLS-SRTP attributes (fingerprint, setup): RFC 8122, RFC 5763 section 5.
- RTP/RTCP multiplexing: RFC 5761; reduced-size RTCP: RFC 5506.
- Header extensions (extmap, with directions): RFC 8285 section 5 and 6.
- RTX (``apt=``): RFC 4588 section 8.6; source-specific attributes: RFC 5576.
- Codecs: opus RFC 7587, VP8 RFC 7741, H264 RFC 6184 and RFC 7742, VP9 RFC 9628,
  AV1 (AOM "RTP Payload Format For AV1", section 7).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Callable

__all__ = [
    "SdpError",
    "Codec",
    "MediaDescription",
    "SessionDescription",
    "AnswerMedia",
    "LocalTransport",
    "H264ProfileLevelId",
    "SUPPORTED_CODECS",
    "count_media_sections",
    "check_media_sections",
    "parse_sdp",
    "validate_offer",
    "select_codecs",
    "select_extensions",
    "answer_setup",
    "build_answer",
]


class SdpError(ValueError):
    """An offer we cannot parse or cannot answer; the message is one readable line."""


DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
# Our direction is the offer's seen from the other end (RFC 3264 section 6.1).
REVERSED_DIRECTION = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}
# Hash functions usable in a=fingerprint (RFC 8122 section 5, "hash-func").
FINGERPRINT_ALGORITHMS = ("sha-1", "sha-224", "sha-256", "sha-384", "sha-512")
# Static payload types that may appear without a=rtpmap (RFC 3551 section 6).
STATIC_PAYLOAD_TYPES = {
    0: ("PCMU", 8000, 1),
    8: ("PCMA", 8000, 1),
    9: ("G722", 8000, 1),
    13: ("CN", 8000, 1),
}


# --------------------------------------------------------------------------
# H264 profile-level-id (RFC 6184 section 8.1; answer rules RFC 7742 section 6.2)
# --------------------------------------------------------------------------

# profile-level-id is three bytes in hex: profile_idc, profile-iop (the
# constraint_set0..5 flags of the SPS, bit 7 = set0), level_idc.  A profile is
# named by profile_idc plus a pattern on profile-iop ("x" = don't care), as in
# the table of H.264 Annex A constraint flags:
#   (profile_idc, iop mask, iop value, profile)
H264_PROFILES: tuple[tuple[int, int, int, str], ...] = (
    (0x42, 0b0100_1111, 0b0100_0000, "constrained-baseline"),  # 42 x1xx0000
    (0x4D, 0b1000_1111, 0b1000_0000, "constrained-baseline"),  # 4D 1xxx0000
    (0x58, 0b1100_1111, 0b1100_0000, "constrained-baseline"),  # 58 11xx0000
    (0x42, 0b0100_1111, 0b0000_0000, "baseline"),              # 42 x0xx0000
    (0x58, 0b1100_1111, 0b1000_0000, "baseline"),              # 58 10xx0000
    (0x4D, 0b1010_1111, 0b0000_0000, "main"),                  # 4D 0x0x0000
    (0x64, 0b1111_1111, 0b0000_1100, "constrained-high"),      # 64 00001100
    (0x64, 0b1111_1111, 0b0000_0000, "high"),                  # 64 00000000
    (0xF4, 0b1111_1111, 0b0000_0000, "predictive-high-444"),   # F4 00000000
)
# Order in which "H264" without a profile prefers the offered variants.
H264_PROFILE_PREFERENCE = ("constrained-baseline", "baseline", "main", "constrained-high", "high")
# When profile-level-id is absent the default is 420010: baseline, level 1
# (RFC 6184 section 8.1).
H264_DEFAULT_PROFILE_LEVEL_ID = "42000a"


@dataclass(frozen=True)
class H264ProfileLevelId:
    """A parsed H264 profile-level-id (RFC 6184 section 8.1)."""

    profile_idc: int
    profile_iop: int
    level_idc: int

    @classmethod
    def parse(cls, value: str) -> H264ProfileLevelId:
        if not re.fullmatch(r"[0-9A-Fa-f]{6}", value):
            raise SdpError(f"H264 profile-level-id {value!r} is not 6 hex digits")
        raw = bytes.fromhex(value)
        return cls(raw[0], raw[1], raw[2])

    @property
    def profile(self) -> str | None:
        """The profile name, or None when profile_idc/iop match no known profile."""
        for idc, mask, want, name in H264_PROFILES:
            if self.profile_idc == idc and self.profile_iop & mask == want:
                return name
        return None

    @property
    def level(self) -> str:
        """Level as H.264 Table A-1 writes it ("3.1"); level 1b is level_idc 11
        with constraint_set3 in baseline/main/extended (RFC 6184 section 8.1)."""
        if self.level_idc == 11 and self.profile_iop & 0x10 and self.profile_idc in (0x42, 0x4D, 0x58):
            return "1b"
        return f"{self.level_idc // 10}.{self.level_idc % 10}" if self.level_idc % 10 else str(
            self.level_idc // 10
        )

    def __str__(self) -> str:
        return f"{self.profile_idc:02x}{self.profile_iop:02x}{self.level_idc:02x}"


# --------------------------------------------------------------------------
# Codecs
# --------------------------------------------------------------------------


@dataclass
class Codec:
    payload_type: int
    name: str  # as in a=rtpmap, case preserved
    clock_rate: int
    channels: int | None
    fmtp: dict[str, str] = field(default_factory=dict)
    rtcp_fb: list[str] = field(default_factory=list)
    rtx_payload_type: int | None = None  # the rtx PT whose apt= points at this codec
    kind: str | None = None  # "audio" / "video" when known (from the m= line)

    @property
    def mime(self) -> str:
        kind = self.kind
        if kind is None:
            spec = SUPPORTED_CODECS.get(self.name.lower())
            kind = spec.kind if spec else ("video" if self.clock_rate == 90000 else "audio")
        return f"{kind}/{self.name}"

    def fmtp_line(self) -> str:
        """The a=fmtp parameters as written after the payload type ("" if none)."""
        return ";".join(f"{k}={v}" if v != "" else k for k, v in self.fmtp.items())

    def rtpmap_line(self) -> str:
        """The a=rtpmap value after the payload type ("opus/48000/2")."""
        tail = f"/{self.channels}" if self.channels is not None else ""
        return f"{self.name}/{self.clock_rate}{tail}"


def parse_fmtp(value: str) -> dict[str, str]:
    """'a=b;c=d' -> {'a': 'b', 'c': 'd'}; bare tokens ('0-15', '111/111') map to ''."""
    params: dict[str, str] = {}
    for part in value.split(";"):
        part = part.strip()
        if not part:
            continue
        key, _, val = part.partition("=")
        params[key.strip()] = val.strip()
    return params


def _profile_zero(key: str) -> Callable[[Codec, str | None], bool]:
    """VP9 profile-id / AV1 profile: only profile 0 (the default when absent)."""

    def accepts(codec: Codec, qualifier: str | None) -> bool:
        return codec.fmtp.get(key, "0") == "0" and qualifier in (None, "0")

    return accepts


def _h264_accepts(codec: Codec, qualifier: str | None) -> bool:
    """packetization-mode=1 only (RFC 6184 section 6.3, non-interleaved mode); a
    qualifier names a profile ("constrained-baseline") or a profile-level-id
    whose profile must match (RFC 7742 section 6.2: level may differ)."""
    if codec.fmtp.get("packetization-mode", "0") != "1":
        return False
    profile = _h264_profile(codec)
    if profile not in H264_PROFILE_PREFERENCE:
        return False
    if qualifier is None:
        return True
    if re.fullmatch(r"[0-9A-Fa-f]{6}", qualifier):
        return H264ProfileLevelId.parse(qualifier).profile == profile
    return qualifier.lower() == profile


def _h264_profile(codec: Codec) -> str | None:
    try:
        plid = H264ProfileLevelId.parse(codec.fmtp.get("profile-level-id", H264_DEFAULT_PROFILE_LEVEL_ID))
    except SdpError:
        return None
    return plid.profile


def _h264_rank(codec: Codec) -> int:
    return H264_PROFILE_PREFERENCE.index(_h264_profile(codec) or "high")


def _h264_answer_fmtp(fmtp: dict[str, str]) -> dict[str, str]:
    # RFC 6184 section 8.2.2: with level-asymmetry-allowed=1 each side may send
    # at its own level, so we can echo the offer's profile-level-id.
    return {**fmtp, "level-asymmetry-allowed": "1"}


@dataclass(frozen=True)
class CodecSpec:
    kind: str
    clock_rate: int
    channels: int | None  # required channel count, None = not checked
    accepts: Callable[[Codec, str | None], bool] | None = None  # fmtp check
    rank: Callable[[Codec], int] | None = None  # lower is preferred among matches
    answer_fmtp: Callable[[dict[str, str]], dict[str, str]] | None = None


# The codecs the SFU forwards, keyed by lower-case rtpmap name.
SUPPORTED_CODECS: dict[str, CodecSpec] = {
    "opus": CodecSpec("audio", 48000, 2),
    "vp8": CodecSpec("video", 90000, None),
    "vp9": CodecSpec("video", 90000, None, _profile_zero("profile-id")),
    "h264": CodecSpec("video", 90000, None, _h264_accepts, _h264_rank, _h264_answer_fmtp),
    "av1": CodecSpec("video", 90000, None, _profile_zero("profile")),
}


def _codec_matches(codec: Codec, kind: str, name: str, qualifier: str | None) -> bool:
    spec = SUPPORTED_CODECS.get(name)
    if spec is None or codec.name.lower() != name or spec.kind != kind:
        return False
    if codec.clock_rate != spec.clock_rate:
        return False
    if spec.channels is not None and codec.channels != spec.channels:
        return False
    return spec.accepts(codec, qualifier) if spec.accepts else qualifier is None


# --------------------------------------------------------------------------
# Parsed descriptions
# --------------------------------------------------------------------------


@dataclass
class MediaDescription:
    kind: str  # "audio" | "video" | "application" | ...
    mid: str | None
    port: int
    protocol: str
    formats: list[str]  # the m= line's fmt list as written
    direction: str
    codecs: list[Codec]  # offer order, rtx folded into its primary
    extensions: dict[int, str]  # extmap id -> uri
    extension_directions: dict[int, str]  # only for extmaps written "id/direction"
    ice_ufrag: str | None
    ice_pwd: str | None
    fingerprints: list[tuple[str, str]]
    setup: str | None
    rtcp_mux: bool
    rtcp_rsize: bool
    bundle_only: bool
    msid: str | None
    ssrcs: list[int]
    ssrc_groups: list[tuple[str, list[int]]]
    cname: str | None
    candidates: list[str]  # a=candidate values without the "candidate:" prefix
    end_of_candidates: bool
    attributes: list[tuple[str, str | None]]  # every media-level a= line, in order

    @property
    def rejected(self) -> bool:
        # RFC 8843 section 6: port 0 plus a=bundle-only means "in the BUNDLE
        # group, no transport of its own", not rejected.
        return self.port == 0 and not self.bundle_only

    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.protocol


@dataclass
class SessionDescription:
    media: list[MediaDescription]
    bundle: list[str]  # mids of the first a=group:BUNDLE
    ice_lite: bool
    origin: str = ""
    groups: list[tuple[str, list[str]]] = field(default_factory=list)
    ice_ufrag: str | None = None  # session-level values (media may override)
    ice_pwd: str | None = None
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str | None = None
    direction: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)


# --------------------------------------------------------------------------
# Parsing (RFC 8866 section 5)
# --------------------------------------------------------------------------

_LINE = re.compile(r"([a-z])=(.*)")
_MEDIA = re.compile(r"(\S+) (\d+)(?:/\d+)? (\S+)(?: (.*))?")
_EXTMAP = re.compile(r"(\d+)(?:/(\w+))? (\S+)(?: .*)?")
_RTPMAP = re.compile(r"(\d+) ([^/\s]+)/(\d+)(?:/(\d+))?")


def _split_attribute(value: str) -> tuple[str, str | None]:
    name, sep, rest = value.partition(":")
    return name, (rest if sep else None)


def _lines(text: str) -> list[str]:
    if not text or not text.strip():
        raise SdpError("empty SDP body")
    lines = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    if lines[0].strip() != "v=0":
        raise SdpError("not an SDP body: it does not start with v=0")
    for number, line in enumerate(lines, 1):
        if not _LINE.fullmatch(line):
            raise SdpError(f"malformed SDP line {number}: {line[:60]!r}")
    return lines


def count_media_sections(text: str) -> int:
    """The m= lines of an SDP body, counted without parsing it (no objects built)."""
    return text.count("\nm=") + text.startswith("m=")


def check_media_sections(text: str, max_sections: int | None) -> None:
    """SdpError if ``text`` has more than ``max_sections`` m= lines (None or 0: no limit);
    the cheap check before parsing an untrusted offer."""
    if max_sections and isinstance(text, str):
        count = count_media_sections(text)
        if count > max_sections:
            raise SdpError(f"offer has {count} media sections, at most {max_sections} are allowed")


def parse_sdp(text: str, max_sections: int | None = None) -> SessionDescription:
    """Parse an SDP offer (or answer); SdpError on anything malformed, or (before any
    parsing) when it has more than ``max_sections`` media sections."""
    if not isinstance(text, str):
        raise SdpError("SDP body must be text")
    check_media_sections(text, max_sections)
    session: list[tuple[str, str]] = []
    sections: list[list[tuple[str, str]]] = []
    for line in _lines(text):
        kind, value = line[0], line[2:]
        if kind == "m":
            sections.append([])
        (sections[-1] if sections else session).append((kind, value))

    sd = SessionDescription(media=[], bundle=[], ice_lite=False)
    for kind, value in session:
        if kind == "o":
            sd.origin = value
        elif kind == "a":
            name, arg = _split_attribute(value)
            sd.attributes.append((name, arg))
            if name == "group" and arg:
                semantics, *mids = arg.split()
                sd.groups.append((semantics, mids))
            elif name == "ice-lite":
                sd.ice_lite = True
            elif name == "ice-ufrag":
                sd.ice_ufrag = arg
            elif name == "ice-pwd":
                sd.ice_pwd = arg
            elif name == "fingerprint":
                sd.fingerprints.append(_parse_fingerprint(arg))
            elif name == "setup":
                sd.setup = arg
            elif name in DIRECTIONS:
                sd.direction = name
    sd.bundle = next((mids for semantics, mids in sd.groups if semantics == "BUNDLE"), [])
    sd.media = [_parse_media(lines, sd, index) for index, lines in enumerate(sections)]
    return sd


def _is_number(text: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "²", which int() refuses."""
    return text.isascii() and text.isdigit()


def _parse_fingerprint(arg: str | None) -> tuple[str, str]:
    parts = (arg or "").split()
    if len(parts) != 2 or not re.fullmatch(r"[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2})+", parts[1]):
        raise SdpError(f"malformed a=fingerprint: {arg!r}")
    return parts[0].lower(), parts[1].upper()


def _parse_media(lines: list[tuple[str, str]], sd: SessionDescription, index: int) -> MediaDescription:
    m = _MEDIA.fullmatch(lines[0][1])
    if m is None:
        raise SdpError(f"malformed m= line: {lines[0][1][:60]!r}")
    if int(m.group(2)) > 65535:
        raise SdpError(f"port out of range in m= line: {lines[0][1][:60]!r}")
    attributes = [_split_attribute(value) for kind, value in lines[1:] if kind == "a"]
    md = MediaDescription(
        kind=m.group(1),
        mid=None,
        port=int(m.group(2)),
        protocol=m.group(3),
        formats=(m.group(4) or "").split(),
        direction=sd.direction or "sendrecv",
        codecs=[],
        extensions={},
        extension_directions={},
        ice_ufrag=sd.ice_ufrag,
        ice_pwd=sd.ice_pwd,
        fingerprints=[],
        setup=sd.setup,
        rtcp_mux=False,
        rtcp_rsize=False,
        bundle_only=False,
        msid=None,
        ssrcs=[],
        ssrc_groups=[],
        cname=None,
        candidates=[],
        end_of_candidates=False,
        attributes=attributes,
    )
    rtpmap: dict[int, tuple[str, int, int | None]] = {}
    fmtp: dict[int, dict[str, str]] = {}
    rtcp_fb: dict[int | None, list[str]] = {}  # None = "*" (all formats)
    ssrc_msid: str | None = None
    for name, arg in attributes:
        arg_text = arg or ""
        if name == "mid":
            md.mid = arg_text
        elif name in DIRECTIONS:
            md.direction = name
        elif name == "rtpmap":
            r = _RTPMAP.fullmatch(arg_text)
            if r is None:
                raise SdpError(f"malformed a=rtpmap: {arg_text[:60]!r}")
            channels = int(r.group(4)) if r.group(4) else None
            rtpmap[int(r.group(1))] = (r.group(2), int(r.group(3)), channels)
        elif name == "fmtp":
            pt, _, params = arg_text.partition(" ")
            if not _is_number(pt):
                raise SdpError(f"malformed a=fmtp: {arg_text[:60]!r}")
            fmtp[int(pt)] = parse_fmtp(params)
        elif name == "rtcp-fb":
            pt, _, feedback = arg_text.partition(" ")
            if not (_is_number(pt) or pt == "*") or not feedback.strip():
                raise SdpError(f"malformed a=rtcp-fb: {arg_text[:60]!r}")
            rtcp_fb.setdefault(None if pt == "*" else int(pt), []).append(" ".join(feedback.split()))
        elif name == "extmap":
            e = _EXTMAP.fullmatch(arg_text)
            if e is None:
                raise SdpError(f"malformed a=extmap: {arg_text[:60]!r}")
            md.extensions[int(e.group(1))] = e.group(3)
            if e.group(2):
                md.extension_directions[int(e.group(1))] = e.group(2)
        elif name == "ice-ufrag":
            md.ice_ufrag = arg
        elif name == "ice-pwd":
            md.ice_pwd = arg
        elif name == "fingerprint":
            md.fingerprints.append(_parse_fingerprint(arg))
        elif name == "setup":
            md.setup = arg
        elif name == "rtcp-mux":
            md.rtcp_mux = True
        elif name == "rtcp-rsize":
            md.rtcp_rsize = True
        elif name == "bundle-only":
            md.bundle_only = True
        elif name == "msid":
            md.msid = arg
        elif name == "ssrc":
            ssrc_text, _, rest = arg_text.partition(" ")
            if not _is_number(ssrc_text) or int(ssrc_text) > 0xFFFFFFFF:
                raise SdpError(f"malformed a=ssrc: {arg_text[:60]!r}")
            ssrc = int(ssrc_text)
            if ssrc not in md.ssrcs:
                md.ssrcs.append(ssrc)
            key, _, val = rest.partition(":")
            if key == "cname" and md.cname is None:
                md.cname = val
            elif key == "msid" and ssrc_msid is None:
                ssrc_msid = val
        elif name == "ssrc-group":
            semantics, *ids = arg_text.split() or [""]
            if not ids or not all(_is_number(i) and int(i) <= 0xFFFFFFFF for i in ids):
                raise SdpError(f"malformed a=ssrc-group: {arg_text[:60]!r}")
            md.ssrc_groups.append((semantics, [int(i) for i in ids]))
        elif name == "candidate":
            md.candidates.append(arg_text)
        elif name == "end-of-candidates":
            md.end_of_candidates = True
    md.fingerprints = md.fingerprints or list(sd.fingerprints)
    md.msid = md.msid or ssrc_msid
    if md.is_rtp:
        md.codecs = _build_codecs(md, rtpmap, fmtp, rtcp_fb)
    return md


def _build_codecs(
    md: MediaDescription,
    rtpmap: dict[int, tuple[str, int, int | None]],
    fmtp: dict[int, dict[str, str]],
    rtcp_fb: dict[int | None, list[str]],
) -> list[Codec]:
    codecs: list[Codec] = []
    rtx: dict[int, int] = {}  # apt -> rtx PT (RFC 4588 section 8.6)
    for fmt in md.formats:
        if not _is_number(fmt):
            raise SdpError(f"malformed payload type {fmt!r} in m={md.kind} line")
        pt = int(fmt)
        if pt > 127:
            raise SdpError(f"payload type {pt} out of range in m={md.kind} line")
        entry = rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
        if entry is None:
            continue  # dynamic PT without a=rtpmap: nothing we can use
        name, clock_rate, channels = entry
        params = fmtp.get(pt, {})
        if name.lower() == "rtx":
            apt = params.get("apt", "")
            if _is_number(apt):
                rtx.setdefault(int(apt), pt)
            continue
        feedback = rtcp_fb.get(pt, []) + [f for f in rtcp_fb.get(None, []) if f not in rtcp_fb.get(pt, [])]
        codecs.append(Codec(pt, name, clock_rate, channels, dict(params), feedback, kind=md.kind))
    for codec in codecs:
        codec.rtx_payload_type = rtx.get(codec.payload_type)
    return codecs


# --------------------------------------------------------------------------
# Validation (WHIP: RFC 9725 section 4.2; JSEP: RFC 9429 section 5.8)
# --------------------------------------------------------------------------

_WANTED_DIRECTIONS = {
    "publish": (("sendonly", "sendrecv"), "offer has no track to publish (recvonly offer to WHIP?)"),
    "subscribe": (("recvonly", "sendrecv"), "offer has no section that can receive (sendonly offer to WHEP?)"),
}


def _label(md: MediaDescription, index: int) -> str:
    return f"m={md.kind} mid {md.mid}" if md.mid is not None else f"m={md.kind} #{index}"


def validate_offer(offer: SessionDescription, want: str) -> None:
    """Raise SdpError unless the offer is something this SFU can answer."""
    if want not in _WANTED_DIRECTIONS:
        raise ValueError(f"want must be 'publish' or 'subscribe', not {want!r}")
    directions, no_track = _WANTED_DIRECTIONS[want]
    active = [(i, md) for i, md in enumerate(offer.media) if not md.rejected]
    av = [(i, md) for i, md in active if md.kind in ("audio", "video")]
    if not av:
        raise SdpError("offer has no audio or video section")
    wanted = [(i, md) for i, md in av if md.direction in directions]
    if not wanted:
        raise SdpError(no_track)
    for i, md in active:
        if not md.fingerprints:
            raise SdpError("offer has no DTLS fingerprint")
        if not any(alg in FINGERPRINT_ALGORITHMS for alg, _ in md.fingerprints):
            algs = ", ".join(alg for alg, _ in md.fingerprints)
            raise SdpError(f"offer has no usable DTLS fingerprint (hash functions: {algs})")
        if not md.ice_ufrag or not md.ice_pwd:
            raise SdpError("offer has no ICE credentials (a=ice-ufrag / a=ice-pwd)")
        if md.setup not in (None, "actpass", "active", "passive"):
            raise SdpError(f"offer has a=setup:{md.setup} on {_label(md, i)}; expected actpass")
    for i, md in av:
        if "SAVP" not in md.protocol:
            raise SdpError(f"offer uses {md.protocol} on {_label(md, i)}; DTLS-SRTP (UDP/TLS/RTP/SAVPF) is required")
        if not md.rtcp_mux:
            raise SdpError(f"offer has no a=rtcp-mux on {_label(md, i)} (RTP/RTCP multiplexing is required)")
    mids = [md.mid for md in offer.media if md.mid is not None]
    duplicates = sorted({mid for mid in mids if mids.count(mid) > 1})
    if duplicates:
        raise SdpError(f"offer has duplicate a=mid values ({', '.join(duplicates)})")  # RFC 9429 section 5.2.1
    if len(active) > 1:
        missing = [_label(md, i) for i, md in active if md.mid is None or md.mid not in offer.bundle]
        if missing:
            raise SdpError(f"offer does not BUNDLE all sections ({', '.join(missing)}); max-bundle is required")
    if not any(_supported(md) for _, md in wanted):
        offered = sorted({c.name for _, md in wanted for c in md.codecs})
        raise SdpError(f"offer has no codec in common with the SFU (offered: {', '.join(offered) or 'none'})")


def _supported(md: MediaDescription) -> bool:
    return any(
        _codec_matches(codec, md.kind, name, None) for codec in md.codecs for name in SUPPORTED_CODECS
    )


# --------------------------------------------------------------------------
# Choosing what to answer
# --------------------------------------------------------------------------


def select_codecs(media: MediaDescription, preferences: list[str], rtcp_fb_allowed: set[str]) -> list[Codec]:
    """The first codec of ``preferences`` the offer has, as a one-element list
    (with the offer's PT and rtx PT, rtcp-fb filtered), or [] if none.

    A preference is a codec name ("VP8", "opus") or, for H264, "H264/<profile>"
    ("H264/constrained-baseline") or "H264/<profile-level-id>" ("H264/42e01f":
    same profile, any level).
    """
    for preference in preferences:
        name, _, qualifier = preference.partition("/")
        name = name.lower()
        matches = [c for c in media.codecs if _codec_matches(c, media.kind, name, qualifier or None)]
        if not matches:
            continue
        spec = SUPPORTED_CODECS[name]
        best = min(matches, key=spec.rank) if spec.rank else matches[0]
        fmtp = spec.answer_fmtp(best.fmtp) if spec.answer_fmtp else dict(best.fmtp)
        feedback = [fb for fb in best.rtcp_fb if fb in rtcp_fb_allowed]
        return [replace(best, fmtp=fmtp, rtcp_fb=feedback)]
    return []


def select_extensions(media: MediaDescription, allowed_uris: set[str]) -> dict[int, str]:
    """The offered header extensions (offer's ids) whose URI we accept;
    extmaps the offerer marked inactive are left out (RFC 8285 section 6)."""
    return {
        ext_id: uri
        for ext_id, uri in media.extensions.items()
        if uri in allowed_uris and media.extension_directions.get(ext_id) != "inactive"
    }


def answer_setup(media: MediaDescription) -> str:
    """Our a=setup for an offer's (RFC 5763 section 5): passive (we are the DTLS
    server) unless the offerer insists on being passive itself."""
    return "active" if media.setup == "passive" else "passive"


# --------------------------------------------------------------------------
# The answer
# --------------------------------------------------------------------------


@dataclass
class AnswerMedia:
    """What to answer for one offered m-section (codecs already filtered)."""

    mid: str | None  # the offer's mid (None only for a mid-less offer section)
    kind: str
    direction: str  # ours: recvonly for a publisher, sendonly for a viewer
    codecs: list[Codec]  # offer's payload types (and rtx)
    extensions: dict[int, str]  # offer's ids
    ssrc: int | None = None  # for sendonly media
    rtx_ssrc: int | None = None
    cname: str | None = None
    msid: str | None = None  # "stream-id track-id"
    rejected: bool = False


@dataclass
class LocalTransport:
    ice_ufrag: str
    ice_pwd: str
    fingerprint: str  # sha-256 "AB:CD:.."
    setup: str  # "passive" or "active"
    host: str
    port: int  # the single UDP host candidate


def build_answer(
    offer: SessionDescription,
    local: LocalTransport,
    medias: list[AnswerMedia],
    session_id: int | None = None,
) -> str:
    """Write the SDP answer: ICE-lite, one BUNDLE transport, the offer's
    m-sections in order, unanswered or codec-less ones rejected (port 0)."""
    # Match by mid; a mid-less offer section matches the AnswerMedia at its
    # position (whose mid is None or str(position)).
    by_mid = {m.mid: m for m in medias if m.mid is not None}
    plans = []
    for i, md in enumerate(offer.media):
        am = by_mid.get(md.mid if md.mid is not None else str(i))
        if am is None and md.mid is None and i < len(medias) and medias[i].mid is None:
            am = medias[i]
        plans.append((md, am))
    accepted = [
        (md, am) for md, am in plans if am is not None and not am.rejected and am.codecs and not md.rejected
    ]
    accepted_mids = [md.mid for md, _ in accepted if md.mid is not None]
    accepted_ids = {id(md) for md, _ in accepted}
    if session_id is None:
        session_id = secrets.randbits(62)
    address = f"IN IP6 {local.host}" if ":" in local.host else f"IN IP4 {local.host}"
    lines = [
        "v=0",
        f"o=- {session_id} 2 {address}",
        "s=-",
        "t=0 0",
        "a=ice-lite",  # RFC 8445 section 5.1.1.1 / RFC 8839 section 5.3
    ]
    if accepted_mids:
        lines.append("a=group:BUNDLE " + " ".join(accepted_mids))
    lines.append("a=msid-semantic:WMS *")
    for i, (md, am) in enumerate(plans):
        mid = md.mid if md.mid is not None else str(i)
        if id(md) not in accepted_ids:
            lines += _rejected_section(md, mid, local, address)
            continue
        assert am is not None
        lines += _answer_section(md, am, local, address)
    return "\r\n".join(lines) + "\r\n"


def _rejected_section(md: MediaDescription, mid: str, local: LocalTransport, address: str) -> list[str]:
    """RFC 3264 section 6 / RFC 9429 section 5.3.1: port 0 rejects the section.
    The transport attributes are repeated because aiortc refuses an answer
    whose sections (even rejected ones) lack ICE credentials, a=setup or,
    for audio/video, a=rtcp-mux; browsers accept either form."""
    lines = [
        f"m={md.kind} 0 {md.protocol} {' '.join(md.formats) or '0'}",
        f"c={address}",
        *([f"a=mid:{mid}"] if md.mid is not None else []),  # RFC 5888: no mid if the offer had none
        f"a=ice-ufrag:{local.ice_ufrag}",
        f"a=ice-pwd:{local.ice_pwd}",
        f"a=fingerprint:sha-256 {local.fingerprint}",
        f"a=setup:{local.setup}",
    ]
    if md.kind in ("audio", "video"):
        lines += ["a=rtcp-mux", "a=inactive"]
    return lines


def _answer_section(md: MediaDescription, am: AnswerMedia, local: LocalTransport, address: str) -> list[str]:
    pts: list[int] = []
    for codec in am.codecs:
        pts.append(codec.payload_type)
        if codec.rtx_payload_type is not None:
            pts.append(codec.rtx_payload_type)
    lines = [
        f"m={md.kind} 9 {md.protocol} {' '.join(map(str, pts))}",
        f"c={address}",
        *([f"a=mid:{am.mid}"] if md.mid is not None else []),
        f"a=ice-ufrag:{local.ice_ufrag}",
        f"a=ice-pwd:{local.ice_pwd}",
        f"a=fingerprint:sha-256 {local.fingerprint}",
        f"a=setup:{local.setup}",
        "a=rtcp-mux",
    ]
    if md.rtcp_rsize:
        lines.append("a=rtcp-rsize")
    lines.append(f"a={am.direction}")
    for ext_id, uri in am.extensions.items():
        # RFC 8285 section 6: a direction-qualified extmap is answered reversed.
        offered = md.extension_directions.get(ext_id)
        suffix = f"/{REVERSED_DIRECTION[offered]}" if offered in REVERSED_DIRECTION else ""
        lines.append(f"a=extmap:{ext_id}{suffix} {uri}")
    for codec in am.codecs:
        pt = codec.payload_type
        lines.append(f"a=rtpmap:{pt} {codec.rtpmap_line()}")
        if codec.fmtp:
            lines.append(f"a=fmtp:{pt} {codec.fmtp_line()}")
        lines += [f"a=rtcp-fb:{pt} {fb}" for fb in codec.rtcp_fb]
        if codec.rtx_payload_type is not None:
            lines.append(f"a=rtpmap:{codec.rtx_payload_type} rtx/{codec.clock_rate}")
            lines.append(f"a=fmtp:{codec.rtx_payload_type} apt={pt}")
    if am.direction in ("sendonly", "sendrecv") and am.ssrc is not None:
        cname = am.cname or "sfu"
        if am.msid:
            lines.append(f"a=msid:{am.msid}")
        ssrcs = [am.ssrc]
        if am.rtx_ssrc is not None:
            ssrcs.append(am.rtx_ssrc)
            lines.append(f"a=ssrc-group:FID {am.ssrc} {am.rtx_ssrc}")  # RFC 5576 section 4.2
        for ssrc in ssrcs:
            lines.append(f"a=ssrc:{ssrc} cname:{cname}")
            if am.msid:
                lines.append(f"a=ssrc:{ssrc} msid:{am.msid}")
    # RFC 8839 section 5.1; priority = (2^24)*126 + (2^8)*65535 + 255 for a host candidate.
    lines.append(f"a=candidate:1 1 udp 2130706431 {local.host} {local.port} typ host")
    lines.append("a=end-of-candidates")
    return lines
