"""CLI sub-commands of this stage (registered by :mod:`attune.cli`).

``attune monitor drift [--store URI] [--registry URI] [--decisions URI] [--version REF]
[--out URI] [--since DATE] [--until DATE] [--warn X] [--alert Y] [--fail-on-alert]``:
PSI per feature between a version's training reference and its served traffic; writes
drift.json, drift.png and drift.prom and prints a one-line summary. The registry and
the decision log default to their places under the store (:mod:`attune.layout`).
"""

from __future__ import annotations

import argparse
from typing import Any

from attune.governance.drift import ALERT, WARN

#: Exit status of ``--fail-on-alert`` when a feature is above the alert threshold
#: (``attune.cli.ExitCode.CHECK_FAILED``).
EXIT_DRIFT_ALERT = 3


def add_drift_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a drift check (shared by the CLI and ``jobs/drift.py``)."""
    from attune.layout import add_store_argument

    add_store_argument(parser, "registry", "decisions")
    parser.add_argument(
        "--version", default="champion", help="Version id or alias (default: champion)."
    )
    parser.add_argument("--out", default=None, help="Report directory (default under the store).")
    parser.add_argument("--since", default=None, help="First decision date, YYYY-MM-DD.")
    parser.add_argument("--until", default=None, help="Last decision date, YYYY-MM-DD.")
    parser.add_argument("--warn", type=float, default=WARN, help=f"Warn above (default {WARN}).")
    parser.add_argument(
        "--alert", type=float, default=ALERT, help=f"Alert above (default {ALERT})."
    )
    parser.add_argument(
        "--min-rows", type=int, default=100, help="Fewer served rows: 'insufficient'."
    )
    parser.add_argument(
        "--fail-on-alert",
        action="store_true",
        help=f"Exit with status {EXIT_DRIFT_ALERT} when a feature is above --alert.",
    )


def config_from_args(args: argparse.Namespace) -> Any:
    """A validated DriftMonitorConfig from parsed arguments (ConfigError names the field)."""
    from attune.layout import require, resolve
    from attune.monitoring.drift_monitor import drift_config

    return drift_config(
        registry=require(resolve(args, "registry"), "registry"),
        version=args.version,
        decisions=require(resolve(args, "decisions"), "decision log"),
        out=args.out,
        since=args.since,
        until=args.until,
        warn=args.warn,
        alert=args.alert,
        min_rows=args.min_rows,
    )


def drift(args: argparse.Namespace) -> int:
    """Run a drift check; ``EXIT_DRIFT_ALERT`` with ``--fail-on-alert`` and an alert."""
    from attune.monitoring.drift_monitor import run_drift_monitor, summary_line

    report = run_drift_monitor(config_from_args(args))
    print(summary_line(report))
    if args.fail_on_alert and report["flagged"]["alert"]:
        return EXIT_DRIFT_ALERT
    return 0


def register(subparsers: Any) -> None:
    """Add ``attune monitor drift``."""
    monitor = subparsers.add_parser("monitor", help="Monitor served models (drift).")
    actions = monitor.add_subparsers(dest="monitor_command", required=True, metavar="ACTION")
    check = actions.add_parser(
        "drift", help="PSI per feature: training reference vs served traffic."
    )
    add_drift_arguments(check)
    check.set_defaults(handler=drift)
