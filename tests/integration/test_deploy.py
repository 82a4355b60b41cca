"""Checks of docker-compose.yml, the Prometheus configuration and the Grafana
dashboard under deploy/.

No docker engine runs on the development machines, so the compose file is
checked by parsing it. The dashboard's metric names are checked against the
/metrics of the worker, coordinator and tracking service of a live journey.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import typer
import yaml
from prometheus_client.parser import text_string_to_metric_families

from services.cli.main import app
from shared.config import Settings
from shared.contacts import import_contacts
from shared.golive import go_live_paths
from tests.support import (
    ROOT,
    free_port,
    simple_contacts,
    wait_until,
    write_contacts,
    write_definitions,
)

pytestmark = pytest.mark.integration

COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "journeys.json"
JOURNEYS_DOCKERFILE = "deploy/Dockerfile"
DEPENDENCY_CONDITIONS = {
    "service_started",
    "service_healthy",
    "service_completed_successfully",
}

# Compose interpolation: $$ is a literal $, ${NAME}, ${NAME:-default},
# ${NAME-default}, ${NAME:?error}, ${NAME?error} and $NAME read a variable.
_VARIABLE = re.compile(
    r"\$\$"
    r"|\$\{(?P<braced>[A-Za-z_]\w*)(?:(?P<operator>:?[-?])(?P<argument>[^}]*))?\}"
    r"|\$(?P<plain>[A-Za-z_]\w*)"
)

# Words that PromQL reserves, and the aggregation operators, which may stand
# before a space once a `by (...)` clause is removed.
PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
}
_PROMQL_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_PROMQL_MATCHERS = re.compile(r"\{[^}]*\}")
_PROMQL_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
)
# An identifier followed by `{`, `[`, `)`, whitespace or the end, so not a
# function, which is followed by `(`. It must not follow a word character, `:`,
# `.` or `$`, which rules out durations such as 5m, numbers and Grafana variables.
_PROMQL_NAME = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?=[\s{\[)]|$)")
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][\w:]*)\s*,")
_PROMQL_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\{([^}]*)\}")
# label="value" with a fixed value: neither !=, =~ nor !~, and no Grafana variable.
_PROMQL_EQUALITY = re.compile(r'([A-Za-z_]\w*)\s*=(?!~)\s*"([^"$]*)"')
_PROMQL_GROUPING_LABELS = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")

# `up` is written by Prometheus for each target; no service exports it.
PROMETHEUS_GENERATED = {"up"}

EMAILS = {"first": "live", "yes-mail": "live", "no-mail": "live"}
# Email, a short wait, then a data condition with an email on each branch, so
# that timers and branch counts appear next to the email results.
LIVE_TILES = [
    {"id": "email-1", "type": "email", "email": "first"},
    {"id": "wait-2s", "type": "wait", "duration": "2s"},
    {
        "id": "is-first",
        "type": "condition",
        "if": {"field": "firstname", "op": "eq", "value": "Name1"},
        "yes": [{"id": "email-yes", "type": "email", "email": "yes-mail"}],
        "no": [{"id": "email-no", "type": "email", "email": "no-mail"}],
    },
]


# Helpers: compose file ----------------------------------------------------


def _env_example() -> dict[str, str]:
    """Map each variable of .env.example to the comment line above it, or to ""."""
    comments: dict[str, str] = {}
    previous = ""
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and "=" in stripped:
            name = stripped.split("=", 1)[0].strip()
            comments[name] = previous if previous.startswith("#") else ""
        previous = stripped
    return comments


def _env_example_values() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#") and "=" in stripped:
            name, value = stripped.split("=", 1)
            values[name.strip()] = value.strip()
    return values


def _strings(node: Any) -> Iterator[str]:
    """Yield every string key and value of a parsed YAML document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _interpolate(node: Any, values: dict[str, str]) -> Any:
    """Substitute variables the way `docker compose` does, from `values`."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("plain")
        operator = match.group("operator") or ""
        value = values.get(name)
        unset = value is None or (operator.startswith(":") and value == "")
        if operator.endswith("?") and unset:
            raise ValueError(f"required variable {name} is not set: {match.group(0)}")
        if operator.endswith("-") and unset:
            return match.group("argument")
        return value or ""

    if isinstance(node, str):
        return _VARIABLE.sub(substitute, node)
    if isinstance(node, dict):
        return {key: _interpolate(value, values) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate(item, values) for item in node]
    return node


def _raw_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def _compose() -> dict[str, Any]:
    """The compose file as `docker compose` would see it with .env.example as .env."""
    return _interpolate(_raw_compose(), _env_example_values())


def _journeys_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the journeys image built from deploy/Dockerfile."""
    return {
        name: service
        for name, service in compose["services"].items()
        if isinstance(service.get("build"), dict)
        and service["build"].get("dockerfile") == JOURNEYS_DOCKERFILE
    }


