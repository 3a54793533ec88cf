"""ICE-lite over one UDP port shared by all peers, sans-I/O.

The SFU is a lite agent (RFC 8445 §2.5): it gathers only host candidates,
never sends connectivity checks itself and is always the controlled agent.
It answers the STUN Binding requests of the full agent on the other side
(RFC 8445 §7.3), learns the peer's address from them (peer-reflexive: Chromium
gathers no loopback candidates) and keeps consent alive from them
(RFC 7675 §5.1: consent expires 30 s after the last successful check).

STUN encoding is aioice's codec (``aioice.stun``); this module adds the
checks of a Binding server with short-term credentials (RFC 8489 §9.1).
The common case -- a valid check laid out as browsers and aioice send it,
every few seconds per peer for consent -- is verified and answered by a
direct byte-level path (``IceLite._answer_fast``, ~5x cheaper) that gives
byte-identical answers; anything else goes through aioice's parser.

Use::

    ice = IceLite(local_ufrag, local_pwd, remote_ufrag, created=now)
    reply = ice.receive(datagram, addr, now)   # bytes to send back to addr, or None
    while (event := ice.next_event()) is not None: ...   # AddressSelected
    if ice.is_expired(now): ...                # consent lost: tear down
"""

from __future__ import annotations

import binascii
import hmac
import ipaddress
import struct
from collections import deque
from dataclasses import dataclass

from aioice import stun

__all__ = [
    "AddressSelected",
    "IceLite",
    "peek_local_ufrag",
]

# RFC 8489 §5: the header, and the magic cookie in bytes 4..8.
_HEADER = struct.Struct("!HHI")
_ATTR_HEADER = struct.Struct("!HH")
_BINDING_REQUEST = 0x0001
_USERNAME = 0x0006
_FIXED_LENGTHS = {0x0008: 20, 0x8028: 4}  # MESSAGE-INTEGRITY, FINGERPRINT

# RFC 7675 §5.1: consent expires when no check succeeded for 30 s.
CONSENT_TIMEOUT = 30.0

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
    """The peer's address for media changed (first check, or nomination)."""

    addr: tuple


class IceLite:
    """The lite side of one ICE session (one transport, one component).

    `remote_ufrag` may be None (not yet known from signaling); any sender
    ufrag is then accepted, the local ufrag and password still have to match.
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
    ) -> None:
        self.local_ufrag = local_ufrag
        self.local_pwd = local_pwd
        self.remote_ufrag = remote_ufrag
        self.consent_timeout = consent_timeout
        self.created = created
        self.selected_address: tuple | None = None
        self.last_consent: float | None = None
        self._key = local_pwd.encode("utf8")
        self._mapped: tuple[tuple, bytes] | None = None  # (addr, XOR-MAPPED-ADDRESS attribute), IPv4
        # Bounded: a caller that only reads selected_address never drains it.
        self._events: deque[AddressSelected] = deque(maxlen=16)

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
        if (
            message.message_method != stun.Method.BINDING
            or message.message_class != stun.Class.REQUEST
        ):
            return None  # indications, responses, other methods
        # RFC 8445 §7.2.2: checks carry FINGERPRINT (it was verified by the
        # parser when present).
        if "FINGERPRINT" not in message.attributes:
            return None

        # RFC 8489 §9.1.3: no USERNAME or MESSAGE-INTEGRITY -> 400.
        username = message.attributes.get("USERNAME")
        if username is None or "MESSAGE-INTEGRITY" not in message.attributes:
            return self._error(message, 400, "Bad Request")
        # Unknown username or integrity mismatch -> 401, no state change.
        if not self._username_ok(username) or not message.check_message_integrity(
            self._key
        ):
            return self._error(message, 401, "Unauthorized")

        # A valid check: consent (RFC 7675 §5.1) and address selection.
        # A lite agent takes the nomination of the controlling agent
        # (USE-CANDIDATE, RFC 8445 §7.3.1.5); until one comes, the address of
        # the first valid check is used, which is where media will arrive.
        self.last_consent = now
        if "USE-CANDIDATE" in message.attributes or self.selected_address is None:
            self._select(addr)

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

        self.last_consent = now
        if use_candidate or self.selected_address is None:
            self._select(addr)
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

    @staticmethod
    def _error(request: stun.Message, code: int, reason: str) -> bytes:
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
