"""Pieces of the learning loop that run without Ray (attune.demo.loop, attune.demo.endpoints)."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from attune.data.schema import OPTION_IDS
from attune.demo.endpoints import LocalEndpoint
from attune.demo.loop import LoopIteration, MeanEstimate, Pool, plot_loop, summary_frame
from attune.serving.config import RolloutConfig
from tests.integration.serving_fixtures import DictStore, model_files, rank_body, ranker_onnx


def _pool(borrowers: list[int]) -> Pool:
    n = len(borrowers)
    return Pool(
        qid=np.arange(n, dtype=np.int64),
        borrower_id=np.asarray(borrowers, dtype=np.int64),
        bodies=[{} for _ in borrowers],
        touchpoint=["app"] * n,
        candidates=np.zeros((n * len(OPTION_IDS), 4), dtype=np.float32),
        legacy=np.zeros((n, 3), dtype=np.int64),
    )


def test_draws_never_serve_a_borrower_twice_in_a_loop() -> None:
    pool = _pool([1, 1, 2, 2, 3, 4, 5, 5, 6])
    used: set[int] = set()
    rng = np.random.default_rng(0)
    first, second = pool.draw(3, rng, used), pool.draw(10, rng, used)
    drawn = [int(b) for b in pool.borrower_id[np.concatenate([first, second])]]
    assert len(first) == 3 and len(drawn) == len(set(drawn)) == 6


def test_estimate_is_the_mean_with_a_normal_interval() -> None:
    est = MeanEstimate.mean_of(np.asarray([0.0, 1.0] * 50))
    assert est.value == 0.5 and est.n == 100
    assert est.ci_high - est.value == pytest.approx(1.96 * np.std([0, 1] * 50, ddof=1) / 10)
    assert math.isnan(MeanEstimate.mean_of(np.asarray([])).value)


def _iteration(value: float, promoted: bool) -> LoopIteration:
    return LoopIteration(
        candidate="v2",
        champion="v1",
        ope={"estimator": "snips", "value": value, "ci_low": 0.1, "ci_high": 0.3, "n": 9},
        realized=None,
        true_value=value,
        champion_true_value=0.2,
        oracle_share=0.8,
        served_oracle_share=0.8,
        promoted=promoted,
        refused_by=None if promoted else "ope",
        references={"random": 0.1, "legacy": 0.15, "best_fixed": 0.18, "oracle": 0.3},
    )


def test_the_loop_plot_and_frame_hold_every_iteration(tmp_path: Path) -> None:
    iterations = [_iteration(0.22, True), _iteration(0.19, False)]
    frame = summary_frame(iterations)
    assert frame["iteration"].tolist() == [1, 2]
    assert frame["oracle"].tolist() == [0.3, 0.3]
    png = plot_loop(iterations, str(tmp_path / "loop.png"))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(iterations[0].to_dict()) >= {
        "candidate",
        "ope",
        "realized",
        "true_value",
        "champion_true_value",
        "oracle_share",
        "promoted",
    }


def test_the_local_endpoint_logs_decisions_and_posted_events_like_the_app(tmp_path: Path) -> None:
    store = DictStore({"champ": model_files(ranker_onnx(seed=1))}, {"champion": "champ"})
    endpoint = LocalEndpoint(registry=store, store=str(tmp_path), borrower_salt="s", seed=1)
    endpoint.apply(RolloutConfig(champion="champ", exploration={"policy": "softmax", "share": 1.0}))
    answers = endpoint.rank([rank_body(b) for b in range(5)])
    assert all(a["options"][0]["propensity"] is not None for a in answers)
    now = datetime.now(UTC).isoformat()
    endpoint.post_events(
        [
            {"event_id": f"e{b}", "borrower_id": b, "ts": now, "event_type": "autopay_on"}
            for b in range(5)
        ]
    )
    endpoint.flush()
    decisions = pads.dataset(str(tmp_path / "decisions"), partitioning="hive").to_table()
    events = pads.dataset(str(tmp_path / "events_online"), partitioning="hive").to_table()
    assert sorted(decisions.column("decision_id").to_pylist()) == sorted(
        a["decision_id"] for a in answers
    )
    assert sorted(events.column("event_id").to_pylist()) == [f"e{b}" for b in range(5)]
