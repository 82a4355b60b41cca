"""The tracking service: the open pixel, the click redirect and the one-click
unsubscribe that the links of each email point at, with /healthz and /metrics.

Run it with `journeys tracking`. The routes take a signed token from
shared.tokens and trust nothing else in the request: a click only ever
redirects to an address stored in the send's row.
"""

from __future__ import annotations

import contextlib
import email.policy
import logging
from collections.abc import AsyncIterator
from email.parser import BytesParser
from urllib.parse import parse_qs, quote

import psycopg
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from services.tracking import pages, recording
from shared.config import Settings
from shared.db import close_pool, get_pool
from shared.tokens import InvalidToken, TokenClaims, verify

logger = logging.getLogger(__name__)

ROUTES = ("open", "click", "unsubscribe_page", "unsubscribe")
# 'error' counts requests whose database work failed.
RESULTS = ("recorded", "ignored", "invalid", "error")
REQUESTS = Counter(
    "journeys_tracking_requests",
    "Requests to the open, click and unsubscribe routes, by route and result.",
    ["route", "result"],
)
for _route in ROUTES:
    for _result in RESULTS:
        REQUESTS.labels(_route, _result)

# A one-click unsubscribe body is under 200 bytes even as multipart/form-data.
MAX_BODY_BYTES = 16 * 1024
ONE_CLICK_FIELD = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"
# Printable ASCII except the space: the characters a Location header keeps as they are.
_HEADER_SAFE = "".join(chr(code) for code in range(0x21, 0x7F))


class TrackingRoutes:
    """The endpoints, bound to the settings that hold the token secret.

    Plain `def` endpoints run in Starlette's threadpool, and the async
    unsubscribe endpoint moves its database work there, so the synchronous
    psycopg calls run outside the event loop.
    """

    def __init__(self, settings: Settings) -> None:
        self.secret = settings.secret_key.get_secret_value().encode()
        self.token_days = settings.tracking_token_days

    def open_pixel(self, request: Request) -> Response:
        claims = self._claims(request.path_params["token"], "open")
        result = "invalid"
        if claims is not None:
            try:
                result = recording.record_open(claims, record=request.method == "GET")
            except psycopg.Error:
                logger.exception("recording the open of send %s failed", claims.send_id)
                result = "error"
        REQUESTS.labels("open", result).inc()
        # The pixel goes out whatever happened, so that no email shows a broken image.
        return pages.pixel()

    def click(self, request: Request) -> Response:
        claims = self._claims(request.path_params["token"], "click")
        if claims is None:
            REQUESTS.labels("click", "invalid").inc()
            return pages.invalid_link()
        try:
            # HEAD requests, sent by link checkers, get the redirect unrecorded.
            result, link = recording.resolve_click(
                claims, record=request.method == "GET"
            )
        except psycopg.Error:
            logger.exception("resolving the click of send %s failed", claims.send_id)
            REQUESTS.labels("click", "error").inc()
            return pages.unavailable()
        REQUESTS.labels("click", result).inc()
        if link is None:
            return pages.invalid_link()
        headers = {**pages.PRIVATE_HEADERS, "Location": location_header(link)}
        return Response(status_code=302, headers=headers)

    def unsubscribe_page(self, request: Request) -> Response:
        """Show a confirmation form and change nothing, because link scanners
        and mail previews fetch GET URLs without the contact asking."""
        token = request.query_params.get("token", "")
        claims = self._claims(token, "unsubscribe")
        if claims is None:
            REQUESTS.labels("unsubscribe_page", "invalid").inc()
            return pages.invalid_link()
        try:
            exists = recording.send_exists(claims.send_id)
        except psycopg.Error:
            logger.exception("unsubscribe page of send %s failed", claims.send_id)
            REQUESTS.labels("unsubscribe_page", "error").inc()
            return pages.unavailable()
        if not exists:
            REQUESTS.labels("unsubscribe_page", "invalid").inc()
            return pages.invalid_link()
        REQUESTS.labels("unsubscribe_page", "ignored").inc()
        return pages.confirm_unsubscribe(token)

    async def unsubscribe(self, request: Request) -> Response:
        """Unsubscribe at once on an RFC 8058 one-click POST or the form's submit.

        The token in the URL is the only credential, so no cookie or session
        is needed, as RFC 8058 requires.
        """
        claims = self._claims(request.query_params.get("token", ""), "unsubscribe")
        if claims is None:
            REQUESTS.labels("unsubscribe", "invalid").inc()
            return pages.invalid_link()
        body = await request.body()
        if not is_one_click(request.headers.get("content-type", ""), body):
            logger.info(
                "unsubscribe request of send %s rejected: the body is not %s=%s",
                claims.send_id,
                ONE_CLICK_FIELD,
                ONE_CLICK_VALUE,
            )
            REQUESTS.labels("unsubscribe", "invalid").inc()
            return pages.bad_unsubscribe_request()
        try:
            result = await run_in_threadpool(recording.unsubscribe, claims.send_id)
        except psycopg.Error:
            logger.exception("unsubscribe of send %s failed", claims.send_id)
            REQUESTS.labels("unsubscribe", "error").inc()
            return pages.unavailable()
        REQUESTS.labels("unsubscribe", result).inc()
        if result == "invalid":
            return pages.invalid_link()
        return pages.unsubscribed()

    def healthz(self, request: Request) -> Response:
        try:
            with get_pool().connection() as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as error:
            logger.warning("health check failed: %s", error)
            return PlainTextResponse("database unavailable", status_code=503)
        return PlainTextResponse("ok")

    def metrics(self, request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    def _claims(self, token: str, purpose: str) -> TokenClaims | None:
        """Return the claims of a token that is valid for `purpose`, else None.

        The log lines give the reason and the send, never the token, which
        would let anyone who reads the logs act for the contact.
        """
        try:
            claims = verify(self.secret, token)
        except InvalidToken as error:
            logger.info("%s token rejected: %s", purpose, error)
            return None
        if claims.purpose != purpose:
            logger.info(
                "%s token rejected: the token of send %s has purpose %r",
                purpose,
                claims.send_id,
                claims.purpose,
            )
            return None
        # Unsubscribe tokens do not expire: mail clients may send the
        # List-Unsubscribe request long after the email arrived. The age of
        # the others is measured on the real date, because shared.tokens.sign
        # writes the real date of issue, while shared.clock may run ahead.
        if purpose != "unsubscribe" and claims.expired(self.token_days):
            logger.info(
                "%s token of send %s rejected: issued on %s, more than %s days ago",
                purpose,
                claims.send_id,
                claims.issued,
                self.token_days,
            )
            return None
        return claims


def is_one_click(content_type: str, body: bytes) -> bool:
    """Return True when a POST body carries List-Unsubscribe=One-Click.

    RFC 8058 lets mail clients send it as multipart/form-data or as
    application/x-www-form-urlencoded. A missing content type is read as
    the latter.
    """
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        values = _multipart_fields(content_type, body).get(ONE_CLICK_FIELD, [])
    elif media_type in ("", "application/x-www-form-urlencoded"):
        fields = parse_qs(body.decode("ascii", errors="replace"))
        values = fields.get(ONE_CLICK_FIELD, [])
    else:
        return False
    return ONE_CLICK_VALUE in values


def _multipart_fields(content_type: str, body: bytes) -> dict[str, list[str]]:
    """Parse a small multipart/form-data body with the standard email parser."""
    head = b"Content-Type: " + content_type.encode("latin-1", errors="replace")
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        head + b"\r\n\r\n" + body
    )
    fields: dict[str, list[str]] = {}
    if not message.is_multipart():
        return fields
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            value = payload.decode("utf-8", errors="replace").strip()
            fields.setdefault(name, []).append(value)
    return fields


