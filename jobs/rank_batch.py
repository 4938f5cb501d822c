"""Ray job: rank every borrower of a feature snapshot for one touchpoint (`attune rank-batch`).

    ray job submit --working-dir . -- python jobs/rank_batch.py \
        --features s3://bucket/store --registry s3://bucket/registry \
        --touchpoint email --out s3://bucket/campaigns/email-2025-06-01

Takes exactly the arguments of ``attune rank-batch``; all logic lives in the library.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from attune.cli import main as attune

    return attune(["rank-batch", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    from _source import use_submitted_code

    use_submitted_code()
    sys.exit(main())
