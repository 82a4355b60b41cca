"""Settings read from the environment, each variable prefixed with JOURNEYS_."""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import SettingsError


class SmtpTarget(BaseModel):
    """Address and credentials of the SMTP relay the email tile sends through."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    ssl: bool = False


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="JOURNEYS_", env_file=".env", extra="ignore"
    )

    database_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    broker_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/%2F",
        description="amqp:// URL of RabbitMQ, or stub:// for the in-process broker",
    )
    smtp_url: str = Field(
        default="smtp://127.0.0.1:1025",
        description=(
            "smtp://[user:password@]host:port[?starttls=true]; smtps:// for TLS"
        ),
    )
    secret_key: SecretStr = SecretStr("change-me-in-production")
    tracking_url: str = Field(
        default="http://127.0.0.1:8088",
        description=(
            "public base URL of the tracking service, used in open and click links"
        ),
    )
    tracking_host: str = "127.0.0.1"
    tracking_port: int = 8088
    tracking_token_days: int = Field(
        default=180,
        gt=0,
        description="age in days after which open and click links are refused",
    )
    metrics_port: int = Field(default=9191, description="worker metrics port")
    coordinator_metrics_port: int = 9192
    metrics_host: str = Field(
        default="0.0.0.0",
        description="address the workers' and the coordinator's /metrics listen on",
    )
    metrics_dir: str = Field(
        default="/tmp/journeys-metrics",
        description="folder shared by the worker processes for prometheus-client",
    )
    db_pool_size: int = Field(default=10, ge=1)
    tick_seconds: float = Field(default=1.0, gt=0)
    feed_page_size: int = Field(default=1000, ge=1)
    contacts_per_message: int = Field(default=50, ge=1, le=1000)
    outbox_retry_seconds: float = Field(default=30.0, gt=0)
    feed_overlap_seconds: float = Field(
        default=60.0,
        ge=0,
        description="how far back each feeding pass looks again for contacts "
        "whose update committed late",
    )
    smtp_timeout_seconds: float = Field(default=30.0, gt=0)
    smtp_pipelining: bool = Field(
        default=True,
        description="send MAIL, RCPT and DATA in one write when the SMTP "
        "server offers PIPELINING; false sends one command at a time",
    )
    smtp_connections_per_thread: int = Field(
        default=4,
        ge=1,
        le=8,
        description="SMTP connections that each worker thread keeps open, with "
        "one email in flight on each; the 'sending' records of one email per "
        "connection share a database commit",
    )
    smtp_max_retries: int = Field(default=8, ge=0)
    actor_time_limit_seconds: int = Field(default=300, gt=0)

    @field_validator("smtp_url")
    @classmethod
    def _smtp_url_is_valid(cls, value: str) -> str:
        parse_smtp_url(value)
        return value

    def smtp_target(self) -> SmtpTarget:
        return parse_smtp_url(self.smtp_url)

    @property
    def uses_stub_broker(self) -> bool:
        return self.broker_url.startswith("stub:")


def parse_smtp_url(url: str) -> SmtpTarget:
    """Parse smtp://user:password@host:port?starttls=true into its parts."""
    parts = urlsplit(url)
    if parts.scheme not in ("smtp", "smtps"):
        raise ValueError(
            f"invalid SMTP URL {url!r}: the scheme must be smtp:// or smtps://, "
            "for example smtp://127.0.0.1:1025"
        )
    if not parts.hostname:
        raise ValueError(f"invalid SMTP URL {url!r}: the host is missing")
    query = dict(pair.split("=", 1) for pair in parts.query.split("&") if "=" in pair)
    return SmtpTarget(
        host=parts.hostname,
        port=parts.port or (465 if parts.scheme == "smtps" else 25),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        starttls=query.get("starttls", "false").lower() in ("1", "true", "yes"),
        ssl=parts.scheme == "smtps",
    )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Return the settings, read once. Raises SettingsError naming each
    invalid variable, its value and what it must be."""
    try:
        return Settings()
    except ValidationError as error:
        problems = []
        for item in error.errors(include_url=False):
            name = "JOURNEYS_" + "_".join(map(str, item["loc"])).upper()
            problems.append(f"{name}={item.get('input')!r}: {item['msg']}")
        raise SettingsError(
            "invalid settings: "
            + "; ".join(problems)
            + ". Fix the environment variable or .env and start again."
        ) from None
