"""The email tile against a real SMTP server: rejections, deferrals, crashes,
headers and withdrawn emails."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import pytest

from shared.contacts import import_contacts
from shared.golive import go_live_paths
from shared.tokens import verify
from tests.support import (
    ROOT,
    recipients,
    simple_contacts,
    step_counts,
    wait_until,
    write_contacts,
    write_definitions,
)

pytestmark = pytest.mark.integration


def _go_live(db, path) -> None:
    outcome = go_live_paths(db, [path], datetime.now(UTC))
    assert not outcome.errors, [str(p) for p in outcome.errors]


def _settled(db, contacts: int) -> bool:
    """True when every contact entered and none is in flight any more."""
    row = db.execute(
        "SELECT (SELECT count(*) FROM entries),"
        " (SELECT count(*) FROM steps WHERE state = 'in_progress'),"
        " (SELECT count(*) FROM outbox)"
    ).fetchone()
    return row == (contacts, 0, 0)


def test_rejected_recipient_does_not_make_others_resend(
    db, processes, smtp_sink, tmp_path
):
    smtp_sink.handler.choose_reply = lambda rcpt: (
        "550 5.1.1 mailbox unavailable" if rcpt.startswith("c2@") else None
    )
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(3)))
    _go_live(db, write_definitions(tmp_path))
    workers = processes.start_workers(processes=1, threads=2)
    processes.start_coordinator()
    wait_until(lambda: _settled(db, 3), 60, what="three contacts processed")
    assert sorted(recipients(smtp_sink)) == ["c1@example.com", "c3@example.com"]

    # Deliver every email message again, as after a worker restart.
    processes.stop(workers)
    journey_id, version = db.execute("SELECT id, version FROM journeys").fetchone()
    contacts = [row[0] for row in db.execute("SELECT id FROM contacts")]
    processes.publish(
        "tile.email",
        "email_tile",
        [
            {
                "journey_id": journey_id,
                "version": version,
                "tile": "send-hello",
                "contacts": contacts,
            }
        ],
    )
    processes.start_workers(processes=1, threads=2)
    wait_until(
        lambda: processes.queue_depth("tile.email") == 0, 30, what="redelivery consumed"
    )
    time.sleep(1)

    assert sorted(recipients(smtp_sink)) == ["c1@example.com", "c3@example.com"]
    assert step_counts(db, "send-hello") == {"sent": 2, "bounced": 1}
    failed = db.execute(
        "SELECT count(*) FROM steps WHERE tile = 'send-hello' AND state = 'failed'"
    ).fetchone()
    assert failed == (1,)
    attempts = db.execute(
        "SELECT state, attempts, smtp_code FROM sends WHERE address LIKE 'c2@%'"
    ).fetchone()
    assert attempts == ("rejected", 1, 550)


def test_temporary_failure_retried_with_backoff(db, processes, smtp_sink, tmp_path):
    answers = {"c3@example.com": ["451 4.3.0 try again later"]}
    smtp_sink.handler.choose_reply = lambda rcpt: (
        answers.get(rcpt, [None]).pop(0) if answers.get(rcpt) else None
    )
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(3)))
    _go_live(db, write_definitions(tmp_path))
    processes.start_workers(processes=1, threads=2)
    processes.start_coordinator()
    wait_until(lambda: _settled(db, 3), 60, what="three contacts processed")

    assert Counter(recipients(smtp_sink)) == {
        "c1@example.com": 1,
        "c2@example.com": 1,
        "c3@example.com": 1,
    }
    row = db.execute(
        "SELECT state, attempts FROM sends WHERE address = 'c3@example.com'"
    ).fetchone()
    assert row == ("accepted", 2)


@pytest.mark.slow
def test_worker_killed_mid_run_sends_each_email_once(
    db, processes, smtp_sink, tmp_path
):
    """SIGKILL the worker processes twice while they send, restart them, and
    check that no address got two emails and every contact is accounted for."""
    total = 3000
    processes.env["JOURNEYS_OUTBOX_RETRY_SECONDS"] = "3"
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(total)))
    _go_live(db, write_definitions(tmp_path))
    workers = processes.start_workers(processes=2, threads=4)
    processes.start_coordinator()

    kills = 0
    for threshold in (total // 5, total // 2):
        wait_until(
            lambda t=threshold: len(smtp_sink.handler.messages) >= t,
            120,
            what=f"{threshold} emails",
        )
        time.sleep(random.uniform(0, 0.5))
        processes.kill(workers)
        kills += 1
        workers = processes.start_workers(processes=2, threads=4)
    wait_until(
        lambda: _settled(db, total), 240, what="every contact processed", interval=1
    )

    got = Counter(recipients(smtp_sink))
    counts = step_counts(db, "send-hello")
    assert max(got.values()) == 1
    assert counts.get("sent", 0) + counts.get("unconfirmed", 0) == total
    sent = {
        row[0]
        for row in db.execute("SELECT address FROM sends WHERE state = 'accepted'")
    }
    assert sent <= set(got)
    print(
        f"\nkills={kills} sent={counts.get('sent', 0)} unconfirmed={counts.get('unconfirmed', 0)} "
        f"received={len(got)}"
    )


def test_headers_carry_one_click_unsubscribe(db, processes, smtp_sink, tmp_path):
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(3)))
    _go_live(db, write_definitions(tmp_path))
    processes.start_workers(processes=1, threads=2)
    processes.start_coordinator()
    wait_until(lambda: len(smtp_sink.handler.messages) == 3, 60, what="three emails")

    sends = {
        address: (send_id, contact)
        for send_id, contact, address in db.execute(
            "SELECT id, contact, address FROM sends"
        )
    }
    tokens = set()
    for message in smtp_sink.handler.parsed():
        header = str(message["List-Unsubscribe"])
        match = re.fullmatch(
            r"<(https://prefs\.example\.com/unsubscribe\?token=([\w-]+))>, <mailto:[^>]+>",
            header,
        )
        assert match, header
        claims = verify(b"test-secret-key", match.group(2))
        assert claims.purpose == "unsubscribe"
        assert claims.send_id == sends[message["To"].addresses[0].addr_spec][0]
        assert str(message["List-Unsubscribe-Post"]) == "List-Unsubscribe=One-Click"
        assert message["Message-ID"]
        assert message.get_body(("plain",)) is not None
        assert message.get_body(("html",)) is not None
        tokens.add(match.group(2))
    assert len(tokens) == 3


def test_markup_in_names_cannot_inject_html_or_headers(
    db, processes, smtp_sink, tmp_path
):
    hostile = [
        {
            "contact_id": "x1",
            "email": "x1@example.com",
            "firstname": "<script>alert(1)</script>",
        },
        {
            "contact_id": "x2",
            "email": "x2@example.com",
            "firstname": "Eve\r\nBcc: victim@example.com",
        },
    ]
    import_contacts(db, write_contacts(tmp_path / "c.csv", hostile))
    _go_live(db, write_definitions(tmp_path))
    processes.start_workers(processes=1, threads=2)
    processes.start_coordinator()
    wait_until(lambda: len(smtp_sink.handler.messages) == 2, 60, what="two emails")

    for message in smtp_sink.handler.parsed():
        html = message.get_body(("html",)).get_content()
        assert "<script>" not in html
        assert "Bcc" not in message
        assert "\n" not in str(message["Subject"])
    for raw in smtp_sink.handler.messages:
        headers = raw.split(b"\r\n\r\n", 1)[0]
        assert b"\nBcc:" not in headers


def test_withdrawn_email_fails_contacts_without_sending(
    db, processes, smtp_sink, tmp_path
):
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(4)))
    _go_live(db, write_definitions(tmp_path))
    withdraw = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "withdraw", "email", "hello"],
        env=processes.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert withdraw.returncode == 0, withdraw.stderr
    processes.start_workers(processes=1, threads=2)
    processes.start_coordinator()
    wait_until(lambda: _settled(db, 4), 60, what="four contacts processed")

    assert smtp_sink.handler.messages == []
    rows = db.execute(
        "SELECT state, reason FROM steps WHERE tile = 'send-hello'"
    ).fetchall()
    assert rows == [("failed", "email 'hello' is not published")] * 4


@pytest.mark.parametrize("connections", [1, 2])
def test_interrupted_send_recorded_unconfirmed_not_resent(
    db, processes, smtp_sink, tmp_path, connections
):
    """The server accepts the message but the worker dies before it records
    that: the send must be marked unconfirmed, never sent again.

    With one SMTP connection per thread, the second contact's email had not
    gone out and is sent after the restart. With two, it went out on the
    other connection at the same time, so its reply was lost too: both are
    unconfirmed, and each arrived once."""
    accepted = threading.Event()

    def stall_after_accepting(rcpt: str) -> None:
        if rcpt.startswith("c1@") and not accepted.is_set():
            accepted.set()
            time.sleep(3)  # the worker is killed while it waits for this reply

    smtp_sink.handler.on_accepted = stall_after_accepting
    processes.env["JOURNEYS_SMTP_CONNECTIONS_PER_THREAD"] = str(connections)
    import_contacts(db, write_contacts(tmp_path / "c.csv", simple_contacts(2)))
    _go_live(db, write_definitions(tmp_path))
    workers = processes.start_workers(processes=1, threads=1)
    processes.start_coordinator()
    wait_until(accepted.is_set, 60, what="the first DATA")
    processes.kill(workers, signal.SIGKILL)
    processes.start_workers(processes=1, threads=1)
    wait_until(lambda: _settled(db, 2), 60, what="both contacts processed")
    # The sink reads the second connection's email once its stall is over.
    wait_until(lambda: "c2@example.com" in recipients(smtp_sink), 30, what="c2's email")
    time.sleep(1)

    assert recipients(smtp_sink).count("c1@example.com") == 1
    assert recipients(smtp_sink).count("c2@example.com") == 1
    assert db.execute(
        "SELECT state FROM sends WHERE address = 'c1@example.com'"
    ).fetchone() == ("unconfirmed",)
    if connections == 1:
        assert step_counts(db, "send-hello") == {"unconfirmed": 1, "sent": 1}
    else:
        assert step_counts(db, "send-hello") == {"unconfirmed": 2}
