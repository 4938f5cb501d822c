"""Ray job: servicing histories -> point-in-time ranking datasets (`attune preprocess`).

    ray job submit --working-dir . -- python jobs/preprocess.py \
        --histories s3://bucket/histories --out s3://bucket/features

Takes exactly the arguments of ``attune preprocess``; all logic lives in the library.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from attune.cli import main as attune

    return attune(["preprocess", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    from _source import use_submitted_code

    use_submitted_code()
    sys.exit(main())
