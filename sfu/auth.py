"""Access tokens: JWT (RFC 7519) signed with HMAC-SHA256 (RFC 7518 §3.2), through PyJWT.

A token names a person (``sub``, ``name``), the room it is valid for and what
the person may do there (``grants``: publish, subscribe, host, admin), and
expires (``exp``); it may also say when it starts to be valid (``nbf``).  The
application's backend mints them with the shared secret, or ``sfu token`` does.
Only HS256 is accepted: a token whose header names another algorithm
(``none`` included) is refused, never "verified".

Keys rotate by ``kid`` (RFC 7515 §4.1.4): the server signs with its *primary*
secret and, when that key has a name (``--auth-kid``), writes the name in the
token header.  Older secrets stay valid for verification only, listed as
``kid:secret`` in ``--auth-keys`` or in ``<data-dir>/auth_keys``.  A token that
names a kid is checked against that key alone (an unknown kid is refused); a
token without a kid is checked against the primary secret.  ``exp`` and
``nbf`` allow ``--auth-leeway`` seconds of clock skew (default 30).

The signing secret travels through the app as a ``str``; a :class:`Keyring`
is a ``str`` (the primary secret) that also carries the other keys and the
leeway, so code that only passes the secret along needs no change.

Failures raise :class:`AuthError` with the HTTP status to answer: 401 when the
token is missing, garbled, forged, expired or not yet valid; 403 when it is
valid but does not allow the request (another room, a grant missing).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
import warnings
from dataclasses import dataclass

import jwt
from jwt.warnings import InsecureKeyLengthWarning

SECRET_FILE = "auth_secret"
KEYS_FILE = "auth_keys"
GRANT_NAMES = ("publish", "subscribe", "host", "admin")
ALGORITHM = "HS256"
DEFAULT_LEEWAY = 30.0  # seconds of clock skew the server allows on exp and nbf
MAX_TOKEN_BYTES = 8192  # a token is a few hundred bytes; refuse huge ones before parsing
MIN_SECRET_BYTES = 32  # RFC 7518 §3.2: a key of at least the hash size
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-]*")  # RFC 7515 §2: base64url without padding
_KID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# we warn once at start about a short secret (keyring_from_config), not on every token
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)
logger = logging.getLogger("sfu.auth")


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


class Keyring(str):
    """The primary signing secret (the ``str`` value) with its ``kid``, the older
    verification-only keys by kid, and the clock-skew leeway in seconds."""

    kid: str | None
    keys: dict[str, str]
    leeway: float

    def __new__(cls, primary: str, kid: str | None = None, keys: dict[str, str] | None = None,
                leeway: float = DEFAULT_LEEWAY) -> "Keyring":
        if not primary:
            raise ValueError("empty auth secret")
        if kid is not None and not _KID_RE.fullmatch(kid):
            raise ValueError(f"bad key id {kid!r} (1-64 of A-Z a-z 0-9 . _ -)")
        if leeway < 0:
            raise ValueError("leeway must not be negative")
        self = super().__new__(cls, primary)
        self.kid = kid
        self.keys = {}
        for name, secret in (keys or {}).items():
            if not _KID_RE.fullmatch(name):
                raise ValueError(f"bad key id {name!r} (1-64 of A-Z a-z 0-9 . _ -)")
            if not secret:
                raise ValueError(f"empty secret for key id {name!r}")
            self.keys[name] = secret
        if kid is not None:
            if self.keys.get(kid, primary) != primary:
                raise ValueError(f"key id {kid!r} names two different secrets")
            self.keys[kid] = primary
        self.leeway = float(leeway)
        return self


def _keyring(secret: str) -> Keyring:
    return secret if isinstance(secret, Keyring) else Keyring(secret, leeway=0.0)


def mint_token(secret: str, identity: str, name: str, room: str | None, grants: Grants,
               ttl: float = 6 * 3600, now: float | None = None, not_before: float | None = None) -> str:
    """A signed token for ``identity`` in ``room`` (None: no room, e.g. for the REST API).

    ``secret`` is a plain secret or a :class:`Keyring` (then its primary key signs and
    its kid goes in the header); ``not_before`` sets ``nbf`` (absolute time)."""
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
    if not_before is not None:
        payload["nbf"] = int(not_before)
    kid = getattr(secret, "kid", None)
    headers = {"kid": kid} if kid else None
    return jwt.encode(payload, str(secret), algorithm=ALGORITHM, headers=headers)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def verify_token(secret: str, token: str | None, now: float | None = None,
                 leeway: float | None = None) -> Claims:
    """Check the signature (PyJWT, HS256 only, key chosen by ``kid``), then ``exp`` and
    ``nbf`` (RFC 7519 §4.1.4-5) allowing ``leeway`` seconds of skew (default: the
    keyring's; 0 for a plain secret); AuthError(401, reason) otherwise."""
    if not token:
        raise AuthError(401, "missing access token")
    token = token.strip()
    if len(token) > MAX_TOKEN_BYTES:
        raise AuthError(401, "malformed access token (too long)")
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT_RE.fullmatch(p) for p in parts):
        raise AuthError(401, "malformed access token")
    if not secret:
        raise AuthError(401, "invalid access token signature")
    ring = _keyring(secret)
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        raise AuthError(401, "malformed access token") from None
    # RFC 8725 §3.1: the server decides the algorithm, never the token ("none", RS256
    # with our secret as a "public key", ...); PyJWT is told the same below
    if header.get("alg") != ALGORITHM:
        raise AuthError(401, "access token is not signed with HS256")
    if "kid" in header:
        key = ring.keys.get(header["kid"]) if isinstance(header["kid"], str) else None
        if key is None:
            raise AuthError(401, "access token signed with an unknown key id")
    else:
        key = str(ring)
    try:
        # the time claims are checked below, against ``now`` (PyJWT reads the clock itself)
        payload = jwt.decode(token, key, algorithms=[ALGORITHM], options={
            "verify_exp": False, "verify_nbf": False, "verify_iat": False, "verify_sub": False,
            "verify_jti": False, "verify_aud": False, "verify_iss": False})
    except jwt.InvalidSignatureError:
        raise AuthError(401, "invalid access token signature") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError(401, "access token is not signed with HS256") from None
    except (jwt.InvalidTokenError, jwt.InvalidKeyError, ValueError, TypeError):
        raise AuthError(401, "malformed access token") from None
    if not isinstance(payload, dict):
        raise AuthError(401, "malformed access token")
    identity = payload.get("sub")
    exp = payload.get("exp")
    nbf = payload.get("nbf")
    if not isinstance(identity, str) or not identity:
        raise AuthError(401, "access token has no identity")
    if not _number(exp):
        raise AuthError(401, "access token has no expiry")
    if nbf is not None and not _number(nbf):
        raise AuthError(401, "malformed access token (nbf)")
    now = time.time() if now is None else now
    leeway = ring.leeway if leeway is None else leeway
    if now >= exp + leeway:
        raise AuthError(401, "access token expired")
    if nbf is not None and now + leeway < nbf:
        raise AuthError(401, "access token not yet valid")
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


