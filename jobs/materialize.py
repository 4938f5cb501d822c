"""Ray job: each borrower's latest point-in-time feature snapshot (`attune features materialize`).

    ray job submit --working-dir . -- python jobs/materialize.py \
        --histories s3://bucket/histories --out s3://bucket/store

Takes exactly the arguments of ``attune features materialize``; all logic lives in the library.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from attune.cli import main as attune

    return attune(["features", "materialize", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    from _source import use_submitted_code

    use_submitted_code()
    sys.exit(main())
