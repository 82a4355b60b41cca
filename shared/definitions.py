"""Pydantic models of the operators' definition files: journeys, tiles, segments,
emails and content settings."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

Status = Literal["draft", "live"]
Name = Annotated[
    str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][\w .:-]*$")
]
TileId = Annotated[
    str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][\w.-]*$")
]

AUDIENCE_TILE = "audience"


class Document(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: Name
    status: Status = "draft"


class ContentSettings(Document):
    kind: Literal["content-settings"]
    sender: str = Field(description='From address with display name: "Name <addr>"')
    postal_address: str = Field(min_length=1)
    subscription_center_url: str = Field(
        description="HTTPS address of the subscription center; each email links "
        "to it with a signed per-contact token"
    )
    unsubscribe_mailto: str | None = Field(
        default=None,
        description="Mailbox for mailto unsubscribe requests; "
        "unsubscribe@<sender domain> when absent",
    )

    @field_validator("subscription_center_url")
    @classmethod
    def _https_only(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.netloc:
            raise ValueError(
                f"must be an https:// address, got {value!r}; mail clients "
                "only offer one-click unsubscribe over HTTPS"
            )
        return value


class Email(Document):
    kind: Literal["email"]
    subject: str = Field(min_length=1, max_length=998)
    html: str = Field(min_length=1)
    text: str | None = Field(
        default=None, description="Plain-text part; derived from the HTML when absent"
    )
    from_: str | None = Field(
        default=None, alias="from", description="Overrides the content settings' sender"
    )


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z_][\w-]*$")
    op: Literal["eq", "ne", "in", "contains", "gt", "lt", "exists"]
    value: str | int | float | bool | list[str | int | float] | None = None


class Segment(Document):
    kind: Literal["segment"]
    contacts: list[str] | None = Field(
        default=None, description="Static members: email addresses or contact ids"
    )
    where: list[Condition] | None = Field(
        default=None, description="Dynamic members: contacts meeting every condition"
    )


class Audience(BaseModel):
    model_config = ConfigDict(extra="forbid")

    segment: Name


class TileBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: TileId


class EmailTile(TileBase):
    """Sends one personalised marketing email to each contact that reaches it."""

    type: Literal["email"]
    email: Name


class ExitTile(TileBase):
    """Ends the contact's journey; the tile after it is never reached."""

    type: Literal["exit"]


Tile = Annotated[EmailTile | ExitTile, Field(discriminator="type")]
TILE_TYPES = ("email", "exit")


class Journey(Document):
    kind: Literal["journey"]
    start: datetime = Field(description="Local date-time in the journey's time zone")
    end: datetime = Field(description="Local date-time in the journey's time zone")
    timezone: str = Field(description="IANA time zone name, such as Europe/Berlin")
    ambiguous_time: Literal["earlier", "later"] | None = Field(
        default=None,
        description="Which occurrence a local start or end means when the clock "
        "is turned back and that time happens twice",
    )
    nonexistent_time: Literal["reject", "shift_forward"] = Field(
        default="reject",
        description="What a local start or end inside a spring-forward gap means: "
        "an error, or the first moment after the gap (02:30 becomes 03:00)",
    )
    content_settings: Name
    audience: Audience
    tiles: list[Tile] = Field(min_length=1)

    @field_validator("start", "end")
    @classmethod
    def _local_only(cls, value: datetime) -> datetime:
        if value.tzinfo is not None:
            raise ValueError(
                "must be a local date-time without an offset, such as "
                "2027-05-03 09:00; the journey's 'timezone' says where it is"
            )
        return value


AnyDocument = Annotated[
    ContentSettings | Email | Segment | Journey, Field(discriminator="kind")
]
DOCUMENT_KINDS = ("content-settings", "email", "segment", "journey")
document_adapter: TypeAdapter[Any] = TypeAdapter(AnyDocument)


def walk_tiles(tiles: list[Any]) -> list[Any]:
    """Return every tile of a tile list in path order, nested branches included."""
    return list(tiles)
