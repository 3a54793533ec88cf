"""ICE-lite: STUN checks against RFC 5769 vectors, IceLite with a fake clock."""

import hashlib
import os
import random

import pytest
from aioice import stun

from sfu.ice import (
    ERROR_BURST,
    ERROR_RATE,
    VERIFY_BACKOFF,
    VERIFY_RTO,
    VERIFY_TRANSMISSIONS,
    AddressSelected,
    IceLite,
    peek_local_ufrag,
    peek_ufrag,
)

# RFC 5769 §2: the password shared by the short-term vectors.
RFC5769_PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"

# RFC 5769 §2.1: sample request (SOFTWARE, PRIORITY, ICE-CONTROLLED,
# USERNAME "evtj:h6vY", MESSAGE-INTEGRITY, FINGERPRINT).
RFC5769_REQUEST = bytes.fromhex(
    "000100582112a442b7e7a701bc34d686fa87dfae"
    "802200105354554e207465737420636c69656e74"
    "002400046e0001ff"
    "80290008932ff9b151263b36"
    "000600096576746a3a68367659202020"
    "000800149aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004e57a3bcf"
)

# RFC 5769 §2.2: sample IPv4 response, XOR-MAPPED-ADDRESS 192.0.2.1:32853.
RFC5769_RESPONSE_IPV4 = bytes.fromhex(
    "0101003c2112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000080001a147e112a643"
    "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004c07d4c96"
)

# RFC 5769 §2.3: sample IPv6 response,
# XOR-MAPPED-ADDRESS [2001:db8:1234:5678:11:2233:4455:6677]:32853.
RFC5769_RESPONSE_IPV6 = bytes.fromhex(
    "010100482112a442b7e7a701bc34d686fa87dfae"
    "8022000b7465737420766563746f7220"
    "002000140002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004c8fb0b4c"
)

# RFC 5769 §2.4: request with long-term credentials (USERNAME "マトリックス",
# NONCE, REALM "example.org", MESSAGE-INTEGRITY; no FINGERPRINT).
RFC5769_REQUEST_LONG_TERM = bytes.fromhex(
    "000100602112a44278ad3433c6ad72c029da412e"
    "00060012e3839ee38388e383aae38383e382afe382b90000"
    "0015001c662f2f3439396b39353464364f4c33346f4c3946535476793634734100"
    "14000b6578616d706c652e6f726700"
    "0008001" "4f67024656dd64a3e02b8e0712e85c9a28ca89666"
)

SHORT_TERM_VECTORS = [RFC5769_REQUEST, RFC5769_RESPONSE_IPV4, RFC5769_RESPONSE_IPV6]


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# -- RFC 5769 vectors through aioice's codec -------------------------------


@pytest.mark.parametrize("vector", SHORT_TERM_VECTORS, ids=["2.1", "2.2", "2.3"])
def test_rfc5769_short_term_vectors_verify(vector):
    message = stun.parse_message(vector)  # FINGERPRINT is checked by the parser
    assert message.attributes["FINGERPRINT"] == stun.message_fingerprint(vector[:-8])
    assert message.check_message_integrity(RFC5769_PASSWORD)
    assert not message.check_message_integrity(b"VOkJxbRl1RmTxUk/WvJxBT")


def test_rfc5769_request_attributes():
    # RFC 5769 §2.1
    message = stun.parse_message(RFC5769_REQUEST)
    assert message.message_method == stun.Method.BINDING
    assert message.message_class == stun.Class.REQUEST
    assert message.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert message.attributes["USERNAME"] == "evtj:h6vY"
    assert message.attributes["SOFTWARE"] == "STUN test client"
    assert message.attributes["PRIORITY"] == 0x6E0001FF
    assert message.attributes["ICE-CONTROLLED"] == 0x932FF9B151263B36
    assert peek_local_ufrag(RFC5769_REQUEST) == "evtj"


def test_rfc5769_response_addresses():
    # RFC 5769 §2.2 and §2.3
    v4 = stun.parse_message(RFC5769_RESPONSE_IPV4)
    assert v4.message_class == stun.Class.RESPONSE
    assert v4.attributes["XOR-MAPPED-ADDRESS"] == ("192.0.2.1", 32853)
    v6 = stun.parse_message(RFC5769_RESPONSE_IPV6)
    assert v6.attributes["XOR-MAPPED-ADDRESS"] == (
        "2001:db8:1234:5678:11:2233:4455:6677",
        32853,
    )
    assert peek_local_ufrag(RFC5769_RESPONSE_IPV4) is None


