"""Building the wire bytes of one marketing email, and address checks."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from urllib.parse import quote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shared.definitions import Email
from shared.mail import (
    Envelope,
    build_message,
    checked_address,
    normalize_address,
    split_sender,
    unsubscribe_mailto,
)
from shared.templates import _LINE_BREAKS, CompiledEmail, RenderedEmail, one_line

TOKEN = "AQEAAAAHAAAAAAAB4kCZzHyOetx5h0fQwb4"
UNSUBSCRIBE_URL = f"https://prefs.northwind.example.com/unsubscribe?token={TOKEN}"
UNSUBSCRIBE_MAILTO = (
    f"mailto:unsubscribe@northwind.example.com?subject=unsubscribe%20{TOKEN}"
)
INJECTED = "Eve\r\nBcc: evil@example.com"


def envelope(recipient_name: str = "Eve Smith") -> Envelope:
    return Envelope(
        sender_name="Northwind News",
        sender_address="news@northwind.example.com",
        recipient_name=recipient_name,
        recipient_address="eve@example.com",
        unsubscribe_url=UNSUBSCRIBE_URL,
        unsubscribe_mailto=UNSUBSCRIBE_MAILTO,
    )


def rendered_for(firstname: str) -> RenderedEmail:
    definition = Email(
        kind="email",
        name="hello",
        subject="Hello {{ contact.firstname }}",
        html="<p>Hello {{ contact.firstname }}</p>"
        '<a href="{{ content.subscription_center_url }}">unsubscribe</a>',
    )
    return CompiledEmail(definition).render(
        {"firstname": firstname}, {"subscription_center_url": UNSUBSCRIBE_URL}
    )


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def header_lines(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return head.split("\r\n")


def test_message_id_returned_and_set() -> None:
    message_id, data = build_message(envelope(), rendered_for("Eve"))
    assert parse(data)["Message-ID"] == message_id
    assert message_id.endswith("@northwind.example.com>")


def test_message_has_text_and_html_parts() -> None:
    _, data = build_message(envelope(), rendered_for("<b>Eve</b>"))
    message = parse(data)
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(preferencelist=("plain",))
    html = message.get_body(preferencelist=("html",))
    assert text is not None
    assert html is not None
    assert "Hello <b>Eve</b>" in text.get_content()
    assert "Hello &lt;b&gt;Eve&lt;/b&gt;" in html.get_content()


def test_list_unsubscribe_on_one_line() -> None:
    _, data = build_message(envelope(), rendered_for("Eve"))
    expected = f"List-Unsubscribe: <{UNSUBSCRIBE_URL}>, <{UNSUBSCRIBE_MAILTO}>"
    assert expected in header_lines(data)


def test_one_click_post_header() -> None:
    _, data = build_message(envelope(), rendered_for("Eve"))
    assert parse(data)["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_sender_and_recipient_headers() -> None:
    _, data = build_message(envelope(), rendered_for("Eve"))
    message = parse(data)
    assert message["From"] == "Northwind News <news@northwind.example.com>"
    assert message["To"] == "Eve Smith <eve@example.com>"


def test_injected_line_break_adds_no_header() -> None:
    _, data = build_message(
        envelope(recipient_name=f"{INJECTED} Smith"), rendered_for(INJECTED)
    )
    message = parse(data)
    assert message["Bcc"] is None
    assert not any(line.lower().startswith("bcc:") for line in header_lines(data))


def test_injected_subject_stays_single_line() -> None:
    _, data = build_message(envelope(), rendered_for(INJECTED))
    subject = parse(data)["Subject"]
    assert subject == "Hello Eve Bcc: evil@example.com"
    assert "\n" not in subject


def test_injected_recipient_name_stays_single_line() -> None:
    _, data = build_message(
        envelope(recipient_name=f"{INJECTED} Smith"), rendered_for("Eve")
    )
    to = parse(data)["To"]
    assert "\n" not in to
    assert [address.addr_spec for address in to.addresses] == ["eve@example.com"]
    assert to.addresses[0].display_name == "Eve Bcc: evil@example.com Smith"


def test_non_ascii_subject_encoded() -> None:
    _, data = build_message(envelope(), rendered_for("J\u00fcrgen"))
    assert parse(data)["Subject"] == "Hello J\u00fcrgen"
    assert all(line.isascii() for line in header_lines(data))


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("eve@example.com", "eve@example.com"),
        ("Eve@Example.COM", "Eve@example.com"),
        ("eve.smith+news@mail.example.org", "eve.smith+news@mail.example.org"),
        ("eve.example.com", None),
        ("eve@@example.com", None),
        ("eve.@example.com", None),
        ("eve@localhost", None),
        ("", None),
        ("User@Bücher.de", "User@xn--bcher-kva.de"),
        ("jürgen@example.com", None),
    ],
    ids=[
        "valid",
        "domain-lowered",
        "plus-tag",
        "missing-at",
        "double-at",
        "trailing-dot",
        "no-tld",
        "empty",
        "unicode-domain-as-idna",
        "unicode-local-part",
    ],
)
def test_normalize_address(address: str, expected: str | None) -> None:
    assert normalize_address(address) == expected


# Characters that make a local part plain, and ones that make it need the
# full check: quotes, spaces, brackets, non-ASCII letters, a second @.
_LOCAL_CHARACTERS = "aZ09.!#$%&'*+/=?^_`{|}~-" + '" @()<>,;:\\[]\t\u00e9\u00fc'
_DOMAINS = [
    "example.com",
    "Example.COM",
    "mail.example.org",
    "b\u00fccher.de",
    "localhost",
    "example.test",
    "example.invalid",
    "example.local",
    "123.456",
    "[192.168.0.1]",
    # Short in IDNA, long in UTF-8, which is what email-validator counts.
    ".".join(["\u4e2d" * 19] * 4) + ".shop",
    ".".join(["\u4e2d" * 15] * 4) + ".shop",
    "-example.com",
    "example-.com",
    "example..com",
    "example.com.",
    "x" * 63 + ".com",
    "x" * 64 + ".com",
    ".".join(["y" * 60] * 4) + ".com",
    "",
]


@settings(max_examples=600, deadline=None)
@given(
    local=st.one_of(
        st.text(alphabet=_LOCAL_CHARACTERS, max_size=70),
        st.from_regex(r"[a-z0-9+_-]{1,30}(\.[A-Za-z0-9'~]{1,30}){0,2}", fullmatch=True),
        # RFC 2142 role names, which email-validator lowercases.
        st.sampled_from(["Info", "POSTMASTER", "Support", "abuse", "NoC", "Sales"]),
    ),
    domain=st.one_of(
        st.sampled_from(_DOMAINS),
        st.text(alphabet="ab0-.X\u00fc", max_size=70),
    ),
)
@example(local="a" * 64, domain="example.com")
@example(local="a" * 65, domain="example.com")
@example(local="a" * 64, domain=".".join(["y" * 61] * 3) + ".com")
@example(local="a" * 10, domain=".".join(["y" * 61] * 4))
@example(local="firstname.lastname", domain=".".join(["\u4e2d" * 19] * 4) + ".shop")
@example(local="a" * 64, domain=".".join(["\u4e2d" * 15] * 4) + ".shop")
@example(local="Info", domain="Example.COM")
def test_short_way_matches_full_check(local: str, domain: str) -> None:
    address = f"{local}@{domain}"
    assert normalize_address(address) == checked_address(address)


@given(st.text(max_size=80))
def test_any_text_matches_full_check(address: str) -> None:
    assert normalize_address(address) == checked_address(address)


@pytest.mark.parametrize(
    ("sender", "expected"),
    [
        (
            "Northwind News <news@northwind.example.com>",
            ("Northwind News", "news@northwind.example.com"),
        ),
        (
            '"Northwind, Inc." <news@northwind.example.com>',
            ("Northwind, Inc.", "news@northwind.example.com"),
        ),
        ("news@northwind.example.com", ("", "news@northwind.example.com")),
    ],
)
def test_split_sender(sender: str, expected: tuple[str, str]) -> None:
    assert split_sender(sender) == expected


@given(st.text(max_size=60))
@example("a\u2028b")
@example(" tab\tand\x85next ")
def test_one_line_fast_path_matches_collapsing(value: str) -> None:
    assert one_line(value) == _LINE_BREAKS.sub(" ", value).strip()


@given(st.text(max_size=40))
@example(TOKEN)
def test_unsubscribe_subject_is_the_quoted_token(token: str) -> None:
    mailto = unsubscribe_mailto("unsubscribe@northwind.example.com", token)
    assert mailto == (
        "mailto:unsubscribe@northwind.example.com?subject="
        + quote("unsubscribe " + token)
    )


@settings(max_examples=50)
@given(st.text(max_size=300), st.text(max_size=300))
def test_any_bodies_come_back_from_their_parts(text: str, html: str) -> None:
    """Whatever the bodies hold, the message parses into the same two parts,
    so no boundary line can appear inside them."""
    _, data = build_message(envelope(), RenderedEmail("subject", html, text))
    parts = [part.get_content() for part in parse(data).iter_parts()]
    normal = [value.replace("\r\n", "\n").replace("\r", "\n") for value in (text, html)]
    assert [part.replace("\r\n", "\n") for part in parts] == normal
