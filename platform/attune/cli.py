"""The ``attune`` command line.

Each stage contributes its sub-commands through a ``commands`` module exposing
``register(subparsers)``; handlers import their heavy dependencies (Ray, XGBoost)
lazily so that ``attune --help`` stays fast. Errors from :mod:`attune.errors` are
printed with their offending values and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from attune.errors import AttuneError

#: Modules that register sub-commands, in the order they appear in ``--help``.
_COMMAND_MODULES: tuple[str, ...] = (
    "attune.data.commands",
    "attune.online.commands",
    "attune.batch.commands",
    "attune.training.commands",
    "attune.registry.commands",
    "attune.serving.commands",
    "attune.experiments.commands",
    "attune.governance.commands",
    "attune.demo.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attune", description="Personalized loan-servicing rankings on Ray."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # stage not installed in this build
            raise
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.handler(args)
    except AttuneError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        print(json.dumps(exc.to_dict()), file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
