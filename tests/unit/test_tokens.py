"""Signed tokens of the unsubscribe, open and click links of one send."""

from __future__ import annotations

import pytest

from datetime import date

from shared.tokens import InvalidToken, TokenClaims, sign, verify

SECRET = b"first-secret-key"
OTHER_SECRET = b"second-secret-key"
BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
ISSUED = date(2026, 12, 1)
TOKEN = sign(SECRET, "click", 123_456, 7, issued=ISSUED)


def replace_at(token: str, position: int, character: str) -> str:
    return token[:position] + character + token[position + 1 :]


def test_round_trip() -> None:
    assert verify(SECRET, TOKEN) == TokenClaims("click", 123_456, 7, ISSUED)


def test_large_ids_round_trip() -> None:
    token = sign(SECRET, "open", 2**64 - 1, 2**32 - 1, issued=ISSUED)
    assert verify(SECRET, token) == TokenClaims("open", 2**64 - 1, 2**32 - 1, ISSUED)


def test_expiry_counts_days_since_issue() -> None:
    claims = verify(SECRET, TOKEN)
    assert not claims.expired(30, today=date(2026, 12, 31))
    assert claims.expired(30, today=date(2027, 1, 1))


def test_token_is_url_safe() -> None:
    assert set(TOKEN) <= set(BASE64URL)


@pytest.mark.parametrize("position", range(len(TOKEN) - 1))
def test_altered_character_rejected(position: int) -> None:
    """Every character but the last carries 6 bits of the 28-byte token."""
    replacement = BASE64URL[(BASE64URL.index(TOKEN[position]) + 1) % 64]
    with pytest.raises(InvalidToken):
        verify(SECRET, replace_at(TOKEN, position, replacement))


@pytest.mark.parametrize(
    "altered",
    [
        replace_at(TOKEN, len(TOKEN) - 1, BASE64URL[BASE64URL.index(TOKEN[-1]) ^ 1]),
        TOKEN + "!!",
    ],
    ids=["last-character", "trailing-junk"],
)
def test_non_canonical_token_rejected(altered: str) -> None:
    with pytest.raises(InvalidToken):
        verify(SECRET, altered)


def test_other_key_rejected() -> None:
    with pytest.raises(InvalidToken, match="signature does not match"):
        verify(OTHER_SECRET, TOKEN)


@pytest.mark.parametrize("length", [0, 1, 10, len(TOKEN) - 1])
def test_truncated_token_rejected(length: int) -> None:
    with pytest.raises(InvalidToken):
        verify(SECRET, TOKEN[:length])


def test_extended_token_rejected() -> None:
    with pytest.raises(InvalidToken, match="expected 28"):
        verify(SECRET, TOKEN + "AAAA")


@pytest.mark.parametrize(
    "garbage", ["garbage", "!!!!", "not a token at all", "\u00e9t\u00e9", "A" * 35]
)
def test_garbage_rejected(garbage: str) -> None:
    with pytest.raises(InvalidToken):
        verify(SECRET, garbage)


def test_tokens_differ_per_link() -> None:
    assert sign(SECRET, "click", 7, 1) != sign(SECRET, "click", 7, 2)


def test_tokens_differ_per_send() -> None:
    assert sign(SECRET, "click", 7, 1) != sign(SECRET, "click", 8, 1)


def test_tokens_differ_per_purpose() -> None:
    assert sign(SECRET, "open", 7) != sign(SECRET, "unsubscribe", 7)


def test_tokens_differ_per_key() -> None:
    assert sign(SECRET, "click", 7, 1) != sign(OTHER_SECRET, "click", 7, 1)


def test_signing_is_deterministic() -> None:
    assert sign(SECRET, "click", 123_456, 7, issued=ISSUED) == TOKEN
