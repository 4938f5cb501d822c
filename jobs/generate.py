"""Ray job: simulate servicing histories with a hidden ground truth (`attune generate`).

    ray job submit --working-dir . -- python jobs/generate.py \
        --borrowers 20000 --months 12 --seed 7 --out s3://bucket/histories

Takes exactly the arguments of ``attune generate``; all logic lives in the library.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from attune.cli import main as attune

    return attune(["generate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    from _source import use_submitted_code

    use_submitted_code()
    sys.exit(main())
