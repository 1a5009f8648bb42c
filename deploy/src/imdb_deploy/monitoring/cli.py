"""The CLI of `python -m imdb_deploy.monitoring`: Prometheus' config, a local stack, deploy markers.

config [ENV ...] --out DIR [--interval 15s] [--pushgateway ADDR]
    DIR/prometheus.yml scraping the environments (default: every deploy/environments/*.toml;
    an ENV may also be a path to a .toml file), and DIR/alerts.yml, the rules it loads.
marker --env E --version V --result ok|failed|rolled_back --action deploy|rollback
       [--pushgateway URL] [--manifest PATH] [--timeout S] [--strict]
    Push the deploy marker (and, with --manifest, the model's training reference) to the
    Pushgateway (--pushgateway or MLOPS_PUSHGATEWAY_URL), and annotate Grafana when
    MLOPS_GRAFANA_URL and MLOPS_GRAFANA_TOKEN are set.
up [ENV ...] [--state DIR] [--interval 5s] [--prometheus ADDR] [--pushgateway ADDR]
    Run Prometheus (scraping the environments, default: the sandbox ones, and the Pushgateway,
    with the alert rules) and the Pushgateway in the background, state in DIR (default
    .state/monitoring in the checkout); when they already run, reload the configuration.
    See imdb_deploy.monitoring.stack.
down [--state DIR]
    Stop them (the data stays in DIR).
status [--state DIR] [--json]
    Whether they run, their PIDs and URLs.

Exit codes: 0 done (a failed marker delivery is reported on stderr but is not an error unless
--strict: monitoring must not fail a deploy), 1 a delivery failed with --strict, or the stack
did not come up, 2 usage or configuration error, 3 `status`: the stack is not (fully) running.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from imdb_deploy.bluegreen.config import (
    REPO_ROOT,
    ConfigError,
    Environment,
    available,
    load_environment,
)
from imdb_deploy.monitoring.markers import (
    ACTIONS,
    DEFAULT_TIMEOUT_S,
    RESULTS,
    DeployMarker,
    MarkerSettings,
    TrainingReference,
    record_deploy,
)
from imdb_deploy.monitoring.scrape import ScrapeConfigError
from imdb_deploy.monitoring.stack import (
    DEFAULT_INTERVAL,
    DEFAULT_PROMETHEUS,
    DEFAULT_PUSHGATEWAY,
    MonitoringError,
    MonitoringStack,
    write_config_files,
)
from imdb_deploy.monitoring.stack import DEFAULT_TIMEOUT_S as STACK_TIMEOUT_S
from imdb_deploy.sandbox.inventory import sandbox_environments

EXIT_DELIVERY = 1
EXIT_STACK = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
STATE_DIR = REPO_ROOT / ".state" / "monitoring"


class UsageError(RuntimeError):
    """Worth one line on stderr and exit 2, not a traceback."""


def build_parser() -> argparse.ArgumentParser:
    """The CLI's arguments (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m imdb_deploy.monitoring",
        description="Prometheus config for the deploy environments, and deploy markers.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    config = commands.add_parser("config", help="write prometheus.yml and the alert rules")
    config.add_argument("environments", nargs="*", metavar="ENV", help="default: all")
    config.add_argument("--out", type=Path, required=True, help="directory to write into")
    config.add_argument("--interval", default="15s", help="scrape and rule interval (15s)")
    config.add_argument("--pushgateway", help="host:port or URL Prometheus scrapes it at")

    marker = commands.add_parser("marker", help="record a deploy action's outcome")
    marker.add_argument("--env", required=True, dest="environment")
    marker.add_argument("--version", required=True)
    marker.add_argument("--result", required=True, choices=RESULTS)
    marker.add_argument("--action", default="deploy", choices=ACTIONS)
    marker.add_argument("--pushgateway", help="its URL (default: $MLOPS_PUSHGATEWAY_URL)")
    marker.add_argument(
        "--manifest",
        type=Path,
        help="the artifact (or its manifest.json): push its training prediction distribution",
    )
    marker.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    marker.add_argument("--strict", action="store_true", help="exit 1 when a delivery fails")

    state_help = f"state directory (default: {STATE_DIR})"
    up = commands.add_parser("up", help="run Prometheus and the Pushgateway (or reload)")
    up.add_argument("environments", nargs="*", metavar="ENV", help="default: the sandbox ones")
    up.add_argument("--state", type=Path, default=STATE_DIR, help=state_help)
    up.add_argument("--interval", default=DEFAULT_INTERVAL, help="scrape and rule interval")
    up.add_argument("--prometheus", default=DEFAULT_PROMETHEUS, help="its host:port (loopback)")
    up.add_argument("--pushgateway", default=DEFAULT_PUSHGATEWAY, help="its host:port (loopback)")
    up.add_argument(
        "--timeout", type=float, default=STACK_TIMEOUT_S, help="seconds to wait for each (30)"
    )

    down = commands.add_parser("down", help="stop Prometheus and the Pushgateway")
    down.add_argument("--state", type=Path, default=STATE_DIR, help=state_help)

    status = commands.add_parser("status", help="whether Prometheus and the Pushgateway run")
    status.add_argument("--state", type=Path, default=STATE_DIR, help=state_help)
    status.add_argument("--json", action="store_true", help="as JSON, for scripts")
    return parser


