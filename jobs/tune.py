"""Ray job: sweep XGBoost rankers, evaluate the winner, export it and register it.

    ray job submit --working-dir . -- python jobs/tune.py --features F --registry R --trials 8

Takes the arguments of ``attune tune``; all logic lives in :mod:`attune.training`.
Exit statuses are those of ``attune`` (:mod:`attune.cli`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from attune.cli import run
    from attune.training.commands import add_arguments, checked_config

    parser = argparse.ArgumentParser(prog="jobs/tune.py", description=__doc__)
    add_arguments(parser)

    def _tune(args: argparse.Namespace) -> int:
        from attune.training.pipeline import train_and_register

        result = train_and_register(checked_config(args))
        print(f"version {result.version_id}")
        return 0

    return run(_tune, parser.parse_args(argv), prog="jobs/tune.py")


if __name__ == "__main__":
    from _source import use_submitted_code

    use_submitted_code()
    sys.exit(main())
