"""Check for errors and go live: the operators' two steps, shared by the CLI
and the embedded mode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg

from shared.checks import Catalog, check
from shared.definitions import Journey, Segment
from shared.loading import Problem, load_documents
from shared.store import (
    GoLiveResult,
    go_live,
    load_catalog,
    publish_documents,
    segment_size,
)


@dataclass
class Outcome:
    problems: list[Problem] = field(default_factory=list)
    published: list[str] = field(default_factory=list)
    journeys: list[GoLiveResult] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]


def check_paths(
    paths: Sequence[str | Path],
    conn: psycopg.Connection | None,
    *,
    for_go_live: bool,
    now: datetime,
) -> tuple[Outcome, list]:
    """Load and check the files; return the outcome and the valid models."""
    documents, problems = load_documents(paths)
    catalog = load_catalog(conn) if conn is not None else Catalog()
    models = [document.model for document in documents if document.model is not None]
    if conn is not None:
        _measure_audiences(conn, models, catalog)
    outcome = Outcome(
        problems=problems + check(documents, catalog, for_go_live=for_go_live, now=now)
    )
    if not documents and not problems:
        outcome.problems.append(
            Problem(", ".join(map(str, paths)), "files", "no definitions found")
        )
    return outcome, models


def _measure_audiences(
    conn: psycopg.Connection, models: list, catalog: Catalog
) -> None:
    segments = {m.name: m for m in models if isinstance(m, Segment)}
    for journey in (m for m in models if isinstance(m, Journey)):
        name = journey.audience.segment
        segment = segments.get(name) or catalog.published.get(("segment", name))
        if segment is not None:
            catalog.segment_sizes[name] = segment_size(conn, segment)


def go_live_paths(
    conn: psycopg.Connection, paths: Sequence[str | Path], now: datetime
) -> Outcome:
    """Check the files for going live and, when there is no error, publish
    every document and put every journey live in one transaction."""
    outcome, models = check_paths(paths, conn, for_go_live=True, now=now)
    if outcome.errors:
        return outcome
    with conn.transaction():
        outcome.published = publish_documents(conn, models)
        for journey in (m for m in models if isinstance(m, Journey)):
            outcome.journeys.append(go_live(conn, journey))
    return outcome
