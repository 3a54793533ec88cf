"""SrtpPair: libsrtp sessions of a transport, against an independent pair."""

import os
import struct

import pylibsrtp
import pytest
from pylibsrtp import Policy, Session

from sfu.dtls import Certificate, DtlsEndpoint, HandshakeComplete
from sfu.router import CACHE_SIZE
from sfu.srtp import KEY_LENGTHS, PROFILES, SrtpPair

PROFILE_NAMES = list(PROFILES)


def rtp(seq: int, ssrc: int = 0x11223344, payload: bytes = b"\xab" * 160, ts: int = 0) -> bytes:
    # RFC 3550 §5.1: V=2, PT=111.
    return struct.pack("!BBHII", 0x80, 111, seq & 0xFFFF, ts or seq * 960, ssrc) + payload


def rtcp_rr(ssrc: int = 0x55667788) -> bytes:
    # RFC 3550 §6.4.2: a receiver report without report blocks.
    return struct.pack("!BBHI", 0x80, 201, 1, ssrc)


def keys(profile):
    return os.urandom(KEY_LENGTHS[profile]), os.urandom(KEY_LENGTHS[profile])


def peer_sessions(profile, local_key, remote_key):
    """The other end, built directly on pylibsrtp: it sends with our
    remote_key and receives with our local_key."""
    tx = Session(Policy(key=remote_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILES[profile]))
    rx = Session(Policy(key=local_key, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=PROFILES[profile]))
    return tx, rx


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_rtp_and_rtcp_round_trip(profile):
    local_key, remote_key = keys(profile)
    pair = SrtpPair(profile, local_key, remote_key)
    peer_tx, peer_rx = peer_sessions(profile, local_key, remote_key)
    tag = 16 if profile == "SRTP_AEAD_AES_128_GCM" else 10  # RFC 7714 §8.2 / RFC 3711 §3.1
    for seq in range(100, 110):
        packet = rtp(seq)
        protected = pair.protect(packet)
        assert len(protected) == len(packet) + tag
        assert protected[:12] == packet[:12]  # the header stays in the clear
        assert protected[12 : len(packet)] != packet[12:]  # the payload is not
        assert peer_rx.unprotect(protected) == packet
        assert pair.unprotect(peer_tx.protect(packet)) == packet
    report = rtcp_rr()
    protected = pair.protect_rtcp(report)
    assert len(protected) == len(report) + 4 + tag  # E flag + SRTCP index, tag
    assert peer_rx.unprotect_rtcp(protected) == report
    assert pair.unprotect_rtcp(peer_tx.protect_rtcp(report)) == report


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_replay_rejected_on_receive(profile):
    # RFC 3711 §3.3.2
    local_key, remote_key = keys(profile)
    pair = SrtpPair(profile, local_key, remote_key)
    peer_tx, _ = peer_sessions(profile, local_key, remote_key)
    protected = peer_tx.protect(rtp(1))
    assert pair.unprotect(protected) == rtp(1)
    with pytest.raises(pylibsrtp.Error, match="replay"):
        pair.unprotect(protected)
    protected_rtcp = peer_tx.protect_rtcp(rtcp_rr())
    pair.unprotect_rtcp(protected_rtcp)
    with pytest.raises(pylibsrtp.Error, match="replay"):
        pair.unprotect_rtcp(protected_rtcp)


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_reordering_within_window_accepted(profile):
    # A NACKed packet resent without RTX keeps its sequence number and comes
    # late: accepted while inside the receive window.
    local_key, remote_key = keys(profile)
    pair = SrtpPair(profile, local_key, remote_key)
    peer_tx, _ = peer_sessions(profile, local_key, remote_key)
    late = peer_tx.protect(rtp(1000))
    for seq in range(1001, 1500):
        pair.unprotect(peer_tx.protect(rtp(seq)))
    assert pair.unprotect(late) == rtp(1000)


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_repeat_protect_allowed_on_send(profile):
    # DESIGN "known pitfalls": libsrtp refuses to protect the same SSRC and
    # sequence number twice unless allow_repeat_tx; a NACK answered by
    # resending the original packet needs it, also well after the original:
    # up to the oldest packet the packet cache still holds (the send window
    # must cover the cache, sfu.router.CACHE_SIZE).
    local_key, remote_key = keys(profile)
    pair = SrtpPair(profile, local_key, remote_key)
    _, peer_rx = peer_sessions(profile, local_key, remote_key)
    first = pair.protect(rtp(7))
    for seq in range(8, 7 + CACHE_SIZE):
        pair.protect(rtp(seq))
    again = pair.protect(rtp(7))
    assert again == first  # same keystream, same packet
    assert peer_rx.unprotect(again) == rtp(7)

    # A plain libsrtp session refuses, for contrast.
    plain = Session(Policy(key=local_key, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=PROFILES[profile]))
    plain.protect(rtp(7))
    with pytest.raises(pylibsrtp.Error, match="replay"):
        plain.protect(rtp(7))


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_tampered_packet_rejected(profile):
    local_key, remote_key = keys(profile)
    pair = SrtpPair(profile, local_key, remote_key)
    peer_tx, _ = peer_sessions(profile, local_key, remote_key)
    for index in (1, 5, 12, 40, -1):  # header, payload and tag
        protected = bytearray(peer_tx.protect(rtp(100 + (index % 50))))
        protected[index] ^= 0x01
        with pytest.raises(pylibsrtp.Error):
            pair.unprotect(bytes(protected))
    protected = bytearray(peer_tx.protect_rtcp(rtcp_rr()))
    protected[-1] ^= 0x01
    with pytest.raises(pylibsrtp.Error):
        pair.unprotect_rtcp(bytes(protected))
    # The wrong key altogether.
    other = SrtpPair(profile, *keys(profile))
    with pytest.raises(pylibsrtp.Error, match="authentication"):
        other.unprotect(peer_tx.protect(rtp(500)))


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_remove_streams(profile):
    local_key, remote_key = keys(profile)
    pair = SrtpPair(profile, local_key, remote_key)
    peer_tx, peer_rx = peer_sessions(profile, local_key, remote_key)

    # Inbound: the stream (and its replay state) goes; a fresh one is made
    # from the template on the next packet.
    protected = peer_tx.protect(rtp(1, ssrc=1111))
    pair.unprotect(protected)
    with pytest.raises(pylibsrtp.Error):
        pair.unprotect(protected)
    pair.remove_inbound_stream(1111)
    assert pair.unprotect(protected) == rtp(1, ssrc=1111)

    # Outbound: a sequence number far behind the stream's index is too old
    # for its window; after removal the SSRC starts over.
    pair.protect(rtp(20000, ssrc=2222))
    with pytest.raises(pylibsrtp.Error, match="too old"):
        pair.protect(rtp(1, ssrc=2222))
    pair.remove_outbound_stream(2222)
    assert peer_rx.unprotect(pair.protect(rtp(1, ssrc=2222))) == rtp(1, ssrc=2222)

    # No such stream: ignored (a track that never sent a packet).
    pair.remove_inbound_stream(0xDEADBEEF)
    pair.remove_outbound_stream(0xDEADBEEF)
    pair.remove_outbound_stream(2222)
    pair.remove_outbound_stream(2222)


