"""Access tokens: JWT (RFC 7519) signed with HMAC-SHA256 (RFC 7518 §3.2).

A token names a person (``sub``, ``name``), the room it is valid for and what
the person may do there (``grants``: publish, subscribe, host, admin), and
expires (``exp``).  The application's backend mints them with the shared
secret, or ``sfu token`` does.  Only HS256 is accepted: a token whose header
names another algorithm (``none`` included) is refused, never "verified".

Failures raise :class:`AuthError` with the HTTP status to answer: 401 when the
token is missing, garbled, forged or expired; 403 when it is valid but does
not allow the request (another room, a grant missing).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass

SECRET_FILE = "auth_secret"
GRANT_NAMES = ("publish", "subscribe", "host", "admin")
_HEADER = {"alg": "HS256", "typ": "JWT"}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Grants:
    publish: bool = False
    subscribe: bool = False
    host: bool = False
    admin: bool = False

    def to_dict(self) -> dict[str, bool]:
        return {name: getattr(self, name) for name in GRANT_NAMES}


@dataclass(frozen=True)
class Claims:
    identity: str
    name: str
    room: str | None
    grants: Grants
    expires_at: int


class AuthError(Exception):
    """``status`` is 401 (who are you?) or 403 (not allowed); ``reason`` is one line."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    # RFC 7515 §2: base64url without padding; reject anything else
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: str, signing_input: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), signing_input, hashlib.sha256).digest()


def mint_token(secret: str, identity: str, name: str, room: str | None, grants: Grants,
               ttl: float = 6 * 3600, now: float | None = None) -> str:
    """A signed token for ``identity`` in ``room`` (None: no room, e.g. for the REST API)."""
    if not secret:
        raise ValueError("empty auth secret")
    if not identity:
        raise ValueError("empty identity")
    now = time.time() if now is None else now
    payload = {
        "sub": identity,
        "name": name or identity,
        "room": room,
        "grants": grants.to_dict(),
        "iat": int(now),
        "exp": int(now + ttl),
    }
    header = _b64encode(json.dumps(_HEADER, separators=(",", ":")).encode())
    body = _b64encode(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{header}.{body}".encode("ascii")
    return f"{header}.{body}.{_b64encode(_sign(secret, signing_input))}"


def verify_token(secret: str, token: str | None, now: float | None = None) -> Claims:
    """Check signature and expiry (RFC 7519 §7.2); AuthError(401, reason) otherwise."""
    if not token:
        raise AuthError(401, "missing access token")
    parts = token.strip().split(".")
    if len(parts) != 3:
        raise AuthError(401, "malformed access token")
    try:
        header = json.loads(_b64decode(parts[0]))
        signature = _b64decode(parts[2])
    except ValueError:
        raise AuthError(401, "malformed access token") from None
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise AuthError(401, "access token is not signed with HS256")
    expected = _sign(secret, f"{parts[0]}.{parts[1]}".encode("ascii"))
    if not hmac.compare_digest(signature, expected):
        raise AuthError(401, "invalid access token signature")
    try:
        payload = json.loads(_b64decode(parts[1]))
    except ValueError:
        raise AuthError(401, "malformed access token") from None
    if not isinstance(payload, dict):
        raise AuthError(401, "malformed access token")
    identity = payload.get("sub")
    exp = payload.get("exp")
    if not isinstance(identity, str) or not identity:
        raise AuthError(401, "access token has no identity")
    if not isinstance(exp, (int, float)) or isinstance(exp, bool):
        raise AuthError(401, "access token has no expiry")
    now = time.time() if now is None else now
    if now >= exp:
        raise AuthError(401, "access token expired")
    room = payload.get("room")
    if room is not None and not isinstance(room, str):
        raise AuthError(401, "malformed access token")
    raw_grants = payload.get("grants") or {}
    if not isinstance(raw_grants, dict):
        raise AuthError(401, "malformed access token")
    grants = Grants(**{g: raw_grants.get(g) is True for g in GRANT_NAMES})
    name = payload.get("name")
    if not isinstance(name, str) or not name.strip():
        name = identity
    return Claims(identity=identity, name=name.strip()[:100], room=room, grants=grants,
                  expires_at=int(exp))


def authorize(claims: Claims, room: str | None, need: str | None) -> None:
    """Raise AuthError(403) unless ``claims`` may do ``need`` in ``room``.

    ``need`` is a grant name ("publish", "subscribe", "host", "admin") or None
    (just be in the room).  An admin may enter every room and holds "host"
    everywhere; media still needs the publish/subscribe grants.
    """
    admin = claims.grants.admin
    if room is not None and not admin and claims.room != room:
        if claims.room is None:
            raise AuthError(403, "access token is not valid for any room")
        raise AuthError(403, "access token is for another room")
    if need is None:
        return
    if need not in GRANT_NAMES:
        raise ValueError(f"unknown grant {need!r}")
    if need == "host" and admin:
        return
    if not getattr(claims.grants, need):
        raise AuthError(403, f"access token lacks the {need} grant")


def token_from_request(request) -> str | None:
    """``Authorization: Bearer <token>`` (RFC 6750 §2.1), else the ``token`` query parameter."""
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    token = request.query.get("token")
    return token or None


def load_or_create_secret(data_dir: str) -> str:
    """The server's signing secret, kept in ``<data_dir>/auth_secret`` (mode 0600)."""
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, SECRET_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path, encoding="utf-8") as f:
            secret = f.read().strip()
        if not secret:
            raise SystemExit(f"{path} is empty; delete it to create a new secret") from None
        return secret
    secret = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(secret + "\n")
        f.flush()
        os.fsync(f.fileno())
    return secret


def parse_duration(text: str) -> float:
    """"90", "90s", "15m", "6h", "7d", "1w" -> seconds; ValueError otherwise."""
    match = _DURATION_RE.match(str(text))
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 6h, 7d)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise ValueError("duration must be positive")
    return seconds


# -- `sfu token` -----------------------------------------------------------------------

def add_token_arguments(parser) -> None:
    parser.add_argument("--room", help="the room the token is valid for (omit for a REST-only token)")
    parser.add_argument("--identity", required=True, help="who the token is for (the JWT sub)")
    parser.add_argument("--name", help="display name shown to others (default: the identity)")
    for grant, text in (("publish", "may publish tracks"), ("subscribe", "may receive tracks"),
                        ("host", "may end the meeting and export its history"),
                        ("admin", "every room and every meeting's history")):
        parser.add_argument("--" + grant, action="store_true", help=text)
    parser.add_argument("--ttl", default="6h", help="lifetime, e.g. 90s, 15m, 6h, 7d (default 6h)")
    parser.add_argument("--data-dir", default=None, help="where `sfu serve` keeps auth_secret (env SFU_DATA_DIR)")
    parser.add_argument("--auth-secret", default=None, help="the signing secret (env SFU_AUTH_SECRET)")


def token_command(args, secret: str) -> int:
    """Print a description, then the token alone on the last line."""
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        raise SystemExit(f"sfu token: {exc}") from None
    grants = Grants(publish=args.publish, subscribe=args.subscribe, host=args.host, admin=args.admin)
    now = time.time()
    token = mint_token(secret, args.identity, args.name or args.identity, args.room, grants, ttl=ttl, now=now)
    granted = ", ".join(g for g in GRANT_NAMES if getattr(grants, g)) or "none"
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + ttl))
    print(f"# token for {args.identity!r} in room {args.room or '(none)'}; grants: {granted}; "
          f"expires {expires}")
    print(token)
    return 0
