"""Reading definition files (YAML or JSON, several documents per file) into
validated models, with every problem tied to its file, line and tile."""

from __future__ import annotations

import json
import re
import reprlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ValidationError

from shared.definitions import DOCUMENT_KINDS, TILE_TYPES, document_adapter

DEFINITION_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a definition, placed like a designer marks a tile."""

    where: str
    document: str
    message: str
    tile: str | None = None
    severity: Literal["error", "warning"] = "error"
    # The line of the faulty field in a YAML file, when the field or the
    # mapping it is missing from could be found. `where` keeps the line of
    # the document, which groups a document's problems.
    line: int | None = None

    @property
    def location(self) -> str:
        """Return the file and the field's line, or `where` when the line is unknown."""
        if self.line is None:
            return self.where
        return f"{self.where.rpartition(':')[0]}:{self.line}"

    def __str__(self) -> str:
        tile = f" tile {self.tile!r}" if self.tile else ""
        return (
            f"{self.location}: {self.severity}: {self.document}{tile}: {self.message}"
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "line": self.line,
            "document": self.document,
            "tile": self.tile,
            "severity": self.severity,
            "message": self.message,
        }


@dataclass
class LoadedDocument:
    where: str
    raw: Any
    model: Any = None
    problems: list[Problem] = field(default_factory=list)
    # The composed YAML document, used to find a field's line. None for JSON.
    node: yaml.Node | None = None

    @property
    def label(self) -> str:
        if isinstance(self.raw, dict):
            kind = self.raw.get("kind", "document")
            name = self.raw.get("name")
            kind_text = (
                kind if isinstance(kind, str) and len(kind) <= 40 else short(kind)
            )
            return f"{kind_text} {short(name)}" if name else kind_text
        return "document"


_SHORT = reprlib.Repr()
_SHORT.maxstring = 60
_SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxdict = _SHORT.maxtuple = _SHORT.maxset = 4
_SHORT.maxlevel = 3


