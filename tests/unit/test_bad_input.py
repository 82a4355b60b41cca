"""Malformed inputs from the corpus in tests/badinput: definitions, email
templates, contact files and queue messages.

Each bad input must give an error that names where (file and line, tile or
field) and what is wrong, without any other exception. Valid documents next
to a bad one still load, template attacks fail at check time and at render
time, and no value can add a header line to a message.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from dramatiq.errors import DecodeError
from dramatiq.message import Message

from services.events.actors import parse_event
from services.tiles.common import ContactMessage, parse_message
from shared.checks import check
from shared.contacts import MAX_VALUE_CHARS, import_contacts
from shared.definitions import Email
from shared.errors import BrokenMessage, ContactImportError
from shared.golive import check_paths
from shared.loading import LoadedDocument, Problem, load_documents
from shared.mail import Envelope, build_message, normalize_address, split_sender
from shared.templates import CompiledEmail, RenderedEmail, RenderError
from tests.support import ROOT

CORPUS = Path(__file__).resolve().parent.parent / "badinput"
NOW = datetime(2027, 1, 1, tzinfo=UTC)

# Every wrapped corpus file starts with a comment line, a valid content
# settings document and a valid email, so its bad document starts on line 13.
BAD_LINE = 13
NEIGHBOURS = (("content-settings", "default"), ("email", "hello"))
LAST_NEIGHBOUR = ("segment", "everyone")

HEADER_NAMES = (
    "From",
    "To",
    "Subject",
    "Date",
    "Message-ID",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "MIME-Version",
    "Content-Type",
)
CONTACT = {
    "contact_id": "c1",
    "email": "eve@example.com",
    "firstname": "Eve",
    "lastname": "Smith",
    "unsubscribed": False,
}
CONTENT = {
    "sender_name": "Northwind News",
    "sender_address": "news@northwind.example.com",
    "postal_address": "Hafenstrasse 12, 20457 Hamburg",
    "subscription_center_url": "https://prefs.northwind.example.com/unsubscribe?token=t",
}
# Parts of a Python object's repr, which must never reach an email or an error.
OBJECT_REPR_MARKERS = ("<class ", "<function ", "<module ", " object at 0x")


@dataclass(frozen=True)
class Expected:
    """The problem that a corpus file must produce."""

    message: tuple[str, ...]
    line: int | None = BAD_LINE
    tile: str | None = None


def definition_cases() -> dict[str, Any]:
    """Return each corpus definition file with the problem it must produce.

    A line of None means a file-level problem, whose `where` is the bare path.
    """
    return {
        "tile_id_repeated_inside_own_branch.yaml": Expected(
            ("tile id is used 2 times",), tile="check"
        ),
        "condition_refers_to_itself.yaml": Expected(
            ("email tile 'opened'", "not earlier on this tile's path"), tile="opened"
        ),
        "email_tile_unknown_email.yaml": Expected(
            ("email 'no-such-email'", "not defined"), tile="send-hello"
        ),
        "audience_unknown_segment.yaml": Expected(
            ("audience", "segment 'nobody'", "not defined")
        ),
        "content_settings_unknown.yaml": Expected(
            ("content_settings", "'missing'", "not defined")
        ),
        "tile_type_unknown.yaml": Expected(
            ("unknown tile type 'sms'",), tile="text-them"
        ),
        "tile_type_missing.yaml": Expected(("no 'type'",), tile="send-hello"),
        "tile_id_missing.yaml": Expected(("'tiles.0.id'", "missing"), tile="#1"),
        "tile_is_a_string.yaml": Expected(("'tiles.0'", "send-hello"), tile="#1"),
        "tiles_not_a_list.yaml": Expected(("'tiles'", "valid list")),
        "tiles_empty.yaml": Expected(("'tiles'", "at least 1 item")),
        "start_with_offset.yaml": Expected(("'start'", "without an offset")),
        "start_not_a_date.yaml": Expected(("'start'", "next tuesday")),
        "start_is_a_list.yaml": Expected(("'start'", "valid datetime")),
        "end_before_start.yaml": Expected(("is not before end",)),
        "start_in_daylight_saving_gap.yaml": Expected(
            ("start", "2027-03-28 02:30", "does not exist in Europe/Berlin")
        ),
        "timezone_unknown.yaml": Expected(("unknown time zone 'Mars/Olympus_Mons'",)),
        "timezone_path_traversal.yaml": Expected(
            ("unknown time zone '../../../../etc/passwd'",)
        ),
        "end_in_year_9999_new_york.yaml": Expected(("end",)),
        "wait_without_duration_or_until.yaml": Expected(
            ("exactly one of 'duration' or 'until'",), tile="pause"
        ),
        "wait_duration_negative.yaml": Expected(
            ("'tiles.1.duration'", "invalid duration '-5m'"), tile="pause"
        ),
        "wait_duration_too_large.yaml": Expected(
            ("duration", "9999999999d"), tile="pause"
        ),
        "wait_until_with_offset.yaml": Expected(
            ("'tiles.1.until'", "must be local"), tile="pause"
        ),
        "condition_within_too_large.yaml": Expected(
            ("within", "9999999999d"), tile="opened"
        ),
        "split_percentages_sum_90.yaml": Expected(
            ("percentages add up to 90, not 100",), tile="ab"
        ),
        "split_percent_not_a_number.yaml": Expected(
            ("'tiles.0.branches.0.percent'", "'fifty'"), tile="ab"
        ),
        "split_branch_named_remaining.yaml": Expected(
            ("branch name 'remaining'", "reserved"), tile="ab"
        ),
        "split_count_without_remaining.yaml": Expected(
            ("needs a 'remaining' branch",), tile="first-ten"
        ),
        "tile_after_exit.yaml": Expected(
            ("cannot be reached", "exit tile 'stop'"), tile="too-late"
        ),
        "tile_id_audience_reserved.yaml": Expected(
            ("'audience' is reserved",), tile="audience"
        ),
        "field_unknown.yaml": Expected(("unknown field 'priority'",)),
        "name_is_a_list.yaml": Expected(("'name'", "valid string")),
        "status_unknown.yaml": Expected(("'status'", "'published'")),
        "kind_misspelt.yaml": Expected(("unknown kind 'jorney'",)),
        "kind_missing.yaml": Expected(("unknown kind None",)),
        "segment_condition_op_unknown.yaml": Expected(("'where.0.op'", "'like'")),
        "segment_contacts_and_where.yaml": Expected(
            ("needs exactly one of 'contacts'",)
        ),
        "document_is_a_list.yaml": Expected(("expected a mapping", "got list")),
        "document_is_a_scalar.yaml": Expected(("expected a mapping", "got str")),
        "file_empty.yaml": Expected(("no definitions found",), line=None),
        "file_binary.yaml": Expected(("not valid UTF-8 at byte 0",), line=None),
        "file_invalid_utf8.yaml": Expected(("not valid UTF-8 at byte 79",), line=None),
        "file_nul_character.yaml": Expected(
            ("unacceptable character #x0000",), line=None
        ),
        "yaml_syntax_error.yaml": Expected(
            ("invalid YAML at line 6, column 1",), line=None
        ),
        "yaml_python_object_tag.yaml": Expected(
            ("invalid YAML at line 3", "python/object/apply:os.system"), line=None
        ),
        "yaml_undefined_alias.yaml": Expected(
            ("invalid YAML at line 8", "undefined alias 'everyone'"), line=None
        ),
        "file_is_a_scalar.json": Expected(("expected a mapping", "got int"), line=None),
        "file_list_with_bad_item.json": Expected(
            ("expected a mapping", "got str"), line=None
        ),
        "nesting_2000_deep.yaml": Expected(("deep",), line=None),
        "nesting_2000_deep.json": Expected(("deep",), line=None),
    }


# JSON files name each document by its index instead of a line.
JSON_WHERE = {"file_is_a_scalar.json": "[0]", "file_list_with_bad_item.json": "[1]"}
# Files whose bad document sits between valid ones, and those valid ones.
NEIGHBOURS_OF = {
    "file_list_with_bad_item.json": (("content-settings", "default"), LAST_NEIGHBOUR)
}


def wrapped_files() -> list[str]:
    """Corpus definition files whose bad document has valid neighbours."""
    names = [
        path.name
        for folder in ("journeys", "templates")
        for path in sorted((CORPUS / folder).glob("*.yaml"))
        if path.read_bytes().startswith(b"# ")
        and b"\nkind: content-settings\nname: default\n" in path.read_bytes()
    ]
    return [*names, *NEIGHBOURS_OF]


def problems_text(problems: list[Problem]) -> str:
    return "\n".join(map(str, problems)) or "(no problems)"


def find_problem(
    problems: list[Problem], where: str, expected: Expected
) -> Problem | None:
    for problem in problems:
        if problem.where != where:
            continue
        if expected.tile is not None and problem.tile != expected.tile:
            continue
        if all(part in problem.message for part in expected.message):
            return problem
    return None


def expected_where(path: Path, expected: Expected) -> str:
    if path.name in JSON_WHERE:
        return f"{path}{JSON_WHERE[path.name]}"
    if expected.line is None:
        return str(path)
    return f"{path}:{expected.line}"


def corpus_path(name: str) -> Path:
    for folder in ("journeys", "templates"):
        if (CORPUS / folder / name).exists():
            return CORPUS / folder / name
    raise AssertionError(f"{name} is not in the corpus")


def definition_params() -> list[Any]:
    params = []
    for name, case in definition_cases().items():
        if isinstance(case, Expected):
            params.append(pytest.param(name, case, id=name))
        else:
            params.append(pytest.param(name, *case.values, marks=case.marks, id=name))
    return params


@pytest.mark.parametrize(("name", "expected"), definition_params())
def test_definition_problem_names_place(name: str, expected: Expected) -> None:
    path = corpus_path(name)

    outcome, _ = check_paths([path], None, for_go_live=False, now=NOW)

    where = expected_where(path, expected)
    found = find_problem(outcome.problems, where, expected)
    assert found is not None, (
        f"no problem at {where} (tile {expected.tile}) containing "
        f"{expected.message}; got:\n{problems_text(outcome.problems)}"
    )
    assert found.severity == "error"


def neighbour_params() -> list[Any]:
    """Return the wrapped files, each with the xfail mark of its definition
    case, because loading some of them raises today."""
    cases = definition_cases()
    params = []
    for name in wrapped_files():
        case = cases.get(name)
        marks = [] if case is None or isinstance(case, Expected) else case.marks
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.mark.parametrize("name", neighbour_params())
def test_valid_neighbours_still_loaded(name: str) -> None:
    path = corpus_path(name)
    neighbours = NEIGHBOURS_OF.get(name, (*NEIGHBOURS, LAST_NEIGHBOUR))

    documents, file_problems = load_documents([path])
    problems = check(documents, now=NOW)

    assert file_problems == []
    for kind, document_name in neighbours:
        matches = [
            document
            for document in documents
            if document.model is not None
            and isinstance(document.raw, dict)
            and document.raw.get("kind") == kind
            and document.model.name == document_name
        ]
        assert len(matches) == 1, f"{kind} {document_name!r} was not loaded"
        neighbour = matches[0]
        assert neighbour.problems == []
        own = [problem for problem in problems if problem.where == neighbour.where]
        assert own == [], problems_text(own)


def test_corpus_definitions_all_tested() -> None:
    tested = {
        *definition_cases(),
        *BOMB_FILES,
        *TEMPLATE_ATTACKS,
        *TEMPLATE_RUNTIME_FAILURES,
        *TEMPLATE_PROBLEMS,
        *HEADER_INJECTION_FILES,
    }
    on_disk = {
        path.name
        for folder in ("journeys", "templates")
        for path in (CORPUS / folder).iterdir()
    }
    assert sorted(on_disk - tested) == []
    assert sorted(tested - on_disk) == []


# Billion-laughs files: each must load and check in bounded time and memory.
BOMB_FILES = {
    "yaml_bomb_in_name.yaml": None,
    "yaml_bomb_in_kind.yaml": None,
    "yaml_bomb_in_segment_contacts.yaml": None,
    "yaml_bomb_in_tiles.yaml": None,
    "yaml_bomb_in_unknown_field.yaml": None,
}
BOMB_SECONDS = 8.0
BOMB_MEMORY_BYTES = 1536 * 1024 * 1024
_CHECK_ONE_FILE = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
from datetime import UTC, datetime
from shared.golive import check_paths
outcome, _ = check_paths([sys.argv[1]], None, for_go_live=False, now=datetime.now(UTC))
print(json.dumps([problem.as_dict() for problem in outcome.problems]))
"""


