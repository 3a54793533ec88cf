"""Access tokens (sfu/auth.py): JWT HS256 (RFC 7519, RFC 7518 §3.2), grants, rooms."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys

import pytest

from sfu.auth import (
    AuthError, Claims, Grants, authorize, load_or_create_secret, mint_token, parse_duration,
    token_from_request, verify_token,
)

SECRET = "s3cret"
NOW = 1_800_000_000.0
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(header: dict, payload: dict, secret: str = SECRET) -> str:
    h = b64(json.dumps(header).encode())
    p = b64(json.dumps(payload).encode())
    sig = hmac.new(secret.encode(), f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64(sig)}"


def token(room="r1", grants=Grants(publish=True), ttl=60.0, identity="alice", name="Alice"):
    return mint_token(SECRET, identity, name, room, grants, ttl=ttl, now=NOW)


def test_round_trip():
    claims = verify_token(SECRET, token(grants=Grants(publish=True, host=True)), now=NOW + 1)
    assert claims == Claims("alice", "Alice", "r1", Grants(publish=True, host=True), int(NOW + 60))


def test_claims_are_a_standard_jwt():
    # any HS256 JWT library can read ours, and we read theirs (RFC 7519 §3.1)
    header, payload, _sig = token().split(".")
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "HS256", "typ": "JWT"}
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    assert body["sub"] == "alice" and body["name"] == "Alice" and body["room"] == "r1"
    assert body["iat"] == int(NOW) and body["exp"] == int(NOW + 60)
    assert body["grants"] == {"publish": True, "subscribe": False, "host": False, "admin": False}
    other = sign({"alg": "HS256", "typ": "JWT"},
                 {"sub": "bob", "room": "r2", "exp": NOW + 5, "grants": {"subscribe": True}})
    claims = verify_token(SECRET, other, now=NOW)
    assert (claims.identity, claims.name, claims.room) == ("bob", "bob", "r2")
    assert claims.grants == Grants(subscribe=True)


@pytest.mark.parametrize("bad, reason", [
    (None, "missing"),
    ("", "missing"),
    ("abc", "malformed"),
    ("a.b", "malformed"),
    ("a.b.c.d", "malformed"),
    ("!!.??.**", "malformed"),
])
def test_garbled_tokens_are_401(bad, reason):
    with pytest.raises(AuthError) as err:
        verify_token(SECRET, bad, now=NOW)
    assert err.value.status == 401 and reason in err.value.reason


def test_forged_signature_is_401():
    good = token()
    with pytest.raises(AuthError) as err:
        verify_token("another secret", good, now=NOW)
    assert err.value.status == 401 and "signature" in err.value.reason
    # change the payload (room r1 -> r2) but keep the signature
    h, p, s = good.split(".")
    body = json.loads(base64.urlsafe_b64decode(p + "=="))
    body["room"] = "r2"
    body["grants"]["admin"] = True
    with pytest.raises(AuthError) as err:
        verify_token(SECRET, f"{h}.{b64(json.dumps(body).encode())}.{s}", now=NOW)
    assert err.value.status == 401
    # a flipped signature byte
    sig = bytearray(base64.urlsafe_b64decode(s + "=="))
    sig[0] ^= 1
    with pytest.raises(AuthError):
        verify_token(SECRET, f"{h}.{p}.{b64(bytes(sig))}", now=NOW)


@pytest.mark.parametrize("alg", ["none", "HS512", "RS256", None])
def test_other_algorithms_are_refused(alg):
    # RFC 8725 §3.1: never let the token choose "none" (or another key type)
    payload = {"sub": "mallory", "exp": NOW + 60, "grants": {"admin": True}}
    forged = sign({"alg": alg}, payload)
    if alg == "none":
        forged = forged.rsplit(".", 1)[0] + "."
    with pytest.raises(AuthError) as err:
        verify_token(SECRET, forged, now=NOW)
    assert err.value.status == 401


def test_expired_token_is_401():
    t = token(ttl=60)
    verify_token(SECRET, t, now=NOW + 59)
    for later in (NOW + 60, NOW + 3600):
        with pytest.raises(AuthError) as err:
            verify_token(SECRET, t, now=later)
        assert err.value.status == 401 and "expired" in err.value.reason


@pytest.mark.parametrize("payload, reason", [
    ({"exp": NOW + 60}, "identity"),
    ({"sub": "", "exp": NOW + 60}, "identity"),
    ({"sub": 7, "exp": NOW + 60}, "identity"),
    ({"sub": "a"}, "expiry"),
    ({"sub": "a", "exp": "tomorrow"}, "expiry"),
    ({"sub": "a", "exp": True}, "expiry"),
    ({"sub": "a", "exp": NOW + 60, "room": 5}, "malformed"),
    ({"sub": "a", "exp": NOW + 60, "grants": ["admin"]}, "malformed"),
])
def test_incomplete_claims_are_401(payload, reason):
    with pytest.raises(AuthError) as err:
        verify_token(SECRET, sign({"alg": "HS256"}, payload), now=NOW)
    assert err.value.status == 401 and reason in err.value.reason


def test_grants_must_be_true_not_truthy():
    t = sign({"alg": "HS256"}, {"sub": "a", "exp": NOW + 9, "grants": {"admin": "yes", "publish": 1}})
    assert verify_token(SECRET, t, now=NOW).grants == Grants()


def test_authorize_room_and_grants():
    pub = verify_token(SECRET, token(grants=Grants(publish=True)), now=NOW)
    authorize(pub, "r1", "publish")
    authorize(pub, "r1", None)
    for room, need, words in (("r2", "publish", "another room"), ("r1", "subscribe", "subscribe"),
                              ("r1", "host", "host"), ("r1", "admin", "admin")):
        with pytest.raises(AuthError) as err:
            authorize(pub, room, need)
        assert err.value.status == 403 and words in err.value.reason


def test_roomless_token_enters_no_room_but_admin_enters_all():
    rest_only = verify_token(SECRET, token(room=None, grants=Grants(publish=True)), now=NOW)
    with pytest.raises(AuthError) as err:
        authorize(rest_only, "r1", "publish")
    assert err.value.status == 403
    authorize(rest_only, None, None)  # REST calls that name no room
    admin = verify_token(SECRET, token(room=None, grants=Grants(admin=True, subscribe=True)), now=NOW)
    authorize(admin, "any-room", "subscribe")
    authorize(admin, "any-room", "host")  # admin implies host
    with pytest.raises(AuthError):
        authorize(admin, "any-room", "publish")  # but media needs its own grant
    with pytest.raises(ValueError):
        authorize(admin, "r", "fly")


class FakeRequest:
    def __init__(self, headers=None, query=None):
        self.headers = headers or {}
        self.query = query or {}


def test_token_from_request():
    assert token_from_request(FakeRequest({"Authorization": "Bearer abc.def.ghi"})) == "abc.def.ghi"
    assert token_from_request(FakeRequest({"Authorization": "bearer  xyz "})) == "xyz"
    assert token_from_request(FakeRequest({"Authorization": "Basic Zm9vOmJhcg=="})) is None
    assert token_from_request(FakeRequest({"Authorization": "Bearer "})) is None
    assert token_from_request(FakeRequest(query={"token": "q.q.q"})) == "q.q.q"
    assert token_from_request(FakeRequest({"Authorization": "Bearer h"}, {"token": "q"})) == "h"
    assert token_from_request(FakeRequest()) is None


def test_secret_file_is_created_once_and_private(tmp_path):
    data = tmp_path / "data"
    first = load_or_create_secret(str(data))
    assert len(first) >= 40
    assert stat.S_IMODE(os.stat(data / "auth_secret").st_mode) == 0o600
    assert load_or_create_secret(str(data)) == first


def test_parse_duration():
    assert parse_duration("90") == 90 and parse_duration("90s") == 90
    assert parse_duration("15m") == 900 and parse_duration("6h") == 21600
    assert parse_duration("7d") == 604800 and parse_duration("1w") == 604800
    assert parse_duration("1.5h") == 5400
    for bad in ("", "h", "6x", "-1h", "0", "6 hours"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_mint_refuses_empty_secret_or_identity():
    with pytest.raises(ValueError):
        mint_token("", "a", "A", "r", Grants())
    with pytest.raises(ValueError):
        mint_token("s", "", "A", "r", Grants())


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "sfu", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, env={**os.environ, **(env or {})})


def test_sfu_token_command_uses_the_data_dir_secret(tmp_path):
    data = str(tmp_path / "data")
    out = run_cli("token", "--room", "r1", "--identity", "ann", "--name", "Ann", "--publish",
                  "--subscribe", "--ttl", "2h", "--data-dir", data)
    assert out.returncode == 0, out.stderr
    tok = out.stdout.strip().splitlines()[-1]
    claims = verify_token(load_or_create_secret(data), tok)  # the secret `sfu serve` would use
    assert (claims.identity, claims.name, claims.room) == ("ann", "Ann", "r1")
    assert claims.grants == Grants(publish=True, subscribe=True)
    import time
    assert 7100 < claims.expires_at - time.time() <= 7200


def test_sfu_token_command_secret_from_flag_and_environment(tmp_path):
    out = run_cli("token", "--room", "r", "--identity", "x", "--admin", "--auth-secret", "flag-secret",
                  "--data-dir", str(tmp_path))
    assert verify_token("flag-secret", out.stdout.splitlines()[-1]).grants.admin
    out = run_cli("token", "--room", "r", "--identity", "x", "--data-dir", str(tmp_path),
                  env={"SFU_AUTH_SECRET": "env-secret"})
    assert verify_token("env-secret", out.stdout.splitlines()[-1]).identity == "x"
    assert not (tmp_path / "auth_secret").exists()
    bad = run_cli("token", "--room", "r", "--identity", "x", "--ttl", "soon", "--auth-secret", "s")
    assert bad.returncode != 0 and "duration" in bad.stderr


# -- PyJWT: nbf, leeway, key rotation by kid, algorithm confusion ----------------------

from sfu.auth import Keyring, keyring_from_config, parse_keys  # noqa: E402
from sfu.config import Config  # noqa: E402

OLD, NEW = "old-secret-" + "o" * 32, "new-secret-" + "n" * 32


def test_nbf_is_honoured_with_leeway():
    t = mint_token(SECRET, "a", "A", "r1", Grants(), ttl=600, now=NOW, not_before=NOW + 100)
    with pytest.raises(AuthError) as err:
        verify_token(SECRET, t, now=NOW + 50)
    assert err.value.status == 401 and "not yet valid" in err.value.reason
    assert verify_token(SECRET, t, now=NOW + 100).identity == "a"
    assert verify_token(SECRET, t, now=NOW + 75, leeway=30).identity == "a"  # skewed clock
    with pytest.raises(AuthError):
        verify_token(SECRET, t, now=NOW + 69, leeway=30)
    bad = sign({"alg": "HS256"}, {"sub": "a", "exp": NOW + 60, "nbf": "later"})
    with pytest.raises(AuthError) as err:
        verify_token(SECRET, bad, now=NOW)
    assert err.value.status == 401 and "nbf" in err.value.reason


def test_leeway_on_expiry_comes_from_the_keyring():
    ring = Keyring(SECRET, leeway=30)
    t = token(ttl=60)
    assert verify_token(ring, t, now=NOW + 89).identity == "alice"
    with pytest.raises(AuthError) as err:
        verify_token(ring, t, now=NOW + 90)
    assert "expired" in err.value.reason
    with pytest.raises(AuthError):
        verify_token(ring, t, now=NOW + 61, leeway=0)  # an explicit leeway wins
    assert Config().auth_leeway == 30.0
    with pytest.raises(ValueError):
        Keyring(SECRET, leeway=-1)


def test_kid_rotation_picks_the_key_named_in_the_header():
    old_ring = Keyring(OLD, kid="k1")
    old_token = mint_token(old_ring, "a", "A", "r1", Grants(subscribe=True), now=NOW)
    assert jwt_header(old_token) == {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    # rotated: NEW signs (kid k2), OLD is kept for verification only
    ring = Keyring(NEW, kid="k2", keys={"k1": OLD})
    assert verify_token(ring, old_token, now=NOW).grants == Grants(subscribe=True)
    new_token = mint_token(ring, "b", "B", "r1", Grants(), now=NOW)
    assert jwt_header(new_token)["kid"] == "k2"
    assert verify_token(ring, new_token, now=NOW).identity == "b"
    # the old server (without k2) refuses the new key id
    with pytest.raises(AuthError) as err:
        verify_token(old_ring, new_token, now=NOW)
    assert err.value.status == 401 and "unknown key id" in err.value.reason
    # a token without kid is checked against the primary secret only
    assert verify_token(ring, mint_token(NEW, "c", "C", "r1", Grants(), now=NOW), now=NOW).identity == "c"
    with pytest.raises(AuthError) as err:
        verify_token(ring, mint_token(OLD, "c", "C", "r1", Grants(), now=NOW), now=NOW)
    assert "signature" in err.value.reason
    # a kid that names one key but was signed with another: refused
    with pytest.raises(AuthError) as err:
        verify_token(ring, sign({"alg": "HS256", "kid": "k1"}, {"sub": "m", "exp": NOW + 60}, NEW), now=NOW)
    assert "signature" in err.value.reason


@pytest.mark.parametrize("kid", ["nope", "", "../../auth_secret", 7, None, ["k1"], {"k": 1}])
def test_unknown_or_odd_kids_are_refused(kid):
    ring = Keyring(NEW, kid="k2", keys={"k1": OLD})
    forged = sign({"alg": "HS256", "kid": kid}, {"sub": "m", "exp": NOW + 60}, NEW)
    with pytest.raises(AuthError) as err:
        verify_token(ring, forged, now=NOW)
    assert err.value.status == 401


def jwt_header(tok: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(tok.split(".")[0] + "=="))


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE", "hs256", "HS256 ", "HS384", "RS256",
                                 "ES256", "PS256", "EdDSA", "", 256, ["HS256"]])
def test_alg_none_and_alg_confusion_are_refused(alg):
    payload = {"sub": "mallory", "exp": NOW + 60, "grants": {"admin": True}}
    for key in (SECRET, ""):
        forged = sign({"alg": alg, "typ": "JWT"}, payload, key)
        for t in (forged, forged.rsplit(".", 1)[0] + "."):  # with and without a signature
            with pytest.raises(AuthError) as err:
                verify_token(Keyring(SECRET, kid="k"), t, now=NOW)
            assert err.value.status == 401


def test_public_key_confusion_is_refused():
    # the classic confusion: an RS256 server's public key used as an HS256 secret; we only
    # have HMAC keys, and PyJWT refuses PEM text as an HMAC secret on both sides
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    forged = sign({"alg": "HS256"}, {"sub": "m", "exp": NOW + 60}, pem)
    with pytest.raises(AuthError) as err:
        verify_token(pem, forged, now=NOW)
    assert err.value.status == 401


@pytest.mark.parametrize("header", [{"alg": "HS256", "crit": ["exp"]}, {"alg": "HS256", "b64": False},
                                    {"alg": "HS256", "crit": "b64"}])
def test_critical_or_detached_headers_are_refused(header):
    with pytest.raises(AuthError) as err:
        verify_token(SECRET, sign(header, {"sub": "m", "exp": NOW + 60}), now=NOW)
    assert err.value.status == 401


def test_huge_token_is_refused_before_parsing():
    big = sign({"alg": "HS256"}, {"sub": "a", "exp": NOW + 60, "pad": "x" * 10_000})
    with pytest.raises(AuthError) as err:
        verify_token(SECRET, big, now=NOW)
    assert err.value.status == 401 and "malformed" in err.value.reason


def test_keys_parsing_and_the_keys_file(tmp_path):
    assert parse_keys("k1:a, k2 : b # old\n\n# comment\nk3:c:d", "x") == {"k1": "a", "k2": "b", "k3": "c:d"}
    for bad in ("justasecret", "k1:", ":s", "bad kid:s", "k1:a,k1:b"):
        with pytest.raises(ValueError) as err:
            parse_keys(bad, "where")
        assert "secret" not in str(err.value) or "kid:secret" in str(err.value)
        assert "justasecret" not in str(err.value)
    data = tmp_path / "data"
    data.mkdir()
    (data / "auth_keys").write_text("# rotated out 2026-11\nk1:" + OLD + "\n")
    ring = keyring_from_config(Config(data_dir=str(data), auth_secret=NEW, auth_kid="k2",
                                      auth_keys="k0:zero-" + "z" * 30, auth_leeway=5))
    assert ring == NEW and ring.kid == "k2" and ring.leeway == 5
    assert ring.keys == {"k0": "zero-" + "z" * 30, "k1": OLD, "k2": NEW}
    (data / "auth_keys").write_text("k2:" + OLD + "\n")  # k2 is the primary's id: conflict
    with pytest.raises(SystemExit) as err:
        keyring_from_config(Config(data_dir=str(data), auth_secret=NEW, auth_kid="k2"))
    assert "k2" in str(err.value) and OLD not in str(err.value)


def test_sfu_token_signs_with_the_primary_key_and_its_kid(tmp_path):
    (tmp_path / "auth_keys").write_text("k1:" + OLD + "\n")
    out = run_cli("token", "--room", "r", "--identity", "x", "--data-dir", str(tmp_path),
                  "--auth-secret", NEW, "--auth-kid", "k2")
    assert out.returncode == 0, out.stderr
    tok = out.stdout.splitlines()[-1]
    assert jwt_header(tok)["kid"] == "k2"
    assert verify_token(Keyring(NEW, kid="k2"), tok).identity == "x"
    with pytest.raises(AuthError):
        verify_token(Keyring(OLD, kid="k1"), tok)
    bad = run_cli("token", "--room", "r", "--identity", "x", "--data-dir", str(tmp_path),
                  "--auth-secret", NEW, "--auth-kid", "k 2")
    assert bad.returncode != 0 and "key id" in bad.stderr and NEW not in bad.stderr
