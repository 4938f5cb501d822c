"""Ranking quality by the outcome: NDCG-selected versus value-selected sweep winners.

    python bench/quality.py [--sizes 6000,20000,60000] [--seeds 101] [--runs 6000:101,...]
        [--trials 8] [--max-rounds 150] [--work DIR] [--out DIR]

For every size and seed: simulate a history (``attune generate``, 12 months) and
preprocess it (both kept under ``--work`` and reused), run one sweep
(:func:`attune.training.tune.run_sweep`, FIFO so every trial keeps its checkpoint, the
default selection by estimated policy value), and take two winners from the same
trials: the best by validation NDCG@3 (at its best NDCG round) and the best by the
off-policy estimate of its served policy's value on validation (the default). For each
winner it prints, from the simulator's ground truth on the test split (never used to
select), the true share of the oracle's lift over random; the validation estimate with
its 95 % interval against the true test value of the same policy; and the largest gap
between the model's and the oracle's first-position option mix, in points. The goals
of the work that introduced this bench are checked at the end: share >= 0.92 at 20k
borrowers and >= 0.85 at 6k, interval coverage in >= 90 % of runs, and mix within
5 points for every option. Writes ``quality.json`` and ``quality.png`` to ``--out``.

Each winner also gets the fairness gate's verdict on the test split, as the registry
records it for a version. Seeds 101 and up are not used by the tests. Starts a local
Ray unless ``RAY_ADDRESS`` names one. Run it with ``nice``: it is CPU-bound for minutes per size.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GOAL_SHARE = {6000: 0.85, 20000: 0.92}
GOAL_COVERAGE = 0.90
GOAL_MIX_POINTS = 5.0


def _prepare(borrowers: int, seed: int, work: Path) -> Path:
    """Generate and preprocess one history (each stage reused when already complete)."""
    root = work / f"b{borrowers}-s{seed}"
    if (root / "features" / "manifest.json").exists():
        return root
    attune = [sys.executable, "-m", "attune.cli"]
    if not (root / "histories" / "manifest.json").exists():
        generate = ["generate", "--borrowers", str(borrowers), "--months", "12"]
        generate += ["--seed", str(seed), "--out", str(root / "histories"), "--quiet"]
        subprocess.run([*attune, *generate, "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    preprocess = ["preprocess", "--histories", str(root / "histories")]
    preprocess += ["--out", str(root / "features")]
    subprocess.run(
        [*attune, *preprocess], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return root


def _winner_booster(trial: Any, best_round: int, store: str) -> Any:
    """``trial``'s model cut to ``best_round`` (FIFO: every trial keeps its checkpoint)."""
    from attune.training.tune import load_checkpoint

    booster = load_checkpoint(trial, storage_uri=store, rounds=best_round)
    if booster is None:
        raise RuntimeError(f"trial {trial.trial_id} kept no checkpoint: {trial.error}")
    return booster


def _evaluate(booster: Any, dataset: Any, histories: str, seed: int) -> dict[str, Any]:
    import numpy as np

    from attune.governance.gates.fairness_gate import check_fairness
    from attune.governance.version_files import serving_fairness
    from attune.simulator.ground_truth import load_ground_truth, policy_values
    from attune.training import evaluate
    from attune.training.policy_value import estimate_value, logged_slates

    def score(X: Any) -> Any:
        return np.asarray(booster.inplace_predict(X, predict_type="margin"))

    test = dataset["test"]
    presentations = evaluate.presentations_from_split(test, dataset.spec)
    truth = load_ground_truth(histories)
    report = evaluate.policy_evaluation(presentations, score=score, ground_truth=truth)
    log = logged_slates(dataset["valid"], dataset.spec)
    valid_scores = score(log.presentations.candidates)
    estimate = estimate_value(log, valid_scores, seed=seed)
    valid_true = policy_values(
        truth, presentation_ids=log.presentations.qid, model_scores=log.scores_matrix(valid_scores)
    )["model"]
    test_true = report.values["model"]
    # The test split's own logged slates were not used to select: an honest estimate.
    test_log = logged_slates(test, dataset.spec)
    honest = estimate_value(test_log, score(test_log.presentations.candidates), seed=seed)
    fairness = serving_fairness(
        test=test, feature_names=dataset.spec.names, score=score, histories=histories
    )
    gate = check_fairness(fairness).model_dump(mode="json") if fairness is not None else None
    gaps = {
        o: 100.0 * (report.model_top1_mix[o] - report.oracle_top1_mix[o])
        for o in report.model_top1_mix
    }
    return {
        "share": report.share_of_oracle_lift["model"],
        "test_true": test_true,
        "valid_true": valid_true,
        "estimate": estimate.to_dict(),
        "covers_test_true": estimate.ci_low <= test_true <= estimate.ci_high,
        "covers_valid_true": estimate.ci_low <= valid_true <= estimate.ci_high,
        "test_estimate": honest.to_dict(),
        "test_estimate_covers": honest.ci_low <= test_true <= honest.ci_high,
        "mix_gap_points": gaps,
        "max_mix_gap": max(abs(g) for g in gaps.values()),
        "model_mix": report.model_top1_mix,
        "oracle_mix": report.oracle_top1_mix,
        "values": report.values,
        "fairness_gate": gate,
    }