def parse_keys(text: str, where: str) -> dict[str, str]:
    """``kid:secret`` entries, one a line or comma-separated; ``#`` starts a comment."""
    keys: dict[str, str] = {}
    for number, raw in enumerate(re.split(r"[\n,]", text), 1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        kid, sep, secret = entry.partition(":")
        kid, secret = kid.strip(), secret.strip()
        if not sep or not _KID_RE.fullmatch(kid) or not secret:
            # never echo the entry: it may be a secret
            raise ValueError(f"{where}: entry {number} is not kid:secret (kid: 1-64 of A-Z a-z 0-9 . _ -)")
        if keys.get(kid, secret) != secret:
            raise ValueError(f"{where}: key id {kid!r} listed twice")
        keys[kid] = secret
    return keys


def keyring_from_config(config) -> Keyring:
    """The server's keys: the primary secret (``--auth-secret`` or ``<data-dir>/auth_secret``,
    created on first use) named ``--auth-kid``, plus the verification-only keys of
    ``--auth-keys`` and ``<data-dir>/auth_keys``.  SystemExit with one line on a bad entry."""
    primary = config.auth_secret or load_or_create_secret(config.data_dir)
    keys: dict[str, str] = {}
    path = os.path.join(config.data_dir, KEYS_FILE)
    try:
        for where, text in ((path, _read_optional(path)), ("--auth-keys", config.auth_keys or "")):
            for kid, secret in parse_keys(text, where).items():
                if keys.get(kid, secret) != secret:
                    raise ValueError(f"{where}: key id {kid!r} names two different secrets")
                keys[kid] = secret
        ring = Keyring(primary, kid=config.auth_kid or None, keys=keys, leeway=config.auth_leeway)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"sfu: access token keys: {exc}") from None
    if len(primary.encode()) < MIN_SECRET_BYTES:
        logger.warning("the auth secret is shorter than %d bytes; use a long random one", MIN_SECRET_BYTES)
    return ring


def _read_optional(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""


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
    parser.add_argument("--auth-kid", default=None, help="the key id written in the token header (env SFU_AUTH_KID)")


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