@pytest.fixture(scope="module")
def bomb_results() -> dict[str, tuple[int | None, str, float]]:
    """Check every bomb file at once, each in its own process with a memory
    limit. Return each file's exit code (None when it timed out), its output
    and the seconds it took."""
    script = _CHECK_ONE_FILE.format(limit=BOMB_MEMORY_BYTES)
    started = time.monotonic()
    running = {
        name: subprocess.Popen(
            [sys.executable, "-c", script, str(CORPUS / "journeys" / name)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for name in BOMB_FILES
    }
    results: dict[str, tuple[int | None, str, float]] = {}
    for name, process in running.items():
        remaining = max(0.1, BOMB_SECONDS - (time.monotonic() - started))
        try:
            output, _ = process.communicate(timeout=remaining)
            results[name] = (
                process.returncode,
                output.decode(errors="replace"),
                time.monotonic() - started,
            )
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            results[name] = (None, "", time.monotonic() - started)
    return results


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=[mark] if mark else [], id=name)
        for name, mark in BOMB_FILES.items()
    ],
)
def test_yaml_bomb_bounded(
    name: str, bomb_results: dict[str, tuple[int | None, str, float]]
) -> None:
    code, output, seconds = bomb_results[name]

    assert code is not None, f"checking {name} ran past {BOMB_SECONDS} s"
    assert code == 0, f"checking {name} failed after {seconds:.1f} s:\n{output[-2000:]}"
    problems = json.loads(output)
    path = str(CORPUS / "journeys" / name)
    assert any(problem["where"].startswith(path) for problem in problems)
    assert all(len(problem["message"]) < 1000 for problem in problems)


