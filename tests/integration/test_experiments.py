"""Experiments end to end: `attune experiment analyze` on S3 logs with Ray Data, and a
bandit served by Ray Serve over HTTP that learns from feedback without restarting."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attune import storage
from attune.cli import main
from attune.data.reader import read_table
from attune.data.schema import OPTION_IDS
from attune.experiments.ope import estimate_policy_value
from attune.serving.decision_log import DECISION_SCHEMA
from attune.simulator.generator import GenerateConfig, generate
from attune.simulator.ground_truth import load_ground_truth
from attune.simulator.logging_policy import slate_marginals

pytestmark = pytest.mark.integration

DAYS = 5
EFFECT = 0.15
SPLIT = {"champion": 0.8, "canary": 0.2}


def _write_parquet(uri: str, table: pa.Table) -> None:
    fs, path = storage.pyarrow_filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    pq.write_table(table, path, filesystem=fs)


def _decision_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows in the serving decision-log schema (list columns kept tiny)."""
    columns: dict[str, list[Any]] = {name: [] for name in DECISION_SCHEMA.names}
    for row in rows:
        full = {
            "borrower_hash": "0" * 16,
            "model_version": "v1",
            "feature_spec_hash": "h",
            "touchpoint": "app",
            "feature_source": "request",
            "candidates": ["pay_now", "autopay_enroll"],
            "features": [[0.0], [0.0]],
            "scores": [0.2, 0.1],
            "returned_order": ["pay_now", "autopay_enroll"],
            "propensities": None,
            "logging_policy": None,
            "latency_ms": 1.0,
            **row,
        }
        for name in DECISION_SCHEMA.names:
            columns[name].append(full[name])
    return pa.Table.from_pydict(columns, schema=DECISION_SCHEMA)


def _write_experiment_logs(root: str, seed: int) -> dict[str, int]:
    """Decision logs (with shadow copies) and outcomes; returns primary decisions per arm."""
    rng = np.random.default_rng(seed)
    start = datetime(2026, 3, 1, 9, tzinfo=UTC)
    counts = dict.fromkeys(SPLIT, 0)
    outcomes: dict[str, list[Any]] = {"decision_id": [], "reward": [], "pre_reward": []}
    for day in range(DAYS):
        rows = []
        for i in range(300):
            arm = "canary" if rng.random() < SPLIT["canary"] else "champion"
            counts[arm] += 1
            decision_id = f"d{day}-{i}"
            ts = start + timedelta(days=day, seconds=i)
            rows.append({"decision_id": decision_id, "ts": ts, "role": "primary", "arm": arm})
            if rng.random() < 0.5:  # mirrored to the shadow: same id, must not be counted
                rows.append({"decision_id": decision_id, "ts": ts, "role": "shadow", "arm": arm})
            if day == 0 and i < 6:
                continue  # no outcome row: the left join scores it fill_missing (0)
            pre = rng.normal(1.0, 1.0)
            reward = 0.6 * pre + EFFECT * (arm == "canary") + rng.normal(0, 0.5)
            outcomes["decision_id"].append(decision_id)
            outcomes["reward"].append(reward)
            outcomes["pre_reward"].append(pre)
        date = (start + timedelta(days=day)).strftime("%Y-%m-%d")
        _write_parquet(
            storage.join(root, "decisions", f"date={date}", "part-0.parquet"),
            _decision_table(rows),
        )
    _write_parquet(storage.join(root, "outcomes", "part-0.parquet"), pa.table(outcomes))
    return counts