def _reference_gates(dataset: Any, histories: str, seed: int) -> dict[str, Any]:
    """The fairness gate on the same test rows ranked by the oracle and at random.

    The oracle ranks each presentation's logged options by their true value (the
    simulator's ground truth), so a refusal of the oracle is a refusal of the outcomes
    themselves, not of a model. ``None`` for a history without a protected table.
    """
    import numpy as np

    from attune.data.schema import OPTION_IDS
    from attune.governance.gates.fairness_gate import check_fairness
    from attune.governance.version_files import serving_fairness
    from attune.simulator.ground_truth import load_ground_truth

    test = dataset["test"]
    truth = load_ground_truth(histories)
    column = {o: j for j, o in enumerate(OPTION_IDS)}
    true_value = truth.subset(test.qid)[
        np.arange(len(test.qid)), [column[o] for o in test.option_id]
    ]
    noise = np.random.default_rng(seed).random(len(test.qid))
    rankings = {"oracle": true_value, "random": noise}
    out: dict[str, Any] = {}
    for name, values in rankings.items():

        def fixed(_rows: Any, v: Any = values) -> Any:  # test.X's row order
            return v

        report = serving_fairness(
            test=test, feature_names=dataset.spec.names, score=fixed, histories=histories
        )
        out[name] = check_fairness(report).model_dump(mode="json") if report else None
    return out


def _run_one(
    borrowers: int, seed: int, *, work: Path, trials: int, max_rounds: int, store: str
) -> dict[str, Any]:
    import numpy as np

    from attune.training.config import TuneConfig
    from attune.training.dataset import load_dataset
    from attune.training.tune import run_sweep

    root = _prepare(borrowers, seed, work)
    dataset = load_dataset(str(root / "features"))
    config = TuneConfig(
        features=str(root / "features"),
        registry=str(work / "registry"),
        trials=trials,
        max_rounds=max_rounds,
        early_stopping_rounds=min(30, max_rounds - 1),
        scheduler="fifo",
        seed=seed,
    )
    start = time.perf_counter()
    sweep = run_sweep(
        dataset["train"],
        dataset["valid"],
        spec=dataset.spec,
        config=config,
        name=f"quality-{borrowers}-{seed}-{int(time.time())}",
        storage_uri=store,
    )
    wall = time.perf_counter() - start
    histories = str(root / "histories")
    finished = [t for t in sweep.trials if t.curve]
    by_ndcg = max(finished, key=lambda t: max(t.curve))
    ndcg_round = int(np.argmax(by_ndcg.curve)) + 1
    out: dict[str, Any] = {"borrowers": borrowers, "seed": seed, "sweep_s": wall}
    for rule, trial, rounds in (
        ("ndcg", by_ndcg, ndcg_round),
        ("value", sweep.best, sweep.best.best_round),
    ):
        booster = _winner_booster(trial, rounds, store)
        out[rule] = {
            "trial": trial.trial_id,
            "objective": trial.params["objective"],
            "rounds": rounds,
            **_evaluate(booster, dataset, histories, seed),
        }
    out["reference_gates"] = _reference_gates(dataset, histories, seed)
    return out


def _table(runs: list[dict[str, Any]]) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="test-split truth of NDCG-selected vs value-selected winners")
    columns: tuple[str, ...] = ("borrowers", "seed", "rule", "objective", "share of oracle lift")
    columns += ("valid estimate [95% CI]", "true test value", "covers", "max mix gap (pts)")
    columns += ("fairness gate",)
    for c in columns:
        table.add_column(c, justify="right")
    for run in runs:
        for rule in ("ndcg", "value"):
            r = run[rule]
            e = r["estimate"]
            table.add_row(
                str(run["borrowers"]),
                str(run["seed"]),
                rule,
                r["objective"],
                f"{r['share']:.3f}",
                f"{e['value']:.4f} [{e['ci_low']:.4f}, {e['ci_high']:.4f}]",
                f"{r['test_true']:.4f}",
                "yes" if r["covers_test_true"] else "no",
                f"{r['max_mix_gap']:.1f}",
                _gate_cell(r.get("fairness_gate")),
            )
    console = Console(record=True, width=150)
    console.print(table)
    for line in _goals(runs):
        console.print(line)
    return console.export_text()


def _gate_cell(gate: dict[str, Any] | None) -> str:
    if gate is None:
        return "no protected table"
    return "passed" if gate["passed"] else f"refused ({len(gate['reasons'])} bounds)"