def journey_json(tiles: list[Any], **fields: Any) -> dict[str, Any]:
    return {
        "kind": "journey",
        "name": "spring",
        "start": "2027-05-03 09:00",
        "end": "2027-06-03 09:00",
        "timezone": "Europe/Berlin",
        "content_settings": "default",
        "audience": {"segment": "everyone"},
        "tiles": tiles,
        **fields,
    }


def neighbours_json() -> list[dict[str, Any]]:
    return [
        {
            "kind": "content-settings",
            "name": "default",
            "sender": "Northwind News <news@northwind.example.com>",
            "postal_address": "Hafenstrasse 12, 20457 Hamburg",
            "subscription_center_url": "https://prefs.northwind.example.com/u",
        },
        {"kind": "email", "name": "hello", "subject": "Hi", "html": "<p>Hi</p>"},
        {"kind": "segment", "name": "everyone", "where": []},
    ]


def check_json(tmp_path: Path, document: dict[str, Any]) -> list[Problem]:
    path = tmp_path / "generated.json"
    path.write_text(json.dumps([*neighbours_json(), document]), encoding="utf-8")
    outcome, _ = check_paths([path], None, for_go_live=False, now=NOW)
    return outcome.problems


def test_subject_of_2_mb_rejected_briefly(tmp_path: Path) -> None:
    document = {
        "kind": "email",
        "name": "huge",
        "subject": "x" * 2_000_000,
        "html": "<p>Hi</p>",
    }

    problems = check_json(tmp_path, document)

    assert len(problems) == 1, problems_text(problems)
    assert problems[0].where == f"{tmp_path / 'generated.json'}[3]"
    assert "'subject'" in problems[0].message
    assert "at most 998 characters" in problems[0].message
    assert len(str(problems[0])) < 500


