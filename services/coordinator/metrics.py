"""Per-tile counts read from PostgreSQL at scrape time, exported by the
coordinator, so that /metrics shows exactly what `journeys status` shows."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import psycopg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from services.coordinator.loop import state
from shared import clock
from shared.db import custom_plans, get_pool
from shared.store import tile_counts

logger = logging.getLogger(__name__)

_LABELS = ["journey", "tile", "type"]


class JourneyCollector(Collector):
    def collect(self) -> Iterator:
        entered = CounterMetricFamily(
            "journeys_tile_entered", "Contacts that reached the tile.", labels=_LABELS
        )
        contacts = GaugeMetricFamily(
            "journeys_tile_contacts",
            "Contacts at the tile by state: in_progress, completed, stopped, failed.",
            labels=[*_LABELS, "state"],
        )
        emails = CounterMetricFamily(
            "journeys_email_results",
            "Email tile results: sent, blocked, bounced, unconfirmed.",
            labels=[*_LABELS, "result"],
        )
        journeys = GaugeMetricFamily(
            "journeys_journey_info",
            "1 for each journey, labelled by its status.",
            labels=["journey", "status"],
        )
        outbox = GaugeMetricFamily(
            "journeys_outbox_rows", "Outbox rows not yet published."
        )
        try:
            self._fill(entered, contacts, emails, journeys, outbox)
        except psycopg.Error as error:
            logger.warning("cannot read journey counts for /metrics: %s", error)
            return
        yield from (entered, contacts, emails, journeys, outbox)
        yield from self._timers()
        yield from self._insights()
        yield GaugeMetricFamily(
            "journeys_coordinator_last_tick_timestamp_seconds",
            "Unix time of the coordinator's last finished tick.",
            value=state.last_tick,
        )
        yield GaugeMetricFamily(
            "journeys_coordinator_scrape_timestamp_seconds",
            "Unix time of this scrape.",
            value=time.time(),
        )

    def _insights(self) -> Iterator:
        """Interactions and branch counts, the same numbers `journeys insights`
        shows."""
        from shared.insights import journey_insights

        interactions = CounterMetricFamily(
            "journeys_email_interactions",
            "Unique contacts per email tile and interaction: opened, clicked, "
            "unsubscribed, bounced_hard, bounced_soft, delivered.",
            labels=["journey", "tile", "interaction"],
        )
        branches = GaugeMetricFamily(
            "journeys_branch_contacts",
            "Contacts that took each branch of a condition or split tile.",
            labels=["journey", "tile", "branch"],
        )
        left = GaugeMetricFamily(
            "journeys_contacts_left",
            "Contacts that left a journey early, by reason.",
            labels=["journey", "reason"],
        )
        try:
            with get_pool().connection() as conn:
                for (journey_id,) in conn.execute(
                    "SELECT id FROM journeys ORDER BY id"
                ).fetchall():
                    data = journey_insights(conn, journey_id)
                    name = data["journey"]
                    for item in data["emails"]:
                        for key in ("delivered", "unsubscribed"):
                            interactions.add_metric([name, item["id"], key], item[key])
                        for key in ("opened", "clicked"):
                            interactions.add_metric(
                                [name, item["id"], key], item[key]["unique"]
                            )
                        for key in ("hard", "soft"):
                            interactions.add_metric(
                                [name, item["id"], f"bounced_{key}"],
                                item["bounced"][key],
                            )
                    for item in data["branches"]:
                        for branch, count in item["branches"].items():
                            branches.add_metric([name, item["id"], branch], count)
                    for reason, count in data["contacts"]["left_early"].items():
                        left.add_metric([name, reason], count)
        except psycopg.Error as error:
            logger.warning("cannot read journey insights for /metrics: %s", error)
            return
        yield from (interactions, branches, left)

    def _timers(self) -> Iterator:
        """Contacts held by wait and condition timers, and those already due
        that the coordinator has not released yet."""
        held = GaugeMetricFamily(
            "journeys_timers",
            "Contacts held by wait and condition timers.",
            labels=["kind"],
        )
        due = GaugeMetricFamily(
            "journeys_timers_due",
            "Timers whose due time has passed but that are not released yet.",
        )
        try:
            with get_pool().connection() as conn:
                for kind, count in conn.execute(
                    "SELECT kind, count(*) FROM timers GROUP BY kind"
                ):
                    held.add_metric([kind], count)
                with custom_plans(conn):
                    row = conn.execute(
                        "SELECT count(*) FROM timers WHERE due_at <= %s",
                        (clock.now(),),
                    ).fetchone()
                due.add_metric([], row[0] if row else 0)
        except psycopg.Error as error:
            logger.warning("cannot read timers for /metrics: %s", error)
            return
        yield from (held, due)

    def _fill(self, entered, contacts, emails, journeys, outbox) -> None:  # type: ignore[no-untyped-def]
        with get_pool().connection() as conn:
            for journey_id, name, status in conn.execute(
                "SELECT id, name, status FROM journeys ORDER BY id"
            ):
                journeys.add_metric([name, status], 1)
                for tile in tile_counts(conn, journey_id):
                    labels = [name, tile["id"], tile["type"]]
                    entered.add_metric(labels, tile["entered"])
                    for state_name in ("in_progress", "completed", "stopped", "failed"):
                        contacts.add_metric([*labels, state_name], tile[state_name])
                    for result in ("sent", "blocked", "bounced", "unconfirmed"):
                        if result in tile:
                            emails.add_metric([*labels, result], tile[result])
            row = conn.execute("SELECT count(*) FROM outbox").fetchone()
            outbox.add_metric([], row[0] if row else 0)
