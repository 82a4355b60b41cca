"""The responses of the tracking service that contacts see: the open pixel and
small HTML pages for unsubscribing and for links that are not valid."""

from __future__ import annotations

import html

from starlette.responses import HTMLResponse, Response

# A 1x1 GIF89a whose only pixel is transparent (43 bytes).
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)

# The URLs carry tokens, so nothing is cached, indexed or sent on as a Referer.
# The pages load nothing and may not be framed by other sites.
PRIVATE_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex",
}
_PAGE_HEADERS = {
    **PRIVATE_HEADERS,
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
}

_LAYOUT = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 32rem; margin: 4rem auto;
       padding: 0 1rem; line-height: 1.5; color: #222; }}
button {{ font: inherit; padding: 0.5rem 1.25rem; cursor: pointer; }}
</style>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""


def pixel() -> Response:
    return Response(PIXEL_GIF, media_type="image/gif", headers=PRIVATE_HEADERS)


def page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    """Build an HTML page from trusted `body` markup and an escaped `title`."""
    content = _LAYOUT.format(title=html.escape(title), body=body)
    return HTMLResponse(content, status_code=status_code, headers=_PAGE_HEADERS)


def invalid_link() -> HTMLResponse:
    return page(
        "Link not valid",
        "<p>This link is not valid. It may be incomplete, altered or too old.</p>",
        status_code=404,
    )


def confirm_unsubscribe(token: str) -> HTMLResponse:
    """Build the confirmation page shown before unsubscribing.

    The button submits List-Unsubscribe=One-Click, the same body that mail
    clients send, so both requests take one path. The relative form action
    keeps the address that the contact opened, also behind a proxy.
    """
    action = html.escape(f"?token={token}", quote=True)
    return page(
        "Unsubscribe",
        "<p>Do you want to stop receiving these emails?</p>\n"
        f'<form method="post" action="{action}">'
        '<button type="submit" name="List-Unsubscribe" value="One-Click">'
        "Unsubscribe</button></form>",
    )


def unsubscribed() -> HTMLResponse:
    return page(
        "You are unsubscribed",
        "<p>You will receive no more of these emails.</p>",
    )


def bad_unsubscribe_request() -> HTMLResponse:
    return page(
        "Request not valid",
        "<p>This unsubscribe request is not valid: its body must be "
        "<code>List-Unsubscribe=One-Click</code>. "
        "Open the link from the email again and select the button.</p>",
        status_code=400,
    )


def unavailable() -> HTMLResponse:
    return page(
        "Please try again later",
        "<p>Your request could not be completed. Please try again in a few "
        "minutes.</p>",
        status_code=503,
    )
