"""Hand-written JSEP offers for meeting sessions (no WebRTC client needed):
``meeting_offer([("0", "audio", "sendonly"), ("1", "video", "recvonly")])``
writes what a browser would offer for those transceivers, with one ICE/DTLS
identity per "peer connection" so that subsequent offers can renegotiate."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

FINGERPRINT = ":".join(["AB"] * 32)


@dataclass
class OfferPeer:
    """The identity a peer connection keeps across its offers (RFC 9429 §5.2.2)."""

    ice_ufrag: str = field(default_factory=lambda: "u%05d" % random.randrange(100000))
    ice_pwd: str = "p" * 24
    fingerprint: str = FINGERPRINT
    ssrcs: dict = field(default_factory=dict)  # mid -> ssrc of its sendonly track

    def offer(self, sections: list[tuple]) -> str:
        """sections: (mid, kind, direction) or (mid, kind, direction, port)."""
        active = [s[0] for s in sections if (s[3] if len(s) > 3 else 9) != 0]
        lines = ["v=0", "o=- 4611686018427387 2 IN IP4 127.0.0.1", "s=-", "t=0 0"]
        if active:
            lines.append("a=group:BUNDLE " + " ".join(active))
        lines.append("a=msid-semantic: WMS *")
        for section in sections:
            mid, kind, direction = section[:3]
            port = section[3] if len(section) > 3 else 9
            pts = "111" if kind == "audio" else "96 97"
            lines += [
                f"m={kind} {port} UDP/TLS/RTP/SAVPF {pts}",
                "c=IN IP4 0.0.0.0",
                f"a=ice-ufrag:{self.ice_ufrag}",
                f"a=ice-pwd:{self.ice_pwd}",
                f"a=fingerprint:sha-256 {self.fingerprint}",
                "a=setup:actpass",
                f"a=mid:{mid}",
                "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
                f"a={direction}",
                "a=rtcp-mux",
                "a=rtcp-rsize",
            ]
            if kind == "audio":
                lines += ["a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1"]
            else:
                lines += ["a=rtpmap:96 VP8/90000", "a=rtcp-fb:96 nack", "a=rtcp-fb:96 nack pli",
                          "a=rtcp-fb:96 ccm fir", "a=rtpmap:97 rtx/90000", "a=fmtp:97 apt=96"]
            if direction in ("sendonly", "sendrecv") and port != 0:
                ssrc = self.ssrcs.setdefault(mid, random.getrandbits(31) + 1)
                lines.append(f"a=ssrc:{ssrc} cname:test")
        return "\r\n".join(lines) + "\r\n"