def test_stream_churn_does_not_accumulate():
    # Many short-lived SSRCs, each removed: the session stays usable and
    # every removal finds its stream (it would raise otherwise).
    profile = "SRTP_AEAD_AES_128_GCM"
    local_key, remote_key = keys(profile)
    pair = SrtpPair(profile, local_key, remote_key)
    peer_tx, _ = peer_sessions(profile, local_key, remote_key)
    for ssrc in range(1, 2001):
        pair.protect(rtp(1, ssrc=ssrc))
        pair.unprotect(peer_tx.protect(rtp(1, ssrc=ssrc)))
        pair.tx.remove_stream(ssrc)  # raises if libsrtp had no stream
        pair.rx.remove_stream(ssrc)


def test_invalid_arguments():
    with pytest.raises(ValueError):
        SrtpPair("SRTP_NULL_NULL", bytes(30), bytes(30))
    with pytest.raises(ValueError):
        SrtpPair("SRTP_AEAD_AES_128_GCM", bytes(30), bytes(28))  # CM length
    with pytest.raises(ValueError):
        SrtpPair("SRTP_AES128_CM_SHA1_80", bytes(30), bytes(31))


def test_garbage_raises_only_srtp_errors():
    pair = SrtpPair("SRTP_AES128_CM_SHA1_80", *keys("SRTP_AES128_CM_SHA1_80"))
    for data in (b"", b"\x80", bytes(12), b"\x80\x6f" + os.urandom(40), os.urandom(100)):
        for method in (pair.unprotect, pair.unprotect_rtcp):
            with pytest.raises((pylibsrtp.Error, ValueError)):
                method(data)


