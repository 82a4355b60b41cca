"""Check for errors: every problem of a set of definitions, each tied to its
document and tile, found in one pass."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from shared.definitions import (
    ContentSettings,
    Email,
    EmailTile,
    Journey,
    Segment,
    walk_tiles,
)
from shared.errors import DefinitionError
from shared.loading import LoadedDocument, Problem, field_line, tile_lines
from shared.mail import normalize_address, split_sender
from shared.templates import check_email_templates
from shared.tile_checks import check_tile_graph
from shared.windows import load_zone, suggest_zone, to_utc

_MODEL_KINDS: dict[type, str] = {
    ContentSettings: "content-settings",
    Email: "email",
    Segment: "segment",
    Journey: "journey",
}


@dataclass
class Catalog:
    """Definitions published to the database, and the contact fields it stores."""

    published: dict[tuple[str, str], Any] = field(default_factory=dict)
    contact_fields: set[str] | None = None
    segment_sizes: dict[str, int] = field(default_factory=dict)
    journeys: dict[str, PublishedJourney] = field(default_factory=dict)


@dataclass(frozen=True)
class PublishedJourney:
    """A journey as the database has it: status, end and current definition."""

    status: str
    end_at: datetime
    definition: Journey


# Fields that a journey keeps once published: contacts inside it depend on them.
LOCKED_FIELDS = ("timezone", "content_settings", "suppression")
EXTENSION_DAYS = 30


@dataclass
class _Scope:
    """The scope of one check: the files' documents over the published ones."""

    catalog: Catalog
    files: dict[tuple[str, str], Any]
    for_go_live: bool
    now: datetime | None

    def find(self, kind: str, name: str) -> Any:
        return self.files.get((kind, name)) or self.catalog.published.get((kind, name))


def check(
    documents: list[LoadedDocument],
    catalog: Catalog | None = None,
    *,
    for_go_live: bool = False,
    now: datetime | None = None,
) -> list[Problem]:
    """Return every problem of the documents; errors stop a go-live, warnings do not."""
    scope = _Scope(catalog or Catalog(), {}, for_go_live, now)
    problems = [problem for document in documents for problem in document.problems]
    problems.extend(_duplicate_names(documents, scope))

    for document in documents:
        model = document.model
        if isinstance(model, ContentSettings):
            problems.extend(_check_content_settings(document, model))
        elif isinstance(model, Email):
            problems.extend(_check_email(document, model, scope))
        elif isinstance(model, Segment):
            problems.extend(_check_segment(document, model, scope))
        elif isinstance(model, Journey):
            lines = tile_lines(document.node)
            problems.extend(
                _at_tile_line(lines, problem)
                for problem in _check_journey(document, model, scope)
            )
    return problems


def _at_tile_line(lines: dict[str, int], problem: Problem) -> Problem:
    """Point a problem about a tile at the line where the tile starts."""
    if problem.tile is None or problem.line is not None:
        return problem
    return replace(problem, line=lines.get(problem.tile))


def _duplicate_names(
    documents: list[LoadedDocument], scope: _Scope
) -> Iterator[Problem]:
    seen: dict[tuple[str, str], str] = {}
    for document in documents:
        if document.model is None:
            continue
        key = (_MODEL_KINDS[type(document.model)], document.model.name)
        if key in seen:
            yield Problem(
                document.where,
                document.label,
                f"is defined twice, also at {seen[key]}; "
                f"give each {key[0]} its own name",
            )
        else:
            seen[key] = document.where
            scope.files[key] = document.model


def _check_content_settings(
    document: LoadedDocument, settings: ContentSettings
) -> Iterator[Problem]:
    name, address = split_sender(settings.sender)
    if not name or normalize_address(address) is None:
        yield Problem(
            document.where,
            document.label,
            f"sender {settings.sender!r} is invalid; write it as "
            "'Display Name <name@example.com>' with a valid address",
        )
    if (
        settings.unsubscribe_mailto
        and normalize_address(settings.unsubscribe_mailto) is None
    ):
        yield Problem(
            document.where,
            document.label,
            f"unsubscribe_mailto {settings.unsubscribe_mailto!r} "
            "is not a valid address",
        )


def _check_email(
    document: LoadedDocument, email: Email, scope: _Scope
) -> Iterator[Problem]:
    for problem in check_email_templates(email, scope.catalog.contact_fields):
        yield Problem(
            document.where,
            document.label,
            f"{problem.part}: {problem.message}",
            severity=problem.severity,
        )
    if email.from_ is not None:
        _, address = split_sender(email.from_)
        if normalize_address(address) is None:
            yield Problem(
                document.where,
                document.label,
                f"from {email.from_!r} is invalid; "
                "write 'Display Name <name@example.com>'",
            )


def _check_segment(
    document: LoadedDocument, segment: Segment, scope: _Scope
) -> Iterator[Problem]:
    kinds = [
        segment.contacts is not None,
        segment.where is not None,
        segment.source is not None,
    ]
    if sum(kinds) != 1:
        yield Problem(
            document.where,
            document.label,
            "needs exactly one of 'contacts' (a static list), 'where' (conditions) "
            "or 'source: queue' (members published on the events.segments queue)",
        )
    for index, condition in enumerate(segment.where or [], start=1):
        message = condition_problem(condition.op, condition.value)
        if message:
            yield Problem(document.where, document.label, f"where #{index}: {message}")
        fields = scope.catalog.contact_fields
        if fields and condition.field not in fields:
            yield Problem(
                document.where,
                document.label,
                f"where #{index}: contacts have no field {condition.field!r}; known "
                f"fields are {', '.join(sorted(fields))}",
                severity="warning",
            )


