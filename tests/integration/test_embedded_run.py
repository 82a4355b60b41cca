"""The README's first command: the welcome example run on the embedded
default, with its own PostgreSQL, the in-process broker and a loopback SMTP
sink writing .eml files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _run(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key != "XDG_RUNTIME_DIR" and not key.startswith("JOURNEYS_")
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "services.cli.main",
            "run",
            "examples/welcome",
            "--contacts",
            "examples/contacts.csv",
            "--outbox",
            str(tmp_path / "outbox"),
            "--data",
            str(tmp_path / "pgdata"),
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_welcome_example_emails_each_customer_once(tmp_path):
    """2,407 customers enter and 147 are blocked (unsubscribed, invalid or
    shared addresses), so 2,260 emails land; a second run sends none."""
    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stderr == ""
    assert "2260 emails accepted by the SMTP sink this run" in first.stdout
    emails = sorted((tmp_path / "outbox").glob("*.eml"))
    assert len(emails) == 2260

    second = _run(tmp_path)
    assert second.returncode == 0, second.stderr
    assert "0 emails accepted by the SMTP sink this run" in second.stdout
    assert len(list((tmp_path / "outbox").glob("*.eml"))) == 2260
