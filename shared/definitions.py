"""Pydantic models of the operators' definition files: journeys, tiles, segments,
emails and content settings."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    TypeAdapter,
    field_validator,
    model_validator,
)

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

    @field_validator("sender", "unsubscribe_mailto")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        return _reject_control_characters(value)

    @field_validator("subscription_center_url")
    @classmethod
    def _https_only(cls, value: str) -> str:
        if any(ord(ch) <= 32 or ch in '<>"' for ch in value):
            raise ValueError(
                'must not contain spaces, line breaks, control characters or <>"; '
                "percent-encode them"
            )
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

    @field_validator("from_")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        return _reject_control_characters(value)


def _reject_control_characters(value: str | None) -> str | None:
    """Header values must stay on one line: no CR, LF or other control characters."""
    if value is not None and any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("must be one line, without line breaks or control characters")
    return value


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
    source: Literal["queue"] | None = Field(
        default=None,
        description="'queue': members are added and removed by messages on the "
        "events.segments queue",
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


class WaitTile(TileBase):
    """Holds each contact for a duration, or until a local date-time or the
    next occurrence of a local time of day ("next 07:30")."""

    type: Literal["wait"]
    duration: str | None = Field(
        default=None, description="such as 30m, 2h, 3d or 1d12h"
    )
    until: str | None = Field(
        default=None,
        description="local date-time such as 2027-05-03 09:00, or 'next HH:MM'",
    )

    @field_validator("duration")
    @classmethod
    def _duration_is_valid(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("until")
    @classmethod
    def _until_is_valid(cls, value: str | None) -> str | None:
        if value is not None:
            parse_until(value)
        return value

    @model_validator(mode="after")
    def _one_of_duration_or_until(self) -> WaitTile:
        if (self.duration is None) == (self.until is None):
            raise ValueError("a wait needs exactly one of 'duration' or 'until'")
        return self


class InteractionCondition(BaseModel):
    """Holds when the contact interacted with an earlier email tile."""

    model_config = ConfigDict(extra="forbid")

    email: TileId = Field(description="id of an email tile earlier on the path")
    event: Literal["opened", "clicked", "unsubscribed"]
    link: str | None = Field(default=None, description="for 'clicked': only this link")


def _condition_kind(value: Any) -> str:
    if isinstance(value, dict) and ("email" in value or "event" in value):
        return "interaction"
    if isinstance(value, InteractionCondition):
        return "interaction"
    return "data"


class ConditionTile(TileBase):
    """Sends each contact down 'yes' as soon as the condition holds, or down
    'no' when it does not (a data condition) or when 'within' has passed."""

    type: Literal["condition"]
    if_: Annotated[
        Annotated[Condition, Tag("data")]
        | Annotated[InteractionCondition, Tag("interaction")],
        Discriminator(_condition_kind),
    ] = Field(alias="if")
    within: str | None = Field(
        default=None, description="such as 2d; needed for interactions"
    )
    yes: list[Tile] = Field(default_factory=list)
    no: list[Tile] = Field(default_factory=list)

    @field_validator("within")
    @classmethod
    def _within_is_valid(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _interaction_needs_within(self) -> ConditionTile:
        if isinstance(self.if_, InteractionCondition) and self.within is None:
            raise ValueError(
                "a condition on an email interaction needs 'within', such as 2d, "
                "after which the contact takes 'no'"
            )
        return self


class SplitBranch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: TileId
    percent: float | None = Field(default=None, gt=0, le=100)
    count: int | None = Field(default=None, gt=0)
    tiles: list[Tile] = Field(default_factory=list)


class SplitTile(TileBase):
    """Sends each contact down one branch at random, by percentage, or the
    first contacts by count with the rest down 'remaining'. A contact's
    branch depends only on the journey and the contact."""

    type: Literal["split"]
    branches: list[SplitBranch] = Field(min_length=1)
    remaining: list[Tile] | None = None


Tile = Annotated[
    EmailTile | ExitTile | WaitTile | ConditionTile | SplitTile,
    Field(discriminator="type"),
]
TILE_TYPES = ("email", "wait", "condition", "split", "exit")


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
    suppression: Name | None = Field(
        default=None,
        description="Segment whose members are never emailed and leave the journey",
    )
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


for _model in (ConditionTile, SplitBranch, SplitTile, Journey):
    _model.model_rebuild()

AnyDocument = Annotated[
    ContentSettings | Email | Segment | Journey, Field(discriminator="kind")
]
DOCUMENT_KINDS = ("content-settings", "email", "segment", "journey")
document_adapter: TypeAdapter[Any] = TypeAdapter(AnyDocument)


def branches_of(tile: Any) -> list[tuple[str, list[Any]]]:
    """Return a tile's branches as (branch name, tile list) pairs."""
    if isinstance(tile, ConditionTile):
        return [("yes", tile.yes), ("no", tile.no)]
    if isinstance(tile, SplitTile):
        pairs = [(branch.name, branch.tiles) for branch in tile.branches]
        if tile.remaining is not None:
            pairs.append(("remaining", tile.remaining))
        return pairs
    return []


def walk_tiles(tiles: list[Any]) -> list[Any]:
    """Return every tile of a tile list in path order, nested branches included."""
    found: list[Any] = []
    for tile in tiles:
        found.append(tile)
        for _, branch in branches_of(tile):
            found.extend(walk_tiles(branch))
    return found


_DURATION = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_NEXT_TIME = re.compile(r"^next\s+([01]?\d|2[0-3]):([0-5]\d)$")


def parse_duration(text: str) -> timedelta:
    """Parse '90m', '2h', '3d' or '1d12h30m' into a timedelta."""
    match = _DURATION.match(text.strip())
    if not text.strip() or match is None:
        raise ValueError(
            f"invalid duration {text!r}; write it like 30m, 2h, 3d or 1d12h"
        )
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    try:
        delta = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise ValueError(f"duration {text!r} is too long") from None
    if delta <= timedelta(0):
        raise ValueError(f"duration {text!r} must be longer than zero")
    return delta


def parse_until(text: str) -> datetime | time:
    """Parse a wait's 'until': a local date-time, or 'next HH:MM' as a time."""
    match = _NEXT_TIME.match(text.strip())
    if match:
        return time(int(match.group(1)), int(match.group(2)))
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"invalid 'until' {text!r}; write a local date-time such as "
            "2027-05-03 09:00, or 'next 07:30' for the next time of day"
        ) from None
    if moment.tzinfo is not None:
        raise ValueError(f"'until' {text!r} must be local, without an offset")
    return moment
