"""``attune features materialize``: a feature snapshot into the store and the online store."""

from __future__ import annotations

import argparse
import json
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from attune.data.commands import add_partitioning, ray_session, validated


def register(subparsers: Any) -> None:
    """Add this stage's sub-commands to ``subparsers``."""
    p = subparsers.add_parser("features", help="online feature snapshots")
    sub = p.add_subparsers(dest="features_command", required=True, metavar="ACTION")
    m = sub.add_parser(
        "materialize",
        help="each borrower's latest point-in-time features, for serving",
        description="Compute every borrower's features as of a time (default now) with the "
        "code that builds training data, plus the recent events online updates need; write "
        "them under OUT/features/<spec hash>/<snapshot id>/ and into the online store "
        "(Redis: --redis-url, else ATTUNE_REDIS_URL, else a local redis-server with its "
        "data under OUT/redis), then switch the online store to the new snapshot.",
    )
    from attune.layout import add_store_argument

    add_store_argument(m, "histories")
    m.add_argument("--out", default=None, help="store root, dir or s3:// (default: --store)")
    m.add_argument("--as-of", help="ISO time with a zone, e.g. 2025-06-01T00:00:00Z (now)")
    m.add_argument("--horizon-days", type=int, help="days of events kept verbatim (180)")
    m.add_argument("--redis-url", help="online store, redis://host:port/db (ATTUNE_REDIS_URL)")
    m.add_argument(
        "--no-online", action="store_true", help="write the parquet snapshot only (no Redis)"
    )
    add_partitioning(m)
    m.set_defaults(handler=_materialize)


def _materialize(args: argparse.Namespace) -> int:
    from attune.data.materialize import MaterializeConfig, materialize
    from attune.layout import require, resolve, store_layout

    args.histories = require(resolve(args, "histories"), "servicing history")
    args.out = args.out or store_layout(args.store).online
    config = validated(
        MaterializeConfig,
        {
            "as_of": args.as_of,
            "horizon_days": args.horizon_days,
            "buckets": args.buckets,
            "partitions": args.partitions,
        },
    )
    if args.no_online:
        with ray_session():
            info = materialize(args.histories, args.out, config=config)
        print(json.dumps(info.to_dict(), indent=2))
        return 0
    from attune.online.deployment import local_data_dir, redis_url
    from attune.online.server import local_server
    from attune.online.snapshot import materialize_online

    url = redis_url(args.redis_url, args.out)
    server: AbstractContextManager[str] = (
        local_server(local_data_dir(args.out)) if url is None else nullcontext(url)
    )
    with server as live, ray_session():
        done = materialize_online(args.histories, args.out, redis_url=live, config=config)
    print(json.dumps(done.to_dict(), indent=2))
    return 0
