"""End-to-end benchmark of the journey engine against raw baselines measured
in the same run on the same machine.

E: contacts per second from go-live to the last email accepted by an SMTP
   sink and committed as sent, with workers and the coordinator as separate
   processes on RabbitMQ (durable queues, persistent messages, publisher
   confirms, acknowledgement after processing) and PostgreSQL (fsync as the
   server is configured).
S: the same emails, pre-rendered, sent by plain smtplib over as many
   persistent connections as the workers keep open: the SMTP ceiling.
P: the same, sent by the engine's SMTP client alone, which pipelines MAIL,
   RCPT and DATA where the server offers it, as the sink does.
R: S with one PostgreSQL commit per email that records the reply to the
   email before and a 'sending' row for this one: what the commit that the
   engine needs before each email costs plain smtplib on this machine.
B: plain pika publish and consume of as many persistent messages with
   publisher confirms: the broker's ceiling.

Run: python bench/run.py --contacts 20000 --json bench/results/latest.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from common import ROOT, processes, scratch_database, scratch_vhost  # type: ignore[import-not-found]

sys.path.insert(0, str(ROOT))

from baselines import broker_ceiling, smtp_ceiling  # type: ignore[import-not-found]
from sink import read_messages  # type: ignore[import-not-found]

from shared.contacts import import_contacts
from shared.golive import go_live_paths
from tests.support import (
    free_port,
    rss_peak_mb,
    simple_contacts,
    tree_pids,
    wait_until,
    write_contacts,
    write_definitions,
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0].replace("\n", " ")
    )
    parser.add_argument(
        "--contacts",
        type=int,
        default=20_000,
        help="contacts to send to, and emails and messages for the baselines",
    )
    parser.add_argument("--processes", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--threads", type=int, default=4, help="threads per worker process"
    )
    parser.add_argument(
        "--connections-per-thread",
        type=int,
        default=4,
        help="SMTP connections that each worker thread keeps open",
    )
    parser.add_argument(
        "--engine-only",
        action="store_true",
        help="measure E, latency, CPU and memory only; for the large memory runs",
    )
    parser.add_argument("--json", type=Path, help="file to write the results to")
    parser.add_argument(
        "--markdown", type=Path, help="file to write a Markdown table to"
    )
    args = parser.parse_args()

    connections = args.processes * args.threads * args.connections_per_thread
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        print(f"E: {args.contacts} contacts through the engine ...", flush=True)
        # The baselines send the very emails that the engine's sink got.
        messages_file = None if args.engine_only else work / "engine-messages"
        engine = measure_engine(
            work,
            args.contacts,
            args.processes,
            args.threads,
            args.connections_per_thread,
            messages_file,
        )
        smtp = pipelined = record = broker = None
        if messages_file is not None:
            sent = read_messages(messages_file)
            if len(sent) != args.contacts:
                raise RuntimeError(
                    f"the engine's sink kept {len(sent)} emails, "
                    f"expected {args.contacts}"
                )
            print(
                f"S: {args.contacts} pre-rendered emails "
                f"over {connections} connections ...",
                flush=True,
            )
            smtp = smtp_ceiling(work, sent, connections, start_sink)
            print(f"P: {args.contacts} pre-rendered emails, pipelined ...", flush=True)
            pipelined = smtp_ceiling(
                work, sent, connections, start_sink, pipelined=True
            )
            print(
                f"R: {args.contacts} pre-rendered emails, one commit each ...",
                flush=True,
            )
            with scratch_database() as record_url:
                record = smtp_ceiling(work, sent, connections, start_sink, record_url)
            print(
                f"B: {args.contacts} persistent messages with confirms ...", flush=True
            )
            with scratch_vhost() as broker_url:
                broker = broker_ceiling(broker_url, args.contacts)

    results = summarise(args, engine, smtp, pipelined, record, broker)
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(markdown(results))


def start_sink(
    folder: Path, name: str, messages_file: Path | None = None
) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    out = folder / f"{name}-recipients.txt"
    out.touch()
    command = [
        sys.executable,
        str(Path(__file__).with_name("sink.py")),
        "--port",
        str(port),
        "--out",
        str(out),
    ]
    if messages_file is not None:
        command += ["--keep", str(messages_file)]
    sink = subprocess.Popen(command)
    wait_until(lambda: _listening(port), 30, what="the SMTP sink")
    return sink, port, out


def _listening(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def measure_engine(
    folder: Path,
    count: int,
    workers: int,
    threads: int,
    connections_per_thread: int,
    messages_file: Path | None,
) -> dict[str, Any]:
    sink, port, out = start_sink(folder, "engine", messages_file)
    try:
        with scratch_database() as url, scratch_vhost() as broker_url:
            group = processes(
                {
                    "JOURNEYS_DATABASE_URL": url,
                    "JOURNEYS_BROKER_URL": broker_url,
                    "JOURNEYS_SMTP_URL": f"smtp://127.0.0.1:{port}",
                    "JOURNEYS_TICK_SECONDS": "0.2",
                    "JOURNEYS_DB_POOL_SIZE": str(threads + 2),
                    "JOURNEYS_SMTP_CONNECTIONS_PER_THREAD": str(connections_per_thread),
                },
                folder / "logs",
            )
            try:
                return _run_engine(folder, url, group, out, count, workers, threads)
            finally:
                group.stop_all()
    finally:
        sink.terminate()
        sink.wait(timeout=30)


def _run_engine(folder, url, group, out, count, workers, threads) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    with psycopg.connect(url, autocommit=True) as conn:
        import_contacts(
            conn, write_contacts(folder / "contacts.csv", simple_contacts(count))
        )
        worker = group.start_workers(processes=workers, threads=threads)
        coordinator = group.start_coordinator()
        time.sleep(
            3
        )  # let both connect and declare their queues before the clock starts
        started = time.monotonic()
        outcome = go_live_paths(conn, [write_definitions(folder / "defs")], _now())
        assert not outcome.errors, [str(p) for p in outcome.errors]
        # Poll the sink's file, which costs the database nothing, and confirm
        # in the database once the sink has every email.
        received = _LineCounter(out)
        progress = _Progress(count, started)
        wait_until(
            lambda: progress.show(received.count()) >= count and _all_sent(conn, count),
            3600,
            interval=0.2,
            what="every email sent",
        )
        elapsed = time.monotonic() - started
        cpu = sum(
            _cpu_seconds(pid) for pid in [*tree_pids(worker.pid), coordinator.pid]
        )
        memory = {"coordinator": round(rss_peak_mb(coordinator.pid), 1)}
        memory.update(_worker_memory(worker.pid, workers))
        latencies = [float(row[0]) for row in conn.execute(_LATENCY)]
    time.sleep(1)
    received = _lines(out)
    return {
        "seconds": elapsed,
        "per_second": count / elapsed,
        "latencies": sorted(latencies),
        "cpu_seconds": cpu,
        "memory": memory,
        "received": received,
    }


_LATENCY = """
SELECT extract(epoch FROM s.finished_at - a.entered_at) FROM sends s
JOIN steps a ON a.journey_id = s.journey_id AND a.tile = 'audience'
    AND a.contact = s.contact
