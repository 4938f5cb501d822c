"""Ray job: PSI per feature between a model version's training reference and its traffic.

    ray job submit --working-dir . -- python jobs/drift.py \
        --registry s3://bucket/registry --version champion --decisions s3://bucket/store/decisions

Takes the arguments of ``attune monitor drift``; all logic lives in
:mod:`attune.monitoring.drift_monitor`. Exits 3 with ``--fail-on-alert`` when a feature is
above the alert threshold; other statuses are those of ``attune`` (:mod:`attune.cli`:
2 usage, 4 invalid input, 5 not found, 8 store unavailable).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from attune.cli import run
    from attune.monitoring.commands import add_drift_arguments, drift

    parser = argparse.ArgumentParser(prog="jobs/drift.py", description=__doc__)
    add_drift_arguments(parser)
    return run(drift, parser.parse_args(argv), prog="jobs/drift.py")


if __name__ == "__main__":
    from _source import use_submitted_code

    use_submitted_code()
    sys.exit(main())
