"""``attune rank-batch``: batch ranking for outreach (registered by :mod:`attune.cli`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from attune.data.commands import ray_session, validated


def register(subparsers: Any) -> None:
    """Add this stage's sub-commands to ``subparsers``."""
    p = subparsers.add_parser(
        "rank-batch",
        help="rank every borrower of a feature snapshot for one touchpoint (outreach)",
        description="Read a feature snapshot (or compute features as of --as-of from a "
        "history), apply the touchpoint's eligibility rules, rank each eligible borrower's "
        "options with the champion / canary ONNX models on Ray Data, and write one row per "
        "borrower under OUT (ranked/, excluded/, summary.json). Decisions go to the "
        "decision log under the store, as served decisions do.",
    )
    from attune.layout import add_store_argument

    add_store_argument(p, "registry")
    p.add_argument(
        "--features",
        help="snapshot directory, or a store root whose latest snapshot is ranked (default: "
        "--store); with --as-of: a history root (default: <store>/histories)",
    )
    p.add_argument("--touchpoint", required=True, choices=("email", "sms", "app"))
    p.add_argument("--out", required=True, help="output directory (local or s3://)")
    p.add_argument("--as-of", help="compute features as of this ISO time (with a zone)")
    p.add_argument("--eligibility", help="eligibility rules, YAML (docs/batch-ranking.md)")
    p.add_argument(
        "--rollout", help="rollout as served (YAML/JSON RolloutConfig: champion, canary, ...)"
    )
    p.add_argument("--batch-size", type=int, help="borrowers per scoring batch (8192)")
    p.add_argument("--actors", type=int, help="scoring actors (default: the cluster's CPUs)")
    p.add_argument("--no-decision-log", action="store_true", help="do not log decisions")
    p.set_defaults(handler=_rank_batch)


def _yaml(path: str | None, field: str) -> Any:
    if path is None:
        return None
    import yaml

    from attune.errors import ConfigError

    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(field=field, value=path, problem="no such file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(field=field, value=path, problem=f"bad YAML: {exc}") from exc


def _rank_batch(args: argparse.Namespace) -> int:
    from attune.batch.eligibility import load_eligibility
    from attune.batch.job import RankBatchConfig, rank_batch
    from attune.layout import require, resolve, store_layout

    eligibility = load_eligibility(args.eligibility)
    layout = store_layout(args.store)
    features = args.features or (layout.histories if args.as_of else layout.online)
    registry = require(resolve(args, "registry"), "model registry")
    require(features, "history root" if args.as_of else "feature snapshots")
    config = validated(
        RankBatchConfig,
        {
            "features": features,
            "registry": registry,
            "touchpoint": args.touchpoint,
            "out": args.out,
            "as_of": args.as_of,
            "store": layout.root,
            "rollout": _yaml(args.rollout, "rollout"),
            "eligibility": eligibility,
            "batch_size": args.batch_size,
            "actors": args.actors,
            "decision_log": False if args.no_decision_log else None,
        },
    )
    with ray_session():
        result = rank_batch(config)
    print(json.dumps(result.summary, indent=2))
    return 0