def test_ten_thousand_tiles_checked(tmp_path: Path) -> None:
    tiles = [{"id": f"e{n}", "type": "email", "email": "hello"} for n in range(10_000)]
    tiles[-1]["id"] = "e5"
    started = time.monotonic()

    problems = check_json(tmp_path, journey_json(tiles))

    assert time.monotonic() - started < 20
    assert [(problem.tile, problem.message) for problem in problems] == [
        ("e5", "tile id is used 2 times; give each tile its own id")
    ]


def test_conditions_nested_300_deep_reported(tmp_path: Path) -> None:
    tile: dict[str, Any] = {"id": "leaf", "type": "exit"}
    for depth in range(300):
        tile = {
            "id": f"c{depth}",
            "type": "condition",
            "if": {"field": "city", "op": "exists"},
            "yes": [tile],
        }

    problems = check_json(tmp_path, journey_json([tile]))

    assert problems, "a 300-deep journey passed the check"
    assert all(problem.tile == "c299" for problem in problems)
    assert all("maximum validation depth" in problem.message for problem in problems)


@pytest.mark.parametrize(
    "field",
    [
        "name",
        "kind",
    ],
)
def test_huge_name_or_kind_reported_briefly(tmp_path: Path, field: str) -> None:
    document = {"kind": "segment", "name": "big", "where": [], field: "x" * 2_000_000}

    problems = check_json(tmp_path, document)

    assert problems, "a 2 MB value passed the check"
    assert all(len(str(problem)) < 2000 for problem in problems)


# Templates that try to reach Python internals; the check must reject each.
TEMPLATE_ATTACKS = {
    "contact_class_mro.yaml": None,
    "string_literal_class.yaml": None,
    "lipsum_globals.yaml": None,
    "tuple_subclasses_loop.yaml": None,
    "cycler_init_globals.yaml": None,
    "joiner_init_globals.yaml": None,
    "namespace_init_globals.yaml": None,
    "getitem_dunder_class.yaml": None,
    "attr_filter_class.yaml": None,
    "format_method_reaches_class.yaml": None,
    "jinja_global_printed.yaml": None,
    "include_tag.yaml": None,
}
# Templates that pass or fail the check but must fail with RenderError, not
# another exception, when rendered.
TEMPLATE_RUNTIME_FAILURES = {
    "division_by_zero.yaml": None,
    "string_plus_number.yaml": None,
    "include_tag.yaml": None,
}
RENDER_BUGS = {
    "jinja_global_printed.yaml": None,
    **TEMPLATE_RUNTIME_FAILURES,
}
# Template files with ordinary problems that the check reports.
TEMPLATE_PROBLEMS = {
    "syntax_error.yaml": ("html: template syntax error on line 1",),
    "unknown_content_field.yaml": (
        "unknown content field 'sender_adress'",
        "did you mean 'sender_address'",
    ),
    "subject_999_characters.yaml": ("'subject'", "at most 998 characters"),
    "subject_is_a_mapping.yaml": ("'subject'", "valid string"),
    "html_missing.yaml": ("'html'", "missing"),
}
HEADER_INJECTION_FILES = {
    "subject_with_line_break.yaml",
    "from_with_line_break.yaml",
    "content_settings_url_with_line_break.yaml",
}