def _goals(runs: list[dict[str, Any]]) -> list[str]:
    lines = []
    for size, goal in GOAL_SHARE.items():
        shares = [r["value"]["share"] for r in runs if r["borrowers"] == size]
        if shares:
            met = all(s >= goal for s in shares)
            lines.append(
                f"share >= {goal} at {size}: {'met' if met else 'missed'} "
                f"(value-selected: {', '.join(f'{s:.3f}' for s in shares)})"
            )
    covered = [r["value"]["covers_test_true"] for r in runs]
    rate = sum(covered) / len(covered)
    lines.append(
        f"validation interval covers the true test value in {rate:.0%} of {len(covered)} "
        f"runs: {'met' if rate >= GOAL_COVERAGE else 'missed'} (goal {GOAL_COVERAGE:.0%})"
    )
    honest = [r["value"]["test_estimate_covers"] for r in runs if "test_estimate" in r["value"]]
    if honest:
        lines.append(
            f"test-split estimate (not used to select) covers it in "
            f"{sum(honest) / len(honest):.0%} of {len(honest)} runs"
        )
    gates = [(r["borrowers"], r["value"].get("fairness_gate")) for r in runs]
    judged = [(size, g) for size, g in gates if g is not None]
    if judged:
        refused = [
            f"{size // 1000}k: {'; '.join(g['reasons'])}" for size, g in judged if not g["passed"]
        ]
        lines.append(
            f"fairness gate on the value-selected winner: passed in "
            f"{len(judged) - len(refused)} of {len(judged)} runs"
            + "".join(f"\n  refused at {r}" for r in refused)
        )
    gaps = [r["value"]["max_mix_gap"] for r in runs]
    lines.append(
        f"first-position mix within {GOAL_MIX_POINTS:g} points: "
        f"{'met' if max(gaps) <= GOAL_MIX_POINTS else 'missed'} "
        f"(largest gap per run: {', '.join(f'{g:.1f}' for g in gaps)})"
    )
    return lines


def _plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(14, 5))
    labels = [f"{r['borrowers'] // 1000}k s{r['seed']}" for r in runs]
    x = np.arange(len(runs))
    ax.bar(x - 0.2, [r["ndcg"]["share"] for r in runs], 0.4, label="NDCG-selected")
    ax.bar(x + 0.2, [r["value"]["share"] for r in runs], 0.4, label="value-selected")
    for size, goal in GOAL_SHARE.items():
        ax.axhline(goal, linestyle="--", linewidth=0.8, color="grey")
        ax.annotate(f"goal {size // 1000}k", (len(runs) - 0.5, goal), fontsize=8)
    ax.set_xticks(x, labels)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("true share of the oracle's lift (test)")
    ax.legend(loc="lower left")
    last = runs[-1]["value"]
    options = list(last["model_mix"])
    y = np.arange(len(options))
    bx.barh(y - 0.2, [last["model_mix"][o] for o in options], 0.4, label="value-selected model")
    bx.barh(y + 0.2, [last["oracle_mix"][o] for o in options], 0.4, label="oracle")
    bx.set_yticks(y, options)
    bx.set_xlabel(f"share ranked first ({labels[-1]})")
    bx.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/quality.py", description=__doc__)
    parser.add_argument("--sizes", default="6000,20000,60000", help="Borrower counts.")
    parser.add_argument("--seeds", default="101", help="Simulator seeds (comma-separated).")
    parser.add_argument(
        "--runs", default=None, help="Explicit size:seed pairs (e.g. 6000:101,20000:102)."
    )
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--max-rounds", type=int, default=150)
    parser.add_argument("--work", default=None, help="Where histories and datasets are kept.")
    parser.add_argument("--out", default="bench-quality", help="Where the JSON and PNG go.")
    parser.add_argument(
        "--report-only", action="store_true", help="Table and PNG from --out's quality.json."
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.report_only:
        _report(json.loads((out / "quality.json").read_text()), out)
        return 0

    import ray

    from attune.settings import get_settings

    work = Path(args.work or tempfile.mkdtemp(prefix="bench-quality-"))
    out.mkdir(parents=True, exist_ok=True)
    if args.runs:
        pairs = [tuple(int(v) for v in p.split(":")) for p in args.runs.split(",")]
    else:
        seeds = [int(s) for s in args.seeds.split(",")]
        pairs = [(int(size), seed) for size in args.sizes.split(",") for seed in seeds]
    for size, seed in pairs:  # data first, outside Ray, so preprocessing gets every CPU
        _prepare(size, seed, work)
    ray.init(address=get_settings().ray_address or "local", log_to_driver=False)
    runs = []
    try:
        for size, seed in pairs:
            runs.append(
                _run_one(
                    size,
                    seed,
                    work=work,
                    trials=args.trials,
                    max_rounds=args.max_rounds,
                    store=str(work / "tune"),
                )
            )
            (out / "quality.json").write_text(json.dumps(runs, indent=2, default=str))
    finally:
        ray.shutdown()
    _report(runs, out)
    return 0


def _report(runs: list[dict[str, Any]], out: Path) -> None:
    (out / "quality.txt").write_text(_table(runs))
    _plot(runs, out / "quality.png")


if __name__ == "__main__":
    sys.exit(main())
