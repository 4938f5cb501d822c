"""CLI sub-commands of the experiments stage (registered by :mod:`attune.cli`).

``attune experiment analyze``   A/B report over decision logs joined with outcomes
``attune experiment aa-check``  A/A simulation: does daily peeking inflate errors?
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from attune.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add ``attune experiment ...`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "experiment", help="A/B analysis, sequential tests and A/A checks over decision logs."
    )
    commands = parser.add_subparsers(dest="experiment_command", required=True, metavar="ACTION")

    analyze = commands.add_parser(
        "analyze", help="Lift, SRM, CUPED and an always-valid test; writes JSON + PNG."
    )
    from attune.layout import add_store_argument

    add_store_argument(analyze, "decisions", "outcomes")
    analyze.add_argument("--out", required=True, help="Output directory (or s3://).")
    analyze.add_argument("--metric", default="reward", help="Outcome column (default: reward).")
    analyze.add_argument("--covariate", default=None, help="Pre-period covariate for CUPED.")
    analyze.add_argument("--control", default="champion", help="Control arm (default: champion).")
    analyze.add_argument(
        "--weight",
        action="append",
        default=None,
        metavar="ARM=SHARE",
        help="Planned split for the SRM check, repeatable (default: equal shares).",
    )
    analyze.add_argument("--alpha", type=float, default=0.05, help="Error rate (default 0.05).")
    analyze.add_argument(
        "--fill-missing", type=float, default=0.0, help="Metric of decisions without outcome."
    )
    analyze.add_argument("--partitions", type=int, default=4, help="Shuffle partitions.")
    analyze.set_defaults(handler=_analyze)

    aa = commands.add_parser("aa-check", help="Simulate A/A tests peeked at daily.")
    aa.add_argument("--simulations", type=int, default=2000, help="A/A experiments (2000).")
    aa.add_argument("--looks", type=int, default=14, help="Peeks per experiment (14 days).")
    aa.add_argument("--units-per-look", type=int, default=200, help="New units per arm per look.")
    aa.add_argument("--base-rate", type=float, default=0.3, help="Conversion rate of both arms.")
    aa.add_argument("--alpha", type=float, default=0.05, help="Test level (0.05).")
    aa.add_argument("--seed", type=int, default=0, help="Seed of the simulation.")
    aa.set_defaults(handler=_aa_check)


def _weights(pairs: list[str] | None) -> dict[str, float] | None:
    if not pairs:
        return None
    out: dict[str, float] = {}
    for pair in pairs:
        arm, sep, share = pair.partition("=")
        try:
            out[arm] = float(share)
        except ValueError:
            sep = ""
        if not sep or not arm:
            raise ConfigError(field="--weight", value=pair, problem="expected ARM=SHARE")
    return out


def _analyze(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from attune.experiments.report import AnalyzeConfig, run_analysis
    from attune.layout import require, resolve

    decisions = require(resolve(args, "decisions"), "decision log")
    outcomes = require(resolve(args, "outcomes"), "outcomes")
    try:
        config = AnalyzeConfig(
            decisions=decisions,
            outcomes=outcomes,
            out=args.out,
            metric=args.metric,
            covariate=args.covariate,
            control=args.control,
            weights=_weights(args.weight),
            alpha=args.alpha,
            fill_missing=args.fill_missing,
            partitions=args.partitions,
        )
    except ValidationError as exc:
        raise ConfigError.from_validation(exc) from exc
    _ensure_ray()
    report = run_analysis(config)
    print(json.dumps(_summary(report), indent=2))
    return 0


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    """The headline figures (the full report, with the daily series, is in report.json)."""
    return {
        "arms": report["arms"],
        "srm": {k: report["srm"][k] for k in ("p_value", "flagged")},
        "comparisons": {
            arm: {k: v for k, v in c.items() if k != "over_time"}
            for arm, c in report["comparisons"].items()
        },
        "outputs": report["outputs"],
    }


def _ensure_ray() -> None:
    import ray

    from attune.settings import get_settings

    if not ray.is_initialized():
        from attune.runtime import init_ray

        init_ray(get_settings().ray_address)


def _aa_check(args: argparse.Namespace) -> int:
    from attune.experiments.sequential import simulate_aa_peeking

    result = simulate_aa_peeking(
        n_simulations=args.simulations,
        looks=args.looks,
        units_per_look=args.units_per_look,
        base_rate=args.base_rate,
        alpha=args.alpha,
        seed=args.seed,
    )
    print(json.dumps(result.__dict__, indent=2))
    return 0