def marked(cases: dict[str, Any]) -> list[Any]:
    return [
        pytest.param(name, marks=[mark] if mark else [], id=name)
        for name, mark in cases.items()
    ]


def load_email(path: Path) -> tuple[LoadedDocument, Email]:
    documents, problems = load_documents([path])
    assert problems == []
    emails = [
        document
        for document in documents
        if isinstance(document.raw, dict)
        and document.raw.get("kind") == "email"
        and document.raw.get("name") != "hello"
    ]
    assert len(emails) == 1
    document = emails[0]
    assert document.model is not None, problems_text(document.problems)
    return document, document.model


@pytest.mark.parametrize("name", marked(TEMPLATE_ATTACKS))
def test_template_attack_rejected_by_check(name: str) -> None:
    path = CORPUS / "templates" / name
    document, _ = load_email(path)

    outcome, _ = check_paths([path], None, for_go_live=False, now=NOW)

    own = [problem for problem in outcome.problems if problem.where == document.where]
    assert own, f"{name} passed the check"
    assert all(
        problem.message.startswith(("html:", "text:", "subject:")) for problem in own
    )


@pytest.mark.parametrize(
    "name",
    marked(
        {
            **{name: None for name in TEMPLATE_ATTACKS},
            **RENDER_BUGS,
        }
    ),
)
def test_template_attack_fails_at_render(name: str) -> None:
    _, model = load_email(CORPUS / "templates" / name)
    compiled = CompiledEmail(model)

    with pytest.raises(RenderError) as raised:
        compiled.render(CONTACT, CONTENT)

    assert model.name in str(raised.value)
    for marker in OBJECT_REPR_MARKERS:
        assert marker not in str(raised.value)


@pytest.mark.parametrize("name", TEMPLATE_PROBLEMS)
def test_template_problem_reported(name: str) -> None:
    path = CORPUS / "templates" / name

    outcome, _ = check_paths([path], None, for_go_live=False, now=NOW)

    expected = Expected(TEMPLATE_PROBLEMS[name])
    found = find_problem(outcome.problems, f"{path}:{BAD_LINE}", expected)
    assert found is not None, problems_text(outcome.problems)


@pytest.mark.parametrize(
    "value",
    [
        "{{ contact.__class__ }}",
        "{% for x in range(3) %}x{% endfor %}",
        "{{ 7 * 7 }}",
        "{{ lipsum.__globals__ }}",
    ],
)
def test_template_syntax_in_contact_data_stays_text(value: str) -> None:
    definition = Email(
        kind="email",
        name="hello",
        subject="Hello {{ contact.firstname }}",
        html="<p>{{ contact.firstname }}</p>",
        text="{{ contact.firstname }}",
    )

    rendered = CompiledEmail(definition).render(
        {**CONTACT, "firstname": value}, CONTENT
    )

    assert rendered.subject == f"Hello {value}"
    assert rendered.text == value
    assert "49" not in rendered.html
    for marker in OBJECT_REPR_MARKERS:
        assert marker not in rendered.html


def header_lines(data: bytes) -> list[str]:
    head = data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    return head.split("\r\n")


def assert_no_added_headers(data: bytes) -> None:
    """Check the header block line by line and as the standard library reads it."""
    for line in header_lines(data):
        folded = line[:1] in (" ", "\t")
        assert folded or line.split(":", 1)[0] in HEADER_NAMES, line
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert list(message.keys()) == list(HEADER_NAMES)
    assert message["Bcc"] is None
    assert b"\nBcc:" not in data.split(b"\r\n\r\n", 1)[0]


def envelope(**changes: str) -> Envelope:
    fields = {
        "sender_name": "Northwind News",
        "sender_address": "news@northwind.example.com",
        "recipient_name": "Eve Smith",
        "recipient_address": "eve@example.com",
        "unsubscribe_url": "https://prefs.northwind.example.com/u?token=t",
        "unsubscribe_mailto": "mailto:unsubscribe@northwind.example.com?subject=t",
    }
    fields.update(changes)
    return Envelope(**fields)


def test_subject_line_break_adds_no_header() -> None:
    _, model = load_email(CORPUS / "templates" / "subject_with_line_break.yaml")
    rendered = CompiledEmail(model).render(CONTACT, CONTENT)

    _, data = build_message(envelope(), rendered)

    assert_no_added_headers(data)
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert parsed["Subject"] == "Hello Eve Bcc: evil@example.com"