def test_rfc5769_long_term_vector():
    # RFC 5769 §2.4: key = MD5(username ":" realm ":" SASLprep(password)),
    # the password "The<U+00AD>M<U+00AA>tr<U+2168>" prepares to "TheMatrIX".
    message = stun.parse_message(RFC5769_REQUEST_LONG_TERM)
    assert message.attributes["USERNAME"] == "\u30de\u30c8\u30ea\u30c3\u30af\u30b9"
    assert message.attributes["REALM"] == "example.org"
    assert message.attributes["NONCE"] == b"f//499k954d6OL34oL9FSTvy64sA"
    assert "FINGERPRINT" not in message.attributes
    key = hashlib.md5(
        f"{message.attributes['USERNAME']}:example.org:TheMatrIX".encode()
    ).digest()
    assert message.check_message_integrity(key)


RFC5769_LONG_TERM_KEY = hashlib.md5(
    "\u30de\u30c8\u30ea\u30c3\u30af\u30b9:example.org:TheMatrIX".encode()
).digest()


@pytest.mark.parametrize(
    "vector, key",
    [(v, RFC5769_PASSWORD) for v in SHORT_TERM_VECTORS]
    + [(RFC5769_REQUEST_LONG_TERM, RFC5769_LONG_TERM_KEY)],
    ids=["2.1", "2.2", "2.3", "2.4"],
)
def test_rfc5769_flipped_bit_is_rejected(vector, key):
    # A bit flipped in the header, in an attribute covered by
    # MESSAGE-INTEGRITY, in the HMAC or in the CRC: the FINGERPRINT check
    # (parse raises) or the integrity check fails. Excluded: the type and
    # length fields of MESSAGE-INTEGRITY and FINGERPRINT themselves (a flipped
    # FINGERPRINT type leaves a message without FINGERPRINT, which IceLite
    # discards; aioice reads the 20-byte HMAC whatever its length field says).
    has_fingerprint = vector is not RFC5769_REQUEST_LONG_TERM
    mi_offset = len(vector) - 24 - (8 if has_fingerprint else 0)
    excluded = set(range(mi_offset, mi_offset + 4))
    if has_fingerprint:
        excluded |= set(range(len(vector) - 8, len(vector) - 4))
    for index in range(len(vector)):
        if index in excluded:
            continue
        try:
            message = stun.parse_message(flip(vector, index))
        except Exception:
            continue
        assert not message.check_message_integrity(key), index


def test_rfc5769_request_answered_by_icelite():
    # RFC 5769 §2.1 as a check addressed to ufrag "evtj" from "h6vY".
    ice = IceLite("evtj", RFC5769_PASSWORD.decode(), "h6vY", created=0.0)
    reply = ice.receive(RFC5769_REQUEST, ("192.0.2.1", 32853), now=1.0)
    response = stun.parse_message(reply)
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert response.attributes["XOR-MAPPED-ADDRESS"] == ("192.0.2.1", 32853)
    assert response.check_message_integrity(RFC5769_PASSWORD)
    # The same request with one bit flipped anywhere gets no success.
    for index in range(20, len(RFC5769_REQUEST)):
        ice = IceLite("evtj", RFC5769_PASSWORD.decode(), "h6vY", created=0.0)
        reply = ice.receive(flip(RFC5769_REQUEST, index), ("192.0.2.1", 32853), 1.0)
        assert reply is None or stun.parse_message(reply).message_class == stun.Class.ERROR
        assert ice.last_consent is None, index


# -- peek_local_ufrag --------------------------------------------------------


def make_request(
    username="sfu1:peer",
    password="sfu-password-1234567890",
    use_candidate=False,
    transaction_id=None,
    integrity=True,
    fingerprint=True,
):
    """A Binding request as a full ICE agent sends it (RFC 8445 §7.2.2)."""
    request = stun.Message(
        message_method=stun.Method.BINDING,
        message_class=stun.Class.REQUEST,
        transaction_id=transaction_id,
    )
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1853824767
    request.attributes["ICE-CONTROLLING"] = 0x1122334455667788
    if use_candidate:
        request.attributes["USE-CANDIDATE"] = None
    if integrity:
        request.add_message_integrity(password.encode())
    elif fingerprint:
        request.add_fingerprint()
    return bytes(request)


