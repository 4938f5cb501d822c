"""Ray job: one rollout step against the running ranking app.

    ray job submit --working-dir . -- python jobs/rollout.py canary v20260301-120000-abc123 \
        --percent 20 --registry s3://bucket/registry
    ray job submit --working-dir . -- python jobs/rollout.py promote --justification "..."

Takes the arguments of ``attune rollout shadow|canary|promote|rollback|status``; all
logic lives in :mod:`attune.serving.rollout`. Exits 0 printing the rollout now in
service, else with the status of ``attune`` (:mod:`attune.cli`: 2 usage, 4 invalid
input, 5 not found, 6 refused by a gate, 8 unavailable); the error names the value.
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
