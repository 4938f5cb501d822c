"""The ``attune`` command line.

Each stage contributes its sub-commands through a ``commands`` module exposing
``register(subparsers)``; handlers import their heavy dependencies (Ray, XGBoost)
lazily so that ``attune --help`` stays fast.

Exit status, one per error category of :mod:`attune.errors` (mapped here and only
here; ``jobs/*.py`` use the same mapping)::

    0  ok
    1  internal error (a bug: anything not in the tree below)
    2  usage: unknown command, missing or malformed argument (argparse)
    3  a check ran and found a problem (monitor drift --fail-on-alert)
    4  invalid input: a value, config, file or table is wrong     InvalidInput
    5  not found: path, bucket, version, alias, application        NotFound
    6  refused by a gate (fairness, OPE, ONNX parity)              GateRefused, ParityError
    7  conflict: immutable version exists, concurrent change       Conflict
    8  unavailable: store, Redis or Ray down after retries,
       or a stored artifact is corrupted                           Unavailable
    9  forbidden: access denied by the store                       Forbidden

Every failure prints one line, ``attune: error: <message>``, on stderr (with
``--json-errors``: one JSON object with ``error``, ``message``, ``details`` and
``exit_code``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from enum import IntEnum

from attune.errors import (
    AttuneError,
    ConfigError,
    Conflict,
    Forbidden,
    GateRefused,
    InvalidInput,
    NotFound,
    ParityError,
    Unavailable,
)


class ExitCode(IntEnum):
    """Exit statuses of ``attune`` and ``jobs/*.py`` (see the module docstring)."""

    OK = 0
    INTERNAL = 1
    USAGE = 2
    CHECK_FAILED = 3
    INVALID_INPUT = 4
    NOT_FOUND = 5
    REFUSED = 6
    CONFLICT = 7
    UNAVAILABLE = 8
    FORBIDDEN = 9


#: Most specific first: the first class an error is an instance of decides its status.
_EXIT_CODES: tuple[tuple[type[AttuneError], ExitCode], ...] = (
    (GateRefused, ExitCode.REFUSED),
    (ParityError, ExitCode.REFUSED),
    (InvalidInput, ExitCode.INVALID_INPUT),
    (NotFound, ExitCode.NOT_FOUND),
    (Conflict, ExitCode.CONFLICT),
    (Unavailable, ExitCode.UNAVAILABLE),
    (Forbidden, ExitCode.FORBIDDEN),
)


def exit_code(exc: AttuneError) -> ExitCode:
    """The exit status for ``exc`` (its category in :mod:`attune.errors`)."""
    for cls, code in _EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return ExitCode.INTERNAL


def report(exc: AttuneError, *, prog: str = "attune", as_json: bool = False) -> ExitCode:
    """Print ``exc`` once on stderr (a line, or JSON) and return its exit status."""
    code = exit_code(exc)
    if as_json:
        print(json.dumps({**exc.to_dict(), "exit_code": int(code)}), file=sys.stderr)
    else:
        print(f"{prog}: error: {exc.message}", file=sys.stderr)
    return code


def run(
    handler: Callable[[argparse.Namespace], int | None],
    args: argparse.Namespace,
    *,
    prog: str = "attune",
) -> int:
    """Call ``handler(args)``; an attune error (or a stray pydantic one) becomes its status."""
    from pydantic import ValidationError

    as_json = bool(getattr(args, "json_errors", False))
    try:
        result = handler(args)
    except AttuneError as exc:
        return int(report(exc, prog=prog, as_json=as_json))
    except ValidationError as exc:
        return int(report(ConfigError.from_validation(exc), prog=prog, as_json=as_json))
    return int(result or 0)


#: Modules that register sub-commands, in the order they appear in ``--help``.
_COMMAND_MODULES: tuple[str, ...] = (
    "attune.simulator.commands",
    "attune.data.commands",
    "attune.online.commands",
    "attune.batch.commands",
    "attune.training.commands",
    "attune.registry.commands",
    "attune.serving.commands",
    "attune.rewards.commands",
    "attune.experiments.commands",
    "attune.monitoring.commands",
    "attune.demo.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="attune",
        description="Personalized loan-servicing rankings on Ray.",
        epilog="Exit status: 0 ok, 1 internal error, 2 usage, 3 check failed, 4 invalid "
        "input, 5 not found, 6 refused by a gate, 7 conflict, 8 unavailable, 9 forbidden.",
    )
    parser.add_argument(
        "--json-errors", action="store_true", help="print errors as one JSON object on stderr"
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
    return run(args.handler, args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