def condition_problem(op: str, value: Any) -> str | None:
    if op == "in" and not isinstance(value, list):
        return f"'in' needs a list of values, got {value!r}"
    if op == "exists" and value not in (None, True, False):
        return f"'exists' takes true, false or no value, got {value!r}"
    if op in ("eq", "ne", "contains", "gt", "lt") and (
        value is None or isinstance(value, list)
    ):
        return f"{op!r} needs one value, got {value!r}"
    return None


def _check_journey(
    document: LoadedDocument, journey: Journey, scope: _Scope
) -> Iterator[Problem]:
    where, label = document.where, document.label
    yield from _check_window(where, label, journey, scope)
    references = [
        ("content-settings", journey.content_settings, "content_settings"),
        ("segment", journey.audience.segment, "audience"),
    ]
    if journey.suppression is not None:
        references.append(("segment", journey.suppression, "suppression"))
    for kind, name, field_name in references:
        line = field_line(document.node, [field_name])
        for problem in _check_reference(
            where, label, None, kind, name, field_name, scope
        ):
            yield replace(problem, line=line)
    yield from _check_against_published(where, label, journey, scope)
    if scope.for_go_live:
        yield from _check_audience_size(where, label, journey, scope)
    yield from _check_tiles(where, label, journey, scope)


def _check_against_published(
    where: str, label: str, journey: Journey, scope: _Scope
) -> Iterator[Problem]:
    """A published journey changes only by a new version that keeps its
    locked fields, and it can be extended only within 30 days of its end."""
    published = scope.catalog.journeys.get(journey.name)
    if published is None:
        return
    for name in LOCKED_FIELDS:
        before, after = getattr(published.definition, name), getattr(journey, name)
        if before != after:
            yield Problem(
                where,
                label,
                f"{name} cannot change on a published journey: it is {before!r}, this "
                f"file says {after!r}; keep {before!r} or publish under a new name",
            )
    if published.status != "live" and scope.now is not None:
        deadline = published.end_at + timedelta(days=EXTENSION_DAYS)
        if scope.now > deadline:
            yield Problem(
                where,
                label,
                f"the journey ended at {published.end_at:%Y-%m-%d %H:%M}Z, more than "
                f"{EXTENSION_DAYS} days ago, so it can no longer be extended; publish "
                "it under a new name",
            )


def _check_window(
    where: str, label: str, journey: Journey, scope: _Scope
) -> Iterator[Problem]:
    try:
        zone = load_zone(journey.timezone)
    except DefinitionError as error:
        guess = suggest_zone(journey.timezone)
        hint = f" (did you mean {guess!r}?)" if guess else ""
        yield Problem(where, label, f"timezone: {error}{hint}")
        return

    moments = {}
    for name in ("start", "end"):
        try:
            moments[name] = to_utc(
                getattr(journey, name),
                zone,
                ambiguous=journey.ambiguous_time,
                nonexistent=journey.nonexistent_time,
            )
        except DefinitionError as error:
            yield Problem(where, label, f"{name}: {error}")
    if len(moments) < 2:
        return
    if moments["start"] >= moments["end"]:
        yield Problem(
            where,
            label,
            f"start {journey.start:%Y-%m-%d %H:%M} is not before end "
            f"{journey.end:%Y-%m-%d %H:%M}; the end must come after the start",
        )
    elif scope.now is not None and moments["end"] <= scope.now:
        yield Problem(
            where,
            label,
            f"end {journey.end:%Y-%m-%d %H:%M} {journey.timezone} has already passed; "
            "move the end into the future",
            severity="error" if scope.for_go_live else "warning",
        )


def _check_reference(
    where: str,
    label: str,
    tile: str | None,
    kind: str,
    name: str,
    field_name: str,
    scope: _Scope,
) -> Iterator[Problem]:
    target = scope.find(kind, name)
    if target is None:
        yield Problem(
            where,
            label,
            f"{field_name} refers to {kind} {name!r}, which is not defined in these "
            f"files or published; add it or correct the name",
            tile=tile,
        )
    elif scope.for_go_live and target.status != "live":
        yield Problem(
            where,
            label,
            f"{field_name} refers to {kind} {name!r}, which is not published "
            f"(status {target.status!r}); publish it with 'status: live' or point "
            f"at a published {kind}",
            tile=tile,
        )


def _check_audience_size(
    where: str, label: str, journey: Journey, scope: _Scope
) -> Iterator[Problem]:
    size = scope.catalog.segment_sizes.get(journey.audience.segment)
    if size == 0:
        yield Problem(
            where,
            label,
            f"segment {journey.audience.segment!r} has no members now; the journey "
            "will only reach contacts who join it later",
            severity="warning",
        )


def _check_tiles(
    where: str, label: str, journey: Journey, scope: _Scope
) -> Iterator[Problem]:
    for tile_id, message in check_tile_graph(journey, scope.catalog.contact_fields):
        yield Problem(where, label, message, tile=tile_id)
    for tile in walk_tiles(journey.tiles):
        if isinstance(tile, EmailTile):
            yield from _check_reference(
                where, label, tile.id, "email", tile.email, "email", scope
            )
