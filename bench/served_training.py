"""Retraining on served rewards: which bias correction learns the best policy?

    nice python bench/served_training.py --borrowers 3000 --months 6 --seeds 3

One run: simulate a history, build its ranking dataset, train a champion on the train
split (fixed parameters), serve the validation period's presentations with the champion
(a share of decisions exploring: Plackett-Luce over the champion's scores with an
epsilon of uniform slates, logging exact per-position propensities; the rest greedy),
let the simulator's environment answer every slate, attribute the rewards with
``attune.rewards`` and retrain, with each correction of ``attune.training.served``, on the
train split plus the served rows. Every model is priced on the test period's
presentations by the exact true value in reward units (``attune.rewards.true_value``),
reported with the champion's, random's and the oracle's, and as a share of the oracle's
lift over random. Seeds vary the serving, the answers and XGBoost.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd


def _train(train, params: dict, *, rounds: int, seed: int):
    import xgboost as xgb

    from attune.training.search_space import training_labels

    base = {
        "objective": "rank:ndcg",
        "eta": 0.1,
        "max_depth": 6,
        "min_child_weight": 1.0,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "lambdarank_pair_method": "topk",
        "lambdarank_num_pair_per_sample": 3,
        "nthread": 2,
        "seed": seed,
        **params,
    }
    d = xgb.DMatrix(train.X, label=training_labels(train.label, base["objective"]), qid=train.qid)
    return xgb.train(base, d, num_boost_round=rounds)


def _scores(booster, candidates: np.ndarray, n_options: int) -> np.ndarray:
    return np.asarray(booster.inplace_predict(candidates, predict_type="margin")).reshape(
        -1, n_options
    )


def _serve(
    *,
    env,
    presentations,
    scores: np.ndarray,
    spec_hash: str,
    share: float,
    temperature: float,
    epsilon: float,
    rounds: int,
    seed: int,
):
    """Decisions (decision-log frame) and the environment's events for them."""
    from attune.data.schema import OPTION_IDS, TOUCHPOINTS
    from attune.experiments.assignment import hash_borrower
    from attune.serving.decision_log import DecisionRecord, records_to_table
    from attune.simulator.environment import ServedSlate
    from attune.simulator.logging_policy import sample_slates

    rng = np.random.default_rng(seed)
    s = env.states
    rows = s.rows(presentations.qid)
    n_opt = len(OPTION_IDS)
    cand = presentations.candidates.reshape(len(rows), n_opt, -1)
    # a borrower's presentations are served 20 days apart, rounds 400 days apart
    nth = pd.Series(s.borrower_id[rows]).groupby(s.borrower_id[rows]).cumcount().to_numpy()
    t0 = datetime(2027, 1, 1, tzinfo=UTC)
    records, slates = [], []
    for r in range(rounds):
        explore = rng.random(len(rows)) < share
        sampled, props = sample_slates(scores / temperature, epsilon=epsilon, rng=rng)
        greedy = np.argsort(-scores, axis=1, kind="stable")
        for i, row in enumerate(rows.tolist()):
            shown = sampled[i] if explore[i] else greedy[i, :3]
            rest = [o for o in greedy[i] if o not in set(shown.tolist())]
            ts = t0 + timedelta(days=400 * r + 20 * int(nth[i]))
            borrower = int(s.borrower_id[row])
            records.append(
                DecisionRecord(
                    decision_id=f"{r}-{i}",
                    ts=ts,
                    role="primary",
                    borrower_hash=hash_borrower(borrower, salt="bench"),
                    arm="champion",
                    model_version="champion",
                    feature_spec_hash=spec_hash,
                    touchpoint=TOUCHPOINTS[int(s.touchpoint[row])],
                    feature_source="request",
                    candidates=tuple(OPTION_IDS),
                    features=cand[i],
                    scores=scores[i],
                    returned_order=tuple(OPTION_IDS[o] for o in [*shown.tolist(), *rest]),
                    propensities=tuple(float(p) for p in props[i]) if explore[i] else None,
                    latency_ms=0.0,
                )
            )
            slates.append(
                ServedSlate(
                    borrower_id=borrower,
                    ts=ts,
                    touchpoint=TOUCHPOINTS[int(s.touchpoint[row])],
                    options=tuple(OPTION_IDS[o] for o in shown.tolist()),
                    presentation_id=int(s.presentation_id[row]),
                )
            )
    events = pd.DataFrame(env.answer(slates))
    events["ts"] = pd.to_datetime(events["ts"], utc=True, format="ISO8601")
    return records_to_table(records).to_pandas(), events, t0 + timedelta(days=400 * rounds + 400)


