"""ICE-lite over one UDP port shared by all peers, sans-I/O.

The SFU is a lite agent (RFC 8445 §2.5): it gathers only host candidates and
is always the controlled agent. It answers the STUN Binding requests of the
full agent on the other side (RFC 8445 §7.3), learns the peer's address from
them (peer-reflexive: Chromium gathers no loopback candidates) and keeps
consent alive from them (RFC 7675 §5.1: consent expires 30 s after the last
successful check).

Which address gets media. A valid check proves only that its sender knows the
credentials, not that it receives at its source address: a participant can
send one with a spoofed source. So the selected address (where everything we
send goes) changes only to an address whose return routability is proven:

- The first address (the first valid check's source) is selected at once, for
  the DTLS handshake only: no media can flow before the handshake completes
  (no SRTP keys), and it completes only if the peer saw our flight at that
  address (both Finished messages cover both randoms), so the completed
  handshake is the proof for it. A check spoofed from a victim's address gets
  the victim at most the handshake's own flights, never media.
- Any later address (a nomination, USE-CANDIDATE, from elsewhere: a NAT
  rebinding or a network change) is first verified (RFC 7675 §5.1, RFC 8445
  §7.3.1.5 for a lite agent): we send our own Binding request to it (USERNAME
  "<remote ufrag>:<local ufrag>", ICE-CONTROLLED, PRIORITY, MESSAGE-INTEGRITY
  keyed with the remote ice-pwd from the offer, FINGERPRINT), retransmitted a
  few times, and switch only on a success response with that transaction id,
  valid integrity (remote password) and FINGERPRINT, received from that very
  address. Media keeps going to the old address meanwhile.

The work a participant can cause is bounded: one verification at a time per
session, at most `VERIFY_TRANSMISSIONS` requests each, and a pause of
`VERIFY_BACKOFF` after one fails; a flood of spoofed checks changes nothing
(a few hundred bytes to the spoofed address, once in a while). Consent is
refreshed only by checks from the selected address and by a verification that
succeeds. Without the remote password (or ufrag) the address never moves.

Responses to our requests carry no USERNAME: the transaction id starts with
the four bytes of the local ufrag (8 hex digits, as sfu.transport makes them)
so that the engine routes them like requests (`peek_ufrag`), without a table;
the other 8 bytes are random (64 bits), which is what keeps a participant,
who knows the remote password, from forging a success from a spoofed address.

Error answers (400, 401) are rate-limited per session (a token bucket of
`ERROR_BURST`, refilled at `ERROR_RATE` per second); the excess is dropped
and counted in `errors_ratelimited`.

STUN encoding is aioice's codec (``aioice.stun``); this module adds the
checks of a Binding server with short-term credentials (RFC 8489 §9.1).
The common case -- a valid check laid out as browsers and aioice send it,
every few seconds per peer for consent -- is verified and answered by a
direct byte-level path (``IceLite._answer_fast``, ~5x cheaper) that gives
byte-identical answers; anything else goes through aioice's parser.

Use::

    ice = IceLite(local_ufrag, local_pwd, remote_ufrag, created=now, remote_pwd=pwd)
    reply = ice.receive(datagram, addr, now)   # bytes to send back to addr, or None
    for data, addr in ice.datagrams_to_send(): ...   # our verification requests
    deadline = ice.get_timer()                 # call handle_timer(now) then
    while (event := ice.next_event()) is not None: ...   # AddressSelected
    if ice.is_expired(now): ...                # consent lost: tear down
"""

from __future__ import annotations

import binascii
import hmac
import ipaddress
import math
import secrets
import struct
from collections import deque
from dataclasses import dataclass

from aioice import stun

__all__ = [
    "AddressSelected",
    "IceLite",
    "peek_local_ufrag",
    "peek_ufrag",
]

