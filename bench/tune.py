"""ASHA versus running every trial to the full budget, on the same search budget.

    python bench/tune.py --features F [--trials 16] [--max-rounds 200] [--cpus-per-trial 1]

Runs the sweep of :mod:`attune.training.tune` twice over the same dataset, the same
seeded Optuna search and the same trial count and round budget: (a) with ASHA
stopping weak trials, (b) with FIFO (every trial runs until the budget or early
stopping). Prints the best validation NDCG@3, the trial-iterations (boosting rounds
summed over trials) and the wall time of each, and ASHA's figures as ratios of FIFO's,
measured side by side in one run. Starts a local Ray unless ``RAY_ADDRESS`` names one.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/tune.py", description=__doc__)
    parser.add_argument("--features", required=True, help="Ranking dataset root.")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--max-rounds", type=int, default=200)
    parser.add_argument("--early-stopping-rounds", type=int, default=25)
    parser.add_argument("--grace-period", type=int, default=10)
    parser.add_argument("--cpus-per-trial", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--storage", default=None, help="Tune storage (default: a temp dir).")
    args = parser.parse_args(argv)

    import tempfile

    import ray
    from rich.console import Console
    from rich.table import Table

    from attune.settings import get_settings
    from attune.training.config import TuneConfig
    from attune.training.dataset import load_dataset
    from attune.training.tune import SweepResult, run_sweep

    dataset = load_dataset(args.features, splits=("train", "valid"))
    print(
        f"dataset: {len(dataset['train'])} train rows / {dataset['train'].n_groups} groups, "
        f"{len(dataset['valid'])} valid rows; {args.trials} trials x {args.max_rounds} rounds"
    )
    storage = args.storage or tempfile.mkdtemp(prefix="bench-tune-")
    ray.init(address=get_settings().ray_address or "local", log_to_driver=False)
    runs: dict[str, tuple[SweepResult, float]] = {}
    try:
        for scheduler in ("asha", "fifo"):
            config = TuneConfig(
                features=args.features,
                registry=storage,
                trials=args.trials,
                max_rounds=args.max_rounds,
                early_stopping_rounds=args.early_stopping_rounds,
                grace_period=args.grace_period,
                cpus_per_trial=args.cpus_per_trial,
                scheduler=scheduler,
                seed=args.seed,
            )
            start = time.perf_counter()
            sweep = run_sweep(
                dataset["train"],
                dataset["valid"],
                spec=dataset.spec,
                config=config,
                name=f"bench-{scheduler}-{int(time.time())}",
                storage_uri=storage,
            )
            runs[scheduler] = (sweep, time.perf_counter() - start)
    finally:
        ray.shutdown()

    table = Table(title="same search budget: ASHA vs full budget (FIFO)")
    for column in ("scheduler", "best valid NDCG@3", "trial-iterations", "wall s"):
        table.add_column(column, justify="right")
    for scheduler, (sweep, wall) in runs.items():
        table.add_row(
            scheduler, f"{sweep.best.best_ndcg:.4f}", str(sweep.total_rounds), f"{wall:.1f}"
        )
    asha, asha_wall = runs["asha"]
    fifo, fifo_wall = runs["fifo"]
    table.add_row(
        "asha / fifo",
        f"{asha.best.best_ndcg / fifo.best.best_ndcg:.4f}",
        f"{asha.total_rounds / fifo.total_rounds:.3f}",
        f"{asha_wall / fifo_wall:.3f}",
    )
    Console(width=120).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