@pytest.mark.parametrize(
    "separator", ["\r\n", "\n", "\r", "\v", "\f", "\x1c", "\x85", "\u2028", "\u2029"]
)
@pytest.mark.parametrize(
    "place", ["subject", "sender_name", "recipient_name", "non_ascii_subject"]
)
def test_line_separator_adds_no_header(place: str, separator: str) -> None:
    injected = f"Eve{separator}Bcc: evil@example.com"
    subject = "Hello"
    changes: dict[str, str] = {}
    if place == "subject":
        subject = injected
    elif place == "non_ascii_subject":
        subject = "Grüße " + injected
    else:
        changes[place] = injected
    rendered = RenderedEmail(subject=subject, html="<p>Hi</p>", text="Hi\n")

    _, data = build_message(envelope(**changes), rendered)

    assert_no_added_headers(data)


def test_long_subject_with_line_break_folds_safely() -> None:
    subject = "x" * 950 + "\r\nBcc: evil@example.com"
    rendered = RenderedEmail(subject=subject, html="<p>Hi</p>", text="Hi\n")

    _, data = build_message(envelope(), rendered)

    assert_no_added_headers(data)


def test_sender_name_with_line_break_keeps_header_count() -> None:
    """The check rejects such a sender; build_message holds even without it."""
    name, address = split_sender("News\r\nBcc: evil@example.com <news@example.com>")
    rendered = RenderedEmail("Hello", "<p>Hello</p>", "Hello\n")

    _, data = build_message(
        envelope(sender_name=name, sender_address=address), rendered
    )

    assert_no_added_headers(data)


def test_from_with_line_break_rejected_by_check() -> None:
    path = CORPUS / "templates" / "from_with_line_break.yaml"

    outcome, _ = check_paths([path], None, for_go_live=False, now=NOW)

    problems = [p for p in outcome.problems if "field 'from'" in p.message]
    assert len(problems) == 1, problems_text(outcome.problems)
    assert "without line breaks" in problems[0].message


def load_injected_settings() -> tuple[LoadedDocument, list[LoadedDocument]]:
    path = CORPUS / "templates" / "content_settings_url_with_line_break.yaml"
    documents, problems = load_documents([path])
    assert problems == []
    return documents[0], documents


def test_subscription_url_line_break_rejected() -> None:
    settings, documents = load_injected_settings()

    problems = settings.problems + check(documents, now=NOW)

    own = [problem for problem in problems if problem.where == settings.where]
    assert any("subscription_center_url" in problem.message for problem in own)


def test_subscription_url_line_break_adds_no_header() -> None:
    settings, _ = load_injected_settings()
    url = settings.raw["subscription_center_url"]
    rendered = RenderedEmail(subject="Hi", html="<p>Hi</p>", text="Hi\n")

    _, data = build_message(envelope(unsubscribe_url=url + "?token=t"), rendered)

    assert_no_added_headers(data)


@pytest.mark.parametrize(
    "address",
    [
        "eve@example.com\r\nBcc: evil@example.com",
        "eve@example.com\nBcc: evil@example.com",
        '"eve\r\nBcc: evil@example.com"@example.com',
        "eve@example.com>\r\nBcc: <evil@example.com",
    ],
)
def test_address_with_line_break_invalid(address: str) -> None:
    assert normalize_address(address) is None


def test_contact_names_with_line_breaks_add_no_header(
    db: psycopg.Connection,
) -> None:
    report = import_contacts(
        db, CORPUS / "contacts" / "names_with_header_injection.csv"
    )
    assert report.bad_rows == []
    rows = db.execute(
        "SELECT firstname, lastname, email FROM contacts ORDER BY contact_id"
    ).fetchall()
    assert len(rows) == 3
    names = " ".join(f"{first} {last}" for first, last, _ in rows)
    for separator in ("\r\n", "\n", "\r", "\u2028"):
        assert separator in names
    definition = Email(
        kind="email",
        name="hello",
        subject="Hello {{ contact.firstname }} {{ contact.lastname }}",
        html="<p>Hello {{ contact.firstname }}</p>",
    )

    for firstname, lastname, address in rows:
        person = {**CONTACT, "firstname": firstname, "lastname": lastname}
        rendered = CompiledEmail(definition).render(person, CONTENT)
        _, data = build_message(
            envelope(
                recipient_name=f"{firstname} {lastname}", recipient_address=address
            ),
            rendered,
        )
        assert_no_added_headers(data)


@dataclass(frozen=True)
class ContactsCase:
    """A contacts file with bad rows: (line, reason) of each bad row in file
    order, and the contact ids imported around them."""

    bad_rows: tuple[tuple[int, str], ...]
    imported: tuple[str, ...]