def test_peek_local_ufrag():
    assert peek_local_ufrag(make_request("abc:def")) == "abc"
    assert peek_local_ufrag(make_request("abc")) is None
    assert peek_local_ufrag(make_request(":def")) is None
    assert peek_local_ufrag(b"") is None
    assert peek_local_ufrag(b"\x16\xfe\xfd" + bytes(40)) is None  # DTLS
    assert peek_local_ufrag(make_request("abc:def")[:30]) is None  # truncated
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE)
    response.attributes["USERNAME"] = "abc:def"
    assert peek_local_ufrag(bytes(response)) is None  # not a request


def test_peek_local_ufrag_garbage_never_raises():
    rng = random.Random(1)
    valid = make_request("abc:def")
    for _ in range(2000):
        data = bytearray(valid[: rng.randrange(len(valid) + 1)])
        for _ in range(rng.randrange(4)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        peek_local_ufrag(bytes(data))
        peek_ufrag(bytes(data))
    peek_local_ufrag(valid[:20] + b"\x00\x06\x00\x02\xff\xfe")


def test_peek_ufrag_requests_and_responses():
    assert peek_ufrag(make_request("abc:def")) == "abc"
    tid = bytes.fromhex("0a1b2c3d") + os.urandom(8)
    for message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
        message = stun.Message(stun.Method.BINDING, message_class, tid)
        assert peek_ufrag(bytes(message)) == "0a1b2c3d"
    indication = stun.Message(stun.Method.BINDING, stun.Class.INDICATION, tid)
    assert peek_ufrag(bytes(indication)) is None
    assert peek_ufrag(bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, tid))[:19]) is None
    no_cookie = bytearray(bytes(stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, tid)))
    no_cookie[4] ^= 1
    assert peek_ufrag(bytes(no_cookie)) is None


# -- IceLite -----------------------------------------------------------------

LOCAL_UFRAG = "sfu1"
LOCAL_PWD = "sfu-password-1234567890"
REMOTE_UFRAG = "peer"
ADDR = ("127.0.0.1", 50000)


def make_ice(**kwargs):
    return IceLite(LOCAL_UFRAG, LOCAL_PWD, REMOTE_UFRAG, created=100.0, **kwargs)


def drain(ice):
    events = []
    while (event := ice.next_event()) is not None:
        events.append(event)
    return events


@pytest.mark.parametrize("addr", [("127.0.0.1", 50000), ("::1", 50001, 0, 0)])
def test_binding_success_response(addr):
    # RFC 8445 §7.3.1.1, RFC 8489 §7.3.1
    ice = make_ice()
    transaction_id = os.urandom(12)
    reply = ice.receive(make_request(transaction_id=transaction_id), addr, now=101.0)
    response = stun.parse_message(reply)  # FINGERPRINT verified
    assert response.message_method == stun.Method.BINDING
    assert response.message_class == stun.Class.RESPONSE
    assert response.transaction_id == transaction_id
    assert response.attributes["XOR-MAPPED-ADDRESS"] == (addr[0], addr[1])
    assert "FINGERPRINT" in response.attributes
    assert response.check_message_integrity(LOCAL_PWD.encode())
    assert ice.last_consent == 101.0
    assert ice.selected_address == addr
    assert drain(ice) == [AddressSelected(addr)]


def test_wrong_password_gives_401_and_no_state_change():
    ice = make_ice()
    reply = ice.receive(make_request(password="wrong"), ADDR, now=101.0)
    response = stun.parse_message(reply)
    assert response.message_class == stun.Class.ERROR
    assert response.error_code == 401
    assert ice.last_consent is None
    assert ice.selected_address is None
    assert drain(ice) == []


@pytest.mark.parametrize("username", ["other:peer", "sfu1:other", "sfu1", "peer:sfu1"])
def test_unknown_username_gives_401(username):
    ice = make_ice()
    response = stun.parse_message(ice.receive(make_request(username), ADDR, 101.0))
    assert response.error_code == 401
    assert ice.last_consent is None and ice.selected_address is None


