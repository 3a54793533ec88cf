"""The two SRTP sessions of one transport (RFC 3711, RFC 7714), over libsrtp.

Keys come from the DTLS handshake (`sfu.dtls.HandshakeComplete`): master
key || master salt for what we send (`local_key`) and for what we receive
(`remote_key`), RFC 5764 §4.2.

Both sessions use libsrtp's wildcard SSRC policies, so libsrtp creates a
stream per SSRC on first use: call `remove_*_stream` when a track goes, or
memory grows with churn. The outbound session allows repeated sequence
numbers, so that a NACK (RFC 4585 §6.2.1) can be answered by protecting the
original packet again when the subscriber has no RTX.

The C data path hands libsrtp the ``srtp_t`` inside a pylibsrtp Session:
`srtp_session_pointer` reads it where the verified pylibsrtp versions keep it
(pinned in pyproject.toml) and refuses, saying what to do, if it is not there.
"""

from __future__ import annotations

import pylibsrtp
from pylibsrtp import Policy, Session

__all__ = ["PROFILES", "PYLIBSRTP_VERIFIED", "SrtpPair", "srtp_session_pointer"]

# The pylibsrtp versions whose Session layout srtp_session_pointer was verified with
# (a private attribute ``_srtp``: an ``srtp_t *`` of pylibsrtp's cffi ``ffi``); keep in
# step with the pin in pyproject.toml.
PYLIBSRTP_VERIFIED = ">=1.0,<1.1"

# DTLS-SRTP profile names (RFC 5764 §4.1.2, RFC 7714 §14.2) -> libsrtp.
PROFILES: dict[str, int] = {
    "SRTP_AEAD_AES_128_GCM": Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    "SRTP_AES128_CM_SHA1_80": Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
}

# Master key + master salt lengths (RFC 3711 §8.2, RFC 7714 §12).
KEY_LENGTHS: dict[str, int] = {
    "SRTP_AEAD_AES_128_GCM": 16 + 12,
    "SRTP_AES128_CM_SHA1_80": 16 + 14,
}

# Replay windows, in packets (RFC 3711 §3.3.2 requires at least 64; libsrtp
# allows up to 32768). Receive: a retransmission without RTX comes back with
# its original sequence number an RTT later, 128 packets (libsrtp's default)
# is 0.1 s of HD video. Send: a packet resent for a NACK must still be
# inside the window, or libsrtp calls it too old even with allow_repeat_tx;
# the packet cache holds 1024 packets per stream (sfu.tracks.CACHE_SIZE), so
# 1024 covers every packet that can be resent. No larger: libsrtp shifts the
# whole window's bitmap for every packet sent (4096 cost ~0.8 µs a packet).
RX_WINDOW = 1024
TX_WINDOW = 1024

# libsrtp's "no appropriate context found": no stream for that SSRC.
_NO_STREAM = "no appropriate context found"


class SrtpPair:
    """Outbound (`tx`) and inbound (`rx`) libsrtp sessions of a transport.

    protect/unprotect raise `pylibsrtp.Error` on authentication or replay
    failure (and ValueError for a packet too long for pylibsrtp's buffer).
    """

    def __init__(
        self,
        profile: str,
        local_key: bytes,
        remote_key: bytes,
        *,
        rx_window: int = RX_WINDOW,
        tx_window: int = TX_WINDOW,
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unsupported SRTP profile {profile!r}")
        for name, key in (("local_key", local_key), ("remote_key", remote_key)):
            if len(key) != KEY_LENGTHS[profile]:
                raise ValueError(
                    f"{name} must be {KEY_LENGTHS[profile]} bytes for {profile}, not {len(key)}"
                )
        self.profile = profile

        tx_policy = Policy(
            key=bytes(local_key),
            ssrc_type=Policy.SSRC_ANY_OUTBOUND,
            srtp_profile=PROFILES[profile],
        )
        tx_policy.allow_repeat_tx = True
        tx_policy.window_size = tx_window
        self.tx: Session = Session(tx_policy)

        rx_policy = Policy(
            key=bytes(remote_key),
            ssrc_type=Policy.SSRC_ANY_INBOUND,
            srtp_profile=PROFILES[profile],
        )
        rx_policy.window_size = rx_window
        self.rx: Session = Session(rx_policy)

    def protect(self, rtp: bytes) -> bytes:
        return self.tx.protect(rtp)

    def unprotect(self, srtp: bytes) -> bytes:
        return self.rx.unprotect(srtp)

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        return self.tx.protect_rtcp(rtcp)

    def unprotect_rtcp(self, srtcp: bytes) -> bytes:
        return self.rx.unprotect_rtcp(srtcp)

    def remove_outbound_stream(self, ssrc: int) -> None:
        """Forget the outbound stream of `ssrc` (a consumer went away)."""
        _remove(self.tx, ssrc)

    def remove_inbound_stream(self, ssrc: int) -> None:
        """Forget the inbound stream of `ssrc` (a producer went away)."""
        _remove(self.rx, ssrc)


def srtp_session_pointer(session: Session) -> int:
    """The address of the ``srtp_t`` (``struct srtp_ctx_t_ *``) of a pylibsrtp Session,
    for the C data path (sfu/_fast/datapath.pyx), which calls libsrtp with it.

    RuntimeError, naming the pylibsrtp version and what to do, if the session does not
    keep it as the verified versions do (``_srtp``, an ``srtp_t *`` cdata of pylibsrtp's
    ``ffi``); ValueError if it holds no context.
    """
    ffi = getattr(pylibsrtp, "ffi", None)  # its cffi module, as pylibsrtp/__init__ imports it
    if ffi is None:
        raise RuntimeError(_layout_changed("pylibsrtp.ffi is missing"))
    srtp = getattr(session, "_srtp", None)
    if not isinstance(srtp, ffi.CData) or ffi.typeof(srtp) is not ffi.typeof("srtp_t *"):
        if isinstance(srtp, ffi.CData):
            found = f"a {ffi.typeof(srtp).cname!r} cdata"
        else:
            found = "missing" if srtp is None else f"a {type(srtp).__name__}"
        raise RuntimeError(_layout_changed(f"Session._srtp is {found}, not a 'struct srtp_ctx_t_ * *'"))
    pointer = int(ffi.cast("uintptr_t", srtp[0]))
    if pointer == 0:
        raise ValueError("pylibsrtp session has no srtp_t")
    return pointer


def _layout_changed(what: str) -> str:
    return (f"pylibsrtp {getattr(pylibsrtp, '__version__', '?')} changed the layout the C data path "
            f"relies on: {what} (verified with pylibsrtp{PYLIBSRTP_VERIFIED}); install a verified "
            f"version (pip install 'pylibsrtp{PYLIBSRTP_VERIFIED}') or run with --datapath pure")


def _remove(session: Session, ssrc: int) -> None:
    try:
        session.remove_stream(ssrc)
    except pylibsrtp.Error as exc:
        if str(exc) != _NO_STREAM:
            raise
