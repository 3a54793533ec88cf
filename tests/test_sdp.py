"""Tests for sfu.sdp against real offers captured from aiortc, Chromium, Firefox
ESR and GStreamer webrtcbin (tests/fixtures/sdp/, scripts in tests/fixtures/capture/)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from sfu.sdp import (
    AnswerMedia,
    Codec,
    H264ProfileLevelId,
    LocalTransport,
    SdpError,
    SessionDescription,
    answer_setup,
    build_answer,
    count_media_sections,
    parse_fmtp,
    parse_sdp,
    select_codecs,
    select_extensions,
    validate_offer,
)

FIXTURES = Path(__file__).parent / "fixtures" / "sdp"

VIDEO_PREFERENCES = ["VP8", "H264", "VP9", "AV1"]
AUDIO_PREFERENCES = ["opus"]
RTCP_FB_ALLOWED = {"nack", "nack pli", "ccm fir", "transport-cc"}  # no goog-remb
EXTENSIONS_ALLOWED = {
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
}
LOCAL = LocalTransport(
    ice_ufrag="sfuU",
    ice_pwd="sfupasswordsfupassword",
    fingerprint=":".join(["AB"] * 32),
    setup="passive",
    host="127.0.0.1",
    port=40000,
)


@dataclass
class Expect:
    want: str  # publish (WHIP) or subscribe (WHEP)
    sections: list[tuple[str, str, str]]  # (kind, mid, direction) in offer order
    video: tuple[str, int, int | None]  # codec chosen with VIDEO_PREFERENCES: name, PT, rtx PT
    audio: tuple[str, int]
    rsize: tuple[str, ...]  # kinds whose section offers a=rtcp-rsize
    bundle_only_mids: tuple[str, ...] = ()


EXPECTED = {
    "aiortc_publish": Expect(
        "publish", [("audio", "0", "sendonly"), ("video", "1", "sendonly")], ("VP8", 97, 98), ("opus", 96), ()
    ),
    "aiortc_view": Expect(
        "subscribe", [("audio", "0", "recvonly"), ("video", "1", "recvonly")], ("VP8", 97, 98), ("opus", 96), ()
    ),
    "aiortc_sendrecv_datachannel": Expect(
        "publish",
        [("audio", "0", "sendrecv"), ("video", "1", "sendrecv"), ("application", "2", "sendrecv")],
        ("VP8", 97, 98),
        ("opus", 96),
        (),
    ),
    "chromium_publish": Expect(
        "publish", [("audio", "0", "sendonly"), ("video", "1", "sendonly")], ("VP8", 96, 97), ("opus", 111), ("audio", "video")
    ),
    "chromium_view": Expect(
        "subscribe", [("audio", "0", "recvonly"), ("video", "1", "recvonly")], ("VP8", 96, 97), ("opus", 111), ("audio", "video")
    ),
    "chromium_datachannel": Expect(
        "publish",
        [("audio", "0", "sendonly"), ("video", "1", "sendonly"), ("application", "2", "sendrecv")],
        ("VP8", 96, 97),
        ("opus", 111),
        ("audio", "video"),
    ),
    "firefox_publish": Expect(
        "publish", [("audio", "0", "sendonly"), ("video", "1", "sendonly")], ("VP8", 120, 124), ("opus", 109), ("video",)
    ),
    "firefox_view": Expect(
        "subscribe", [("audio", "0", "recvonly"), ("video", "1", "recvonly")], ("VP8", 120, 124), ("opus", 109), ("video",)
    ),
    "firefox_datachannel": Expect(
        "publish",
        [("audio", "0", "sendonly"), ("video", "1", "sendonly"), ("application", "2", "sendrecv")],
        ("VP8", 120, 124),
        ("opus", 109),
        ("video",),
    ),
    "gstreamer_vp8_opus": Expect(
        "publish",
        [("video", "video0", "sendrecv"), ("audio", "audio1", "sendrecv")],
        ("VP8", 96, None),
        ("OPUS", 111),
        ("audio", "video"),
        bundle_only_mids=("audio1",),
    ),
    "gstreamer_h264_opus": Expect(
        "publish",
        [("video", "video0", "sendrecv"), ("audio", "audio1", "sendrecv")],
        ("H264", 102, None),
        ("OPUS", 111),
        ("audio", "video"),
        bundle_only_mids=("audio1",),
    ),
}


def load(name: str) -> str:
    return (FIXTURES / f"{name}.sdp").read_bytes().decode()


def test_every_fixture_has_expectations():
    assert sorted(p.stem for p in FIXTURES.glob("*.sdp")) == sorted(EXPECTED)


# -- parsing real offers -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parse_real_offer(name):
    expect = EXPECTED[name]
    offer = parse_sdp(load(name))
    assert not offer.ice_lite
    assert [(m.kind, m.mid, m.direction) for m in offer.media] == expect.sections
    assert offer.bundle == [mid for _, mid, _ in expect.sections]  # max-bundle clients
    for md in offer.media:
        assert md.port in (9, 0)
        assert md.rejected is False  # bundle-only port 0 is not a rejection (RFC 8843 section 6)
        assert md.bundle_only == (md.mid in expect.bundle_only_mids)
        assert md.ice_ufrag and md.ice_pwd
        assert ("sha-256" in [alg for alg, _ in md.fingerprints])
        for _, value in md.fingerprints:
            assert value == value.upper() and len(value.split(":")) >= 20
        assert md.setup == "actpass"
        if md.kind == "application":
            assert md.protocol == "UDP/DTLS/SCTP" and md.codecs == []
            continue
        assert md.protocol == "UDP/TLS/RTP/SAVPF"
        assert md.rtcp_mux and md.rtcp_rsize == (md.kind in expect.rsize)
        pts = [c.payload_type for c in md.codecs]
        rtx = [c.rtx_payload_type for c in md.codecs if c.rtx_payload_type is not None]
        assert len(set(pts + rtx)) == len(pts + rtx)
        assert set(pts + rtx) <= {int(f) for f in md.formats}  # rtx folded, nothing invented
        assert all(c.name.lower() != "rtx" for c in md.codecs)
        assert md.candidates == []  # captured in a loopback-only namespace: nothing gathered
        if md.direction in ("sendonly", "sendrecv"):
            assert md.ssrcs and md.cname and md.msid


def test_parse_chromium_publish_details():
    offer = parse_sdp(load("chromium_publish"))
    audio, video = offer.media
    opus = audio.codecs[0]
    assert (opus.payload_type, opus.name, opus.clock_rate, opus.channels) == (111, "opus", 48000, 2)
    assert opus.fmtp == {"minptime": "10", "useinbandfec": "1"}
    assert opus.rtcp_fb == ["transport-cc"]
    assert opus.mime == "audio/opus"
    assert audio.codecs[2].name == "G722" and audio.codecs[3].name == "PCMU"
    vp8 = video.codecs[0]
    assert (vp8.payload_type, vp8.rtx_payload_type, vp8.mime) == (96, 97, "video/VP8")
    assert vp8.rtcp_fb == ["goog-remb", "transport-cc", "ccm fir", "nack", "nack pli"]
    assert video.extensions[3] == "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
    assert video.extensions[14] == "urn:ietf:params:rtp-hdrext:toffset"
    assert video.extension_directions == {}
    (semantics, (media_ssrc, rtx_ssrc)), = video.ssrc_groups
    assert semantics == "FID" and video.ssrcs == [media_ssrc, rtx_ssrc]
    assert video.msid.split()[0] == audio.msid.split()[0]
    assert offer.origin.startswith("- ")


def test_parse_firefox_session_level_defaults():
    """Firefox writes the fingerprint and a=sendrecv at session level; media
    inherit the fingerprint and override the direction (RFC 8866 section 5)."""
    offer = parse_sdp(load("firefox_publish"))
    assert offer.direction == "sendrecv" and offer.fingerprints
    for md in offer.media:
        assert md.fingerprints == offer.fingerprints
        assert md.direction == "sendonly"
    audio = offer.media[0]
    assert audio.extensions[2] == "urn:ietf:params:rtp-hdrext:csrc-audio-level"
    assert audio.extension_directions == {2: "recvonly"}  # a=extmap:2/recvonly (RFC 8285 section 5)
    assert audio.codecs[-1].name == "telephone-event" and audio.codecs[-1].fmtp == {"0-15": ""}
    video = offer.media[1]
    red = next(c for c in video.codecs if c.name == "red")
    assert red.rtx_payload_type == 119  # rtx apt=122 folds into red


def test_parse_gstreamer_details():
    offer = parse_sdp(load("gstreamer_h264_opus"))
    video, audio = offer.media
    h264 = video.codecs[0]
    assert h264.fmtp["profile-level-id"] == "42c015"
    assert h264.fmtp["sprop-parameter-sets"] == "Z0LAFdkBQfsBagwMDUoAAAMAAgAAAwB5HixckA==,aMuMsg=="
    assert audio.codecs[0].name == "OPUS" and audio.codecs[0].mime == "audio/OPUS"
    assert audio.port == 0 and audio.bundle_only and not audio.rejected
    assert ("rtcp-mux-only", None) in audio.attributes


# -- answering real offers ---------------------------------------------------


def plan(offer: SessionDescription, want: str) -> list[AnswerMedia]:
    """What the signaling layer does: one AnswerMedia per offered section."""
    medias = []
    for index, md in enumerate(offer.media):
        if md.kind not in ("audio", "video") or md.rejected:
            medias.append(AnswerMedia(md.mid, md.kind, "inactive", [], {}, rejected=True))
            continue
        preferences = AUDIO_PREFERENCES if md.kind == "audio" else VIDEO_PREFERENCES
        codecs = select_codecs(md, preferences, RTCP_FB_ALLOWED)
        extensions = select_extensions(md, EXTENSIONS_ALLOWED)
        if want == "publish":
            medias.append(AnswerMedia(md.mid, md.kind, "recvonly", codecs, extensions))
        else:
            rtx = 2000 + index if codecs and codecs[0].rtx_payload_type is not None else None
            medias.append(
                AnswerMedia(
                    md.mid, md.kind, "sendonly", codecs, extensions,
                    ssrc=1000 + index, rtx_ssrc=rtx, cname="sfu-cname", msid=f"stream track{index}",
                )
            )
    return medias


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_answer_real_offer(name):
    expect = EXPECTED[name]
    offer = parse_sdp(load(name))
    validate_offer(offer, expect.want)
    medias = plan(offer, expect.want)
    local = LocalTransport(**{**LOCAL.__dict__, "setup": answer_setup(offer.media[0])})
    text = build_answer(offer, local, medias, session_id=42)

    assert text.endswith("\r\n") and "\n" not in text.replace("\r\n", "")  # CRLF only
    assert text.startswith("v=0\r\no=- 42 2 IN IP4 127.0.0.1\r\n")
    answer = parse_sdp(text)
    assert answer.ice_lite
    accepted = [mid for kind, mid, _ in expect.sections if kind != "application"]
    assert answer.bundle == accepted
    assert [(m.kind, m.mid) for m in answer.media] == [(k, mid) for k, mid, _ in expect.sections]
    for md, offered in zip(answer.media, offer.media):
        if offered.kind == "application":
            # datachannels are not supported: port 0, same mid, out of BUNDLE
            assert md.rejected and md.port == 0 and md.protocol == offered.protocol
            continue
        assert md.port == 9 and not md.rejected
        assert (md.ice_ufrag, md.ice_pwd) == (LOCAL.ice_ufrag, LOCAL.ice_pwd)
        assert md.fingerprints == [("sha-256", LOCAL.fingerprint)]
        assert md.setup == "passive"
        assert md.rtcp_mux and md.rtcp_rsize == offered.rtcp_rsize
        assert md.candidates == ["1 1 udp 2130706431 127.0.0.1 40000 typ host"]
        assert md.end_of_candidates
        want_name, want_pt, want_rtx = (*expect.audio, None) if md.kind == "audio" else expect.video
        (codec,) = md.codecs
        assert (codec.name, codec.payload_type, codec.rtx_payload_type) == (want_name, want_pt, want_rtx)
        offered_codec = next(c for c in offered.codecs if c.payload_type == want_pt)
        assert codec.clock_rate == offered_codec.clock_rate and codec.channels == offered_codec.channels
        assert set(codec.rtcp_fb) == set(offered_codec.rtcp_fb) & RTCP_FB_ALLOWED
        assert "goog-remb" not in codec.rtcp_fb
        assert md.extensions == {i: u for i, u in offered.extensions.items() if u in EXTENSIONS_ALLOWED}
        if expect.want == "publish":
            assert md.direction == "recvonly" and md.ssrcs == []
        else:
            assert md.direction == "sendonly"
            assert md.cname == "sfu-cname" and md.msid.startswith("stream track")
            assert md.ssrcs[0] >= 1000
            if want_rtx is not None:
                assert md.ssrc_groups == [("FID", md.ssrcs)] and len(md.ssrcs) == 2
    # The answer itself is a valid description of what we will receive/send.
    validate_offer(answer, "publish" if expect.want == "subscribe" else "subscribe")


def test_answer_h264_keeps_offer_fmtp_and_adds_level_asymmetry():
    offer = parse_sdp(load("gstreamer_h264_opus"))
    text = build_answer(offer, LOCAL, plan(offer, "publish"), session_id=1)
    assert (
        "a=fmtp:102 packetization-mode=1;sprop-parameter-sets=Z0LAFdkBQfsBagwMDUoAAAMAAgAAAwB5HixckA==,aMuMsg==;"
        "profile-level-id=42c015;level-asymmetry-allowed=1\r\n"
    ) in text
    # GStreamer's bundle-only audio section is accepted with a real port (RFC 8843 section 7.3.1)
    assert "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" in text
    assert "a=rtpmap:111 OPUS/48000/2\r\n" in text


def test_answer_writes_rtx_and_ssrc_lines_for_viewer():
    offer = parse_sdp(load("chromium_view"))
    text = build_answer(offer, LOCAL, plan(offer, "subscribe"), session_id=1)
    lines = text.split("\r\n")
    video = lines[lines.index("m=video 9 UDP/TLS/RTP/SAVPF 96 97"):]
    for line in [
        "a=sendonly", "a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 nack pli", "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96", "a=msid:stream track1", "a=ssrc-group:FID 1001 2001",
        "a=ssrc:1001 cname:sfu-cname", "a=ssrc:2001 msid:stream track1",
    ]:
        assert line in video
    assert "a=msid-semantic:WMS *" in lines


def test_answer_reverses_directional_extmap():
    """RFC 8285 section 6: Firefox offers a=extmap:2/recvonly; accepted, it is answered sendonly."""
    offer = parse_sdp(load("firefox_publish"))
    audio = offer.media[0]
    uri = "urn:ietf:params:rtp-hdrext:csrc-audio-level"
    extensions = select_extensions(audio, {uri})
    assert extensions == {2: uri}
    codecs = select_codecs(audio, ["opus"], set())
    text = build_answer(offer, LOCAL, [AnswerMedia("0", "audio", "recvonly", codecs, extensions)])
    assert f"a=extmap:2/sendonly {uri}\r\n" in text
    # the video section got no AnswerMedia: rejected, and out of the BUNDLE group
    answer = parse_sdp(text)
    assert answer.bundle == ["0"] and answer.media[1].rejected and answer.media[1].mid == "1"


def test_answer_rejects_section_without_codecs_and_explicit_rejections():
    offer = parse_sdp(load("aiortc_publish"))
    medias = plan(offer, "publish")
    medias[0] = AnswerMedia("0", "audio", "recvonly", [], {})  # nothing chosen
    medias[1].rejected = True
    answer = parse_sdp(build_answer(offer, LOCAL, medias))
    assert [m.port for m in answer.media] == [0, 0]
    assert [m.mid for m in answer.media] == ["0", "1"]
    assert answer.bundle == []


def test_answer_ipv6_host():
    offer = parse_sdp(load("aiortc_publish"))
    local = LocalTransport(**{**LOCAL.__dict__, "host": "::1"})
    text = build_answer(offer, local, plan(offer, "publish"), session_id=7)
    assert "c=IN IP6 ::1\r\n" in text and "typ host" in text
    assert "o=- 7 2 IN IP6 ::1\r\n" in text


def test_answer_setup():
    offer = parse_sdp(load("chromium_publish"))
    assert answer_setup(offer.media[0]) == "passive"  # actpass: we are the DTLS server
    passive = parse_sdp(load("chromium_publish").replace("a=setup:actpass", "a=setup:passive"))
    assert answer_setup(passive.media[0]) == "active"
    active = parse_sdp(load("chromium_publish").replace("a=setup:actpass", "a=setup:active"))
    assert answer_setup(active.media[0]) == "passive"


# -- codec selection -----------------------------------------------------------


def video_of(name: str):
    return next(m for m in parse_sdp(load(name)).media if m.kind == "video")


@pytest.mark.parametrize(
    "preferences, expected_pt",
    [
        (["VP8", "H264"], 96),
        (["H264", "VP8"], 108),  # any packetization-mode=1, constrained baseline 42e01f first
        (["H264/constrained-baseline"], 108),
        (["H264/baseline"], 102),  # 42001f
        (["H264/main"], 116),  # 4d001f
        (["H264/4d0032"], 116),  # same profile, other level (RFC 7742 section 6.2)
        (["H264/high"], None),  # not offered
        (["H264/640c1f", "VP9"], 98),  # falls through to VP9 profile-id=0, not 2
        (["AV1", "VP8"], 45),
        (["G722", "VP8"], 96),  # unknown names are skipped
        (["opus"], None),  # audio codec never matches a video section
        ([], None),
    ],
)
def test_select_codecs_preferences(preferences, expected_pt):
    chosen = select_codecs(video_of("chromium_publish"), preferences, RTCP_FB_ALLOWED)
    assert [c.payload_type for c in chosen] == ([] if expected_pt is None else [expected_pt])


def test_select_codecs_h264_packetization_mode_0_only():
    text = load("chromium_publish")
    # drop every packetization-mode=1 H264 from the offer: nothing left to choose
    text = text.replace("packetization-mode=1", "packetization-mode=0")
    assert select_codecs(video_of_text(text), ["H264"], RTCP_FB_ALLOWED) == []


def video_of_text(text: str):
    return next(m for m in parse_sdp(text).media if m.kind == "video")


def test_select_codecs_vp9_profile_2_only():
    text = load("chromium_publish").replace("a=fmtp:98 profile-id=0", "a=fmtp:98 profile-id=2")
    assert select_codecs(video_of_text(text), ["VP9"], RTCP_FB_ALLOWED) == []


def test_select_codecs_returns_copies():
    video = video_of("chromium_publish")
    (h264,) = select_codecs(video, ["H264"], {"nack"})
    assert h264.rtcp_fb == ["nack"] and h264.fmtp["level-asymmetry-allowed"] == "1"
    original = next(c for c in video.codecs if c.payload_type == 108)
    assert len(original.rtcp_fb) == 5  # the parsed offer is untouched


def test_select_codecs_opus_needs_two_channels():
    audio = parse_sdp(load("aiortc_publish").replace("opus/48000/2", "opus/48000")).media[0]
    assert select_codecs(audio, ["opus"], set()) == []


def test_select_extensions():
    video = video_of("chromium_publish")
    assert select_extensions(video, set()) == {}
    assert select_extensions(video, {"urn:ietf:params:rtp-hdrext:sdes:mid", "urn:x-unknown"}) == {
        4: "urn:ietf:params:rtp-hdrext:sdes:mid"
    }


def test_codec_helpers():
    codec = Codec(100, "H264", 90000, None, parse_fmtp("packetization-mode=1; profile-level-id=42e01f"), [])
    assert codec.mime == "video/H264"
    assert codec.fmtp_line() == "packetization-mode=1;profile-level-id=42e01f"
    assert codec.rtpmap_line() == "H264/90000"
    red = Codec(63, "red", 48000, 2, parse_fmtp("111/111"), [], kind="audio")
    assert red.fmtp_line() == "111/111" and red.rtpmap_line() == "red/48000/2" and red.mime == "audio/red"


# -- H264 profile-level-id (RFC 6184 section 8.1) ------------------------------


@pytest.mark.parametrize(
    "plid, profile, level",
    [
        ("42e01f", "constrained-baseline", "3.1"),
        ("42c015", "constrained-baseline", "2.1"),  # GStreamer x264enc
        ("4de01f", "constrained-baseline", "3.1"),
        ("42001f", "baseline", "3.1"),
        ("4d001f", "main", "3.1"),
        ("640c1f", "constrained-high", "3.1"),
        ("640032", "high", "5"),
        ("f4001f", "predictive-high-444", "3.1"),
        ("42f00b", "constrained-baseline", "1b"),  # level_idc 11 + constraint_set3
        ("42e00b", "constrained-baseline", "1.1"),
        ("6e001f", None, "3.1"),  # High 10: not a WebRTC profile
    ],
)
def test_h264_profile_level_id(plid, profile, level):
    parsed = H264ProfileLevelId.parse(plid)
    assert (parsed.profile, parsed.level, str(parsed)) == (profile, level, plid)


@pytest.mark.parametrize("bad", ["", "42e01", "42e01f0", "zz001f"])
def test_h264_profile_level_id_invalid(bad):
    with pytest.raises(SdpError, match="profile-level-id"):
        H264ProfileLevelId.parse(bad)


# -- invalid offers -----------------------------------------------------------


def without(text: str, *prefixes: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(prefixes))


@pytest.mark.parametrize(
    "make, want, message",
    [
        (lambda t: "", "publish", "empty SDP body"),
        (lambda t: " \r\n\r\n", "publish", "empty SDP body"),
        (lambda t: "hello world", "publish", "not an SDP body"),
        (lambda t: '{"type": "offer"}', "publish", "not an SDP body"),
        (lambda t: t.replace("a=mid:1", "mid 1"), "publish", "malformed SDP line"),
        (lambda t: t.replace("m=video 9 UDP", "m=video x UDP"), "publish", "malformed m= line"),
        (lambda t: t.replace("a=rtpmap:96 VP8/90000", "a=rtpmap:96 VP8"), "publish", "malformed a=rtpmap"),
        (lambda t: t.replace("a=fingerprint:sha-256 ", "a=fingerprint:sha-256 zz"), "publish", "malformed a=fingerprint"),
        (lambda t: t.replace(" 96 97 102", " 96 x 102"), "publish", "malformed payload type"),
        (lambda t: without(t, "a=fingerprint"), "publish", "offer has no DTLS fingerprint"),
        (lambda t: t.replace("a=fingerprint:sha-256", "a=fingerprint:md5"), "publish", "no usable DTLS fingerprint"),
        (lambda t: without(t, "a=ice-pwd"), "publish", "offer has no ICE credentials"),
        (lambda t: without(t, "a=ice-ufrag"), "publish", "offer has no ICE credentials"),
        (lambda t: without(t, "a=rtcp-mux"), "publish", "no a=rtcp-mux on m=audio mid 0"),
        (lambda t: t.replace("a=group:BUNDLE 0 1", "a=group:BUNDLE 0"), "publish", r"does not BUNDLE all sections \(m=video mid 1\)"),
        (lambda t: without(t, "a=group:BUNDLE"), "publish", "does not BUNDLE all sections"),
        (lambda t: t.replace("a=mid:1", "a=mid:0"), "publish", r"duplicate a=mid values \(0\)"),
        (lambda t: t.replace("m=video 9 UDP", "m=video 65536 UDP"), "publish", "port out of range"),
        (lambda t: t.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"), "publish", "DTLS-SRTP"),
        (lambda t: t.replace("a=setup:actpass", "a=setup:holdconn"), "publish", "a=setup:holdconn"),
        (lambda t: t.replace("a=sendonly", "a=recvonly"), "publish", r"offer has no track to publish \(recvonly offer to WHIP\?\)"),
        (lambda t: t, "subscribe", "sendonly offer to WHEP"),
        (lambda t: t.replace("m=audio 9", "m=audio 0").replace("m=video 9", "m=video 0"), "publish", "no audio or video section"),
    ],
)
def test_invalid_offer(make, want, message):
    text = make(load("chromium_publish"))
    with pytest.raises(SdpError, match=message):
        validate_offer(parse_sdp(text), want)


def test_no_codec_in_common():
    text = load("aiortc_publish")
    for name in ("opus/48000/2", "VP8/90000", "H264/90000"):
        text = text.replace(name, {"opus/48000/2": "speex/16000", "VP8/90000": "MP4V-ES/90000"}.get(name, "H265/90000"))
    with pytest.raises(SdpError, match=r"no codec in common with the SFU \(offered: G722, H265, MP4V-ES, PCMA, PCMU, speex\)"):
        validate_offer(parse_sdp(text), "publish")


def test_validate_rejects_unknown_want():
    with pytest.raises(ValueError, match="want must be"):
        validate_offer(parse_sdp(load("aiortc_publish")), "both")


def test_sdp_error_is_value_error():
    assert issubclass(SdpError, ValueError)


def test_lf_only_and_trailing_garbage_lines():
    """Some clients (curl users, hand-written WHIP bodies) send LF line endings."""
    text = load("aiortc_publish").replace("\r\n", "\n")
    offer = parse_sdp(text)
    validate_offer(offer, "publish")
    assert offer.media[1].codecs[0].name == "VP8"


# -- truncated and mutated offers: SdpError or a result, nothing else ---------


@pytest.mark.parametrize("name", ["chromium_publish", "firefox_datachannel", "gstreamer_h264_opus"])
def test_truncated_offers_never_crash(name):
    text = load(name)
    for end in range(0, len(text), 7):
        check_only_sdp_error(text[:end])


def test_mutated_offers_never_crash():
    rng = random.Random(1234)
    texts = [load(name) for name in sorted(EXPECTED)]
    alphabet = "=: /;-0123456789abcdefm\r\n\x00\xff"
    for _ in range(3000):
        chars = list(rng.choice(texts))
        for _ in range(rng.randint(1, 8)):
            chars[rng.randrange(len(chars))] = rng.choice(alphabet)
        check_only_sdp_error("".join(chars))


def check_only_sdp_error(text: str) -> None:
    try:
        offer = parse_sdp(text)
        for want in ("publish", "subscribe"):
            try:
                validate_offer(offer, want)
            except SdpError:
                continue
            plan_text = build_answer(offer, LOCAL, plan(offer, want), session_id=1)
            parse_sdp(plan_text)
    except SdpError as exc:
        assert str(exc) and "\n" not in str(exc)


# -- real clients accept our answers (loopback-only network namespace) ---------

CAPTURE = Path(__file__).parent / "fixtures" / "capture"
REPO = Path(__file__).parent.parent

AIORTC_ACCEPTS = """
import asyncio, sys
sys.path.insert(0, "tests/fixtures/capture")
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from browser_offers import sfu_answer