CONTACT_CASES = {
    "rows_with_wrong_column_count.csv": ContactsCase(
        (
            (3, "has 2 values, the header has 3 columns"),
            (5, "has 4 values, the header has 3 columns"),
        ),
        ("c1", "c3", "c5"),
    ),
    "email_missing.csv": ContactsCase(
        ((3, "email is missing"), (4, "email is missing")), ("c1", "c4")
    ),
    "email_with_line_break.csv": ContactsCase(
        ((3, "contains a line break"),), ("c1", "c3")
    ),
    "unsubscribed_not_boolean.csv": ContactsCase(
        (
            (3, "unsubscribed must be true or false, got 'maybe'"),
            (4, "unsubscribed must be true or false, got '[true]'"),
        ),
        ("c1", "c4"),
    ),
    "field_invalid_utf8.csv": ContactsCase(
        ((3, "column 'firstname' is not valid UTF-8"),), ("c1", "c3")
    ),
    "email_invalid_utf8.csv": ContactsCase(
        ((3, "column 'email' is not valid UTF-8"),), ("c1", "c3")
    ),
    "field_nul_character.csv": ContactsCase(
        ((3, "column 'firstname' contains a NUL character"),), ("c1", "c3")
    ),
    # The quote opened on line 3 takes the rest of the file into one value.
    "unterminated_quote.csv": ContactsCase(
        ((3, "has 2 values, the header has 3 columns"),), ("c1",)
    ),
}
# Files that cannot be imported at all, and words that their error must contain.
CONTACT_FILE_ERRORS = {
    "header_without_email.csv": ("the header row has no 'email' column",),
    "file_empty.csv": ("is empty",),
    "file_binary.csv": ("the header row has no 'email' column",),
    "header_invalid_utf8.csv": ("header",),
    "header_nul_character.csv": ("header",),
}


def imported_ids(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute("SELECT contact_id FROM contacts ORDER BY contact_id")
    return [row[0] for row in rows]


@pytest.mark.parametrize("name", CONTACT_CASES)
def test_bad_rows_skipped_good_rows_imported(db: psycopg.Connection, name: str) -> None:
    case = CONTACT_CASES[name]

    report = import_contacts(db, CORPUS / "contacts" / name)

    reasons = [bad.reason for bad in report.bad_rows]
    assert len(reasons) == len(case.bad_rows), reasons
    for reason, (_, expected) in zip(reasons, case.bad_rows, strict=True):
        assert expected in reason
    assert imported_ids(db) == list(case.imported)
    assert report.imported == len(case.imported)


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, id=name) for name in CONTACT_CASES],
)
def test_bad_row_line_reported(db: psycopg.Connection, name: str) -> None:
    case = CONTACT_CASES[name]

    report = import_contacts(db, CORPUS / "contacts" / name)

    assert [bad.line for bad in report.bad_rows] == [line for line, _ in case.bad_rows]


@pytest.mark.parametrize(
    "name",
    [pytest.param(name, id=name) for name in CONTACT_FILE_ERRORS],
)
def test_unreadable_contacts_file_rejected(db: psycopg.Connection, name: str) -> None:
    path = CORPUS / "contacts" / name

    with pytest.raises(ContactImportError) as raised:
        import_contacts(db, path)

    assert str(path) in str(raised.value)
    for part in CONTACT_FILE_ERRORS[name]:
        assert part in str(raised.value)
    assert imported_ids(db) == []


def test_contact_field_of_1_mb_is_bad_row(
    db: psycopg.Connection, tmp_path: Path
) -> None:
    path = tmp_path / "huge.csv"
    path.write_bytes(
        b"contact_id,email,firstname\r\n"
        b"c1,c1@example.com,Ann\r\n"
        b"c2,c2@example.com," + b"x" * 1_000_000 + b"\r\n"
        b"c3,c3@example.com,Cid\r\n"
    )

    report = import_contacts(db, path)

    assert [bad.line for bad in report.bad_rows] == [3]
    assert report.bad_rows[0].reason == (
        f"column 'firstname' is longer than {MAX_VALUE_CHARS} characters"
    )
    assert imported_ids(db) == ["c1", "c3"]