def test_remote_ufrag_unknown_accepts_any_sender_ufrag():
    ice = IceLite(LOCAL_UFRAG, LOCAL_PWD)
    reply = ice.receive(make_request("sfu1:whoever"), ADDR, 5.0)
    assert stun.parse_message(reply).message_class == stun.Class.RESPONSE


def test_missing_integrity_gives_400():
    # RFC 8489 §9.1.3
    ice = make_ice()
    reply = ice.receive(make_request(integrity=False), ADDR, 101.0)
    assert stun.parse_message(reply).error_code == 400
    assert ice.last_consent is None


def test_not_answered():
    ice = make_ice()
    valid = make_request()
    # bad FINGERPRINT: discarded (RFC 8489 §7.3)
    assert ice.receive(valid[:-1] + bytes([valid[-1] ^ 1]), ADDR, 101.0) is None
    # no FINGERPRINT at all (RFC 8445 §7.2.2 requires it)
    assert ice.receive(make_request(integrity=False, fingerprint=False), ADDR, 101.0) is None
    # indication, response
    for message_class in (stun.Class.INDICATION, stun.Class.RESPONSE, stun.Class.ERROR):
        message = stun.Message(stun.Method.BINDING, message_class)
        message.add_message_integrity(LOCAL_PWD.encode())
        assert ice.receive(bytes(message), ADDR, 101.0) is None
    # other method
    allocate = stun.Message(stun.Method.ALLOCATE, stun.Class.REQUEST)
    allocate.attributes["USERNAME"] = "sfu1:peer"
    allocate.add_message_integrity(LOCAL_PWD.encode())
    assert ice.receive(bytes(allocate), ADDR, 101.0) is None
    assert ice.last_consent is None and ice.selected_address is None


REMOTE_PWD = "peer-password-abcdefghij"
ROUTED_UFRAG = "0a1b2c3d"  # 8 hex digits, as sfu.transport makes them


def verifying_ice(**kwargs):
    return IceLite(ROUTED_UFRAG, LOCAL_PWD, REMOTE_UFRAG, created=100.0, remote_pwd=REMOTE_PWD, **kwargs)


def check(use_candidate=False, password=LOCAL_PWD):
    return make_request(f"{ROUTED_UFRAG}:{REMOTE_UFRAG}", password=password, use_candidate=use_candidate)


def answer(request: bytes, addr, password=REMOTE_PWD, error=None):
    """What the full agent at `addr` answers to our request (RFC 8445 §7.3.1.1)."""
    message = stun.parse_message(request)
    if error is not None:
        response = stun.Message(stun.Method.BINDING, stun.Class.ERROR, message.transaction_id,
                                attributes={"ERROR-CODE": (error, "No")})
        response.add_fingerprint()
        return bytes(response)
    response = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, message.transaction_id,
                            attributes={"XOR-MAPPED-ADDRESS": (addr[0], addr[1])})
    response.add_message_integrity(password.encode())
    return bytes(response)


def test_first_check_selects_its_address():
    ice = verifying_ice()
    a = ("127.0.0.1", 50000)
    assert ice.receive(check(), a, 101.0) is not None
    assert drain(ice) == [AddressSelected(a)] and ice.selected_address == a
    assert ice.datagrams_to_send() == [] and ice.get_timer() is None  # proven by DTLS (docstring)
    # a check from elsewhere without USE-CANDIDATE: answered, nothing else
    assert ice.receive(check(), ("127.0.0.1", 50002), 102.0) is not None
    assert ice.selected_address == a and drain(ice) == [] and ice.datagrams_to_send() == []