WHERE s.state = 'accepted'
"""


def _worker_memory(parent: int, workers: int) -> dict[str, float]:
    """Peak RSS of Dramatiq's parent process, its worker processes and its
    metrics exporter. Dramatiq starts the worker processes before the
    exporter, so they have the lower process ids."""
    children = sorted(pid for pid in tree_pids(parent) if pid != parent)
    memory = {"dramatiq-parent": round(rss_peak_mb(parent), 1)}
    for index, pid in enumerate(children):
        role = f"worker-{index + 1}" if index < workers else "metrics-exporter"
        memory[role] = round(rss_peak_mb(pid), 1)
    return memory


def _now():  # type: ignore[no-untyped-def]
    from shared import clock

    return clock.now()


class _Progress:
    """Prints how many emails the sink has received, every ten seconds."""

    def __init__(self, total: int, started: float) -> None:
        self.total = total
        self.started = started
        self.last_shown = started

    def show(self, received: int) -> int:
        now = time.monotonic()
        if now - self.last_shown >= 10:
            self.last_shown = now
            elapsed = now - self.started
            print(
                f"  {received:,} of {self.total:,} emails received after"
                f" {elapsed:.0f} s, {received / elapsed:.0f}/s",
                flush=True,
            )
        return received


class _LineCounter:
    """Counts the lines of a growing file, reading only what was added."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.lines = 0

    def count(self) -> int:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            added = handle.read()
        self.offset += len(added)
        self.lines += added.count(b"\n")
        return self.lines


