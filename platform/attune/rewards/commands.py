"""``attune outcomes``: attribute rewards from servicing events to served decisions."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any


def register(subparsers: Any) -> None:
    """Add ``attune outcomes`` to ``subparsers``."""
    parser = subparsers.add_parser(
        "outcomes",
        help="Reward rows: the decision log joined with the servicing events that followed.",
    )
    parser.add_argument("--store", default=None, help="Store (default: ATTUNE_STORE).")
    parser.add_argument(
        "--history",
        action="append",
        default=[],
        help="History root whose events count too (repeatable).",
    )
    parser.add_argument("--out", default=None, help="Output dataset (default: <store>/rewards).")
    parser.add_argument(
        "--as-of",
        default=None,
        help="ISO time; decisions whose windows are still open then are left out (default: now).",
    )
    parser.add_argument(
        "--config", default=None, help="Reward definition YAML (default: packaged)."
    )
    parser.add_argument("--engine", choices=("ray", "local"), default="ray", help="Engine (ray).")
    parser.add_argument("--buckets", type=int, default=16, help="Borrower buckets (Ray engine).")
    parser.add_argument("--quiet", action="store_true", help="No progress bars.")
    parser.set_defaults(handler=_outcomes)


def _outcomes(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from attune import storage
    from attune.errors import ConfigError
    from attune.layout import StoreLayout
    from attune.rewards.config import load_reward_config
    from attune.rewards.job import OutcomesConfig, run_outcomes
    from attune.settings import borrower_salt, get_settings

    settings = get_settings()
    store = args.store or settings.store
    as_of: Any = args.as_of or datetime.now(UTC)
    if isinstance(as_of, str):
        try:
            as_of = datetime.fromisoformat(as_of)
        except ValueError as exc:
            raise ConfigError(field="as_of", value=as_of, problem=str(exc)) from exc
        if as_of.tzinfo is None:
            raise ConfigError(field="as_of", value=args.as_of, problem="needs a time zone")
    rewards = load_reward_config(args.config)
    try:
        config = OutcomesConfig(
            store=store,
            histories=tuple(args.history),
            out=args.out or StoreLayout(store).rewards,
            as_of=as_of,
            # the decision log's salt: a secret, so from the environment, never an argument
            salt=borrower_salt(strict=storage.is_s3(store)),
            engine=args.engine,
            buckets=args.buckets,
        )
    except ValidationError as exc:
        raise ConfigError.from_validation(exc) from exc
    print(json.dumps(run_outcomes(config, rewards, progress=not args.quiet), indent=2))
    return 0
