"""Ray job: one rollout step against the running ranking app.

    ray job submit --working-dir . -- python jobs/rollout.py canary v20260301-120000-abc123 \
        --percent 20 --registry s3://bucket/registry
    ray job submit --working-dir . -- python jobs/rollout.py promote --justification "..."

Takes the arguments of ``attune rollout shadow|canary|promote|rollback|status``; all
logic lives in :mod:`attune.serving.rollout`. Exits 2 on a bad argument or a refused
version (the error names it), 0 otherwise, printing the rollout now in service.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from attune.cli import main as cli

    return cli(["rollout", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    from _source import use_submitted_code

    use_submitted_code()
    sys.exit(main())
