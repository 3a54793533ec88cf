"""Structured logging: one JSON object per line, personal data masked.

Log calls pass fields as ``extra={"fields": {...}}`` or use :func:`event`.  Every
string that goes out is passed through :func:`redact`, so an IP address, e-mail
address or phone number that slips into a message is masked, never printed.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

# IPv4: a dotted quad anywhere, also inside longer dotted runs (tcpdump's ip.port)
_IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")
# IPv6 (RFC 4291 §2.2, RFC 5952): every "::" compression, an embedded IPv4 tail
# (::ffff:192.0.2.1) and a zone (fe80::1%eth0, RFC 6874); never part of a longer
# colon-separated run (a DTLS fingerprint), and not h:m:s times (no "::", < 8 groups)
_H16 = r"[0-9A-Fa-f]{1,4}"
_LS32 = rf"(?:{_H16}:{_H16}|\d{{1,3}}(?:\.\d{{1,3}}){{3}})"
_IPV6 = re.compile(
    r"(?<![\w:.])(?:"
    + "|".join((
        rf"(?:{_H16}:){{6}}{_LS32}",
        rf"::(?:{_H16}:){{5}}{_LS32}",
        rf"(?:{_H16})?::(?:{_H16}:){{4}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,1}}{_H16})?::(?:{_H16}:){{3}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,2}}{_H16})?::(?:{_H16}:){{2}}{_LS32}",
        rf"(?:(?:{_H16}:){{0,3}}{_H16})?::{_H16}:{_LS32}",
        rf"(?:(?:{_H16}:){{0,4}}{_H16})?::{_LS32}",
        rf"(?:(?:{_H16}:){{0,5}}{_H16})?::{_H16}",
        rf"(?:{_H16}:){{0,6}}{_H16}::",  # not "::" alone: the unspecified address says nothing
    ))
    + r")(?:%(?:25)?[\w.~-]+)?(?![\w:])"
)
# e-mail (RFC 5322 §3.4.1): a dot-atom or "quoted string" local part; a domain with or
# without dots (alice@localhost) or an address literal (bob@[192.0.2.1])
# (a dot-atom starts only where the run of local-part characters starts: one attempt per
# run, so a long word costs O(n), not O(n^2))
_EMAIL = re.compile(
    r"""(?:(?<![\w!#$%&*+?^~.-])[\w!#$%&*+?^~-]+(?:\.[\w!#$%&*+?^~-]+)*|"(?:[^"\\\r\n]|\\.)*")"""
    r"@(?:[\w-]+(?:\.[\w-]+)*|\[[^\]\s]+\])"
)
# phone numbers: international (+, 7-15 digits, E.164) with any single separators
# between groups, or national groupings with separators: (0xx) ..., 0xx xxx xxxx,
# xxx-xxx-xxxx.  A plain run of digits (an SSRC, a sequence number, a Unix time) stays.
_PHONE_INTL = re.compile(r"(?<![\w+])\+\(?\d{1,4}\)?(?:[ .-]?\(?\d{1,5}\)?){1,7}(?!\w)")
_PHONE_NATIONAL = re.compile(
    r"(?<![\w+.-])(?:\(\d{2,5}\)[ .-]?\d{3,4}[ .-]?\d{3,4}"
    r"|\d{3}([ .-])\d{3}\1\d{4}"
    r"|0\d{1,4}[ -]\d{3,4}[ -]?\d{3,4})(?![\w-]|\.\d)"
)


def _intl_phone(match: re.Match) -> str:
    digits = sum(c.isdigit() for c in match.group())
    return "<phone>" if 7 <= digits <= 15 else match.group()


def redact(text: str) -> str:
    """Mask IP addresses, e-mail addresses and phone numbers in ``text``."""
    if "@" in text:
        text = _EMAIL.sub("<email>", text)
    text = _IPV6.sub("<ip>", text)  # before IPv4: ::ffff:192.0.2.1 is one address
    text = _IPV4.sub("<ip>", text)
    text = _PHONE_INTL.sub(_intl_phone, text)
    text = _PHONE_NATIONAL.sub("<phone>", text)
    return text


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if fields:
            for key, value in fields.items():
                out[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def event(logger: logging.Logger, msg: str, level: int = logging.INFO, **fields) -> None:
    logger.log(level, msg, extra={"fields": fields})


def monotonic() -> float:
    return time.monotonic()