def run(args: argparse.Namespace) -> list[dict]:
    import ray

    from attune.data.pipeline import preprocess
    from attune.data.schema import OPTION_IDS
    from attune.rewards.attribution import attribute_rewards, hash_events
    from attune.rewards.config import DEFAULT_CONFIG
    from attune.rewards.true_value import TrueValue, oracle_share
    from attune.simulator.environment import SimulatorEnvironment
    from attune.simulator.generator import GenerateConfig, generate
    from attune.training.dataset import load_dataset
    from attune.training.evaluate import presentations_from_split
    from attune.training.served import CORRECTIONS, combine, served_groups

    out: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        history, features = str(Path(tmp) / "h"), str(Path(tmp) / "f")
        generate(
            GenerateConfig(
                borrowers=args.borrowers, months=args.months, seed=args.seed, out=history,
                parallel="local",
            ),
            progress=False,
        )  # fmt: skip
        ray.init(address="local", num_cpus=2, log_to_driver=False, include_dashboard=False)
        try:
            preprocess(history, features)
        finally:
            ray.shutdown()
        dataset = load_dataset(features)
        spec = dataset.spec
        valid_p = presentations_from_split(dataset["valid"], spec)
        test_p = presentations_from_split(dataset["test"], spec)
        n_opt = len(OPTION_IDS)
        env_test = SimulatorEnvironment.from_history(history, seed=0, presentation_ids=test_p.qid)
        truth = TrueValue(env_test, DEFAULT_CONFIG)
        reference = truth.reference(test_p.qid)
        print(
            f"history: {len(np.unique(dataset['train'].qid))} train groups, "
            f"{len(valid_p.qid)} served presentations, {len(test_p.qid)} test; references "
            + json.dumps({k: round(v, 4) for k, v in reference.items()})
        )
        for seed in range(args.seeds):
            start = time.perf_counter()
            champion = _train(dataset["train"], {}, rounds=args.rounds, seed=seed)
            env = SimulatorEnvironment.from_history(
                history, seed=1000 + seed, presentation_ids=valid_p.qid, history_ledger=False
            )
            decisions, events, as_of = _serve(
                env=env,
                presentations=valid_p,
                scores=_scores(champion, valid_p.candidates, n_opt),
                spec_hash=spec.hash,
                share=args.explore_share,
                temperature=args.temperature,
                epsilon=args.epsilon,
                rounds=args.serve_rounds,
                seed=seed,
            )
            rewards = attribute_rewards(
                decisions, hash_events(events, salt="bench"), DEFAULT_CONFIG, as_of=as_of
            )
            groups = served_groups(rewards, spec)
            row = {
                "seed": seed,
                "served_decisions": len(groups.decision_id),
                "exploring": int(groups.exploring.sum()),
                "mean_served_reward": float(rewards.column("reward").to_numpy().sum())
                / max(len(groups.decision_id), 1),
                **{f"ref_{k}": v for k, v in reference.items()},
            }
            value = truth.policy_value(test_p.qid, _scores(champion, test_p.candidates, n_opt))
            row["champion"] = value
            for correction in CORRECTIONS:
                result = combine(dataset["train"], groups, correction=correction, seed=seed)
                model = _train(result.train, result.params, rounds=args.rounds, seed=seed)
                scores = _scores(model, test_p.candidates, n_opt)
                row[correction] = truth.policy_value(test_p.qid, scores)
            row["seconds"] = time.perf_counter() - start
            out.append(row)
            print(
                f"seed {seed}: "
                + ", ".join(
                    f"{k} {row[k]:.4f} ({oracle_share(row[k], reference):.1%})"
                    for k in ("champion", *CORRECTIONS)
                )
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--borrowers", type=int, default=3000)
    parser.add_argument("--months", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7, help="History seed.")
    parser.add_argument("--seeds", type=int, default=3, help="Serving / training seeds.")
    parser.add_argument("--rounds", type=int, default=150, help="Boosting rounds.")
    parser.add_argument("--serve-rounds", type=int, default=3, help="Passes over the period.")
    parser.add_argument("--explore-share", type=float, default=0.3)
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--epsilon", type=float, default=0.1)
    args = parser.parse_args()
    rows = run(args)
    frame = pd.DataFrame(rows)
    cols = ["champion", "none", "lambdarank_unbiased", "ipw"]
    print("\nmean true value per test presentation (sd over seeds), oracle share:")
    ref = {k: float(frame[f"ref_{k}"].iloc[0]) for k in ("random", "best_fixed", "oracle")}
    for c in cols:
        share = (frame[c] - ref["random"]) / (ref["oracle"] - ref["random"])
        gain = (frame[c] - frame["champion"]).mean()
        print(
            f"  {c:22s} {frame[c].mean():.4f} ± {frame[c].std(ddof=1):.4f}   "
            f"oracle share {share.mean():.1%}   vs champion {gain:+.4f}"
        )
    print(f"  references: {json.dumps({k: round(v, 4) for k, v in ref.items()})}")


if __name__ == "__main__":
    main()
