"""``attune demo``: the whole flow on a local Ray with a local store."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from attune.errors import ConfigError


def register(subparsers: Any) -> None:
    """Add ``attune demo`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "demo",
        help="Run the whole flow on a local Ray and write an HTML report.",
        description="generate → preprocess → tune → export → register → serve → shadow → "
        "canary → traffic → A/B analysis → drift → learning loop, on a local Ray with a local "
        "store.",
    )
    parser.add_argument("--workdir", default=None, help="Store root (default .attune).")
    parser.add_argument("--borrowers", type=int, default=None, help="Simulated borrowers.")
    parser.add_argument("--months", type=int, default=None, help="Months of history.")
    parser.add_argument("--seed", type=int, default=None, help="Seed of every random draw.")
    parser.add_argument("--trials", type=int, default=None, help="Tune trials per version.")
    parser.add_argument("--requests", type=int, default=None, help="Requests per phase.")
    parser.add_argument("--canary-percent", type=float, default=None, help="Canary share.")
    parser.add_argument(
        "--loop-iterations", type=int, default=None, help="Learning-loop iterations (2)."
    )
    parser.add_argument(
        "--dashboard", action="store_true", help="Keep Ray and its dashboard up at the end."
    )
    parser.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from attune.demo.config import DemoConfig
    from attune.demo.run import run_demo

    values = {
        "workdir": args.workdir,
        "borrowers": args.borrowers,
        "months": args.months,
        "seed": args.seed,
        "trials": args.trials,
        "requests": args.requests,
        "canary_percent": args.canary_percent,
        "loop_iterations": args.loop_iterations,
        "dashboard": args.dashboard or None,
    }
    try:
        config = DemoConfig.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError.from_validation(exc) from exc
    run_demo(config)
    return 0
