"""Rendering email templates for one contact in the Jinja2 sandbox."""

from __future__ import annotations

from typing import Any

import pytest

from shared.definitions import Email
from shared.templates import CompiledEmail, RenderError, html_to_text, one_line

CONTENT = {
    "sender_name": "Northwind News",
    "sender_address": "news@northwind.example.com",
    "postal_address": "Hafenstrasse 12, 20457 Hamburg",
    "subscription_center_url": "https://prefs.northwind.example.com/unsubscribe?token=abc&list=1",
}


def render(
    contact: dict[str, Any],
    *,
    subject: str = "Hi",
    html: str = "<p>Hi</p>",
    text: str | None = None,
):
    email = Email(kind="email", name="hello", subject=subject, html=html, text=text)
    return CompiledEmail(email).render(contact, CONTENT)


def test_html_escapes_contact_values() -> None:
    rendered = render(
        {"firstname": "<b>Eve</b>"}, html="<p>Hello {{ contact.firstname }}</p>"
    )
    assert rendered.html == "<p>Hello &lt;b&gt;Eve&lt;/b&gt;</p>"


def test_subject_not_escaped() -> None:
    rendered = render(
        {"firstname": "<b>Eve</b> & Co"}, subject="Hi {{ contact.firstname }}"
    )
    assert rendered.subject == "Hi <b>Eve</b> & Co"


def test_text_part_not_escaped() -> None:
    rendered = render(
        {"firstname": "<b>Eve</b> & Co"}, text="Hello {{ contact.firstname }}"
    )
    assert rendered.text == "Hello <b>Eve</b> & Co"


def test_subject_line_breaks_collapsed() -> None:
    contact = {"firstname": "Eve\r\nBcc: evil@example.com"}
    rendered = render(contact, subject="Hi {{ contact.firstname }}")
    assert rendered.subject == "Hi Eve Bcc: evil@example.com"


def test_derived_text_keeps_link_address() -> None:
    html = '<p>Hello</p><a href="{{ content.subscription_center_url }}">Unsubscribe</a>'
    rendered = render({}, html=html)
    assert (
        "https://prefs.northwind.example.com/unsubscribe?token=abc&list=1"
        in rendered.text
    )
    assert "Unsubscribe" in rendered.text
    assert "<a" not in rendered.text


def test_derived_text_unescapes_entities() -> None:
    assert html_to_text("<p>Fish &amp; chips</p>") == "Fish & chips\n"


@pytest.mark.parametrize(
    "template",
    [
        "{{ contact.__class__ }}",
        "{{ contact.__class__.__mro__ }}",
        "{{ contact['__class__'] }}",
        "{{ contact.firstname.__class__.__mro__[1].__subclasses__() }}",
        "{{ ''.__class__ }}",
        "{{ contact.items.__self__ }}",
    ],
)
def test_sandbox_blocks_python_internals(template: str) -> None:
    with pytest.raises(RenderError, match="email 'hello' cannot be rendered"):
        render({"firstname": "Eve"}, html=template)


def test_missing_contact_field_raises_render_error() -> None:
    with pytest.raises(RenderError, match="no attribute 'city'"):
        render({"firstname": "Eve"}, html="<p>{{ contact.city }}</p>")


def test_default_covers_missing_contact_field() -> None:
    rendered = render(
        {"firstname": "Eve"}, html="<p>{{ contact.city | default('your city') }}</p>"
    )
    assert rendered.html == "<p>your city</p>"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "plain"),
        ("a\r\nb", "a b"),
        ("a\nb\rc", "a b c"),
        ("a\u2028b\x85c", "a b c"),
        ("  padded\n", "padded"),
    ],
)
def test_one_line(value: str, expected: str) -> None:
    assert one_line(value) == expected