def test_nomination_from_a_new_address_moves_only_after_our_check_is_answered():
    # RFC 7675 §5.1 / RFC 8445 §7.3.1.5: the lite agent checks the new address itself
    ice = verifying_ice()
    a, b = ("127.0.0.1", 50000), ("127.0.0.1", 50002)
    ice.receive(check(), a, 101.0)
    drain(ice)
    assert ice.receive(check(use_candidate=True), b, 102.0) is not None
    assert ice.selected_address == a and drain(ice) == []  # not yet
    [(request, to)] = ice.datagrams_to_send()
    assert to == b
    message = stun.parse_message(request)  # FINGERPRINT verified by the parser
    assert message.message_class == stun.Class.REQUEST
    assert message.attributes["USERNAME"] == f"{REMOTE_UFRAG}:{ROUTED_UFRAG}"
    assert "ICE-CONTROLLED" in message.attributes and "PRIORITY" in message.attributes
    assert "USE-CANDIDATE" not in message.attributes
    assert message.check_message_integrity(REMOTE_PWD.encode())
    assert message.transaction_id[:4].hex() == ROUTED_UFRAG
    assert peek_ufrag(answer(request, b)) == ROUTED_UFRAG  # routed like a request
    # one at a time: more nominations from b (or c) send nothing more
    ice.receive(check(use_candidate=True), b, 102.1)
    ice.receive(check(use_candidate=True), ("127.0.0.1", 50004), 102.1)
    assert ice.datagrams_to_send() == []
    # answers that do not count: wrong password, wrong transaction, wrong source
    assert ice.receive(answer(request, b, password="wrong"), b, 102.2) is None
    other = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    assert ice.receive(answer(bytes(other), b), b, 102.2) is None
    assert ice.receive(answer(request, b), ("127.0.0.1", 50004), 102.2) is None
    assert ice.receive(answer(request, b), a, 102.2) is None
    assert ice.selected_address == a and drain(ice) == []
    # consent is not refreshed by b's checks, only by the selected address's
    assert ice.last_consent == 101.0
    # the real answer, from b
    assert ice.receive(answer(request, b), b, 102.3) is None
    assert ice.selected_address == b and drain(ice) == [AddressSelected(b)]
    assert ice.last_consent == 102.3 and ice.get_timer() is None
    # a replay of that answer changes nothing
    assert ice.receive(answer(request, b), b, 102.4) is None and drain(ice) == []


def test_verification_retransmits_then_gives_up_and_backs_off():
    ice = verifying_ice()
    a, victim = ("127.0.0.1", 50000), ("127.0.0.2", 40000)
    ice.receive(check(), a, 100.0)
    sent = []
    # a flood of spoofed nominations (the victim never answers)
    now = 100.0
    while now < 130.0:
        ice.receive(check(use_candidate=True), victim, now)
        sent += ice.datagrams_to_send()
        timer = ice.get_timer()
        if timer is not None and timer <= now:
            ice.handle_timer(now)
            sent += ice.datagrams_to_send()
        now = round(now + 0.01, 2)
    assert ice.selected_address == a and all(to == victim for _, to in sent)
    # each verification: VERIFY_TRANSMISSIONS requests over 3.5 s, then a 5 s pause
    per_round = VERIFY_TRANSMISSIONS
    period = VERIFY_RTO * (2 ** VERIFY_TRANSMISSIONS - 1) + VERIFY_BACKOFF
    assert len(sent) <= per_round * (30.0 / period + 1)
    assert ice.verifications_failed >= 2
    assert len({stun.parse_message(d).transaction_id for d, _ in sent}) == ice.verifications
    # retransmissions keep the transaction id (RFC 8489 §6.2.1)
    assert sent[0][0] == sent[1][0]


def test_verification_error_answer_ends_it():
    ice = verifying_ice()
    a, b = ("127.0.0.1", 50000), ("127.0.0.1", 50002)
    ice.receive(check(), a, 100.0)
    ice.receive(check(use_candidate=True), b, 101.0)
    [(request, _)] = ice.datagrams_to_send()
    ice.receive(answer(request, b, error=487), b, 101.1)
    assert ice.get_timer() is None and ice.verifications_failed == 1
    assert ice.selected_address == a
    ice.receive(check(use_candidate=True), b, 102.0)  # backing off
    assert ice.datagrams_to_send() == []
    ice.receive(check(use_candidate=True), b, 101.1 + VERIFY_BACKOFF)
    [(request, _)] = ice.datagrams_to_send()
    ice.receive(answer(request, b), b, 106.2)
    assert ice.selected_address == b


@pytest.mark.parametrize("kwargs", [{"remote_pwd": None}, {"remote_ufrag": None}])
def test_no_remote_credentials_no_move(kwargs):
    args = {"remote_ufrag": REMOTE_UFRAG, "remote_pwd": REMOTE_PWD, **kwargs}
    ice = IceLite(ROUTED_UFRAG, LOCAL_PWD, created=100.0, **args)
    a, b = ("127.0.0.1", 50000), ("127.0.0.1", 50002)
    user = f"{ROUTED_UFRAG}:{REMOTE_UFRAG}"
    ice.receive(make_request(user), a, 101.0)
    ice.receive(make_request(user, use_candidate=True), b, 102.0)
    assert ice.selected_address == a and ice.datagrams_to_send() == []