def test_analyze_command_reads_s3_logs_with_ray_data_and_writes_report_and_plot(
    ray_cluster: object, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Primary decisions only, left-joined outcomes, CUPED, SRM and a daily sequence."""
    root = f"{s3_bucket}/store"
    counts = _write_experiment_logs(root, seed=0)
    out = f"{s3_bucket}/reports/exp-1"
    argv = [
        "experiment", "analyze",
        "--decisions", storage.join(root, "decisions"),
        "--outcomes", storage.join(root, "outcomes"),
        "--out", out,
        "--covariate", "pre_reward",
        "--weight", "champion=0.8", "--weight", "canary=0.2",
        "--partitions", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    assert storage.join(out, "report.json") in capsys.readouterr().out
    report = storage.read_json(storage.join(out, "report.json"))
    assert {arm: report["arms"][arm]["n"] for arm in SPLIT} == counts  # shadows excluded
    assert report["srm"]["flagged"] is False
    canary = report["comparisons"]["canary"]
    low, high = canary["absolute_ci"]
    assert low <= EFFECT <= high
    assert canary["variance_reduction"] > 0.3  # CUPED on a correlated pre-period metric
    assert [look["label"] for look in canary["over_time"]] == [
        f"2026-03-0{d + 1}" for d in range(DAYS)
    ]
    assert storage.read_bytes(storage.join(out, "lift_over_time.png")).startswith(b"\x89PNG")


def test_analyze_command_names_a_missing_column(
    ray_cluster: object, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = f"{s3_bucket}/store"
    _write_experiment_logs(root, seed=1)
    outcomes = storage.join(root, "outcomes")
    argv = [
        "experiment", "analyze",
        "--decisions", storage.join(root, "decisions"),
        "--outcomes", outcomes,
        "--out", f"{s3_bucket}/reports/bad",
        "--covariate", "no_such_column",
        "--partitions", "2",
    ]  # fmt: skip
    assert main(["--json-errors", *argv]) == 4  # invalid input
    error = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert error["error"] == "SchemaError"
    assert error["details"]["column"] == "no_such_column"
    assert error["details"]["file"] == outcomes


# ----------------------------------------------------------------------------- simulator


def _generate(root: Path, seed: int, borrowers: int = 800) -> None:
    config = GenerateConfig(
        borrowers=borrowers, months=2, seed=seed, out=str(root), parallel="local"
    )
    generate(config, progress=False)


# ----------------------------------------------------------------------------- OPE on simulator


def _ope_on_simulated_logs(root: Path, seed: int) -> tuple[dict[str, Any], float]:
    """Estimates of a target ranking policy from one simulated history, and its true value.

    The target is a Plackett-Luce policy (10 % exploration) over noisy true values: a
    good, context-dependent ranker. The reward model for DM/DR overestimates every value
    by 10 % with 20 % multiplicative noise, so DM is biased and DR has to correct it.
    """
    _generate(root, seed=seed)
    shown = read_table(str(root), "presentations").to_pandas()
    truth = load_ground_truth(str(root))
    rows = truth.rows(shown["presentation_id"].to_numpy())
    bias = truth.position_bias
    noise = np.random.default_rng(seed)
    target_all = slate_marginals(
        10 * truth.values + noise.normal(0, 0.5, truth.values.shape), epsilon=0.1
    )
    true_value = float((target_all * (truth.values[:, :, None] * bias)).sum(axis=(1, 2)).mean())
    model = np.clip(1.1 * truth.values * np.exp(noise.normal(0, 0.2, truth.values.shape)), 0, 1)
    estimates = estimate_policy_value(
        actions=shown["option_id"].map({o: i for i, o in enumerate(OPTION_IDS)}).to_numpy(),
        rewards=((shown["response"] == 2) & shown["current_14d"]).to_numpy(dtype=float),
        propensities=shown["propensity"].to_numpy(),
        target_probs=target_all[rows],
        positions=shown["position"].to_numpy().astype(int) - 1,
        estimated_rewards=model[rows][:, :, None] * bias,
        seed=seed,
    )
    return estimates, true_value


def test_ope_on_simulator_logs_covers_truth_over_50_seeds(tmp_path: Path) -> None:
    """Done-when: SNIPS and DR 95 % CIs cover the true value >= 90 % of 50 simulated
    histories, and DR's mean absolute error is below IPS's."""
    runs = [_ope_on_simulated_logs(tmp_path / f"h{seed}", seed) for seed in range(50)]
    figures = {
        e: {
            "coverage": float(np.mean([r[e].ci_low <= t <= r[e].ci_high for r, t in runs])),
            "mae": float(np.mean([abs(r[e].value - t) for r, t in runs])),
        }
        for e in ("ips", "snips", "dm", "dr")
    }
    print(f"\nOPE on simulator logs, 50 seeds: {figures}")
    assert figures["snips"]["coverage"] >= 0.90
    assert figures["dr"]["coverage"] >= 0.90
    assert figures["dr"]["mae"] < figures["ips"]["mae"]
