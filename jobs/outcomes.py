"""Ray job: reward rows from the decision log and later servicing events (`attune outcomes`).

    ray job submit --working-dir . -- python jobs/outcomes.py \
        --store s3://bucket/store --history s3://bucket/histories/h1

Takes exactly the arguments of ``attune outcomes``; all logic lives in the library.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from attune.cli import main as attune

    return attune(["outcomes", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    from _source import use_submitted_code

    use_submitted_code()
    sys.exit(main())
