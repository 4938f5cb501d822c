"""The learning loop over many seeded simulator histories: is the off-policy gate right?

    python bench/loop.py [--seeds 6] [--borrowers 10000] [--months 12] [--iterations 3]
                         [--requests 1200] [--trials 2] [--plot loop.png] [--quick]

For each seed: generate a history, preprocess it (Ray Data), train a champion on the
legacy logs (Ray Tune), then run the learning loop (attune.demo.loop) against the
ranking service *in this process* (the same RankingService, decision log, event log,
``attune outcomes`` attribution, retraining and off-policy gate as the served app,
without HTTP): serve with exploration, borrowers answer from the simulator's ground
truth, rewards are attributed from their events, a candidate is retrained on what was
served, gated off-policy, canaried and promoted or refused.

Printed, over every (seed, iteration):

* how often the OPE interval of the candidate covers its true value (ground truth on
  the same presentations), and the OPE error against the realized canary value next
  to the realized value's own sampling error (both per decision, same units);
* the candidate's and the served policy's share of the oracle's lift over random per
  iteration (iteration 0: the champion trained on the legacy logs);
* what exploration costs: 1 - true value of the slates served while exploring / true
  value of the champion's greedy slates on the same presentations.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "platform"))


def _one_seed(args: argparse.Namespace, seed: int, root: Path) -> list[dict[str, Any]]:
    from attune.data.pipeline import preprocess
    from attune.demo.endpoints import LocalEndpoint
    from attune.demo.loop import Loop, LoopConfig, load_pool, simulator
    from attune.registry import Registry
    from attune.serving.model import OnnxScorer
    from attune.simulator.generator import GenerateConfig, generate
    from attune.training.config import TuneConfig
    from attune.training.pipeline import train_and_register

    histories, features = str(root / "histories"), str(root / "features")
    registry_uri = str(root / "registry")
    generate(
        GenerateConfig(
            borrowers=args.borrowers, months=args.months, seed=seed, out=histories, overwrite=True
        ),
        progress=False,
    )
    preprocess(histories, features)

    def train(name: str, train_seed: int, served: tuple[str, ...] = ()) -> str:
        config = TuneConfig(
            features=features,
            registry=registry_uri,
            trials=args.trials,
            max_rounds=args.max_rounds,
            seed=train_seed,
            name=name,
            served=served,
        )
        return train_and_register(config).version_id

    champion = train("champion", seed)
    pool = load_pool(features)
    needed = 2 * args.iterations * args.requests  # an exploring and a canary phase per turn
    distinct = len(set(pool.borrower_id.tolist()))
    if distinct < needed:  # a loop never serves a borrower twice
        raise SystemExit(
            f"seed {seed}: the test split has {distinct} distinct borrowers; --iterations "
            f"{args.iterations} x 2 phases x --requests {args.requests} needs {needed} "
            "(raise --borrowers or lower --requests)"
        )
    environment, truth = simulator(pool, histories, seed=seed)
    registry = Registry(registry_uri)
    registry.set_alias("champion", champion, by="bench", justification="bench", override=True)
    scorers: dict[str, OnnxScorer] = {}

    def score(version: str, rows: Any) -> Any:
        if version not in scorers:
            scorers[version] = OnnxScorer.load(registry, version)
        return scorers[version].score(rows)

    def promote(version: str) -> None:
        registry.set_alias("champion", version, by="bench", justification="loop", override=True)

    loop = Loop(
        config=LoopConfig(iterations=args.iterations, requests=args.requests, seed=seed),
        endpoint=LocalEndpoint(
            registry=registry, store=str(root), borrower_salt=f"bench-{seed}", seed=seed
        ),
        environment=environment,
        truth=truth,
        pool=pool,
        retrain=lambda i, rewards: train(f"loop-{i + 1}", seed + 100 + i, (rewards,)),
        score=score,
        registry=registry,
        salt=f"bench-{seed}",
        champion=champion,
        promote=promote,
    )
    rows = []
    for i, it in enumerate(loop.run()):
        row = {"seed": seed, "iteration": i + 1, **it.to_dict()}
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)  # one line per turn: a partial run reads
    return rows


def _report(rows: list[dict[str, Any]], wall_s: float) -> dict[str, Any]:
    judged = [r for r in rows if r["ope"]]
    covered = [r["ope"]["ci_low"] <= r["true_value"] <= r["ope"]["ci_high"] for r in judged]
    canaried = [r for r in judged if r["realized"] and r["realized"]["n"] > 1]
    errors = [abs(r["ope"]["value"] - r["realized"]["value"]) for r in canaried]
    sampling = [(r["realized"]["ci_high"] - r["realized"]["ci_low"]) / (2 * 1.96) for r in canaried]
    by_iteration: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_iteration.setdefault(r["iteration"], []).append(r)

    def mean(values: list[float]) -> float:
        return statistics.fmean(values) if values else float("nan")

    iterations = {
        i: {
            "champion oracle share": mean(
                [
                    (r["champion_true_value"] - r["references"]["random"])
                    / (r["references"]["oracle"] - r["references"]["random"])
                    for r in group
                ]
            ),
            "candidate oracle share": mean([r["oracle_share"] for r in group]),
            "served oracle share (after)": mean([r["served_oracle_share"] for r in group]),
            "promoted": sum(r["promoted"] for r in group),
            "exploration cost": mean([r["exploration_cost"] for r in group]),
        }
        for i, group in sorted(by_iteration.items())
    }
    return {
        "runs": len({r["seed"] for r in rows}),
        "iterations judged by OPE": len(judged),
        "OPE interval covers the true value": mean([float(c) for c in covered]),
        "OPE |error| vs realized canary value (mean)": mean(errors),
        "realized canary sampling error (mean std err)": mean(sampling),
        "per iteration": iterations,
        "wall s": round(wall_s, 1),
    }


def _plot(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for seed in sorted({r["seed"] for r in rows}):
        mine = [r for r in rows if r["seed"] == seed]
        x = [r["iteration"] for r in mine]
        left.plot(x, [r["served_oracle_share"] for r in mine], "o-", alpha=0.6)
    left.axhline(0.9, color="#3a7d44", ls="--", lw=1, label="goal 0.90")
    left.set_xlabel("iteration")
    left.set_ylabel("served policy: share of the oracle's lift")
    left.legend()
    judged = [r for r in rows if r["ope"]]
    truth = [r["true_value"] for r in judged]
    est = [r["ope"]["value"] for r in judged]
    err = [[r["ope"]["value"] - r["ope"]["ci_low"] for r in judged],
           [r["ope"]["ci_high"] - r["ope"]["value"] for r in judged]]  # fmt: skip
    right.errorbar(truth, est, yerr=err, fmt="o", alpha=0.7)
    lo, hi = min(truth + est, default=0), max(truth + est, default=1)
    right.plot([lo, hi], [lo, hi], color="#888", lw=1)
    right.set_xlabel("candidate's true value")
    right.set_ylabel("off-policy estimate (95 % CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--first-seed", type=int, default=9001, help="Seeds the tests don't use.")
    parser.add_argument("--borrowers", type=int, default=10000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--max-rounds", type=int, default=150)
    parser.add_argument("--plot", default=None, help="Write a PNG here.")
    parser.add_argument("--json", default=None, help="Write every row and the report here.")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 1500 borrowers.")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.borrowers, args.requests, args.iterations = 2, 1500, 300, 2
    import logging

    import ray

    for attempt in range(5):  # a busy shared host can time a node's start-up out
        try:
            ray.init(
                address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING
            )
            break
        except Exception:
            ray.shutdown()
            if attempt == 4:
                raise
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="attune-loop-") as tmp:
        for k in range(args.seeds):
            seed = args.first_seed + k
            rows.extend(_one_seed(args, seed, Path(tmp) / f"seed-{seed}"))
    report = _report(rows, time.perf_counter() - started)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"report": report, "rows": rows}, indent=2))
    if args.plot:
        _plot(rows, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
