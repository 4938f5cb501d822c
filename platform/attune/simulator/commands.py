"""CLI sub-commands of the simulator (registered by :mod:`attune.cli`): ``attune generate``."""

from __future__ import annotations

import argparse
import json
from datetime import date
from typing import Any

from attune.data.commands import validated


def register(subparsers: Any) -> None:
    """Add the simulator's sub-commands to ``subparsers``."""
    _add_generate(subparsers)


def _add_generate(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "generate",
        help="simulate servicing histories with a hidden ground truth",
        description="Simulate N borrowers over M months and write the servicing-history "
        "tables, ground_truth/ and manifest.json (written last) to a local directory "
        "or s3:// URI.",
    )
    p.add_argument("--borrowers", type=int, required=True, help="number of borrowers")
    p.add_argument("--months", type=int, required=True, help="months of history")
    p.add_argument("--seed", type=int, required=True, help="random seed (same seed, same history)")
    p.add_argument(
        "--store", default=None, help="store root (default: ATTUNE_STORE, else ./.attune)"
    )
    p.add_argument(
        "--out", default=None, help="history root, dir or s3:// (default: <store>/histories)"
    )
    p.add_argument("--start", type=date.fromisoformat, help="first day of the history (YYYY-MM-01)")
    p.add_argument("--epsilon", type=float, help="logging policy's share of random slates (0.2)")
    p.add_argument(
        "--parallel",
        choices=("auto", "ray", "local"),
        help="run shards as Ray tasks, in-process, or decide by size (auto)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a history already at --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_generate)


def _generate(args: argparse.Namespace) -> int:
    from attune.layout import store_layout
    from attune.simulator.generator import GenerateConfig, generate

    config = validated(
        GenerateConfig,
        {
            "borrowers": args.borrowers,
            "months": args.months,
            "seed": args.seed,
            "out": args.out or store_layout(args.store).histories,
            "start": args.start,
            "epsilon": args.epsilon,
            "parallel": args.parallel,
            "overwrite": args.overwrite or None,
        },
    )
    manifest = generate(config, progress=not args.quiet)
    summary = {
        "out": config.out,
        "counts": manifest["counts"],
        "policy_values": manifest["policy_values"],
        "share_of_oracle_lift": manifest["share_of_oracle_lift"],
    }
    print(json.dumps(summary, indent=2))
    return 0