def short(value: Any) -> str:
    """Return a repr of at most about 80 characters, even for a value that an
    alias-laden YAML file made enormous."""
    return _SHORT.repr(value)


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps date-times as text, so that pydantic gets exactly
    what the operator wrote and can tell a local time from one with an offset.
    Only true and false are booleans, as in YAML 1.2, so that a condition's
    `yes` and `no` branches stay keys."""


_DROPPED_TAGS = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:bool"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _DROPPED_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def expand_paths(paths: Iterable[str | Path]) -> tuple[list[Path], list[Problem]]:
    files: list[Path] = []
    problems: list[Problem] = []
    for path in map(Path, paths):
        if path.is_dir():
            files.extend(
                sorted(p for p in path.rglob("*") if p.suffix in DEFINITION_SUFFIXES)
            )
        elif path.is_file():
            files.append(path)
        else:
            problems.append(Problem(str(path), "file", "file or folder not found"))
    return files, problems


def load_documents(
    paths: Iterable[str | Path],
) -> tuple[list[LoadedDocument], list[Problem]]:
    """Read and validate every document; return them with file-level problems."""
    files, problems = expand_paths(paths)
    documents: list[LoadedDocument] = []
    for path in files:
        try:
            raw_documents = list(_read_file(path))
        except (
            OSError,
            UnicodeDecodeError,
            yaml.YAMLError,
            json.JSONDecodeError,
            RecursionError,
        ) as error:
            problems.append(Problem(str(path), "file", _describe_read_error(error)))
            continue
        for where, raw, node in raw_documents:
            try:
                documents.append(_validate(where, raw, node))
            except RecursionError:
                problem = Problem(where, "document", "nested too deeply to validate")
                documents.append(LoadedDocument(where, None, problems=[problem]))
    return documents, problems


def _read_file(path: Path) -> Iterator[tuple[str, Any, yaml.Node | None]]:
    text = path.read_bytes().decode("utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
        for index, raw in enumerate(data if isinstance(data, list) else [data]):
            yield f"{path}[{index}]", raw, None
        return
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            where = f"{path}:{node.start_mark.line + 1}"
            yield where, loader.construct_document(node), node
    finally:
        loader.dispose()


def tile_lines(node: yaml.Node | None) -> dict[str, int]:
    """Return the line where each tile starts, by id: the first mapping in
    the document whose own `id` (the last one, as PyYAML reads it) is that id.

    Each node is visited once, so aliases cannot make the walk grow.
    """
    lines: dict[str, int] = {}
    seen: set[int] = set()
    stack = [node] if node is not None else []
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, yaml.MappingNode):
            ids = [
                value.value
                for key, value in current.value
                if isinstance(key, yaml.ScalarNode)
                and key.value == "id"
                and isinstance(value, yaml.ScalarNode)
            ]
            if ids:
                lines.setdefault(ids[-1], current.start_mark.line + 1)
            children = [value for _, value in current.value]
        elif isinstance(current, yaml.SequenceNode):
            children = list(current.value)
        else:
            continue
        # Reversed, so that the stack yields the document's order.
        stack.extend(reversed(children))
    return lines


def field_line(node: yaml.Node | None, location: Iterable[Any]) -> int | None:
    """Return the line of the YAML node at `location` (mapping keys and list
    indexes), or of the deepest node on the way when the rest is missing.

    Only the path is followed, so an alias that repeats a large mapping many
    times costs no more than a plain one.
    """
    line = None
    for part in location:
        if isinstance(node, yaml.MappingNode):
            # The last of equal keys, since PyYAML keeps the last one and puts
            # the keys of a merge (<<) before the mapping's own.
            found = next(
                (
                    (key, value)
                    for key, value in reversed(node.value)
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part)
                ),
                None,
            )
            if found is None:
                break
            key, node = found
            line = key.start_mark.line + 1
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _describe_read_error(error: Exception) -> str:
    if isinstance(error, UnicodeDecodeError):
        return f"not valid UTF-8 at byte {error.start}; save the file as UTF-8"
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return (
            f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: "
            f"{error.problem}"
        )
    if isinstance(error, RecursionError):
        return "nested too deeply; flatten the lists and mappings"
    return f"cannot be read: {error}"


def _validate(where: str, raw: Any, node: yaml.Node | None = None) -> LoadedDocument:
    document = LoadedDocument(where, raw, node=node)
    if raw is None:
        return document
    if not isinstance(raw, dict):
        document.problems.append(
            Problem(
                where,
                "document",
                f"expected a mapping with a 'kind', got {type(raw).__name__}",
            )
        )
        return document
    kind = raw.get("kind")
    if kind not in DOCUMENT_KINDS:
        document.problems.append(
            Problem(
                where,
                document.label,
                f"unknown kind {short(kind)}; "
                f"expected one of {', '.join(DOCUMENT_KINDS)}",
            )
        )
        return document
    try:
        document.model = document_adapter.validate_python(raw)
    except ValidationError as error:
        document.problems.extend(_explain(document, raw, error))
    return document


def _explain(
    document: LoadedDocument, raw: dict, error: ValidationError
) -> Iterator[Problem]:
    for item in error.errors(include_url=False):
        location = list(item["loc"])
        location = _without_tags(location, raw)
        tile = _tile_of(raw, location)
        field_path = ".".join(str(part) for part in location) or "(document)"
        yield Problem(
            document.where,
            document.label,
            _message(dict(item), field_path, raw, location),
            tile=tile,
            line=field_line(document.node, location),
        )


def _without_tags(location: list[Any], raw: dict) -> list[Any]:
    """Drop the discriminator levels that pydantic adds to error locations
    (the document's kind, each tile's type), so paths match the file."""
    if location and location[0] == raw.get("kind"):
        location = location[1:]
    cleaned: list[Any] = []
    node: Any = raw
    tag_skipped = False
    for part in location:
        after_index = bool(cleaned) and isinstance(cleaned[-1], int)
        is_tag = isinstance(node, dict) and part == node.get("type")
        if after_index and is_tag and not tag_skipped:
            tag_skipped = True
            continue
        tag_skipped = False
        cleaned.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return cleaned


def _tile_of(raw: dict, location: list[Any]) -> str | None:
    if len(location) < 2 or location[0] != "tiles" or not isinstance(location[1], int):
        return None
    tiles = raw.get("tiles")
    if isinstance(tiles, list) and location[1] < len(tiles):
        tile = tiles[location[1]]
        if isinstance(tile, dict) and tile.get("id"):
            return str(tile["id"])
    return f"#{location[1] + 1}"


def _message(item: dict, field_path: str, raw: dict, location: list[Any]) -> str:
    kind = item["type"]
    if kind == "union_tag_invalid" and location[:1] == ["tiles"]:
        found = item.get("ctx", {}).get("tag")
        return f"unknown tile type {found!r}; expected one of {', '.join(TILE_TYPES)}"
    if kind == "union_tag_not_found" and location[:1] == ["tiles"]:
        return f"tile has no 'type'; expected one of {', '.join(TILE_TYPES)}"
    if kind == "missing":
        return f"field '{field_path}' is missing"
    if kind == "extra_forbidden":
        return f"unknown field '{field_path}'; remove it or check its spelling"
    shown = short(item.get("input"))
    return f"field '{field_path}' is invalid ({item['msg']}), got {shown}"