@pytest.mark.parametrize("client_profiles", [None, ["SRTP_AES128_CM_SHA1_80"]])
def test_keys_from_dtls_handshake(client_profiles):
    # RFC 5764 §4.2: the keys both sides export from one handshake protect
    # and unprotect each other's packets.
    client_cert, server_cert = Certificate.generate(), Certificate.generate()
    kwargs = {"srtp_profiles": client_profiles} if client_profiles else {}
    client = DtlsEndpoint(client_cert, "client", [("sha-256", server_cert.fingerprint())], **kwargs)
    server = DtlsEndpoint(server_cert, "server", [("sha-256", client_cert.fingerprint())])
    client.start(0.0)
    server.start(0.0)
    for _ in range(10):
        for a, b in ((client, server), (server, client)):
            for datagram in a.datagrams_to_send():
                b.receive(datagram, 0.0)
    c, s = client.next_event(), server.next_event()
    assert isinstance(c, HandshakeComplete) and isinstance(s, HandshakeComplete)
    client_srtp = SrtpPair(c.srtp_profile, c.local_key, c.remote_key)
    server_srtp = SrtpPair(s.srtp_profile, s.local_key, s.remote_key)
    for seq in range(5):
        assert server_srtp.unprotect(client_srtp.protect(rtp(seq))) == rtp(seq)
        assert client_srtp.unprotect(server_srtp.protect(rtp(seq, ssrc=9))) == rtp(seq, ssrc=9)
    assert server_srtp.unprotect_rtcp(client_srtp.protect_rtcp(rtcp_rr())) == rtcp_rr()
    assert client_srtp.unprotect_rtcp(server_srtp.protect_rtcp(rtcp_rr(7))) == rtcp_rr(7)
    # A side can't read its own packets (different keys per direction).
    with pytest.raises(pylibsrtp.Error):
        client_srtp.unprotect(client_srtp.protect(rtp(100, ssrc=77)))


# -- the layout the C data path reads (sfu.srtp.srtp_session_pointer) ------------------


class _Session:
    """Stands where a pylibsrtp Session of another layout would: ``_srtp`` is whatever
    the test gives it (a cdata of pylibsrtp's own ffi, or nothing)."""

    def __init__(self, *srtp) -> None:
        if srtp:
            self._srtp = srtp[0]


class _Pair:
    def __init__(self, tx, rx) -> None:
        self.tx, self.rx = tx, rx


def test_the_installed_pylibsrtp_has_the_verified_layout():
    from packaging.specifiers import SpecifierSet

    from sfu.srtp import PYLIBSRTP_VERIFIED, srtp_session_pointer

    assert pylibsrtp.__version__ in SpecifierSet(PYLIBSRTP_VERIFIED), \
        f"pylibsrtp {pylibsrtp.__version__} is not in the verified range {PYLIBSRTP_VERIFIED}"
    pyproject = open(os.path.join(os.path.dirname(__file__), "..", "pyproject.toml")).read()
    assert f'"pylibsrtp{PYLIBSRTP_VERIFIED}"' in pyproject, "the pin and PYLIBSRTP_VERIFIED differ"
    for profile in PROFILE_NAMES:
        pair = SrtpPair(profile, *keys(profile))
        tx, rx = srtp_session_pointer(pair.tx), srtp_session_pointer(pair.rx)
        assert tx and rx and tx != rx
        assert tx == int(pylibsrtp.ffi.cast("uintptr_t", pair.tx._srtp[0]))


@pytest.mark.parametrize("srtp, found", [
    (pylibsrtp.ffi.new("int *"), "a 'int *' cdata"),
    (pylibsrtp.ffi.new("srtp_policy_t *"), "a 'struct srtp_policy_t *' cdata"),
    (pylibsrtp.ffi.new("char[]", 64), "a 'char[]' cdata"),
    ("srtp", "a str"),
    (None, "missing"),
], ids=["int", "policy", "buffer", "str", "missing"])
def test_another_layout_is_refused_with_what_to_do(srtp, found):
    from sfu.srtp import PYLIBSRTP_VERIFIED, srtp_session_pointer

    session = _Session() if srtp is None else _Session(srtp)
    with pytest.raises(RuntimeError) as err:
        srtp_session_pointer(session)
    message = str(err.value)
    assert f"pylibsrtp {pylibsrtp.__version__} changed the layout" in message
    assert f"Session._srtp is {found}" in message
    assert f"pip install 'pylibsrtp{PYLIBSRTP_VERIFIED}'" in message and "--datapath pure" in message


def test_a_session_without_a_context_is_refused():
    from sfu.srtp import srtp_session_pointer

    with pytest.raises(ValueError, match="no srtp_t"):
        srtp_session_pointer(_Session(pylibsrtp.ffi.new("srtp_t *")))  # NULL srtp_t


def test_the_c_data_path_refuses_another_layout_before_using_it():
    """Through the real C peer: the same message, and the peer keeps no sessions."""
    from sfu._fast.datapath import Datapath

    dp = Datapath(lambda d, a: None, capture=True)
    peer = dp.new_peer("p")
    good = SrtpPair(PROFILE_NAMES[0], *keys(PROFILE_NAMES[0]))
    with pytest.raises(RuntimeError, match=r"Session\._srtp is a 'int \*' cdata.*--datapath pure"):
        peer.set_srtp(_Pair(good.tx, _Session(pylibsrtp.ffi.new("int *"))))
    with pytest.raises(RuntimeError, match="Session._srtp is missing"):
        peer.set_srtp(_Pair(_Session(), good.rx))
    peer.set_srtp(good)  # the installed layout
