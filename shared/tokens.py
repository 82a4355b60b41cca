"""Signed, opaque per-contact tokens for unsubscribe and tracking links."""

from __future__ import annotations

import base64
import hashlib
import hmac
import struct
from dataclasses import dataclass

from shared.errors import PermanentError

_VERSION = 1
_PAYLOAD = struct.Struct(">BBIQ")  # version, purpose, journey id, contact id
_SIGNATURE_BYTES = 12
PURPOSES = {"unsubscribe": 1}


class InvalidToken(PermanentError):
    """Raised when a token is malformed, altered or signed with another key."""


@dataclass(frozen=True)
class TokenClaims:
    purpose: str
    journey_id: int
    contact: int


def sign(secret: bytes, purpose: str, journey_id: int, contact: int) -> str:
    payload = _PAYLOAD.pack(_VERSION, PURPOSES[purpose], journey_id, contact)
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
    if len(raw) != _PAYLOAD.size + _SIGNATURE_BYTES:
        raise InvalidToken(
            f"token has {len(raw)} bytes, expected {_PAYLOAD.size + _SIGNATURE_BYTES}"
        )

    payload, signature = raw[: _PAYLOAD.size], raw[_PAYLOAD.size :]
    if not hmac.compare_digest(signature, _signature(secret, payload)):
        raise InvalidToken("token signature does not match")
    version, purpose_code, journey_id, contact = _PAYLOAD.unpack(payload)
    purposes = {code: name for name, code in PURPOSES.items()}
    if version != _VERSION or purpose_code not in purposes:
        raise InvalidToken(
            f"token version {version} or purpose {purpose_code} is unknown"
        )
    return TokenClaims(purposes[purpose_code], journey_id, contact)


def _signature(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, payload, hashlib.sha256).digest()[:_SIGNATURE_BYTES]


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
