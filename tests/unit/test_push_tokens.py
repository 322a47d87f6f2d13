"""Provider tokens of APNs (refresh before an hour, never more often than every 20 minutes) and VAPID JWTs."""

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from services.delivery import apns, webpush


def _key() -> tuple[apns.SigningKey, ec.EllipticCurvePublicKey]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return apns.SigningKey("ABC123DEFG", "TEAM000001", pem), private.public_key()


def test_apns_provider_token_is_reused_then_refreshed_within_the_hour() -> None:
    now = [1_800_000_000.0]
    tokens = apns.ProviderTokens(clock=lambda: now[0])
    key, public = _key()
    first = tokens.get(key)
    assert jwt.get_unverified_header(first) == {"alg": "ES256", "kid": "ABC123DEFG", "typ": "JWT"}
    assert jwt.decode(first, public, algorithms=["ES256"], options={"verify_iat": False}) == {"iss": "TEAM000001", "iat": 1_800_000_000}
    now[0] += 49 * 60
    assert tokens.get(key) == first
    now[0] += 2 * 60  # 51 minutes old: replaced before Apple's hour runs out
    second = tokens.get(key)
    assert second != first and jwt.decode(second, public, algorithms=["ES256"], options={"verify_iat": False})["iat"] == int(now[0])
    assert tokens.minted == 2


def test_apns_rejected_token_is_reminted_once_then_not_before_20_minutes() -> None:
    now = [1_800_000_000.0]
    tokens = apns.ProviderTokens(clock=lambda: now[0])
    key, _ = _key()
    first = tokens.get(key)
    now[0] += 60
    second = tokens.get(key, rejected=first)
    assert second not in (None, first)
    assert tokens.get(key, rejected=first) == second  # someone else already replaced it: no new token
    assert tokens.get(key, rejected=second) is None  # a fresh replacement refused too: keep it (20 min rule)
    now[0] += 20 * 60
    third = tokens.get(key, rejected=second)
    assert third not in (None, second) and tokens.minted == 3


def test_a_changed_key_gets_its_own_token() -> None:
    tokens = apns.ProviderTokens()
    a, _ = _key()
    b, _ = _key()
    assert tokens.get(a) != tokens.get(b)


def test_vapid_key_formats_and_jwt() -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    raw = webpush.b64url(private.private_numbers().private_value.to_bytes(32, "big"))
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    from_raw, from_pem = webpush.VapidKey.load(raw), webpush.VapidKey.load(pem)
    assert from_raw.public_key == from_pem.public_key and len(webpush.b64url_decode(from_raw.public_key)) == 65
    token = webpush.VapidTokens().get(from_raw, "https://push.example.net", "mailto:ops@example.com")
    claims = jwt.decode(token, private.public_key(), algorithms=["ES256"], audience="https://push.example.net")
    assert claims["sub"] == "mailto:ops@example.com"
    assert webpush.origin("https://push.example.net:8443/wpush/v2/abc?x=1") == "https://push.example.net:8443"
    assert len(webpush.topic("stock-7")) == 32
