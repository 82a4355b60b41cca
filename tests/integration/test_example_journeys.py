"""The onboarding example, which uses every tile type, run live with the
tracking service answering real HTTP requests; insights and /metrics must
agree with what the SMTP sink received and what the test opened and clicked."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from shared.contacts import import_contacts
from shared.golive import go_live_paths
from tests.support import ROOT, recipients, wait_until, write_contacts

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)  # 09:00 in Berlin
PIXEL = re.compile(r'<img src="([^"]+/o/[\w-]+)"')
CLICK = re.compile(r'href="([^"]+/c/[\w-]+)"')


def _contacts() -> list[dict[str, str]]:
    """Eleven new customers, odd ones German-speaking; n12 is suppressed."""
    return [
        {
            "contact_id": f"n{n}",
            "email": f"n{n}@example.com",
            "firstname": f"Name{n}",
            "lifecycle_stage": "customer",
            "signup_date": "2026-06-01",
            "language": "de" if n % 2 else "en",
            "country": "SE" if n == 12 else "DE",
        }
        for n in range(1, 13)
    ]


def _html(sink, address: str, subject: str) -> str:
    for message in sink.handler.parsed():
        if message["To"].addresses[0].addr_spec == address and subject in str(
            message["Subject"]
        ):
            return message.get_body(("html",)).get_content()
    raise AssertionError(f"no email {subject!r} to {address}")


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=10, follow_redirects=False)


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} {labels} not found")


def _open_and_click(sink, numbers: range, clicking: set[int]) -> None:
    for n in numbers:
        html = _html(sink, f"n{n}@example.com", "first steps")
        assert _get(PIXEL.search(html).group(1)).status_code == 200
        if n in clicking:
            answer = _get(CLICK.search(html).group(1))
            assert answer.status_code == 302
            assert (
                answer.headers["location"]
                == "https://shop.northwind.example.com/guides/first-hike"
            )


def test_onboarding_example_insights_agree_with_sink_and_clicks(
    db, processes, smtp_sink, virtual_time, tmp_path
):
    virtual_time.set(START)
    import_contacts(db, write_contacts(tmp_path / "c.csv", _contacts()))
    outcome = go_live_paths(db, [ROOT / "examples" / "onboarding"], virtual_time.now())
    assert not outcome.errors, [str(p) for p in outcome.errors]
    processes.start_workers(processes=2, threads=4)
    coordinator = processes.start_coordinator()
    processes.start_tracking()
    wait_until(lambda: len(smtp_sink.handler.messages) == 11, 60, what="welcome emails")

    # n1 to n4 open the welcome email after an hour; n1 and n2 click its link.
    virtual_time.set(START + timedelta(hours=1))
    _open_and_click(smtp_sink, range(1, 5), clicking={1, 2})
    virtual_time.pass_timers(db, "wait", 11)
    wait_until(lambda: len(smtp_sink.handler.messages) == 15, 60, what="tips emails")
    # n5 opens during the condition's 3 days; the others never open.
    virtual_time.set(START + timedelta(days=3))
    _open_and_click(smtp_sink, range(5, 6), clicking=set())
    wait_until(lambda: len(smtp_sink.handler.messages) == 16, 60, what="n5's tips")
    virtual_time.pass_timers(db, "condition", 6)
    wait_until(lambda: len(smtp_sink.handler.messages) == 22, 60, what="reminders")
    time.sleep(2)

    assert Counter(recipients(smtp_sink)) == {
        f"n{n}@example.com": 2 for n in range(1, 12)
    }
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "insights", "onboarding", "--json"],
        env=processes.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    insights = json.loads(result.stdout)
    emails = {item["id"]: item for item in insights["emails"]}
    welcome = emails["welcome-mail"]
    assert welcome["sent"] == 11
    assert welcome["blocked"] == 1
    assert welcome["opened"]["unique"] == 5
    assert welcome["clicked"] == {"unique": 2, "total": 2}
    branches = {item["id"]: item for item in insights["branches"]}
    assert branches["opened-welcome"]["branches"] == {"yes": 5, "no": 6}
    split = branches["tips-split"]
    assert sum(split["branches"].values()) == split["entered"] == 5
    assert branches["speaks-german"]["branches"] == {"yes": 3, "no": 3}
    assert sum(item["sent"] for item in emails.values()) == len(
        smtp_sink.handler.messages
    )
    assert insights["contacts"] == {
        "finished": 11,
        "in_progress": 0,
        "left_early": {"suppressed": 1},
    }

    port = processes.metrics_ports[coordinator.pid]
    scrape = _get(f"http://127.0.0.1:{port}/metrics").text
    welcome_labels = {"journey": "onboarding", "tile": "welcome-mail"}
    interactions = "journeys_email_interactions_total"
    assert _metric(scrape, interactions, interaction="opened", **welcome_labels) == 5
    assert _metric(scrape, interactions, interaction="clicked", **welcome_labels) == 2
    assert (
        _metric(
            scrape,
            "journeys_branch_contacts",
            journey="onboarding",
            tile="opened-welcome",
            branch="no",
        )
        == 6
    )
    for tile, item in emails.items():
        sent = _metric(
            scrape,
            "journeys_email_results_total",
            journey="onboarding",
            tile=tile,
            result="sent",
        )
        assert sent == item["sent"]
