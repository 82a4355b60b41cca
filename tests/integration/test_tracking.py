"""The tracking service as a separate process over real HTTP: the open pixel,
the click redirect, the unsubscribe page and the one-click unsubscribe."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg.types.json import Jsonb

from shared.golive import go_live_paths
from shared.tokens import sign
from tests.support import ROOT, free_port, wait_until, write_definitions

pytestmark = pytest.mark.integration

SECRET = os.environ["JOURNEYS_SECRET_KEY"].encode()
LINKS = ["https://shop.example.com/a?x=1&y=2", "https://shop.example.com/b"]
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@dataclass
class TrackingServer:
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass(frozen=True)
class Send:
    send_id: int
    contact: int


@pytest.fixture(scope="module")
def server(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TrackingServer]:
    """`journeys tracking` on a free loopback port, as in a deployment."""
    port = free_port()
    log = tmp_path_factory.mktemp("tracking") / "tracking.log"
    env = {
        **os.environ,
        "JOURNEYS_DATABASE_URL": database_url,
        "JOURNEYS_TRACKING_HOST": "127.0.0.1",
        "JOURNEYS_TRACKING_PORT": str(port),
        "JOURNEYS_SECRET_KEY": SECRET.decode(),
        "JOURNEYS_TRACKING_TOKEN_DAYS": "180",
    }
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.cli.main", "tracking"],
            env=env,
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: process.poll() is not None or _healthy(url),
            30,
            what="the tracking service to answer /healthz",
        )
        assert process.poll() is None, log.read_text(errors="replace")
        yield TrackingServer(url, log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def client(server: TrackingServer) -> Iterator[httpx.Client]:
    """A fresh client without cookies that does not follow redirects."""
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=10) as http:
        yield http


@pytest.fixture
def send(db: psycopg.Connection, tmp_path: Path) -> Send:
    """One contact of a live journey with an accepted send that has two links."""
    contact = db.execute(
        "INSERT INTO contacts (key, contact_id, email, firstname)"
        " VALUES ('c1', 'c1', 'c1@example.com', 'Ann') RETURNING id"
    ).fetchone()[0]
    outcome = go_live_paths(db, [write_definitions(tmp_path)], datetime.now(UTC))
    assert not outcome.errors, [str(problem) for problem in outcome.errors]
    journey_id = db.execute("SELECT id FROM journeys").fetchone()[0]
    send_id = db.execute(
        "INSERT INTO sends (journey_id, tile, contact, address, state, message_id,"
        " started_at, finished_at, links)"
        " VALUES (%s, 'send-hello', %s, 'c1@example.com', 'accepted',"
        " '<m1@sender.example.com>', now(), now(), %s) RETURNING id",
        (journey_id, contact, Jsonb(LINKS)),
    ).fetchone()[0]
    return Send(send_id, contact)


def _interactions(db: psycopg.Connection, kind: str) -> list[tuple]:
    return db.execute(
        "SELECT send_id, contact, link, source FROM interactions"
        " WHERE kind = %s ORDER BY id",
        (kind,),
    ).fetchall()


def _unsubscribed(db: psycopg.Connection, contact: int) -> bool:
    return db.execute(
        "SELECT unsubscribed FROM contacts WHERE id = %s", (contact,)
    ).fetchone()[0]


def _altered(token: str) -> str:
    """Change one character in the middle of a token, keeping it base64url."""
    middle = len(token) // 2
    replacement = "A" if token[middle] != "A" else "B"
    return token[:middle] + replacement + token[middle + 1 :]


def test_open_pixel_recorded_per_request(db, client, send):
    token = sign(SECRET, "open", send.send_id)

    first = client.get(f"/o/{token}")
    assert first.status_code == 200
    assert first.headers["content-type"] == "image/gif"
    assert first.headers["cache-control"] == "no-store"
    assert first.content.startswith(b"GIF89a")
    assert _interactions(db, "opened") == [
        (send.send_id, send.contact, None, "tracking")
    ]

    second = client.get(f"/o/{token}")
    assert second.status_code == 200
    assert len(_interactions(db, "opened")) == 2


@pytest.mark.parametrize(
    "token",
    ["garbage", "A" * 38, "%00%ff"],
    ids=["garbage", "token-length", "bytes"],
)
def test_open_garbage_token_not_recorded(db, client, send, token):
    response = client.get(f"/o/{token}")

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/gif"
    assert response.content.startswith(b"GIF89a")
    assert _interactions(db, "opened") == []


def test_open_rejected_tokens_not_recorded(db, client, send):
    old = date.today() - timedelta(days=400)
    tokens = {
        "forged": sign(b"another-key", "open", send.send_id),
        "altered": _altered(sign(SECRET, "open", send.send_id)),
        "expired": sign(SECRET, "open", send.send_id, issued=old),
        "click token": sign(SECRET, "click", send.send_id, 0),
        "unknown send": sign(SECRET, "open", send.send_id + 1000),
    }
    for name, token in tokens.items():
        response = client.get(f"/o/{token}")
        assert response.status_code == 200, name
        assert response.content.startswith(b"GIF89a"), name
    assert _interactions(db, "opened") == []


def test_click_redirects_to_exact_stored_link(db, client, send):
    for number, link in enumerate(LINKS):
        response = client.get(f"/c/{sign(SECRET, 'click', send.send_id, number)}")
        assert response.status_code == 302
        assert response.headers["location"] == link
        assert response.headers["cache-control"] == "no-store"

    rows = _interactions(db, "clicked")
    assert rows == [
        (send.send_id, send.contact, LINKS[0], "tracking"),
        (send.send_id, send.contact, LINKS[1], "tracking"),
    ]


def test_click_head_request_not_recorded(db, client, send):
    response = client.head(f"/c/{sign(SECRET, 'click', send.send_id, 1)}")

    assert response.status_code == 302
    assert response.headers["location"] == LINKS[1]
    assert _interactions(db, "clicked") == []


def test_click_link_number_out_of_range(db, client, send):
    response = client.get(f"/c/{sign(SECRET, 'click', send.send_id, len(LINKS))}")

    assert response.status_code == 404
    assert "location" not in response.headers
    assert "not valid" in response.text
    assert _interactions(db, "clicked") == []


def test_click_rejects_invalid_tokens(db, client, server, send):
    old = date.today() - timedelta(days=400)
    tokens = {
        "forged": sign(b"another-key", "click", send.send_id, 0),
        "altered": _altered(sign(SECRET, "click", send.send_id, 0)),
        "expired": sign(SECRET, "click", send.send_id, 0, issued=old),
        "open token": sign(SECRET, "open", send.send_id),
        "unsubscribe token": sign(SECRET, "unsubscribe", send.send_id),
        "unknown send": sign(SECRET, "click", send.send_id + 1000, 0),
        "garbage": "not-a-token",
    }
    for name, token in tokens.items():
        response = client.get(f"/c/{token}")
        assert response.status_code == 404, name
        assert "location" not in response.headers, name
        assert "not valid" in response.text, name
    assert _interactions(db, "clicked") == []

    log = server.log_text()
    assert "click token rejected" in log
    for name, token in tokens.items():
        assert token not in log, f"the {name} token was logged"


def test_click_on_send_not_accepted(db, client, send):
    db.execute("UPDATE sends SET state = 'unconfirmed' WHERE id = %s", (send.send_id,))

    response = client.get(f"/c/{sign(SECRET, 'click', send.send_id, 0)}")

    assert response.status_code == 404
    assert "location" not in response.headers
    assert _interactions(db, "clicked") == []


def test_unsubscribe_page_changes_nothing(db, client, send):
    token = sign(SECRET, "unsubscribe", send.send_id)

    response = client.get("/unsubscribe", params={"token": token})

    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    assert '<form method="post"' in response.text
    assert f'action="?token={token}"' in response.text
    assert 'name="List-Unsubscribe" value="One-Click"' in response.text
    assert not _unsubscribed(db, send.contact)
    assert _interactions(db, "unsubscribed") == []


@pytest.mark.parametrize(
    "token",
    [
        sign(b"another-key", "unsubscribe", 1),
        sign(SECRET, "open", 1),
        "garbage",
        "",
    ],
    ids=["forged", "open-token", "garbage", "empty"],
)
def test_unsubscribe_page_invalid_token(db, client, send, token):
    response = client.get("/unsubscribe", params={"token": token})

    assert response.status_code == 404
    assert "not valid" in response.text


def test_one_click_unsubscribe_without_cookies(db, client, send):
    token = sign(SECRET, "unsubscribe", send.send_id)

    first = client.post("/unsubscribe", params={"token": token}, data=ONE_CLICK)
    assert first.request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "cookie" not in first.request.headers
    assert first.status_code == 200
    assert "set-cookie" not in first.headers
    assert "unsubscribed" in first.text
    assert _unsubscribed(db, send.contact)
    assert _interactions(db, "unsubscribed") == [
        (send.send_id, send.contact, None, "tracking")
    ]

    second = client.post("/unsubscribe", params={"token": token}, data=ONE_CLICK)
    assert second.status_code == 200
    assert len(_interactions(db, "unsubscribed")) == 1


def test_one_click_unsubscribe_as_multipart(db, client, send):
    token = sign(SECRET, "unsubscribe", send.send_id)

    response = client.post(
        "/unsubscribe",
        params={"token": token},
        files={"List-Unsubscribe": (None, "One-Click")},
    )

    assert response.request.headers["content-type"].startswith("multipart/form-data")
    assert response.status_code == 200
    assert _unsubscribed(db, send.contact)
    assert len(_interactions(db, "unsubscribed")) == 1


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", "application/x-www-form-urlencoded"),
        (b"List-Unsubscribe=Maybe", "application/x-www-form-urlencoded"),
        (b"List-Unsubscribe=One-Click", "text/plain"),
    ],
    ids=["empty", "other-value", "text-plain"],
)
def test_unsubscribe_post_needs_one_click_body(db, client, send, body, content_type):
    token = sign(SECRET, "unsubscribe", send.send_id)

    response = client.post(
        "/unsubscribe",
        params={"token": token},
        content=body,
        headers={"content-type": content_type},
    )

    assert response.status_code == 400
    assert not _unsubscribed(db, send.contact)
    assert _interactions(db, "unsubscribed") == []


def test_unsubscribe_token_never_expires(db, client, send):
    # The oldest date that a token can carry.
    token = sign(SECRET, "unsubscribe", send.send_id, issued=date(2020, 1, 1))

    response = client.post("/unsubscribe", params={"token": token}, data=ONE_CLICK)

    assert response.status_code == 200
    assert _unsubscribed(db, send.contact)


def test_unsubscribe_rejects_other_tokens(db, client, send):
    tokens = {
        "forged": sign(b"another-key", "unsubscribe", send.send_id),
        "altered": _altered(sign(SECRET, "unsubscribe", send.send_id)),
        "open token": sign(SECRET, "open", send.send_id),
        "click token": sign(SECRET, "click", send.send_id, 0),
        "unknown send": sign(SECRET, "unsubscribe", send.send_id + 1000),
    }
    for name, token in tokens.items():
        response = client.post("/unsubscribe", params={"token": token}, data=ONE_CLICK)
        assert response.status_code == 404, name
    assert not _unsubscribed(db, send.contact)
    assert _interactions(db, "unsubscribed") == []


def test_unsubscribe_again_after_resubscribe(db, client, send):
    token = sign(SECRET, "unsubscribe", send.send_id)
    client.post("/unsubscribe", params={"token": token}, data=ONE_CLICK)
    db.execute(
        "UPDATE contacts SET unsubscribed = false WHERE id = %s", (send.contact,)
    )

    response = client.post("/unsubscribe", params={"token": token}, data=ONE_CLICK)

    assert response.status_code == 200
    assert _unsubscribed(db, send.contact)
    assert len(_interactions(db, "unsubscribed")) == 2


def test_metrics_count_requests_by_route(db, client, send):
    token = sign(SECRET, "open", send.send_id)
    client.get(f"/o/{token}")
    client.get("/o/garbage")

    response = client.get("/metrics")

    assert response.status_code == 200
    counts = {
        (sample.labels["route"], sample.labels["result"]): sample.value
        for family in text_string_to_metric_families(response.text)
        if family.name == "journeys_tracking_requests"
        for sample in family.samples
        if sample.name == "journeys_tracking_requests_total"
    }
    assert counts[("open", "recorded")] >= 1
    assert counts[("open", "invalid")] >= 1
    assert ("unsubscribe", "ignored") in counts
    assert token not in response.text


def test_healthz_ok(client):
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.text == "ok"
