"""Benchmark: reason codes (TreeSHAP) for one request of 8 candidates, beside scoring.

    .venv/bin/python bench/explain.py [--repeats 300]

Trains seeded rankers of a few sizes on random data with the real feature spec, then
times ``ReasonExplainer.explain`` on 8 candidates against plain native scoring of the
same rows, in the same run. The serving budget is 5 ms p50 added per request.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

BUDGET_MS = 5.0
SIZES = ((100, 4), (200, 6), (300, 6))


def main(argv: Sequence[str] | None = None) -> int:
    import numpy as np
    import xgboost as xgb
    from rich.console import Console
    from rich.progress import track
    from rich.table import Table

    from attune.data.spec import FEATURE_NAMES
    from attune.governance.explain import measure_explain_latency

    parser = argparse.ArgumentParser(prog="bench/explain.py", description=__doc__)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    rows = 4_000
    X = rng.normal(size=(rows, len(FEATURE_NAMES))).astype(np.float32)
    labels = np.clip(np.round(X[:, 0] + X[:, 1] * X[:, 2] + rng.normal(0, 0.5, rows) + 1), 0, 3)
    train = xgb.DMatrix(
        X, label=labels, qid=np.repeat(np.arange(rows // 8), 8), feature_names=list(FEATURE_NAMES)
    )
    candidates = X[:8]
    table = Table(title=f"explain=true cost, 8 candidates, {args.repeats} repeats, 1 thread")
    for column in (
        "trees x depth",
        "method",
        "score p50 ms",
        "explain p50 ms",
        "explain p99 ms",
        "ratio",
        "budget",
    ):
        table.add_column(column, justify="right")
    for trees, depth in track(SIZES, description="training and timing"):
        params = {"objective": "rank:ndcg", "max_depth": depth, "eta": 0.1, "nthread": 1, "seed": 0}
        booster = xgb.train(params, train, num_boost_round=trees)
        for approximate in (False, True):
            figures = measure_explain_latency(
                booster, candidates, FEATURE_NAMES, repeats=args.repeats, approximate=approximate
            )
            table.add_row(
                f"{trees} x {depth}",
                "saabas" if approximate else "treeshap",
                f"{figures['score_p50_ms']:.3f}",
                f"{figures['explain_p50_ms']:.3f}",
                f"{figures['explain_p99_ms']:.3f}",
                f"{figures['ratio_p50']:.1f}x",
                "ok" if figures["explain_p50_ms"] <= BUDGET_MS else "OVER",
            )
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