def _cli_commands() -> set[str]:
    """Return the names of the `journeys` commands, with 'group command' for
    subcommands such as 'contacts import'."""
    # Typer 0.29 ships its own copy of click, so the groups are recognised by
    # their `commands` mapping rather than by click.Group.
    root = typer.main.get_command(app)
    names = set()
    for name, command in root.commands.items():
        subcommands = getattr(command, "commands", None)
        if subcommands:
            names.update(f"{name} {sub}" for sub in subcommands)
        else:
            names.add(name)
    assert "worker" in names, f"unexpected command names {names}"
    return names


def _bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (source, target) of each bind mount of a service."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"]))
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


def _container_ports(service: dict[str, Any]) -> set[int]:
    """Return the container ports a service exposes or publishes."""
    ports = {int(str(port).split("/")[0]) for port in service.get("expose", [])}
    for mapping in service.get("ports", []):
        ports.add(int(str(mapping).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def _service_setting(service: dict[str, Any], variable: str, field: str) -> int:
    """Return a port setting of a journeys service: its compose environment
    value, else the default in shared.config.Settings."""
    environment = service.get("environment", {})
    if variable in environment:
        return int(environment[variable])
    return int(Settings.model_fields[field].default)


def _prometheus_targets() -> dict[str, set[tuple[str, int]]]:
    """Return (host, port) of each scrape target, by job name."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    targets: dict[str, set[tuple[str, int]]] = {}
    for job in config["scrape_configs"]:
        found = targets.setdefault(job["job_name"], set())
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, port = target.rsplit(":", 1)
                found.add((host, int(port)))
        for dns in job.get("dns_sd_configs", []):
            found.update((name, int(dns["port"])) for name in dns["names"])
    return targets


# Helpers: dashboard -------------------------------------------------------


def promql_metric_names(expression: str) -> set[str]:
    """Return the metric names that a PromQL expression reads."""
    text = _PROMQL_STRING.sub('""', expression)
    text = _PROMQL_MATCHERS.sub("{}", text)
    text = _PROMQL_GROUPING.sub(" ", text)
    return {
        name for name in _PROMQL_NAME.findall(text) if name.lower() not in PROMQL_WORDS
    }


def promql_label_checks(
    expression: str,
) -> list[tuple[frozenset[str], str, str | None]]:
    """Return (metrics, label, value) for each label that a PromQL expression
    relies on: a fixed `label="value"` matcher on its metric, or a label of a
    `by` or `without` clause, with value None, on any metric of the expression."""
    checks: list[tuple[frozenset[str], str, str | None]] = []
    for metric, matchers in _PROMQL_SELECTOR.findall(expression):
        for label, value in _PROMQL_EQUALITY.findall(matchers):
            checks.append((frozenset({metric}), label, value))
    metrics = frozenset(promql_metric_names(expression))
    for labels in _PROMQL_GROUPING_LABELS.findall(expression):
        for label in labels.split(","):
            checks.append((metrics, label.strip(), None))
    return checks


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def dashboard_metric_names() -> dict[str, set[str]]:
    """Return each metric name that the dashboard queries, with the titles of
    the panels (or variables) that query it."""
    names: dict[str, set[str]] = {}
    for title, expression in dashboard_expressions():
        for name in promql_metric_names(expression):
            names.setdefault(name, set()).add(title)
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query", "")
        if isinstance(query, dict):
            query = query.get("query", "")
        for name in _LABEL_VALUES.findall(query):
            names.setdefault(name, set()).add(f"variable ${variable['name']}")
    return names


def dashboard_expressions() -> list[tuple[str, str]]:
    """Return (panel title, PromQL expression) for every query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def _series_labels(exposition: str) -> dict[str, list[dict[str, str]]]:
    """Return the label sets of the samples in an exposition, by sample name."""
    series: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            series.setdefault(sample.name, []).append(sample.labels)
    return series


def _sample_names(exposition: str) -> set[str]:
    """Return the names of the samples in a Prometheus text exposition."""
    return {
        sample.name
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def _scrape(port: int, path: str = "/metrics") -> str:
    response = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    response.raise_for_status()
    return response.text


def _rabbitmq_prometheus_enabled() -> tuple[bool, str]:
    """Return whether this machine's RabbitMQ runs rabbitmq_prometheus, and the
    reason when it does not."""
    if shutil.which("rabbitmq-plugins") is None:
        return False, "rabbitmq-plugins is not installed"
    result = subprocess.run(
        ["rabbitmq-plugins", "list", "--enabled", "--minimal"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if result.returncode != 0:
        return False, f"`rabbitmq-plugins list` failed: {result.stderr.strip()}"
    if "rabbitmq_prometheus" not in result.stdout.split():
        return False, "rabbitmq_prometheus is not enabled on this machine's RabbitMQ"
    return True, ""


def _settled(db) -> bool:
    """Return whether the outbox is empty and no contact is in flight outside a
    timer."""
    row = db.execute(
        "SELECT (SELECT count(*) FROM outbox), (SELECT count(*) FROM steps s"
        " WHERE s.state = 'in_progress' AND NOT EXISTS (SELECT 1 FROM timers t"
        " WHERE t.journey_id = s.journey_id AND t.tile = s.tile"
        " AND t.contact = s.contact))"
    ).fetchone()
    return row == (0, 0)


# The compose file and the Prometheus configuration ------------------------


def test_compose_variables_in_env_example():
    documented = _env_example()
    used = {
        match.group("braced") or match.group("plain")
        for text in _strings(_raw_compose())
        for match in _VARIABLE.finditer(text)
        if match.group(0) != "$$"
    }
    assert used, "found no ${...} variables in docker-compose.yml"
    missing = sorted(used - documented.keys())
    assert not missing, (
        f"variables of docker-compose.yml missing in .env.example: {missing}"
    )
    uncommented = sorted(name for name in used if not documented[name])
    assert not uncommented, (
        f"variables in .env.example without a comment line above: {uncommented}"
    )


def test_compose_mounted_files_exist():
    compose = _compose()
    named_volumes = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for source, target in _bind_mounts(service):
            assert (ROOT / source).exists(), (
                f"{name} mounts {source} at {target}, which does not exist"
            )
        for volume in service.get("volumes", []):
            source = (
                volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            )
            if not source.startswith((".", "/")):
                assert source in named_volumes, (
                    f"{name} uses volume {source}, not declared under volumes:"
                )
        build = service.get("build")
        if isinstance(build, dict):
            context = ROOT / build.get("context", ".")
            assert context.is_dir(), f"{name} builds from missing folder {context}"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name} builds from missing {dockerfile}"


def test_compose_commands_are_cli_commands():
    commands = _cli_commands()
    services = _journeys_services(_compose())
    assert {"migrate", "worker", "coordinator", "tracking"} <= services.keys()
    for name, service in services.items():
        command = service.get("command")
        assert isinstance(command, list), f"{name}: command must be a list"
        assert command, f"{name}: command is empty"
        one_word, two_words = command[0], " ".join(command[:2])
        assert one_word in commands or two_words in commands, (
            f"{name}: {command[0]!r} is not a journeys command; "
            f"the CLI has {sorted(commands)}"
        )


def test_compose_dependencies_exist():
    services = _compose()["services"]
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        if isinstance(depends_on, list):
            depends_on = {dependency: {} for dependency in depends_on}
        for dependency, options in depends_on.items():
            assert dependency in services, (
                f"{name} depends on unknown service {dependency}"
            )
            condition = options.get("condition", "service_started")
            assert condition in DEPENDENCY_CONDITIONS, (
                f"{name}: invalid condition {condition}"
            )
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], (
                    f"{name} waits for {dependency} to be healthy, "
                    "which has no healthcheck"
                )


def test_compose_ports_bind_loopback():
    services = _compose()["services"]
    for name, service in services.items():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), (
                f"{name} publishes {mapping} beyond loopback"
            )
    # `--scale worker=N` fails when the replicas map one fixed host port.
    assert "ports" not in services["worker"]


def test_prometheus_targets_match_services():
    compose = _compose()
    services = compose["services"]
    listening = {
        "worker": _service_setting(
            services["worker"], "JOURNEYS_METRICS_PORT", "metrics_port"
        ),
        "coordinator": _service_setting(
            services["coordinator"],
            "JOURNEYS_COORDINATOR_METRICS_PORT",
            "coordinator_metrics_port",
        ),
        "tracking": _service_setting(
            services["tracking"], "JOURNEYS_TRACKING_PORT", "tracking_port"
        ),
        "rabbitmq": 15692,
    }
    assert listening == {
        "worker": 9191,
        "coordinator": 9192,
        "tracking": 8088,
        "rabbitmq": 15692,
    }

    jobs = _prometheus_targets()
    targets = set().union(*jobs.values())
    assert targets == set(listening.items())
    for host, port in targets:
        assert port in _container_ports(services[host]), (
            f"{host} does not expose port {port}"
        )
    # Each worker replica must be its own target, which static_configs cannot do.
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    worker_jobs = [
        job
        for job in config["scrape_configs"]
        if any("worker" in dns["names"] for dns in job.get("dns_sd_configs", []))
    ]
    assert len(worker_jobs) == 1
    assert [dns["type"] for dns in worker_jobs[0]["dns_sd_configs"]] == ["A"]


def test_grafana_provisioning_matches_compose():
    grafana = _compose()["services"]["grafana"]
    mounts = {target: ROOT / source for source, target in _bind_mounts(grafana)}

    provisioning = mounts["/etc/grafana/provisioning"]
    datasources = yaml.safe_load(
        (provisioning / "datasources" / "prometheus.yaml").read_text()
    )
    [datasource] = datasources["datasources"]
    assert datasource["uid"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    providers = yaml.safe_load(
        (provisioning / "dashboards" / "journeys.yaml").read_text()
    )
    [provider] = providers["providers"]
    dashboards_path = provider["options"]["path"]
    assert (mounts[dashboards_path] / DASHBOARD.name).samefile(DASHBOARD)
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{dashboards_path}/{DASHBOARD.name}"
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"

    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in _panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "prometheus", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "prometheus", panel["title"]
    [variable] = dashboard["templating"]["list"]
    assert variable["name"] == "journey"
    assert variable["query"] == "label_values(journeys_journey_info, journey)"


def test_compose_config_accepted_by_docker():
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip(
            "docker is not installed, so `docker compose config` cannot check the file"
        )
    version = subprocess.run(
        [docker, "compose", "version"], capture_output=True, text=True, timeout=60
    )
    if version.returncode != 0:
        output = (version.stderr or version.stdout).strip().splitlines()
        pytest.skip(
            "docker has no compose plugin, so `docker compose config` cannot check the "
            f"file: {output[0] if output else 'no output'}"
        )
    result = subprocess.run(
        [
            docker,
            "compose",
            "--env-file",
            str(ENV_EXAMPLE),
            "--profile",
            "dev",
            "config",
            "-q",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


# The dashboard's metrics against a live journey ---------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (
            'max by (tile, type) (journeys_tile_entered_total{journey="$journey"})',
            {"journeys_tile_entered_total"},
        ),
        (
            "histogram_quantile(0.95, sum by (actor_name, le) (rate(x_bucket[5m])))",
            {"x_bucket"},
        ),
        ("time() - max(last_tick)", {"last_tick"}),
        ('count(up{job=~"a|b"} == 0) or vector(0)', {"up"}),
        ("a / on (tile) group_left (type) (b > 0)", {"a", "b"}),
        ('sum(c{queue=~".+[.]XQ"}) offset 5m', {"c"}),
        ("sum(rate(d[5m])) by (queue)", {"d"}),
    ],
)
def test_promql_metric_names(expression, expected):
    assert promql_metric_names(expression) == expected


def test_promql_label_checks():
    expression = (
        'sum by (tile, le) (rate(a_bucket{journey="$journey", state="failed",'
        ' queue=~"x|y", route!="open"}[5m])) / b'
    )
    assert promql_label_checks(expression) == [
        (frozenset({"a_bucket"}), "state", "failed"),
        (frozenset({"a_bucket", "b"}), "tile", None),
        (frozenset({"a_bucket", "b"}), "le", None),
    ]


def test_dashboard_metrics_exported_by_live_journey(db, processes, smtp_sink, tmp_path):
    """Run a journey with an email, a wait and a condition, one SMTP 4xx reply,
    one early leaver, one open and one broken interaction event, so that every
    series of the dashboard has samples. Then look for each name in the scrapes."""
    contacts = [{**row, "unsubscribed": "false"} for row in simple_contacts(4)]
    contacts[3]["unsubscribed"] = "true"
    import_contacts(db, write_contacts(tmp_path / "contacts.csv", contacts))
    deferred = ["451 4.3.0 try again later"]
    smtp_sink.handler.choose_reply = lambda recipient: (
        deferred.pop() if recipient == "c2@example.com" and deferred else None
    )
    path = write_definitions(tmp_path, emails=EMAILS, tiles=LIVE_TILES)
    outcome = go_live_paths(db, [path], datetime.now(UTC))
    assert not outcome.errors, [str(problem) for problem in outcome.errors]

    workers = processes.start_workers(processes=1, threads=2)
    coordinator = processes.start_coordinator()
    processes.start_tracking()
    wait_until(lambda: len(smtp_sink.handler.messages) == 6, 60, what="six emails")
    wait_until(lambda: _settled(db), 30, what="every contact settled")

    first_email = next(
        message
        for message in smtp_sink.handler.parsed()
        if message["To"].addresses[0].addr_spec == "c1@example.com"
    )
    html = first_email.get_body(("html",)).get_content()
    pixel = re.search(r'<img src="([^"]+/o/[\w-]+)"', html)
    assert pixel, html
    assert httpx.get(pixel.group(1), timeout=10).status_code == 200
    # An interaction event that fails validation is dead-lettered without
    # retries, which counts a Dramatiq reject and a rejected queue message.
    processes.publish("events.interactions", "interaction_event", [{"kind": "x"}])
    worker_port = processes.metrics_ports[workers.pid]
    wait_until(
        lambda: (
            "journeys_queue_messages_rejected_total"
            in _sample_names(_scrape(worker_port))
        ),
        30,
        what="the broken event's rejection",
    )

    scrapes = {
        "worker": _scrape(worker_port),
        "coordinator": _scrape(processes.metrics_ports[coordinator.pid]),
        "tracking": _scrape(int(processes.env["JOURNEYS_TRACKING_PORT"])),
    }
    rabbitmq_enabled, rabbitmq_reason = _rabbitmq_prometheus_enabled()
    if rabbitmq_enabled:
        # NOTE: never run, because rabbitmq_prometheus is not enabled on the
        # development machines.
        scrapes["rabbitmq"] = _scrape(15692) + _scrape(15692, "/metrics/per-object")
    exported = set().union(*(_sample_names(text) for text in scrapes.values()))

    dashboard_names = dashboard_metric_names()
    skipped = set(PROMETHEUS_GENERATED)
    if not rabbitmq_enabled:
        skipped |= {name for name in dashboard_names if name.startswith("rabbitmq_")}
    missing = {
        name: sorted(panels)
        for name, panels in dashboard_names.items()
        if name not in skipped and name not in exported
    }
    assert not missing, (
        f"dashboard metrics without samples in the {sorted(scrapes)} scrapes: "
        f"{missing}. "
        f"Not looked for: {sorted(skipped)}; rabbitmq_* are skipped when RabbitMQ's "
        f"plugin is not scraped ({rabbitmq_reason or 'it was scraped'}), "
        "and up comes from Prometheus."
    )

    # A wrong label or label value leaves a panel empty as surely as a wrong name.
    series: dict[str, list[dict[str, str]]] = {}
    for text in scrapes.values():
        for name, label_sets in _series_labels(text).items():
            series.setdefault(name, []).extend(label_sets)
    unmatched = []
    for title, expression in dashboard_expressions():
        for metrics, label, value in promql_label_checks(expression):
            if metrics & skipped:
                continue
            found = any(
                label in labels and value in (None, labels[label])
                for metric in metrics
                for labels in series.get(metric, [])
            )
            if not found:
                expected = label if value is None else f'{label}="{value}"'
                unmatched.append(f"{title}: {expected} on {sorted(metrics)}")
    assert not unmatched, f"dashboard labels that no scraped sample has: {unmatched}"
    assert len(dashboard_names) > len(skipped), (
        f"found too few metric names in {DASHBOARD}"
    )


def test_tracking_healthcheck_command(db, processes):
    """Run the tracking service's compose healthcheck on this machine, with
    this test's port, against the live service and against a closed port."""
    check = _compose()["services"]["tracking"]["healthcheck"]["test"]
    assert check[:2] == ["CMD", "python"]
    processes.start_tracking()
    port = processes.env["JOURNEYS_TRACKING_PORT"]

    def run_check(target_port: str) -> subprocess.CompletedProcess[str]:
        script = check[3].replace("127.0.0.1:8088", f"127.0.0.1:{target_port}")
        assert script != check[3], "the healthcheck no longer names 127.0.0.1:8088"
        return subprocess.run(
            [sys.executable, check[2], script],
            capture_output=True,
            text=True,
            timeout=30,
        )

    healthy = run_check(port)
    assert healthy.returncode == 0, healthy.stderr
    closed = run_check(str(free_port()))
    assert closed.returncode != 0
