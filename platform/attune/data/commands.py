"""CLI sub-commands of this stage (registered by :mod:`attune.cli`).

Each sub-command has a ``_add_<name>(subparsers)`` that declares its arguments and a
handler that validates them into the stage's pydantic config (errors name the field)
and imports the heavy modules only when it runs.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from attune.errors import ConfigError

_Config = TypeVar("_Config", bound=BaseModel)


def register(subparsers: Any) -> None:
    """Add this stage's sub-commands to ``subparsers``."""
    _add_preprocess(subparsers)


def validated(model: type[_Config], values: dict[str, Any]) -> _Config:
    """``model(**values)``, with the first validation error as a :class:`ConfigError`."""
    try:
        return model.model_validate({k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise ConfigError.from_validation(exc, default_field=model.__name__) from exc


# --------------------------------------------------------------------------- preprocess


@contextmanager
def ray_session() -> Iterator[None]:
    """Join ``RAY_ADDRESS`` (or start a local Ray) unless Ray is up; shut down what we started."""
    import ray

    from attune.settings import get_settings

    started = not ray.is_initialized()
    if started:
        from attune.runtime import init_ray

        init_ray(get_settings().ray_address)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def add_partitioning(p: argparse.ArgumentParser) -> None:
    p.add_argument("--buckets", type=int, help="borrower hash buckets (32)")
    p.add_argument("--partitions", type=int, help="tasks reading files and computing buckets (16)")


def _add_preprocess(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "preprocess",
        help="servicing histories -> point-in-time ranking dataset (Ray Data)",
        description="Validate a servicing history, compute point-in-time features for every "
        "presentation, label and split it by time into train/ valid/ test/ with "
        "feature_spec.json and manifest.json (committed atomically).",
    )
    from attune.layout import add_store_argument

    add_store_argument(p, "histories")
    p.add_argument(
        "--out", default=None, help="dataset root, dir or s3:// (default: <store>/features/latest)"
    )
    p.add_argument("--train-fraction", type=float, help="share of the time span (0.7)")
    p.add_argument("--valid-fraction", type=float, help="share of the time span (0.15)")
    p.add_argument("--test-fraction", type=float, help="share of the time span (0.15)")
    add_partitioning(p)
    p.set_defaults(handler=_preprocess)


def _preprocess(args: argparse.Namespace) -> int:
    from attune.data.pipeline import PreprocessConfig
    from attune.layout import require, resolve, store_layout

    histories = require(resolve(args, "histories"), "servicing history")
    out = args.out or store_layout(args.store).features
    config = validated(
        PreprocessConfig,
        {
            "train_fraction": args.train_fraction,
            "valid_fraction": args.valid_fraction,
            "test_fraction": args.test_fraction,
            "buckets": args.buckets,
            "partitions": args.partitions,
        },
    )
    from attune.data.pipeline import preprocess

    with ray_session():
        result = preprocess(histories, out, config=config)
    summary = {
        "out": result.uri,
        "rows": dict(result.rows),
        "groups": dict(result.groups),
        "content_hash": result.content_hash,
        "feature_spec_hash": result.spec_hash,
        "split": result.split.to_dict(),
    }
    print(json.dumps(summary, indent=2))
    return 0
