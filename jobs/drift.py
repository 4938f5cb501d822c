"""Ray job: PSI per feature between a model version's training reference and its traffic.

    ray job submit --working-dir . -- python jobs/drift.py \
        --registry s3://bucket/registry --version champion --decisions s3://bucket/store/decisions

Takes the arguments of ``attune monitor drift``; all logic lives in
:mod:`attune.governance.monitor`. Exits 3 with ``--fail-on-alert`` when a feature is
above the alert threshold, 2 on a bad argument or a missing artifact.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from attune.errors import AttuneError
    from attune.governance.commands import EXIT_DRIFT_ALERT, add_drift_arguments, config_from_args
    from attune.governance.monitor import run_drift_monitor, summary_line

    parser = argparse.ArgumentParser(prog="jobs/drift.py", description=__doc__)
    add_drift_arguments(parser)
    args = parser.parse_args(argv)
    try:
        report = run_drift_monitor(config_from_args(args))
    except AttuneError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    print(summary_line(report))
    return EXIT_DRIFT_ALERT if args.fail_on_alert and report["flagged"]["alert"] else 0


if __name__ == "__main__":
    sys.exit(main())