def location_header(link: str) -> str:
    """Return the link as a Location header value.

    A link of printable ASCII stays exactly as stored. Spaces, control and
    non-ASCII characters are percent-encoded as UTF-8, which is what a
    browser does with such an href, because a header cannot carry them.
    """
    return quote(link, safe=_HEADER_SAFE)


def create_app(settings: Settings) -> Starlette:
    """Build the tracking application.

    `settings` supplies the token secret and the open and click token age.
    The database is the process's shared pool from shared.db, which reads
    JOURNEYS_DATABASE_URL through get_settings().
    """
    routes = TrackingRoutes(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Opening the pool at startup makes an unreachable database fail the
        # start, instead of the first request.
        await run_in_threadpool(get_pool)
        yield
        await run_in_threadpool(close_pool)

    return Starlette(
        routes=[
            Route("/o/{token}", routes.open_pixel, methods=["GET"]),
            Route("/c/{token}", routes.click, methods=["GET"]),
            Route("/unsubscribe", routes.unsubscribe_page, methods=["GET"]),
            Route("/unsubscribe", routes.unsubscribe, methods=["POST"]),
            Route("/healthz", routes.healthz, methods=["GET"]),
            Route("/metrics", routes.metrics, methods=["GET"]),
        ],
        lifespan=lifespan,
        max_body_size=MAX_BODY_BYTES,
    )


def serve(settings: Settings) -> None:
    """Run the tracking service with uvicorn until SIGINT or SIGTERM."""
    uvicorn.run(
        create_app(settings),
        host=settings.tracking_host,
        port=settings.tracking_port,
        # The access log would write every request path, and the paths
        # contain the tokens.
        access_log=False,
        # Keep the logging that the command line set up.
        log_config=None,
    )
