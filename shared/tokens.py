"""Signed, opaque tokens for the unsubscribe, open and click links of one send."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from shared.errors import PermanentError

_VERSION = 2
# version, purpose, day of issue (days since 2020-01-01), send id, link number
_PAYLOAD = struct.Struct(">BBHQI")
_SIGNATURE_BYTES = 12
_EPOCH = date(2020, 1, 1)
PURPOSES = {"unsubscribe": 1, "open": 2, "click": 3}
_PURPOSE_NAMES = {code: name for name, code in PURPOSES.items()}


class InvalidToken(PermanentError):
    """Raised when a token is malformed, altered or signed with another key."""


@dataclass(frozen=True)
class TokenClaims:
    purpose: str
    send_id: int
    link: int
    issued: date

    def expired(self, max_age_days: int, today: date | None = None) -> bool:
        today = today or datetime.now(UTC).date()
        return today - self.issued > timedelta(days=max_age_days)


def sign(
    secret: bytes, purpose: str, send_id: int, link: int = 0, issued: date | None = None
) -> str:
    day = ((issued or datetime.now(UTC).date()) - _EPOCH).days
    payload = _PAYLOAD.pack(_VERSION, PURPOSES[purpose], day, send_id, link)
    return _encode(payload + _signature(secret, payload))


def verify(secret: bytes, token: str) -> TokenClaims:
    try:
        raw = base64.b64decode(
            token + "=" * (-len(token) % 4), altchars=b"-_", validate=True
        )
    except ValueError as error:
        raise InvalidToken("token is not valid base64url") from error
    if _encode(raw) != token:
        raise InvalidToken("token is not in its canonical form")
    expected = _PAYLOAD.size + _SIGNATURE_BYTES
    if len(raw) != expected:
        raise InvalidToken(f"token has {len(raw)} bytes, expected {expected}")

    payload, signature = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
    if not hmac.compare_digest(signature, _signature(secret, payload)):
        raise InvalidToken("token signature does not match")
    version, purpose_code, day, send_id, link = _PAYLOAD.unpack(payload)
    if version != _VERSION or purpose_code not in _PURPOSE_NAMES:
        raise InvalidToken(
            f"token version {version} or purpose {purpose_code} is unknown"
        )
    return TokenClaims(
        _PURPOSE_NAMES[purpose_code], send_id, link, _EPOCH + timedelta(days=day)
    )


def _signature(secret: bytes, payload: bytes) -> bytes:
    return hmac.digest(secret, payload, hashlib.sha256)[:_SIGNATURE_BYTES]


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
