"""Problems that the check finds across documents: references, tiles, time
windows, segments, templates and what going live requires."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.checks import Catalog, check
from shared.definitions import Segment
from shared.loading import Problem, load_documents

HTML = (
    "<p>Hello {{ contact.firstname }}</p>"
    "<p>{{ content.postal_address }}</p>"
    '<a href="{{ content.subscription_center_url }}">unsubscribe</a>'
)


def content_settings(**changes: Any) -> dict[str, Any]:
    return {
        "kind": "content-settings",
        "name": "default",
        "sender": "Northwind News <news@northwind.example.com>",
        "postal_address": "Hafenstrasse 12, 20457 Hamburg",
        "subscription_center_url": "https://prefs.northwind.example.com/unsubscribe",
        **changes,
    }


def segment(**changes: Any) -> dict[str, Any]:
    return {"kind": "segment", "name": "everyone", "where": [], **changes}


def email(**changes: Any) -> dict[str, Any]:
    return {
        "kind": "email",
        "name": "hello",
        "subject": "Hi {{ contact.firstname }}",
        "html": HTML,
        **changes,
    }


def journey(**changes: Any) -> dict[str, Any]:
    return {
        "kind": "journey",
        "name": "spring",
        "start": "2027-05-03 09:00",
        "end": "2027-06-03 09:00",
        "timezone": "Europe/Berlin",
        "content_settings": "default",
        "audience": {"segment": "everyone"},
        "tiles": [{"id": "send-hello", "type": "email", "email": "hello"}],
        **changes,
    }


def complete(**journey_changes: Any) -> list[dict[str, Any]]:
    """A consistent set of drafts: content settings, segment, email and journey."""
    return [content_settings(), segment(), email(), journey(**journey_changes)]


def check_documents(
    tmp_path: Path, documents: list[dict[str, Any]] | str, **options: Any
) -> list[Problem]:
    path = tmp_path / "definitions.yaml"
    if isinstance(documents, str):
        path.write_text(documents, encoding="utf-8")
    else:
        path.write_text(
            yaml.safe_dump_all(documents, sort_keys=False), encoding="utf-8"
        )
    loaded, problems = load_documents([path])
    return problems + check(loaded, **options)


def single(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def test_complete_drafts_have_no_problems(tmp_path: Path) -> None:
    assert check_documents(tmp_path, complete()) == []


# Names and references


def test_duplicate_document_names_rejected(tmp_path: Path) -> None:
    problem = single(check_documents(tmp_path, [segment(), segment()]))
    assert problem.document == "segment 'everyone'"
    assert "is defined twice, also at" in problem.message
    assert f"{tmp_path / 'definitions.yaml'}:1" in problem.message


def test_same_name_in_two_kinds_accepted(tmp_path: Path) -> None:
    assert check_documents(tmp_path, [segment(name="hello"), email(name="hello")]) == []


def test_unknown_content_settings_rejected(tmp_path: Path) -> None:
    documents = [segment(), email(), journey(content_settings="nordwind")]
    problem = single(check_documents(tmp_path, documents))
    assert problem.tile is None
    assert "content_settings refers to content-settings 'nordwind'" in problem.message
    assert "not defined in these files or published" in problem.message


def test_unknown_segment_rejected(tmp_path: Path) -> None:
    documents = [content_settings(), email(), journey(audience={"segment": "everyone"})]
    problem = single(check_documents(tmp_path, documents))
    assert "audience refers to segment 'everyone'" in problem.message
    assert "not defined" in problem.message


def test_unknown_email_names_tile(tmp_path: Path) -> None:
    tiles = [{"id": "send-offer", "type": "email", "email": "offer"}]
    problem = single(check_documents(tmp_path, complete(tiles=tiles)))
    assert problem.tile == "send-offer"
    assert "email refers to email 'offer'" in problem.message
    assert "add it or correct the name" in problem.message


def test_published_reference_accepted(tmp_path: Path) -> None:
    published = Segment(kind="segment", name="everyone", status="live", where=[])
    catalog = Catalog(published={("segment", "everyone"): published})
    documents = [content_settings(), email(), journey()]
    assert check_documents(tmp_path, documents, catalog=catalog) == []


# Tiles


def test_duplicate_tile_ids_rejected(tmp_path: Path) -> None:
    tiles = [
        {"id": "send", "type": "email", "email": "hello"},
        {"id": "send", "type": "email", "email": "hello"},
    ]
    problem = single(check_documents(tmp_path, complete(tiles=tiles)))
    assert problem.tile == "send"
    assert "tile id is used 2 times" in problem.message


def test_audience_tile_id_reserved(tmp_path: Path) -> None:
    tiles = [{"id": "audience", "type": "email", "email": "hello"}]
    problem = single(check_documents(tmp_path, complete(tiles=tiles)))
    assert problem.tile == "audience"
    assert "reserved for the audience tile" in problem.message


def test_tile_after_exit_unreachable(tmp_path: Path) -> None:
    tiles = [
        {"id": "stop", "type": "exit"},
        {"id": "send", "type": "email", "email": "hello"},
    ]
    problem = single(check_documents(tmp_path, complete(tiles=tiles)))
    assert problem.tile == "send"
    assert (
        "cannot be reached because exit tile 'stop' comes before it" in problem.message
    )


def test_every_tile_after_exit_unreachable(tmp_path: Path) -> None:
    tiles = [
        {"id": "stop", "type": "exit"},
        {"id": "first", "type": "email", "email": "hello"},
        {"id": "second", "type": "email", "email": "hello"},
    ]
    problems = check_documents(tmp_path, complete(tiles=tiles))
    assert sorted(problem.tile for problem in problems) == ["first", "second"]


def test_exit_as_last_tile_accepted(tmp_path: Path) -> None:
    tiles = [
        {"id": "send", "type": "email", "email": "hello"},
        {"id": "stop", "type": "exit"},
    ]
    assert check_documents(tmp_path, complete(tiles=tiles)) == []


# Time window


def test_start_after_end_rejected(tmp_path: Path) -> None:
    documents = complete(start="2027-07-03 09:00", end="2027-06-03 09:00")
    problem = single(check_documents(tmp_path, documents))
    assert (
        "start 2027-07-03 09:00 is not before end 2027-06-03 09:00" in problem.message
    )


def test_start_equal_to_end_rejected(tmp_path: Path) -> None:
    documents = complete(start="2027-06-03 09:00", end="2027-06-03 09:00")
    problem = single(check_documents(tmp_path, documents))
    assert "is not before end" in problem.message


@pytest.mark.parametrize(
    ("written", "suggested"),
    [
        ("europe/berlin", "Europe/Berlin"),
        ("Berlin", "Europe/Berlin"),
        ("new york", "America/New_York"),
    ],
)
def test_unknown_time_zone_suggests_name(
    tmp_path: Path, written: str, suggested: str
) -> None:
    problem = single(check_documents(tmp_path, complete(timezone=written)))
    assert f"unknown time zone {written!r}" in problem.message
    assert f"(did you mean {suggested!r}?)" in problem.message


def test_unknown_time_zone_without_guess(tmp_path: Path) -> None:
    problem = single(check_documents(tmp_path, complete(timezone="Mars/Olympus")))
    assert "unknown time zone 'Mars/Olympus'" in problem.message
    assert "did you mean" not in problem.message


def test_nonexistent_local_time_rejected(tmp_path: Path) -> None:
    problem = single(check_documents(tmp_path, complete(start="2027-03-28 02:30")))
    assert problem.message.startswith(
        "start: 2027-03-28 02:30 does not exist in Europe/Berlin"
    )
    assert "'nonexistent_time: shift_forward'" in problem.message
    assert "start at 03:00 (01:00Z)" in problem.message


def test_nonexistent_local_time_shifted_forward(tmp_path: Path) -> None:
    documents = complete(start="2027-03-28 02:30", nonexistent_time="shift_forward")
    assert check_documents(tmp_path, documents) == []


def test_ambiguous_local_time_rejected(tmp_path: Path) -> None:
    documents = complete(start="2027-10-01 09:00", end="2027-10-31 02:30")
    problem = single(check_documents(tmp_path, documents))
    assert problem.message.startswith(
        "end: 2027-10-31 02:30 happens twice in Europe/Berlin"
    )
    assert "00:30Z or 01:30Z" in problem.message
    assert "'ambiguous_time: earlier' or 'ambiguous_time: later'" in problem.message


@pytest.mark.parametrize("choice", ["earlier", "later"])
def test_ambiguous_local_time_choice_accepted(tmp_path: Path, choice: str) -> None:
    documents = complete(
        start="2027-10-01 09:00", end="2027-10-31 02:30", ambiguous_time=choice
    )
    assert check_documents(tmp_path, documents) == []


def test_past_end_warns_outside_go_live(tmp_path: Path) -> None:
    now = datetime(2027, 7, 1, tzinfo=UTC)
    problem = single(check_documents(tmp_path, complete(), now=now))
    assert problem.severity == "warning"
    assert "end 2027-06-03 09:00 Europe/Berlin has already passed" in problem.message


# Segments


@pytest.mark.parametrize(
    "document",
    [
        segment(contacts=["ann@example.com"], where=[]),
        {"kind": "segment", "name": "everyone"},
    ],
    ids=["both", "neither"],
)
def test_segment_needs_contacts_or_where(
    tmp_path: Path, document: dict[str, Any]
) -> None:
    problem = single(check_documents(tmp_path, [document]))
    assert "needs exactly one of 'contacts'" in problem.message


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (
            {"field": "city", "op": "in", "value": "Berlin"},
            "where #1: 'in' needs a list of values, got 'Berlin'",
        ),
        (
            {"field": "city", "op": "exists", "value": "yes"},
            "where #1: 'exists' takes true, false or no value, got 'yes'",
        ),
        ({"field": "city", "op": "eq"}, "where #1: 'eq' needs one value, got None"),
        (
            {"field": "city", "op": "gt", "value": [1, 2]},
            "where #1: 'gt' needs one value, got [1, 2]",
        ),
    ],
    ids=["in-without-list", "exists-with-string", "eq-without-value", "gt-with-list"],
)
def test_bad_condition_value_rejected(
    tmp_path: Path, condition: dict[str, Any], message: str
) -> None:
    problem = single(check_documents(tmp_path, [segment(where=[condition])]))
    assert problem.message == message


def test_unknown_segment_field_warns(tmp_path: Path) -> None:
    catalog = Catalog(contact_fields={"email", "city"})
    where = [{"field": "citty", "op": "eq", "value": "Berlin"}]
    problem = single(check_documents(tmp_path, [segment(where=where)], catalog=catalog))
    assert problem.severity == "warning"
    assert "contacts have no field 'citty'" in problem.message


# Templates


def test_template_syntax_error_names_part_and_line(tmp_path: Path) -> None:
    problem = single(
        check_documents(tmp_path, [email(subject="Hi {{ contact.firstname")])
    )
    assert problem.message.startswith("subject: template syntax error on line 1:")


def test_unknown_root_name_suggests_contact(tmp_path: Path) -> None:
    problem = single(
        check_documents(tmp_path, [email(subject="Hi {{ contcat.firstname }}")])
    )
    assert "unknown name 'contcat' (did you mean 'contact'?)" in problem.message


def test_unknown_content_field_rejected(tmp_path: Path) -> None:
    html = HTML + "{{ content.postal_adress }}"
    problem = single(check_documents(tmp_path, [email(html=html)]))
    assert problem.message.startswith("html: unknown content field 'postal_adress'")
    assert "(did you mean 'postal_address'?)" in problem.message


def test_unknown_contact_field_rejected(tmp_path: Path) -> None:
    catalog = Catalog(contact_fields={"email", "firstname", "city"})
    documents = [email(subject="Hi from {{ contact.citty }}")]
    problem = single(check_documents(tmp_path, documents, catalog=catalog))
    assert "unknown contact field 'citty' (did you mean 'city'?)" in problem.message
    assert "| default(" in problem.message


@pytest.mark.parametrize(
    "subject",
    [
        "Hi from {{ contact.citty | default('x') }}",
        "Hi from {{ contact.citty | d('x') | upper }}",
    ],
)
def test_guarded_misspelled_field_warns(tmp_path: Path, subject: str) -> None:
    catalog = Catalog(contact_fields={"email", "firstname", "city"})
    problem = single(
        check_documents(tmp_path, [email(subject=subject)], catalog=catalog)
    )
    assert problem.severity == "warning"
    assert problem.message == (
        "subject: no imported contact has the field 'citty' "
        "(did you mean 'city'?), so every email treats it as missing"
    )


@pytest.mark.parametrize(
    "subject",
    [
        "{{ contact.FIRSTNAME | default('x') }}",
        "{% if contact.firstnme is defined %}Hello{% endif %}",
        "{{ contact.fristname | d('a') }} {{ contact.fristname | d('b') }}",
    ],
)
def test_guarded_near_miss_warns_once(tmp_path: Path, subject: str) -> None:
    catalog = Catalog(contact_fields={"email", "firstname", "lastname"})
    documents = [email(subject=subject)]
    problem = single(check_documents(tmp_path, documents, catalog=catalog))
    assert problem.severity == "warning"
    assert "(did you mean 'firstname'?)" in problem.message


@pytest.mark.parametrize("field", ["state", "name", "plan_tier"])
def test_guarded_distant_field_accepted(tmp_path: Path, field: str) -> None:
    catalog = Catalog(contact_fields={"email", "firstname", "lastname", "plan"})
    subject = f"{{{{ contact.{field} | default('x') }}}}"
    documents = [email(subject=subject)]
    assert check_documents(tmp_path, documents, catalog=catalog) == []


@pytest.mark.parametrize(
    ("subject", "accepted"),
    [
        ("{% if contact.tier is defined %}{{ contact.tier }}{% endif %}", True),
        (
            "{% if contact.tier is defined and contact.city %}"
            "{{ contact['tier'] }}{% endif %}",
            True,
        ),
        (
            "{% if contact.city %}{% elif contact.tier is defined %}"
            "{{ contact.tier }}{% endif %}",
            True,
        ),
        (
            "{% if contact.tier is defined %}{% else %}{{ contact.tier }}{% endif %}",
            False,
        ),
        (
            "{% if contact.tier is defined or contact.city %}"
            "{{ contact.tier }}{% endif %}",
            False,
        ),
        ("{% if contact.city is defined %}{{ contact.tier }}{% endif %}", False),
    ],
)
def test_field_inside_defined_test(
    tmp_path: Path, subject: str, accepted: bool
) -> None:
    catalog = Catalog(contact_fields={"email", "firstname", "city"})
    problems = check_documents(tmp_path, [email(subject=subject)], catalog=catalog)
    if accepted:
        assert problems == []
    else:
        assert "unknown contact field 'tier'" in single(problems).message


def test_unguarded_use_gives_error_only(tmp_path: Path) -> None:
    catalog = Catalog(contact_fields={"email", "firstname", "city"})
    subject = "{{ contact.citty }} {{ contact.citty | default('x') }}"
    documents = [email(subject=subject)]
    problem = single(check_documents(tmp_path, documents, catalog=catalog))
    assert problem.severity == "error"


def test_guarded_new_field_accepted(tmp_path: Path) -> None:
    catalog = Catalog(contact_fields={"email", "firstname", "city"})
    subject = "Hi {{ contact.loyalty_tier | default('friend') }}"
    assert check_documents(tmp_path, [email(subject=subject)], catalog=catalog) == []


def test_contact_field_unchecked_without_catalog(tmp_path: Path) -> None:
    assert (
        check_documents(tmp_path, [email(subject="Hi from {{ contact.citty }}")]) == []
    )


@pytest.mark.parametrize(
    "subject", ["{{ contact.__class__ }}", "{{ contact['__class__'] }}"]
)
def test_python_internals_rejected(tmp_path: Path, subject: str) -> None:
    problem = single(check_documents(tmp_path, [email(subject=subject)]))
    assert "'contact.__class__' is not allowed" in problem.message


def test_nested_python_internals_rejected(tmp_path: Path) -> None:
    problems = check_documents(
        tmp_path, [email(subject="{{ contact.firstname.__class__ }}")]
    )
    assert len(problems) == 1


@pytest.mark.parametrize("part", ["html", "text"])
def test_live_email_needs_unsubscribe_and_address(tmp_path: Path, part: str) -> None:
    bare = "<p>Hello</p>" if part == "html" else "Hello"
    document = email(status="live", **{part: bare})
    messages = [problem.message for problem in check_documents(tmp_path, [document])]
    assert len(messages) == 2, messages
    assert any(
        f"{part}: a live email must contain {{{{ content.subscription_center_url }}}}"
        in message
        for message in messages
    )
    assert any(
        f"{part}: a live email must contain {{{{ content.postal_address }}}}" in message
        for message in messages
    )


def test_draft_email_may_lack_unsubscribe(tmp_path: Path) -> None:
    document = email(status="draft", html="<p>Hello</p>", text="Hello")
    assert check_documents(tmp_path, [document]) == []


# Content settings and senders


@pytest.mark.parametrize(
    "sender",
    [
        "news@northwind.example.com",
        "Northwind <not-an-address>",
        "Northwind <news@@northwind.example.com>",
    ],
)
def test_invalid_sender_rejected(tmp_path: Path, sender: str) -> None:
    problem = single(check_documents(tmp_path, [content_settings(sender=sender)]))
    assert f"sender {sender!r} is invalid" in problem.message
    assert "'Display Name <name@example.com>'" in problem.message


def test_invalid_unsubscribe_mailbox_rejected(tmp_path: Path) -> None:
    problem = single(
        check_documents(tmp_path, [content_settings(unsubscribe_mailto="nobody")])
    )
    assert problem.message == "unsubscribe_mailto 'nobody' is not a valid address"


@pytest.mark.parametrize(
    "url",
    [
        "http://prefs.northwind.example.com/unsubscribe",
        "https:///unsubscribe",
        "prefs.example.com",
    ],
)
def test_subscription_center_needs_https(tmp_path: Path, url: str) -> None:
    problem = single(
        check_documents(tmp_path, [content_settings(subscription_center_url=url)])
    )
    assert "field 'subscription_center_url' is invalid" in problem.message
    assert f"must be an https:// address, got {url!r}" in problem.message


def test_invalid_email_from_rejected(tmp_path: Path) -> None:
    problem = single(check_documents(tmp_path, [email(**{"from": "Northwind"})]))
    assert "from 'Northwind' is invalid" in problem.message


# Going live


def test_go_live_needs_published_references(tmp_path: Path) -> None:
    problems = check_documents(tmp_path, complete(), for_go_live=True)
    messages = {problem.tile: problem.message for problem in problems if problem.tile}
    assert len(problems) == 3, "\n".join(map(str, problems))
    assert (
        "email refers to email 'hello', which is not published"
        in messages["send-hello"]
    )
    assert any(
        "content-settings 'default', which is not published" in p.message
        for p in problems
    )
    assert any(
        "segment 'everyone', which is not published" in p.message for p in problems
    )
    assert all("status: live" in p.message for p in problems)


def test_go_live_with_live_references_accepted(tmp_path: Path) -> None:
    documents = [
        content_settings(status="live"),
        segment(status="live"),
        email(status="live"),
        journey(status="live"),
    ]
    now = datetime(2027, 1, 1, tzinfo=UTC)
    assert check_documents(tmp_path, documents, for_go_live=True, now=now) == []


def test_go_live_rejects_past_end(tmp_path: Path) -> None:
    documents = [
        content_settings(status="live"),
        segment(status="live"),
        email(status="live"),
        journey(status="live"),
    ]
    now = datetime(2027, 7, 1, tzinfo=UTC)
    problem = single(check_documents(tmp_path, documents, for_go_live=True, now=now))
    assert problem.severity == "error"
    assert "move the end into the future" in problem.message


def test_go_live_warns_about_empty_audience(tmp_path: Path) -> None:
    documents = [
        content_settings(status="live"),
        segment(status="live"),
        email(status="live"),
        journey(status="live"),
    ]
    catalog = Catalog(segment_sizes={"everyone": 0})
    problem = single(
        check_documents(tmp_path, documents, catalog=catalog, for_go_live=True)
    )
    assert problem.severity == "warning"
    assert "segment 'everyone' has no members now" in problem.message


def test_all_problems_of_file_reported(tmp_path: Path) -> None:
    documents = [
        content_settings(),
        {"kind": "segment", "name": "everyone"},
        email(subject="Hi {{ contcat.firstname }}"),
        journey(start="2027-07-03 09:00", end="2027-06-03 09:00"),
    ]
    messages = [problem.message for problem in check_documents(tmp_path, documents)]
    assert len(messages) == 3, messages
    assert any("needs exactly one of 'contacts'" in message for message in messages)
    assert any("unknown name 'contcat'" in message for message in messages)
    assert any("is not before end" in message for message in messages)


def test_tile_problem_names_tile_line(tmp_path: Path) -> None:
    tiles = [
        {"id": "send-hello", "type": "email", "email": "hello"},
        {"id": "send-again", "type": "email", "email": "helo"},
    ]
    problem = single(check_documents(tmp_path, complete(tiles=tiles)))
    assert problem.tile == "send-again"
    assert problem.line is not None
    text = (tmp_path / "definitions.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert lines[problem.line - 1].strip() == "- id: send-again"


def test_reference_problem_names_field_line(tmp_path: Path) -> None:
    documents = complete(content_settings="missing")
    problem = single(check_documents(tmp_path, documents))
    assert problem.message.startswith("content_settings refers to")
    assert problem.line is not None
    text = (tmp_path / "definitions.yaml").read_text(encoding="utf-8")
    assert text.splitlines()[problem.line - 1] == "content_settings: missing"


def test_merged_tiles_keep_their_own_lines(tmp_path: Path) -> None:
    """A tile that merges another (<<) and sets its own id is reported at its
    own line, and the merged tile at its line."""
    head = yaml.safe_dump_all([content_settings(), segment(), email()], sort_keys=False)
    body = yaml.safe_dump(
        {key: value for key, value in journey().items() if key != "tiles"},
        sort_keys=False,
    )
    tiles = (
        "tiles:\n"
        "  - &first\n"
        "    id: first\n"
        "    type: email\n"
        "    email: helo\n"
        "  - <<: *first\n"
        "    id: second\n"
    )
    text = head + "---\n" + body + tiles
    problems = check_documents(tmp_path, text)
    lines = text.splitlines()
    located = {problem.tile: lines[problem.line - 1].strip() for problem in problems}
    assert located == {"first": "- &first", "second": "- <<: *first"}


def test_overriding_merged_field_names_own_line(tmp_path: Path) -> None:
    text = (
        "kind: journey\nname: spring\nstart: 2027-05-03 09:00\n"
        "end: 2027-06-03 09:00\ntimezone: Europe/Berlin\n"
        "content_settings: default\naudience: {segment: everyone}\n"
        "tiles:\n"
        "  - &pause\n"
        "    id: pause\n"
        "    type: wait\n"
        "    duration: 2h\n"
        "  - <<: *pause\n"
        "    id: longer\n"
        "    duration: bogus\n"
    )
    loaded, problems = load_documents([_write(tmp_path, text)])
    problem = single(problems + loaded[0].problems)
    assert problem.line == 15


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "definitions.yaml"
    path.write_text(text, encoding="utf-8")
    return path