async def check(mode):
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        if mode == "view":
            pc.addTransceiver("audio", direction="recvonly")
            pc.addTransceiver("video", direction="recvonly")
        else:
            pc.addTransceiver(AudioStreamTrack(), direction="sendonly")
            pc.addTransceiver(VideoStreamTrack(), direction="sendonly")
            if mode == "datachannel":
                pc.createDataChannel("chat")
        await pc.setLocalDescription(await pc.createOffer())
        answer = sfu_answer(pc.localDescription.sdp, mode)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        return "ok"
    except Exception as exc:
        return repr(exc)
    finally:
        await pc.close()

for mode in ("publish", "view", "datachannel"):
    print(mode, asyncio.run(check(mode)))
"""


def run_in_loopback_namespace(*argv: str) -> str:
    import shlex
    import subprocess

    command = "ip link set lo up && exec " + shlex.join(argv)
    done = subprocess.run(
        ["unshare", "-n", "sh", "-c", command], cwd=REPO, capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_aiortc_accepts_answers():
    import sys

    out = run_in_loopback_namespace(sys.executable, "-c", AIORTC_ACCEPTS)
    assert out.split("\n")[:3] == ["publish ok", "view ok", "datachannel ok"], out


@pytest.mark.e2e
@pytest.mark.browser
@pytest.mark.timeout(120)
@pytest.mark.parametrize("browser", ["chromium", "firefox"])
def test_browser_accepts_answers(browser):
    """The page applies sfu.sdp's answer with setRemoteDescription in a real browser."""
    import shutil
    import sys

    if shutil.which("chromium" if browser == "chromium" else "firefox-esr") is None:
        pytest.fail(f"{browser} is not installed: run `bash scripts/install-system-deps.sh` (make test does)")
    out = run_in_loopback_namespace(sys.executable, str(CAPTURE / "browser_offers.py"), browser, "--answer")
    assert out.split("\n")[:3] == ["publish ok", "view ok", "datachannel ok"], out


