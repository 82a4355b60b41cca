"""The JSON Schemas committed under docs/ match the models they describe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.events.models import (
    ContactUpsert,
    InteractionEvent,
    SegmentMembershipChange,
)
from shared.definitions import document_adapter

DOCS = Path(__file__).resolve().parent.parent.parent / "docs"


@pytest.mark.parametrize(
    ("file", "schema"),
    [
        ("contact-upsert.schema.json", ContactUpsert.model_json_schema()),
        ("segment-membership.schema.json", SegmentMembershipChange.model_json_schema()),
        ("interaction-event.schema.json", InteractionEvent.model_json_schema()),
        ("definitions.schema.json", document_adapter.json_schema(by_alias=True)),
    ],
)
def test_committed_schema_matches_model(file: str, schema: dict) -> None:
    committed = json.loads((DOCS / file).read_text(encoding="utf-8"))
    assert committed == schema, f"regenerate docs/{file} with journeys schema"