# RFC 8489 §5: the header, and the magic cookie in bytes 4..8.
_HEADER = struct.Struct("!HHI")
_ATTR_HEADER = struct.Struct("!HH")
_BINDING_REQUEST = 0x0001
_BINDING_RESPONSES = (0x0101, 0x0111)  # success, error
_USERNAME = 0x0006
_FIXED_LENGTHS = {0x0008: 20, 0x8028: 4}  # MESSAGE-INTEGRITY, FINGERPRINT

# RFC 7675 §5.1: consent expires when no check succeeded for 30 s.
CONSENT_TIMEOUT = 30.0

# Verification of a new address (module docstring): our request is sent up to
# VERIFY_TRANSMISSIONS times, VERIFY_RTO apart at first, doubling (RFC 8489
# §6.2.1, with fewer transmissions: the peer's next check starts another), the
# last one waited for as long again; after a failure, no new verification for
# VERIFY_BACKOFF seconds.
VERIFY_TRANSMISSIONS = 3
VERIFY_RTO = 0.5
VERIFY_BACKOFF = 5.0
# RFC 8445 §5.1.2.1: our candidate's priority as a peer-reflexive one
# (type preference 110, local preference 65535, component 1).
_PRFLX_PRIORITY = (110 << 24) | (65535 << 8) | (256 - 1)

# Error answers (400, 401): a token bucket per session.
ERROR_BURST = 10
ERROR_RATE = 10.0  # per second

# The fast path (IceLite._answer_fast): the attributes of a usual check and the
# lengths they must have (None: any). Attributes aioice does not know are
# skipped as aioice skips them; any other attribute aioice knows -> slow path.
_MESSAGE_INTEGRITY, _FINGERPRINT, _USE_CANDIDATE = 0x0008, 0x8028, 0x0025
_XOR_MAPPED_ADDRESS = 0x0020
_CHECK_ATTRIBUTES = {
    _USERNAME: None,
    0x0024: 4,  # PRIORITY
    _USE_CANDIDATE: 0,
    0x8029: 8,  # ICE-CONTROLLED
    0x802A: 8,  # ICE-CONTROLLING
    _MESSAGE_INTEGRITY: 20,
    _FINGERPRINT: 4,
}
_AIOICE_KNOWN = frozenset(stun.ATTRIBUTES_BY_TYPE)
_FINGERPRINT_XOR = 0x5354554E
_COOKIE_BYTES = struct.pack("!I", stun.COOKIE)
_SUCCESS_HEADER = struct.Struct("!HHI12s")
_BINDING_SUCCESS = 0x0101


def peek_local_ufrag(data: bytes) -> str | None:
    """The local ufrag a STUN Binding request is addressed to, cheaply.

    Returns the part of USERNAME before ':' (RFC 8445 §7.2.2: USERNAME is
    "<receiver ufrag>:<sender ufrag>") when `data` looks like a Binding
    request, else None. Verifies nothing (integrity is checked by the
    IceLite that the ufrag selects); never raises.
    """
    if len(data) < 20:
        return None
    message_type, length, cookie = _HEADER.unpack_from(data, 0)
    if message_type != _BINDING_REQUEST or cookie != stun.COOKIE:
        return None
    end = 20 + length
    if end > len(data):
        return None
    pos = 20
    while pos + 4 <= end:
        attr_type, attr_len = _ATTR_HEADER.unpack_from(data, pos)
        if attr_type == _USERNAME:
            value = data[pos + 4 : pos + 4 + attr_len]
            if len(value) != attr_len:
                return None
            try:
                username = value.decode("utf8")
            except UnicodeDecodeError:
                return None
            local, sep, _ = username.partition(":")
            return local if sep and local else None
        pos += 4 + attr_len + stun.padding_length(attr_len)
    return None


