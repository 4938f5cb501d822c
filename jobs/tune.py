"""Ray job: sweep XGBoost rankers, evaluate the winner, export it and register it.

    ray job submit --working-dir . -- python jobs/tune.py --features F --registry R --trials 8

Takes the arguments of ``attune tune``; all logic lives in :mod:`attune.training`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from attune.errors import AttuneError
    from attune.training.commands import add_arguments, config_from_args
    from attune.training.pipeline import train_and_register

    parser = argparse.ArgumentParser(prog="jobs/tune.py", description=__doc__)
    add_arguments(parser)
    try:
        result = train_and_register(config_from_args(parser.parse_args(argv)))
    except AttuneError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(f"version {result.version_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