def test_error_answers_are_rate_limited():
    ice = make_ice()
    bad = make_request(password="wrong")
    answered = sum(ice.receive(bad, ADDR, 101.0) is not None for _ in range(1000))
    assert answered == ERROR_BURST and ice.errors_ratelimited == 1000 - ERROR_BURST
    # refilled at ERROR_RATE a second; 10 s of 1000 a second gets ~100 answers
    answered = 0
    for i in range(10000):
        answered += ice.receive(bad, ADDR, 101.0 + i / 1000) is not None
    assert ERROR_RATE * 10 - 2 <= answered <= ERROR_RATE * 10 + ERROR_BURST
    # a valid check is still answered (and 400s share the bucket)
    assert ice.receive(make_request(), ADDR, 111.0) is not None


def test_consent_expiry():
    # RFC 7675 §5.1: 30 s without a successful check.
    ice = make_ice()
    assert not ice.is_expired(129.9)
    assert ice.is_expired(130.0)  # never checked: counted from creation

    ice = make_ice()
    ice.receive(make_request(), ADDR, 110.0)
    assert not ice.is_expired(130.0)
    ice.receive(make_request(), ADDR, 125.0)  # refreshed
    assert not ice.is_expired(154.9)
    ice.receive(make_request(password="nope"), ADDR, 150.0)  # a 401 refreshes nothing
    assert ice.is_expired(155.0)


def test_consent_timeout_parameter_and_lazy_creation():
    ice = IceLite(LOCAL_UFRAG, LOCAL_PWD, REMOTE_UFRAG, consent_timeout=5.0)
    assert not ice.is_expired(1000.0)  # starts counting here
    assert not ice.is_expired(1004.0)
    assert ice.is_expired(1005.0)


def test_garbage_never_raises():
    ice = make_ice()
    rng = random.Random(7)
    valid = make_request(use_candidate=True)
    samples = [b"", b"\x00", bytes(19), bytes(20), b"\x80" * 100, os.urandom(300)]
    for _ in range(3000):
        data = bytearray(valid[: rng.randrange(len(valid) + 1)])
        for _ in range(rng.randrange(5)):
            if data:
                data[rng.randrange(len(data))] = rng.randrange(256)
        samples.append(bytes(data))
    for data in samples:
        reply = ice.receive(data, ADDR, 101.0)
        assert reply is None or isinstance(reply, bytes)
        peek_local_ufrag(data)


# -- the fast path gives what the slow path gives ------------------------------------------

def _raw_request(attrs: list[tuple[int, bytes]], password: str | None = "sfu-password-1234567890",
                 fingerprint: bool = True, transaction_id: bytes | None = None) -> bytes:
    """A Binding request from raw attributes (type, value), then MESSAGE-INTEGRITY and
    FINGERPRINT computed by hand (RFC 8489 §14.5, §14.7) -- independent of both paths."""
    import binascii
    import hmac
    import struct

    tid = transaction_id or os.urandom(12)
    body = b"".join(struct.pack("!HH", t, len(v)) + v + bytes(-len(v) & 3) for t, v in attrs)

    def header(length):
        return struct.pack("!HHI12s", 0x0001, length, stun.COOKIE, tid)

    msg = header(len(body)) + body
    if password is not None:
        mac = hmac.new(password.encode(), header(len(body) + 24) + body, "sha1").digest()
        body += struct.pack("!HH", 0x0008, 20) + mac
        msg = header(len(body)) + body
    if fingerprint:
        crc = binascii.crc32(header(len(body) + 8) + body) ^ 0x5354554E
        body += struct.pack("!HHI", 0x8028, 4, crc)
        msg = header(len(body)) + body
    return msg


def _both_paths(data: bytes, addr, now=101.0):
    fast, slow = make_ice(), make_ice()
    slow._answer_fast = lambda *a: None  # aioice's parser only
    got = (fast.receive(data, addr, now), slow.receive(data, addr, now))
    assert (fast.last_consent, fast.selected_address, drain(fast)) == \
        (slow.last_consent, slow.selected_address, drain(slow))
    return got, fast