def test_header_column_of_2_mb_rejected(db: psycopg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "huge-header.csv"
    path.write_bytes(
        b"contact_id,email," + b"n" * 2_000_000 + b"\r\nc1,c1@example.com,x\r\n"
    )

    with pytest.raises(ContactImportError) as raised:
        import_contacts(db, path)

    assert "header" in str(raised.value)
    assert len(str(raised.value)) < 2000


# Fields that each message's error must name, with words from the reason.
MESSAGE_CASES: dict[str, tuple[str, ...] | None] = {
    "tile_journey_id_not_integer.json": ("journey_id", "valid integer"),
    "tile_journey_id_negative.json": ("journey_id", "greater than 0"),
    "tile_version_zero.json": ("version", "greater than 0"),
    "tile_tile_not_string.json": ("tile", "valid string"),
    "tile_tile_empty.json": ("tile", "at least 1 character"),
    "tile_contacts_missing.json": ("contacts", "Field required"),
    "tile_contacts_empty.json": ("contacts", "at least 1 item"),
    "tile_contacts_not_integers.json": ("contacts", "valid integer"),
    "tile_contacts_over_limit.json": ("contacts", "at most 1000 items"),
    "tile_extra_field.json": ("priority", "not permitted"),
    "tile_payload_is_list.json": ("valid dictionary",),
    "tile_payload_is_null.json": ("valid dictionary",),
    # Valid in shape: only the database can tell that these name nothing.
    "tile_unknown_journey.json": None,
    "tile_unknown_tile.json": None,
    "event_at_without_zone.json": ("at", "timezone"),
    "event_at_not_a_date.json": ("at", "valid datetime"),
    "event_kind_missing.json": ("kind", "Field required"),
    "event_kind_unknown.json": ("kind", "'delivered'"),
    "event_message_id_too_long.json": ("message_id", "at most 998 characters"),
    "event_hard_not_boolean.json": ("hard", "valid boolean"),
    "event_link_not_string.json": ("link", "valid string"),
    "event_field_misspelt.json": ("hardd", "not permitted"),
    "event_payload_is_string.json": ("valid dictionary",),
}
RAW_BODIES = (
    "tile_body_not_json.body",
    "tile_body_invalid_utf8.body",
    "event_body_truncated_json.body",
    "event_body_envelope_without_actor.body",
)


def parse_payload(name: str, payload: Any) -> Any:
    if name.startswith("tile_"):
        return parse_message(payload)
    return parse_event(payload)


def test_corpus_messages_all_tested() -> None:
    on_disk = sorted(path.name for path in (CORPUS / "messages").iterdir())
    assert on_disk == sorted([*MESSAGE_CASES, *RAW_BODIES])


@pytest.mark.parametrize("name", [name for name, v in MESSAGE_CASES.items() if v])
def test_broken_message_names_field(name: str) -> None:
    payload = json.loads((CORPUS / "messages" / name).read_text(encoding="utf-8"))

    with pytest.raises(BrokenMessage) as raised:
        parse_payload(name, payload)

    for part in MESSAGE_CASES[name] or ():
        assert part in str(raised.value)


@pytest.mark.parametrize(
    "name", [name for name, v in MESSAGE_CASES.items() if v is None]
)
def test_message_valid_in_shape(name: str) -> None:
    payload = json.loads((CORPUS / "messages" / name).read_text(encoding="utf-8"))

    assert isinstance(parse_message(payload), ContactMessage)


@pytest.mark.parametrize("name", RAW_BODIES)
def test_raw_body_undecodable(name: str) -> None:
    body = (CORPUS / "messages" / name).read_bytes()

    with pytest.raises(DecodeError):
        Message.decode(body)


def test_huge_contact_list_error_brief() -> None:
    payload = {
        "journey_id": 1,
        "version": 1,
        "tile": "audience",
        "contacts": list(range(1, 200_001)),
    }

    with pytest.raises(BrokenMessage) as raised:
        parse_message(payload)

    assert "contacts" in str(raised.value)
    assert len(str(raised.value)) < 2000


def test_huge_event_link_error_brief() -> None:
    payload = {
        "kind": "click",
        "message_id": "<m1@northwind.example.com>",
        "link": "https://example.com/" + "x" * 1_000_000,
        "at": "2026-03-01T12:00:00Z",
    }

    with pytest.raises(BrokenMessage) as raised:
        parse_event(payload)

    assert "link" in str(raised.value)
    assert len(str(raised.value)) < 2000


def test_corpus_files_small() -> None:
    """Huge inputs are generated by the tests, so the corpus stays small."""
    for path in sorted(CORPUS.rglob("*")):
        assert path.stat().st_size < 64 * 1024, path


# --- settings ------------------------------------------------------------------


def test_invalid_setting_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.config import get_settings
    from shared.errors import SettingsError

    monkeypatch.setenv("JOURNEYS_SMTP_CONNECTIONS_PER_THREAD", "0")
    monkeypatch.setenv("JOURNEYS_SMTP_TIMEOUT_SECONDS", "soon")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError) as raised:
            get_settings()
    finally:
        get_settings.cache_clear()
    message = str(raised.value)
    assert "JOURNEYS_SMTP_CONNECTIONS_PER_THREAD='0'" in message
    assert "greater than or equal to 1" in message
    assert "JOURNEYS_SMTP_TIMEOUT_SECONDS='soon'" in message
    assert "Fix the environment variable" in message


def test_cli_stops_on_invalid_setting(tmp_path: Path) -> None:
    """Any command ends with the variable's name and exit code 2, not a
    traceback."""
    env = {**os.environ, "JOURNEYS_SMTP_CONNECTIONS_PER_THREAD": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "check", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "JOURNEYS_SMTP_CONNECTIONS_PER_THREAD='0'" in done.stderr
    assert "Traceback" not in done.stderr
