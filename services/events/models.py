"""The interaction event that other systems publish on the events.interactions
queue. docs/interaction-event.schema.json is its JSON Schema."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.interactions import Kind

EventKind = Literal["bounce", "open", "click", "unsubscribe"]

# The interactions table's kind for each event kind.
INTERACTION_KINDS: dict[str, Kind] = {
    "bounce": "bounced",
    "open": "opened",
    "click": "clicked",
    "unsubscribe": "unsubscribed",
}


class InteractionEvent(BaseModel):
    """An interaction with an email this engine sent, reported by another system."""

    # Unknown fields are rejected, so that a misspelt optional field such as
    # "hard" fails loudly instead of taking its default.
    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: EventKind = Field(description="What happened to the email.")
    message_id: str = Field(
        min_length=3,
        max_length=998,
        description="The Message-ID header of the email, with or without the "
        "angle brackets, for example <abc123@mail.example.com>.",
    )
    hard: bool = Field(
        default=True,
        description="For bounces: true for a permanent failure, which stops all "
        "email to the contact; false for a temporary one. Ignored for other kinds.",
    )
    link: str | None = Field(
        default=None,
        max_length=8192,
        description="For clicks: the address that the contact opened.",
    )
    at: AwareDatetime = Field(
        description="When it happened, as an RFC 3339 date-time with a UTC offset, "
        "for example 2026-03-01T12:00:00Z. A time without an offset is rejected."
    )


_FIELD_NAME = r"^[A-Za-z_][\w-]{0,99}$"
_NO_LINE_BREAKS = r"^[^\r\n]*$"


class ContactUpsert(BaseModel):
    """A contact to insert or update, published on the events.contacts queue.

    The contact is matched by contact_id, or by address when there is none,
    the same way as a CSV import.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    contact_id: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=_NO_LINE_BREAKS
    )
    email: str = Field(min_length=3, max_length=320, pattern=_NO_LINE_BREAKS)
    firstname: str = Field(default="", max_length=1000)
    lastname: str = Field(default="", max_length=1000)
    unsubscribed: bool = Field(
        default=False,
        description="true unsubscribes the contact; false never subscribes one "
        "again who unsubscribed",
    )
    fields: dict[
        Annotated[str, Field(pattern=_FIELD_NAME)],
        Annotated[str, Field(max_length=10_000)],
    ] = Field(
        default_factory=dict,
        max_length=200,
        description="Other contact fields, as text",
    )


class SegmentMembershipChange(BaseModel):
    """Contacts added to or removed from a segment whose source is the
    events.segments queue."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    segment: str = Field(min_length=1, max_length=200)
    action: Literal["add", "remove"]
    contacts: list[
        Annotated[str, Field(min_length=1, max_length=320, pattern=_NO_LINE_BREAKS)]
    ] = Field(
        min_length=1, max_length=1000, description="Contact ids or email addresses"
    )