def test_answer_offer_without_mid():
    """A single-section offer without a=mid (pre-BUNDLE style, RFC 5888) is
    matched by position ("0") and answered without inventing a mid."""
    text = without(load("aiortc_publish"), "a=mid", "a=group")
    text = text[: text.index("m=video")]
    offer = parse_sdp(text)
    validate_offer(offer, "publish")
    codecs = select_codecs(offer.media[0], ["opus"], set())
    answer_text = build_answer(offer, LOCAL, [AnswerMedia("0", "audio", "recvonly", codecs, {})])
    assert "a=mid" not in answer_text and "a=group" not in answer_text
    assert parse_sdp(answer_text).media[0].codecs[0].payload_type == 96
    positional = build_answer(offer, LOCAL, [AnswerMedia(None, "audio", "recvonly", codecs, {})])
    assert positional == answer_text.replace(answer_text.split("\r\n")[1], positional.split("\r\n")[1])


@pytest.mark.parametrize("name", ["chromium_publish", "firefox_view", "aiortc_sendrecv_datachannel",
                                  "gstreamer_vp8_opus"])
def test_media_section_limit_counts_what_the_parser_finds(name):
    """The limit is checked on the raw text (before any object is built) and counts
    exactly the sections the parser finds; at the limit the offer parses."""
    text = load(name)
    sections = len(parse_sdp(text).media)
    assert sections >= 2 and count_media_sections(text) == sections
    assert len(parse_sdp(text, max_sections=sections).media) == sections
    with pytest.raises(SdpError, match=f"offer has {sections} media sections, at most {sections - 1} are allowed"):
        parse_sdp(text, max_sections=sections - 1)