def _all_sent(conn: psycopg.Connection, count: int) -> bool:
    row = conn.execute("SELECT count(*) FROM sends WHERE state = 'accepted'").fetchone()
    return bool(row and row[0] >= count)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def summarise(args, engine, smtp, pipelined, record, broker) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    count = args.contacts
    expected = {f"c{n}@example.com" for n in range(1, count + 1)}
    received = engine["received"]
    latencies = engine["latencies"]
    return {
        "contacts": count,
        "worker_processes": args.processes,
        "threads_per_process": args.threads,
        "smtp_connections": args.processes * args.threads * args.connections_per_thread,
        "e_per_s": round(engine["per_second"], 1),
        "s_per_s": _rounded(smtp, 1),
        "p_per_s": _rounded(pipelined, 1),
        "r_per_s": _rounded(record, 1),
        "b_per_s": _rounded(broker, 1),
        "e_over_s": _rounded(smtp and engine["per_second"] / smtp, 3),
        "e_over_p": _rounded(pipelined and engine["per_second"] / pipelined, 3),
        "r_over_s": _rounded(smtp and record and record / smtp, 3),
        "e_over_r": _rounded(record and engine["per_second"] / record, 3),
        "e_over_b": _rounded(broker and engine["per_second"] / broker, 3),
        "duplicates": len(received) - len(set(received)),
        "missing": len(expected - set(received)),
        "latency_p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "latency_p99_s": round(latencies[int(len(latencies) * 0.99) - 1], 3)
        if latencies
        else None,
        "cpu_seconds_per_1000": round(engine["cpu_seconds"] / count * 1000, 2),
        "peak_rss_mb": engine["memory"],
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, "
            f"Python {platform.python_version()}"
        ),
    }


def _rounded(value: float | None, digits: int) -> float | None:
    """Round a baseline figure, or return None when the run skipped it."""
    return None if value is None else round(value, digits)


def markdown(results: dict[str, Any]) -> str:
    rows = [
        ("contacts", results["contacts"]),
        ("E: engine, contacts/s", results["e_per_s"]),
        ("S: plain smtplib, emails/s", results["s_per_s"]),
        ("P: the engine's pipelining SMTP client alone, emails/s", results["p_per_s"]),
        ("R: smtplib with one commit per email, emails/s", results["r_per_s"]),
        ("B: plain pika, messages/s", results["b_per_s"]),
        ("E/S", results["e_over_s"]),
        ("E/P", results["e_over_p"]),
        ("R/S", results["r_over_s"]),
        ("E/R", results["e_over_r"]),
        ("E/B", results["e_over_b"]),
        (
            "latency p50 / p99, s",
            f"{results['latency_p50_s']} / {results['latency_p99_s']}",
        ),
        ("CPU seconds per 1,000 contacts", results["cpu_seconds_per_1000"]),
        ("duplicates / missing", f"{results['duplicates']} / {results['missing']}"),
        (
            "peak RSS, MB",
            ", ".join(f"{k} {v}" for k, v in results["peak_rss_mb"].items()),
        ),
        ("machine", results["machine"]),
    ]
    return "| measure | value |\n|---|---|\n" + "".join(
        f"| {k} | {'not measured' if v is None else v} |\n" for k, v in rows
    )


if __name__ == "__main__":
    main()