def peek_ufrag(data: bytes) -> str | None:
    """The local ufrag that a STUN datagram is for, cheaply, or None.

    A Binding request: as `peek_local_ufrag`. A Binding success or error
    response: the ufrag encoded in its transaction id (`IceLite` makes the
    ids of its requests so; see the module docstring). Verifies nothing.
    """
    if len(data) < 20:
        return None
    message_type = (data[0] << 8) | data[1]
    if message_type in _BINDING_RESPONSES:
        if data[4:8] != _COOKIE_BYTES:
            return None
        return data[8:12].hex()
    return peek_local_ufrag(data)


def _route_prefix(local_ufrag: str) -> bytes:
    """The transaction-id prefix that routes a response back to `local_ufrag`
    (empty when the ufrag is not 8 hex digits: responses then reach no one)."""
    if len(local_ufrag) == 8:
        try:
            prefix = bytes.fromhex(local_ufrag)
        except ValueError:
            return b""
        if prefix.hex() == local_ufrag:
            return prefix
    return b""


def _well_formed(data: bytes) -> bool:
    """What aioice's parser lets through but RFC 8489 forbids.

    The magic cookie (§5; its absence means an RFC 3489 client, not ICE),
    attributes that exactly fill the message (§14), and the fixed sizes of
    MESSAGE-INTEGRITY (§14.5: 20) and FINGERPRINT (§14.7: 4).
    """
    _, length, cookie = _HEADER.unpack_from(data, 0)
    if cookie != stun.COOKIE:
        return False
    end = 20 + length
    pos = 20
    while pos < end:
        if pos + 4 > end:
            return False
        attr_type, attr_len = _ATTR_HEADER.unpack_from(data, pos)
        if attr_type in _FIXED_LENGTHS and attr_len != _FIXED_LENGTHS[attr_type]:
            return False
        pos += 4 + attr_len + stun.padding_length(attr_len)
    return pos == end


@dataclass(frozen=True)
class AddressSelected:
    """The peer's address changed: the first check's (for DTLS), or a nominated
    one that answered our verification request."""

    addr: tuple


@dataclass
class _Verification:
    """Our Binding request to a candidate address, waiting for its answer."""

    addr: tuple
    transaction_id: bytes
    request: bytes
    sent: int  # transmissions so far
    next_at: float  # next transmission, or the end (failure) after the last


