"""``attune registry list|show|alias``: look at versions and move aliases.

``--registry`` defaults to ``<store>/registry`` (``--store``, else ``ATTUNE_STORE``); a
registry that does not exist is an error (exit status 5), not an empty table. ``list``
prints a table (or JSON with ``--json``); ``show`` prints a version's manifest, a summary of its
``metrics.json``, the aliases that point at it and its alias history, as JSON;
``alias`` moves an alias through the fairness gate (see :mod:`attune.governance.gates.promotion`;
``--gate-config`` sets its bounds) and prints the recorded move.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from attune.errors import ConfigError

#: How deep ``show`` looks into nested ``metrics.json`` objects for numbers.
_METRICS_DEPTH = 3


class RegistryArgs(BaseModel):
    """Arguments shared by the registry commands."""

    model_config = ConfigDict(extra="forbid")

    registry: str = Field(min_length=1, description="Registry root (local dir or s3://).")


def register(subparsers: Any) -> None:
    """Add ``registry list|show|alias`` to ``subparsers``."""
    parser = subparsers.add_parser("registry", help="List model versions and move aliases.")
    commands = parser.add_subparsers(dest="registry_command", required=True, metavar="ACTION")

    def _common(sub: argparse.ArgumentParser) -> None:
        from attune.layout import add_store_argument

        add_store_argument(sub, "registry")

    listing = commands.add_parser("list", help="Complete versions, oldest first, with aliases.")
    _common(listing)
    listing.add_argument("--json", action="store_true", help="Print JSON instead of a table.")
    listing.set_defaults(handler=_list)

    show = commands.add_parser("show", help="Manifest, metrics and aliases of one version.")
    show.add_argument("ref", metavar="VERSION|ALIAS")
    _common(show)
    show.set_defaults(handler=_show)

    alias = commands.add_parser("alias", help="Point an alias at a version (gated).")
    alias.add_argument("alias", metavar="ALIAS", help="champion, canary or shadow.")
    alias.add_argument(
        "ref", metavar="VERSION", help="Version id, an alias to copy, or latest (the newest)."
    )
    _common(alias)
    alias.add_argument("--by", default=None, help="Who moves it (default: the current user).")
    alias.add_argument(
        "--override", action="store_true", help="Move even if the fairness gate refuses."
    )
    alias.add_argument("--justification", default=None, help="Why (required with --override).")
    alias.add_argument(
        "--gate-config",
        default=None,
        metavar="URI",
        help="YAML/JSON fairness-gate bounds (default: the governance stage's defaults).",
    )
    alias.set_defaults(handler=_alias)


def _registry(args: argparse.Namespace) -> Any:
    from attune.layout import require, resolve
    from attune.registry.store import Registry

    uri = resolve(args, "registry")
    try:
        parsed = RegistryArgs(registry=uri)
    except ValidationError as exc:
        raise ConfigError(
            field="--registry", value=uri, problem=str(exc.errors()[0]["msg"])
        ) from exc
    require(parsed.registry, "registry")
    return Registry(parsed.registry)


def _aliases_by_version(aliases: Mapping[str, str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, version in sorted(aliases.items()):
        out.setdefault(version, []).append(name)
    return out


def _list(args: argparse.Namespace) -> int:
    registry = _registry(args)
    by_version = _aliases_by_version(registry.aliases())
    rows = [
        {
            "version": info.version,
            "created_at": info.created_at.isoformat(),
            "files": len(info.files),
            "bytes": info.size,
            "aliases": by_version.get(info.version, []),
        }
        for info in registry.versions()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"registry {registry.uri}")
    for column in ("version", "created_at", "files", "bytes", "aliases"):
        table.add_column(column, no_wrap=column == "version")
    for row in rows:
        table.add_row(*(", ".join(v) if isinstance(v, list) else str(v) for v in row.values()))
    Console(width=120).print(table)
    return 0


def metrics_summary(
    metrics: Any, *, depth: int = _METRICS_DEPTH, prefix: str = ""
) -> dict[str, float]:
    """The numbers of a metrics document, flattened to ``a.b.c`` keys (lists skipped)."""
    out: dict[str, float] = {}
    if not isinstance(metrics, Mapping) or depth == 0:
        return out
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[name] = float(value)
        elif isinstance(value, Mapping):
            out.update(metrics_summary(value, depth=depth - 1, prefix=f"{name}."))
    return out


def _show(args: argparse.Namespace) -> int:
    from attune.registry.models import METRICS

    registry = _registry(args)
    info = registry.get(args.ref)
    metrics = registry.read_json(info.version, METRICS) if METRICS in info.files else None
    document = {
        "version": info.version,
        "created_at": info.created_at.isoformat(),
        "uri": info.uri,
        "content_hash": info.content_hash,
        "files": {name: entry.model_dump() for name, entry in sorted(info.files.items())},
        "metadata": dict(info.metadata),
        "metrics": metrics_summary(metrics) if metrics is not None else None,
        "aliases": _aliases_by_version(registry.aliases()).get(info.version, []),
        "alias_history": [
            move.model_dump(mode="json") for move in registry.history(version=info.version)
        ],
    }
    print(json.dumps(document, indent=2, default=str))
    return 0


def _alias(args: argparse.Namespace) -> int:
    from attune.settings import current_user

    registry = _registry(args)
    gate: dict[str, Any] = {}
    if args.gate_config:
        import yaml

        from attune import storage
        from attune.governance.gates.promotion import fairness_gate

        try:
            bounds = yaml.safe_load(storage.read_bytes(args.gate_config)) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(
                field="--gate-config", value=args.gate_config, problem=str(exc)
            ) from exc
        if not isinstance(bounds, dict):
            raise ConfigError(
                field="--gate-config", value=args.gate_config, problem="must hold a mapping"
            )
        gate["gate"] = fairness_gate(bounds)
    ref = args.ref
    if ref == "latest":
        versions = registry.versions()
        if not versions:
            from attune.errors import VersionNotFound

            raise VersionNotFound(registry=registry.uri, version="latest")
        ref = versions[-1].version
    move = registry.set_alias(
        args.alias,
        ref,
        by=args.by or current_user(),
        justification=args.justification,
        override=args.override,
        **gate,
    )
    print(move.model_dump_json(indent=2))
    return 0
