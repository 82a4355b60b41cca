"""Problems found while reading and validating definition files."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.loading import Problem, load_documents

JOURNEY_HEAD = """\
kind: journey
name: spring
start: 2027-05-03 09:00
end: 2027-06-03 09:00
timezone: Europe/Berlin
content_settings: default
audience: {segment: everyone}
"""


def load_text(
    tmp_path: Path, text: str, name: str = "definitions.yaml"
) -> list[Problem]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    documents, problems = load_documents([path])
    return problems + [
        problem for document in documents for problem in document.problems
    ]


def single(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def test_invalid_yaml_names_line_and_column(tmp_path: Path) -> None:
    problem = single(load_text(tmp_path, "kind: segment\nname: s: t\n"))
    assert problem.document == "file"
    assert problem.message.startswith("invalid YAML at line 2, column 8:")


def test_invalid_yaml_at_end_of_file(tmp_path: Path) -> None:
    text = "kind: segment\nname: s\nwhere:\n  - {field: city, op: eq\n"
    problem = single(load_text(tmp_path, text))
    assert "invalid YAML at line 5, column 1" in problem.message


def test_invalid_utf8_names_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("kind: segment\nname: Stra\u00dfe\n".encode("latin-1"))
    documents, problems = load_documents([path])
    problem = single(problems)
    assert documents == []
    assert problem.where == str(path)
    assert problem.message == "not valid UTF-8 at byte 24; save the file as UTF-8"


def test_missing_path_reported(tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    documents, problems = load_documents([missing])
    problem = single(problems)
    assert documents == []
    assert problem.message == "file or folder not found"
    assert problem.where == str(missing)


@pytest.mark.parametrize(
    ("text", "type_name"),
    [("- a\n- b\n", "list"), ("just words\n", "str"), ("42\n", "int")],
)
def test_document_not_mapping_rejected(
    tmp_path: Path, text: str, type_name: str
) -> None:
    problem = single(load_text(tmp_path, text))
    assert problem.message == f"expected a mapping with a 'kind', got {type_name}"


def test_empty_document_ignored(tmp_path: Path) -> None:
    text = "---\n---\nkind: segment\nname: s\nwhere: []\n"
    path = tmp_path / "definitions.yaml"
    path.write_text(text, encoding="utf-8")
    documents, problems = load_documents([path])
    assert problems == []
    assert [document.model.name for document in documents if document.model] == ["s"]


def test_unknown_kind_lists_known_kinds(tmp_path: Path) -> None:
    problem = single(load_text(tmp_path, "kind: jorney\nname: x\n"))
    assert "unknown kind 'jorney'" in problem.message
    assert "content-settings, email, segment, journey" in problem.message


def test_missing_kind_rejected(tmp_path: Path) -> None:
    problem = single(load_text(tmp_path, "name: x\n"))
    assert (
        "expected one of content-settings, email, segment, journey" in problem.message
    )


def test_document_line_in_location(tmp_path: Path) -> None:
    text = "kind: segment\nname: a\nwhere: []\n---\nkind: segment\nname: b\nbogus: 1\n"
    problem = single(load_text(tmp_path, text))
    assert problem.where == f"{tmp_path / 'definitions.yaml'}:5"
    assert problem.document == "segment 'b'"


def test_json_document_located_by_index(tmp_path: Path) -> None:
    text = '[{"kind": "segment", "name": "a", "where": []}, {"kind": "segment"}]'
    problem = single(load_text(tmp_path, text, name="definitions.json"))
    assert problem.where == f"{tmp_path / 'definitions.json'}[1]"
    assert problem.message == "field 'name' is missing"


def test_unknown_tile_type_names_tile_and_types(tmp_path: Path) -> None:
    text = JOURNEY_HEAD + "tiles:\n  - {id: text-me, type: sms}\n"
    problem = single(load_text(tmp_path, text))
    assert problem.tile == "text-me"
    assert problem.message == "unknown tile type 'sms'; expected one of email, wait, condition, split, exit"


def test_tile_without_type_rejected(tmp_path: Path) -> None:
    text = JOURNEY_HEAD + "tiles:\n  - {id: first}\n"
    problem = single(load_text(tmp_path, text))
    assert problem.tile == "first"
    assert problem.message == "tile has no 'type'; expected one of email, wait, condition, split, exit"


def test_tile_without_id_named_by_position(tmp_path: Path) -> None:
    text = JOURNEY_HEAD + "tiles:\n  - {id: one, type: exit}\n  - {type: exit}\n"
    problem = single(load_text(tmp_path, text))
    assert problem.tile == "#2"
    assert "is missing" in problem.message


def test_tile_missing_required_field(tmp_path: Path) -> None:
    text = JOURNEY_HEAD + "tiles:\n  - {id: send, type: email}\n"
    problem = single(load_text(tmp_path, text))
    assert problem.tile == "send"
    assert problem.message.endswith("is missing")
    assert "email" in problem.message


def test_tile_unknown_field_rejected(tmp_path: Path) -> None:
    text = (
        JOURNEY_HEAD
        + "tiles:\n  - {id: send, type: email, email: hello, colour: red}\n"
    )
    problem = single(load_text(tmp_path, text))
    assert problem.tile == "send"
    assert "unknown field" in problem.message
    assert "colour'; remove it or check its spelling" in problem.message


@pytest.mark.parametrize(
    ("tile", "expected"),
    [
        ("{id: send, type: email}", "field 'tiles.0.email' is missing"),
        (
            "{id: send, type: email, email: hello, colour: red}",
            "unknown field 'tiles.0.colour'; remove it or check its spelling",
        ),
    ],
    ids=["missing", "unknown"],
)
def test_tile_field_path_matches_file(tmp_path: Path, tile: str, expected: str) -> None:
    problem = single(load_text(tmp_path, JOURNEY_HEAD + f"tiles:\n  - {tile}\n"))
    assert problem.message == expected


def test_missing_document_field_named(tmp_path: Path) -> None:
    text = "kind: email\nname: hello\nhtml: <p>hi</p>\n"
    problem = single(load_text(tmp_path, text))
    assert problem.document == "email 'hello'"
    assert problem.message == "field 'subject' is missing"


def test_unknown_document_field_named(tmp_path: Path) -> None:
    text = "kind: segment\nname: s\nwhere: []\nmembers: []\n"
    problem = single(load_text(tmp_path, text))
    assert problem.message == "unknown field 'members'; remove it or check its spelling"


def test_invalid_value_shown_in_message(tmp_path: Path) -> None:
    text = "kind: segment\nname: s\nstatus: published\nwhere: []\n"
    problem = single(load_text(tmp_path, text))
    assert "field 'status' is invalid" in problem.message
    assert "got 'published'" in problem.message


@pytest.mark.parametrize(
    "start", ["2027-05-03T09:00:00+02:00", "'2027-05-03 09:00+02:00'"]
)
def test_start_with_offset_rejected(tmp_path: Path, start: str) -> None:
    text = JOURNEY_HEAD.replace("start: 2027-05-03 09:00", f"start: {start}")
    problem = single(load_text(tmp_path, text + "tiles:\n  - {id: stop, type: exit}\n"))
    assert "field 'start' is invalid" in problem.message
    assert "must be a local date-time without an offset" in problem.message


def test_all_schema_problems_reported(tmp_path: Path) -> None:
    text = (
        "kind: email\nname: hello\nstatus: gone\nsubject: ''\n"
        "html: <p>hi</p>\nbogus: 1\n"
    )
    messages = [problem.message for problem in load_text(tmp_path, text)]
    assert len(messages) == 3, messages
    assert any("field 'status' is invalid" in message for message in messages)
    assert any("field 'subject' is invalid" in message for message in messages)
    assert any("unknown field 'bogus'" in message for message in messages)


def test_problem_text_names_tile() -> None:
    problem = Problem("a.yaml:3", "journey 'j'", "something is wrong", tile="send")
    assert (
        str(problem) == "a.yaml:3: error: journey 'j' tile 'send': something is wrong"
    )


def test_schema_problem_names_field_line(tmp_path: Path) -> None:
    text = JOURNEY_HEAD + (
        "tiles:\n"
        "  - id: send-hello\n"
        "    type: email\n"
        "    email: hello\n"
        "  - id: pause\n"
        "    type: wait\n"
        "    duration: forever\n"
    )
    problem = single(load_text(tmp_path, text))
    assert problem.where == f"{tmp_path / 'definitions.yaml'}:1"
    assert problem.line == 14
    assert str(problem).startswith(f"{tmp_path / 'definitions.yaml'}:14: error:")


def test_missing_field_points_at_its_mapping(tmp_path: Path) -> None:
    text = JOURNEY_HEAD + "tiles:\n  - id: send-hello\n    type: email\n"
    problem = single(load_text(tmp_path, text))
    assert problem.message == "field 'tiles.0.email' is missing"
    assert problem.line == 9


def test_json_problem_has_no_line(tmp_path: Path) -> None:
    text = '{"kind": "segment", "name": "a", "where": [], "bogus": 1}'
    problem = single(load_text(tmp_path, text, name="definitions.json"))
    assert problem.line is None
    assert str(problem).startswith(f"{tmp_path / 'definitions.json'}[0]: error:")
