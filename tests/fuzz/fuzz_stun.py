"""Fuzz target: STUN Binding requests into ICE-lite (sfu/ice.py).

Input: one flags byte, then the datagram. Flags bit 0: sign the datagram
(recompute MESSAGE-INTEGRITY and FINGERPRINT where the attributes are) so
that mutations get past the integrity checks; bits 1-2: the source address
(fixed, IPv4 from the last 3 bytes, or IPv6); bit 3: the session that does
not know the remote ufrag yet; bit 4: a response to the session's own check
(RFC 7675 consent of a new address): the transaction id of the last check it
sent, signed with the remote password.

Property: ``peek_local_ufrag`` returns None or a string; ``IceLite.receive``
answers None or one STUN response (success or error, at most 256 bytes) and
never raises; what it sends on its own is STUN; its state stays bounded
(events, checks in flight).
"""

from __future__ import annotations

import binascii
import hmac
import inspect
import struct
import sys

from harness import fuzz_imports, run

with fuzz_imports():
    from aioice import stun

    import sfu.ice
    from sfu.ice import IceLite, peek_local_ufrag

LOCAL_UFRAG = "fzlu"
LOCAL_PWD = "fuzzpassword0123456789ab"
REMOTE_UFRAG = "fzrm"

REMOTE_PWD = "remotepassword0123456789"
# remote_pwd: the SFU checks a new address itself before media moves there
_KW = {"remote_pwd": REMOTE_PWD} if "remote_pwd" in inspect.signature(IceLite).parameters else {}
ice = IceLite(LOCAL_UFRAG, LOCAL_PWD, REMOTE_UFRAG, created=0.0, **_KW)
ice_any = IceLite(LOCAL_UFRAG, LOCAL_PWD, None, created=0.0, **_KW)  # remote ufrag not known yet
clock = [0.0]
last_check = {id(ice): bytes(12), id(ice_any): bytes(12)}  # transaction id of the last check each sent


def sign(message: bytes, key: str = LOCAL_PWD) -> bytes:
    """Fix MESSAGE-INTEGRITY (RFC 8489 §14.5) and FINGERPRINT (§14.7) in place."""
    if len(message) < 20:
        return message
    buf = bytearray(message)
    pos = 20
    while pos + 4 <= len(buf):
        attr_type, attr_len = struct.unpack_from("!HH", buf, pos)
        end = pos + 4 + attr_len
        if end > len(buf):
            break
        if attr_type == 0x0008 and attr_len == 20:
            length = buf[2:4]
            struct.pack_into("!H", buf, 2, pos - 20 + 24)
            buf[pos + 4:end] = hmac.digest(key.encode(), bytes(buf[:pos]), "sha1")
            buf[2:4] = length
        elif attr_type == 0x8028 and attr_len == 4:
            struct.pack_into("!I", buf, pos + 4, binascii.crc32(bytes(buf[:pos])) ^ 0x5354554E)
        pos = end + (-attr_len & 3)
    return bytes(buf)


def address(flags: int, data: bytes) -> tuple:
    choice = (flags >> 1) & 3
    if choice == 1 and len(data) >= 3:
        return (f"10.{data[0]}.{data[1]}.{data[2]}", 1024 + data[0] * 7 + data[1])
    if choice == 2:
        return ("2001:db8::1", 4000 + (data[0] if data else 0))
    return ("192.0.2.1", 50000)


def check_answer(answer, request: bytes) -> None:
    if answer is None:
        return
    assert isinstance(answer, bytes), type(answer)
    assert len(answer) <= 256, f"answer of {len(answer)} bytes"
    message = stun.parse_message(answer)  # our own answer must parse, FINGERPRINT included
    assert message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR), message.message_class
    assert message.transaction_id == request[8:20]


def one_input(data: bytes) -> None:
    if not data:
        return
    flags, datagram = data[0], data[1:]
    session = ice_any if flags & 8 else ice
    if flags & 16 and len(datagram) >= 20:
        datagram = datagram[:8] + last_check[id(session)] + datagram[20:]
    if flags & 1:
        datagram = sign(datagram, REMOTE_PWD if flags & 16 else LOCAL_PWD)
    addr = address(flags, datagram[-3:])
    clock[0] += 0.01 + (flags >> 5) * 0.5
    ufrag = peek_local_ufrag(datagram)
    assert ufrag is None or (isinstance(ufrag, str) and ufrag), ufrag
    if hasattr(sfu.ice, "peek_ufrag"):
        ufrag = sfu.ice.peek_ufrag(datagram)
        assert ufrag is None or isinstance(ufrag, str), ufrag
    check_answer(session.receive(datagram, addr, clock[0]), datagram)
    if hasattr(session, "handle_timer"):
        session.handle_timer(clock[0])
    if hasattr(session, "datagrams_to_send"):
        for sent, to in session.datagrams_to_send():
            assert isinstance(to, tuple), to
            assert stun.parse_message(sent).message_class == stun.Class.REQUEST
            last_check[id(session)] = sent[8:20]
    while session.next_event() is not None:
        pass
    session.is_expired(clock[0])


def bounded() -> None:
    for session in (ice, ice_any):
        assert session.next_event() is None
        assert session.selected_address is None or isinstance(session.selected_address, tuple)


if __name__ == "__main__":
    run(one_input, bounded=bounded)
    sys.exit(0)