USER = (0x0006, b"sfu1:peer")
PRIO = (0x0024, (1853824767).to_bytes(4, "big"))
CONTROLLING = (0x802A, os.urandom(8))
USE_CAND = (0x0025, b"")
NETWORK_INFO = (0xC057, b"\x00\x01\x00\x0a")  # GOOG-NETWORK-INFO (Chromium): unknown to aioice


@pytest.mark.parametrize("attrs", [
    [USER, PRIO, CONTROLLING],
    [USER, PRIO, CONTROLLING, USE_CAND],
    [USER, NETWORK_INFO, CONTROLLING, USE_CAND, PRIO],  # Chromium's order
    [PRIO, USER],
    [USER, (0x8029, os.urandom(8)), PRIO],  # ICE-CONTROLLED
    [CONTROLLING, USE_CAND, USER],  # USERNAME last, 9 bytes (padded)
])
@pytest.mark.parametrize("addr", [("127.0.0.1", 50000), ("::1", 50001, 0, 0), ("10.1.2.3", 9)])
def test_fast_path_answers_byte_identical_to_the_slow_path(attrs, addr):
    data = _raw_request(attrs)
    (fast, slow), ice = _both_paths(data, addr)
    assert fast is not None and fast == slow
    assert ice._answer_fast(data, addr, 102.0) == fast  # and the fast path did answer it
    # a second check from the same address (cached XOR-MAPPED-ADDRESS) still matches
    data = _raw_request(attrs)
    (fast, slow), _ = _both_paths(data, addr)
    assert fast == slow


@pytest.mark.parametrize("data", [
    _raw_request([USER, PRIO], password="wrong"),  # 401
    _raw_request([(0x0006, b"nobody:peer"), PRIO]),  # 401
    _raw_request([PRIO]),  # no USERNAME: 400
    _raw_request([USER, PRIO], password=None),  # no MESSAGE-INTEGRITY: 400
    _raw_request([USER, PRIO], fingerprint=False),  # no FINGERPRINT: no answer
    _raw_request([USER, (0x0024, b"\x00\x00\x01")]),  # PRIORITY of a wrong length
    _raw_request([USER, (0x8022, b"test")]),  # SOFTWARE: another known attribute
    _raw_request([USER, USER]),  # USERNAME twice
    _raw_request([(0x0006, b"\xff\xfe:peer")]),  # USERNAME not UTF-8
    flip(_raw_request([USER, PRIO]), 30),  # a bit flipped: FINGERPRINT fails
    _raw_request([USER, PRIO])[:-1],  # truncated
    b"\x00\x01\x00\x00" + os.urandom(16),  # no magic cookie
])
def test_fast_path_leaves_everything_else_to_the_slow_path(data):
    addr = ("127.0.0.1", 50000)
    (fast, slow), ice = _both_paths(data, addr)
    assert fast == slow
    assert ice._answer_fast(data, addr, 101.0) is None


def test_fast_path_answers_a_real_aioice_check():
    data = make_request(use_candidate=True)
    ice = make_ice()
    assert ice._answer_fast(data, ADDR, 101.0) is not None
    assert ice.selected_address == ADDR and ice.last_consent == 101.0


def test_a_full_agent_answers_our_verification_request():
    # aioice (aiortc's ICE agent, controlling against a lite server) accepts
    # the request as we build it and its answer verifies the new address.
    from aioice import Connection

    agent = Connection(ice_controlling=True)
    agent.remote_username, agent.remote_password = ROUTED_UFRAG, LOCAL_PWD
    ice = IceLite(ROUTED_UFRAG, LOCAL_PWD, agent.local_username, created=100.0,
                  remote_pwd=agent.local_password)
    a, b = ("127.0.0.1", 50000), ("127.0.0.1", 50002)
    user = f"{ROUTED_UFRAG}:{agent.local_username}"
    ice.receive(make_request(user), a, 101.0)
    ice.receive(make_request(user, use_candidate=True), b, 102.0)
    [(request, to)] = ice.datagrams_to_send()

    class Protocol:
        sent: list = []

        def send_stun(self, message, addr):
            self.sent.append((bytes(message), addr))

    protocol = Protocol()
    agent.request_received(stun.parse_message(request), ("127.0.0.1", 3478), protocol)
    [(response, _)] = protocol.sent
    assert stun.parse_message(response).message_class == stun.Class.RESPONSE
    ice.receive(response, b, 102.1)
    assert ice.selected_address == b