class IceLite:
    """The lite side of one ICE session (one transport, one component).

    `remote_ufrag` may be None (not yet known from signaling); any sender
    ufrag is then accepted, the local ufrag and password still have to match.
    `remote_pwd` (the offer's a=ice-pwd) signs our verification requests and
    checks their answers; without it (or the remote ufrag) the selected
    address never moves from the first one.
    `created` starts the consent clock for a peer that never sends a check;
    if None, it starts at the first `is_expired` call.
    """

    def __init__(
        self,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str | None = None,
        consent_timeout: float = CONSENT_TIMEOUT,
        *,
        created: float | None = None,
        remote_pwd: str | None = None,
    ) -> None:
        self.local_ufrag = local_ufrag
        self.local_pwd = local_pwd
        self.remote_ufrag = remote_ufrag
        self.remote_pwd = remote_pwd
        self.consent_timeout = consent_timeout
        self.created = created
        self.selected_address: tuple | None = None
        self.last_consent: float | None = None
        self._key = local_pwd.encode("utf8")
        self._mapped: tuple[tuple, bytes] | None = None  # (addr, XOR-MAPPED-ADDRESS attribute), IPv4
        # Bounded: a caller that only reads selected_address never drains it.
        self._events: deque[AddressSelected] = deque(maxlen=16)
        # address verification (module docstring)
        self._remote_key = remote_pwd.encode("utf8") if remote_pwd is not None else None
        self._tie_breaker = secrets.randbits(64)
        self._route = _route_prefix(local_ufrag)
        self._verification: _Verification | None = None
        self._verify_not_before = -math.inf
        self._outgoing: list[tuple[bytes, tuple]] = []
        self.verifications = 0  # started
        self.verifications_failed = 0
        # error answers: token bucket
        self._error_tokens = float(ERROR_BURST)
        self._error_refilled: float | None = None
        self.errors_ratelimited = 0

    # -- input ------------------------------------------------------------

    def receive(self, data: bytes, addr: tuple, now: float) -> bytes | None:
        """Handle one STUN datagram from `addr`; return the answer, if any."""
        answer = self._answer_fast(data, addr, now)
        if answer is not None:
            return answer
        try:
            message = stun.parse_message(data)
        except Exception:
            # Truncated, bad FINGERPRINT (RFC 8489 §7.3: discard), unknown
            # method, undecodable attribute: not worth an answer.
            return None
        if not _well_formed(data):
            return None
        if message.message_method != stun.Method.BINDING:
            return None
        if message.message_class in (stun.Class.RESPONSE, stun.Class.ERROR):
            self._on_response(message, addr, now)
            return None
        if message.message_class != stun.Class.REQUEST:
            return None  # indications
        # RFC 8445 §7.2.2: checks carry FINGERPRINT (it was verified by the
        # parser when present).
        if "FINGERPRINT" not in message.attributes:
            return None

        # RFC 8489 §9.1.3: no USERNAME or MESSAGE-INTEGRITY -> 400.
        username = message.attributes.get("USERNAME")
        if username is None or "MESSAGE-INTEGRITY" not in message.attributes:
            return self._error(message, 400, "Bad Request", now)
        # Unknown username or integrity mismatch -> 401, no state change.
        if not self._username_ok(username) or not message.check_message_integrity(
            self._key
        ):
            return self._error(message, 401, "Unauthorized", now)

        self._valid_check(addr, "USE-CANDIDATE" in message.attributes, now)

        # RFC 8489 §7.3.1 / RFC 8445 §7.3.1.1: success response with the
        # source address, signed with the local password.
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.RESPONSE,
            transaction_id=message.transaction_id,
            attributes={"XOR-MAPPED-ADDRESS": (addr[0], addr[1])},
        )
        response.add_message_integrity(self._key)  # also adds FINGERPRINT
        return bytes(response)

    def _answer_fast(self, data: bytes, addr: tuple, now: float) -> bytes | None:
        """A valid Binding request in the usual layout (known attributes, then
        MESSAGE-INTEGRITY, then FINGERPRINT last): checked and answered here,
        byte for byte what the slow path answers. None: anything else, and any
        failure (the slow path then decides: 400, 401, or no answer)."""
        size = len(data)
        if size < 20 or size & 3:
            return None
        message_type, length, cookie = _HEADER.unpack_from(data, 0)
        if message_type != _BINDING_REQUEST or cookie != stun.COOKIE or 20 + length != size:
            return None
        username = None
        use_candidate = False
        integrity_at = fingerprint_at = -1
        pos = 20
        while pos < size:
            if fingerprint_at >= 0 or pos + 4 > size:
                return None  # something after FINGERPRINT, or a torn attribute header
            attr_type, attr_len = _ATTR_HEADER.unpack_from(data, pos)
            end = pos + 4 + attr_len
            if end + (-attr_len & 3) > size:
                return None
            if attr_type in _CHECK_ATTRIBUTES:
                expected = _CHECK_ATTRIBUTES[attr_type]
                if expected is not None and attr_len != expected:
                    return None
                if attr_type == _FINGERPRINT:
                    if integrity_at < 0:
                        return None
                    fingerprint_at = pos
                elif integrity_at >= 0:
                    return None  # only FINGERPRINT may follow MESSAGE-INTEGRITY here
                elif attr_type == _MESSAGE_INTEGRITY:
                    integrity_at = pos
                elif attr_type == _USERNAME:
                    if username is not None:
                        return None
                    username = data[pos + 4 : end]
                elif attr_type == _USE_CANDIDATE:
                    use_candidate = True
            elif attr_type in _AIOICE_KNOWN:
                return None
            pos = end + (-attr_len & 3)
        if fingerprint_at < 0 or username is None:
            return None
        # FINGERPRINT (RFC 8489 §14.7): CRC-32 of everything before it, length as sent
        (fingerprint,) = struct.unpack_from("!I", data, fingerprint_at + 4)
        if binascii.crc32(data[:fingerprint_at]) ^ _FINGERPRINT_XOR != fingerprint:
            return None
        try:
            if not self._username_ok(username.decode("utf8")):
                return None
        except UnicodeDecodeError:
            return None
        # MESSAGE-INTEGRITY (§14.5): HMAC-SHA1 with the length ending after it
        signed = data[:2] + struct.pack("!H", integrity_at - 20 + 24) + data[4:integrity_at]
        mac = hmac.digest(self._key, signed, "sha1")
        if not hmac.compare_digest(mac, data[integrity_at + 4 : integrity_at + 24]):
            return None

        self._valid_check(addr, use_candidate, now)
        transaction_id = data[8:20]
        mapped = self._xor_mapped_address(addr, transaction_id)
        header = _SUCCESS_HEADER.pack(_BINDING_SUCCESS, len(mapped) + 24, stun.COOKIE, transaction_id)
        mac = hmac.digest(self._key, header + mapped, "sha1")
        message = (_SUCCESS_HEADER.pack(_BINDING_SUCCESS, len(mapped) + 32, stun.COOKIE, transaction_id)
                   + mapped + _ATTR_HEADER.pack(_MESSAGE_INTEGRITY, 20) + mac)
        return message + struct.pack("!HHI", _FINGERPRINT, 4, binascii.crc32(message) ^ _FINGERPRINT_XOR)

    def _xor_mapped_address(self, addr: tuple, transaction_id: bytes) -> bytes:
        """The XOR-MAPPED-ADDRESS attribute (RFC 8489 §14.2) for ``addr``; for IPv4 it
        does not depend on the transaction, so the last one is kept."""
        cached = self._mapped
        if cached is not None and cached[0] == addr:
            return cached[1]
        ip = ipaddress.ip_address(addr[0])
        value = struct.pack("!H", addr[1]) + ip.packed
        pad = struct.pack("!HI", stun.COOKIE >> 16, stun.COOKIE) + transaction_id
        xored = bytes(a ^ b for a, b in zip(value, pad))
        family = 0x01 if ip.version == 4 else 0x02
        attr = _ATTR_HEADER.pack(_XOR_MAPPED_ADDRESS, 4 + len(value) - 2) + bytes((0, family)) + xored
        if ip.version == 4:
            self._mapped = (addr, attr)
        return attr

    # -- output -----------------------------------------------------------

    def datagrams_to_send(self) -> list[tuple[bytes, tuple]]:
        """Our verification requests, as (datagram, address) pairs."""
        out, self._outgoing = self._outgoing, []
        return out

    def get_timer(self) -> float | None:
        """When `handle_timer` is due (a retransmission or the end of a
        verification), or None. Consent is `is_expired`'s."""
        verification = self._verification
        return verification.next_at if verification is not None else None

    def handle_timer(self, now: float) -> None:
        verification = self._verification
        if verification is None or now < verification.next_at:
            return
        if verification.sent >= VERIFY_TRANSMISSIONS:
            # no answer: the address stays unverified (RFC 8489 §6.2.1)
            self._verification = None
            self.verifications_failed += 1
            self._verify_not_before = now + VERIFY_BACKOFF
            return
        self._transmit(verification, now)

    def next_event(self) -> AddressSelected | None:
        return self._events.popleft() if self._events else None

    def is_expired(self, now: float) -> bool:
        """Consent freshness (RFC 7675 §5.1): no valid check for too long."""
        if self.last_consent is not None:
            return now - self.last_consent >= self.consent_timeout
        if self.created is None:
            self.created = now
        return now - self.created >= self.consent_timeout

    # -- internals --------------------------------------------------------

    def _username_ok(self, username: str) -> bool:
        local, sep, remote = username.partition(":")
        if not sep or local != self.local_ufrag:
            return False
        return self.remote_ufrag is None or remote == self.remote_ufrag

    def _select(self, addr: tuple) -> None:
        if addr != self.selected_address:
            self.selected_address = addr
            self._events.append(AddressSelected(addr))

    def _valid_check(self, addr: tuple, use_candidate: bool, now: float) -> None:
        """A check with valid credentials from `addr`: consent (RFC 7675 §5.1)
        and address selection (module docstring)."""
        selected = self.selected_address
        if selected is None:
            # the first address: for the DTLS handshake, which proves it
            self._select(addr)
            self.last_consent = now
        elif addr == selected:
            self.last_consent = now
        elif use_candidate:
            # A lite agent follows the nomination of the controlling agent
            # (RFC 8445 §7.3.1.5), once the address has answered us.
            self._verify(addr, now)

    def _verify(self, addr: tuple, now: float) -> None:
        verification = self._verification
        if verification is not None:
            return  # one at a time; its retransmissions are on the timer
        if self._remote_key is None or self.remote_ufrag is None:
            return
        if now < self._verify_not_before:
            return
        transaction_id = self._route + secrets.token_bytes(12 - len(self._route))
        request = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.REQUEST,
            transaction_id=transaction_id,
            attributes={
                "USERNAME": f"{self.remote_ufrag}:{self.local_ufrag}",
                "PRIORITY": _PRFLX_PRIORITY,
                "ICE-CONTROLLED": self._tie_breaker,
            },
        )
        request.add_message_integrity(self._remote_key)  # also adds FINGERPRINT
        self.verifications += 1
        verification = _Verification(addr, transaction_id, bytes(request), 0, now)
        self._verification = verification
        self._transmit(verification, now)

    def _transmit(self, verification: _Verification, now: float) -> None:
        self._outgoing.append((verification.request, verification.addr))
        verification.sent += 1
        # RTO, 2 RTO, 4 RTO ...; the last one waited for as long as the one before
        verification.next_at = now + VERIFY_RTO * (1 << (verification.sent - 1))

    def _on_response(self, message: stun.Message, addr: tuple, now: float) -> None:
        """A success or error response: the answer to our verification request
        if it has its transaction id, comes from the address we asked, and
        (success) is signed with the remote password."""
        verification = self._verification
        if (
            verification is None
            or message.transaction_id != verification.transaction_id
            or addr != verification.addr
        ):
            return
        if message.message_class == stun.Class.ERROR:
            # e.g. 487 Role Conflict (we are always controlled) or 401: give up
            self._verification = None
            self.verifications_failed += 1
            self._verify_not_before = now + VERIFY_BACKOFF
            return
        if "FINGERPRINT" not in message.attributes or not message.check_message_integrity(
            self._remote_key
        ):
            return  # RFC 8489 §9.1.4: discard, keep waiting
        self._verification = None
        self._select(addr)
        self.last_consent = now  # RFC 7675 §5.1: our check succeeded

    def _error(self, request: stun.Message, code: int, reason: str, now: float) -> bytes | None:
        # Rate-limited: a flood of bad checks (maybe from a spoofed source)
        # gets ERROR_RATE answers a second, the rest is dropped and counted.
        if self._error_refilled is not None:
            self._error_tokens = min(
                float(ERROR_BURST),
                self._error_tokens + max(0.0, now - self._error_refilled) * ERROR_RATE,
            )
        self._error_refilled = now
        if self._error_tokens < 1.0:
            self.errors_ratelimited += 1
            return None
        self._error_tokens -= 1.0
        # Not signed: the requester's credentials are what failed
        # (RFC 8489 §9.1.3). FINGERPRINT so that it demultiplexes (§14.7).
        response = stun.Message(
            message_method=stun.Method.BINDING,
            message_class=stun.Class.ERROR,
            transaction_id=request.transaction_id,
            attributes={"ERROR-CODE": (code, reason)},
        )
        response.add_fingerprint()
        return bytes(response)