def write_config(
    names: Sequence[str], out: Path, interval: str, pushgateway: str | None
) -> list[Path]:
    """Write prometheus.yml and the rules beside it; the files written."""
    try:
        environments = [load_environment(name) for name in (names or available())]
        return write_config_files(environments, out, interval=interval, pushgateway=pushgateway)
    except (ConfigError, ScrapeConfigError) as exc:
        raise UsageError(str(exc)) from None


def stack_up(args: argparse.Namespace) -> int:
    """The `up` command; its exit code."""
    try:
        environments: list[Environment] = (
            [load_environment(name) for name in args.environments]
            if args.environments
            else sandbox_environments()
        )
        stack = MonitoringStack(args.state, args.prometheus, args.pushgateway, timeout=args.timeout)
        urls = stack.up(environments, args.interval)
    except (ConfigError, ValueError) as exc:  # ScrapeConfigError is a ValueError
        raise UsageError(str(exc)) from None
    except MonitoringError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_STACK
    names = ", ".join(environment.name for environment in environments)
    print(f"prometheus: {urls['prometheus']} (scraping {names})")
    print(f"pushgateway: {urls['pushgateway']} (deploy markers: MLOPS_PUSHGATEWAY_URL)")
    print(f"state: {stack.state_dir}")
    return 0


def stack_status(args: argparse.Namespace) -> int:
    """The `status` command; 0 when both run, else EXIT_NOT_RUNNING."""
    status = MonitoringStack(args.state).status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        urls = cast("dict[str, str]", status["urls"])
        pids = cast("dict[str, int | None]", status["pids"])
        for name, url in urls.items():
            pid = pids[name]
            print(f"{name}: " + (f"running (pid {pid}) at {url}" if pid else "stopped"))
    return 0 if status["running"] else EXIT_NOT_RUNNING


def load_reference(path: Path) -> TrainingReference:
    """The training reference of an artifact directory or of its manifest.json."""
    manifest_path = path / "manifest.json" if path.is_dir() else path
    try:
        manifest = json.loads(manifest_path.read_text())
        return TrainingReference.from_manifest(manifest)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{manifest_path}: {exc}") from None


def send_marker(args: argparse.Namespace) -> int:
    """The `marker` command; its exit code."""
    settings = MarkerSettings.from_environ(pushgateway=args.pushgateway, timeout=args.timeout)
    if settings.pushgateway is None and settings.grafana_url is None:
        raise UsageError(
            "no destination: pass --pushgateway or set MLOPS_PUSHGATEWAY_URL or MLOPS_GRAFANA_URL"
        )
    reference = None if args.manifest is None else load_reference(args.manifest)
    if reference is not None and reference.version != args.version:
        raise UsageError(f"--manifest is of version {reference.version}, not {args.version}")
    try:
        marker = DeployMarker(args.environment, args.version, args.result, args.action)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    report = record_deploy(marker, settings, reference)
    stream = sys.stdout if report.ok else sys.stderr
    print(f"{marker.text()}\n{report.describe()}", file=stream)
    return EXIT_DELIVERY if args.strict and not report.ok else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; its exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config":
            for path in write_config(args.environments, args.out, args.interval, args.pushgateway):
                print(f"wrote {path}")
            return 0
        if args.command == "up":
            return stack_up(args)
        if args.command == "down":
            for line in MonitoringStack(args.state).down():
                print(f"stopped: {line}")
            return 0
        if args.command == "status":
            return stack_status(args)
        return send_marker(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
