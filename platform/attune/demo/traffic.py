"""Realistic traffic for the demo: test-split presentations sent to ``/v1/rank``.

Each request is one held-out presentation of the simulator: the borrower's
point-in-time state (the ``BORROWER_FEATURES`` of the ranking dataset), the touchpoint,
and every catalog option as a candidate. The app's answer is then *lived* through the
simulator's ground truth: the top three options are shown, position ``k`` is examined
with probability ``b_k``, and an examined option cures the loan with probability
``value(presentation, option)``. So outcomes depend on what the served model chose,
and the A/B analysis compares arms on real consequences of their rankings.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from attune.data.schema import OPTION_IDS, SLATE_SIZE, TOUCHPOINTS
from attune.data.spec import BORROWER_FEATURES, FeatureSpec
from attune.simulator.ground_truth import GroundTruth


@dataclass(frozen=True)
class Presentation:
    """One held-out presentation turned into a request body."""

    qid: int
    borrower_id: int
    body: bytes
    covariate: float


@dataclass
class TrafficResult:
    """What one traffic phase sent and what came back."""

    sent: int = 0
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    arms: dict[str, int] = field(default_factory=dict)
    outcomes: list[dict[str, Any]] = field(default_factory=list)

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def presentations(split: Any, spec: FeatureSpec, *, limit: int, seed: int) -> list[Presentation]:
    """Up to ``limit`` test-split presentations (random, seeded) as ``/v1/rank`` bodies.

    ``split`` is a :class:`attune.training.dataset.RankingSplit`; borrower features are
    identical on every row of a group, so the first row of each group is used.
    """
    first = np.flatnonzero(np.r_[True, split.qid[1:] != split.qid[:-1]])
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(first, size=min(limit, len(first)), replace=False))
    index = {name: spec.names.index(name) for name in BORROWER_FEATURES}
    touch = [spec.names.index(f"touchpoint_{t}") for t in TOUCHPOINTS]
    out = []
    for row in chosen:
        x = split.X[row]
        # exact float32 values: rounding would move them across the drift reference's bin edges
        borrower = {name: float(x[i]) for name, i in index.items()}
        body = {
            "borrower_id": int(split.borrower_id[row]),
            "context": {"touchpoint": TOUCHPOINTS[int(np.argmax(x[touch]))]},
            "candidates": [{"option_id": option} for option in OPTION_IDS],
            "borrower": borrower,
        }
        out.append(
            Presentation(
                qid=int(split.qid[row]),
                borrower_id=int(split.borrower_id[row]),
                body=json.dumps(body).encode(),
                covariate=borrower["on_time_rate_180"],
            )
        )
    return out


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any] | None]:
    request = urllib.request.Request(
        url, data=body, headers={"content-type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, None
    except (urllib.error.URLError, TimeoutError, ConnectionError):
        return 0, None


def send(
    url: str,
    requests: list[Presentation],
    *,
    ground_truth: GroundTruth,
    seed: int,
    concurrency: int,
    on_done: Callable[[], None] | None = None,
) -> TrafficResult:
    """POST every request to ``url`` from ``concurrency`` threads; draw each outcome."""
    result = TrafficResult()
    rng = np.random.default_rng(seed)
    values = ground_truth.subset(np.asarray([p.qid for p in requests], dtype=np.int64))
    bias = np.asarray(ground_truth.position_bias, dtype=float)
    option_index = {o: i for i, o in enumerate(OPTION_IDS)}

    def one(p: Presentation) -> tuple[Presentation, int, dict[str, Any] | None, float]:
        start = time.perf_counter()
        status, answer = _post(url, p.body)
        return p, status, answer, (time.perf_counter() - start) * 1000

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for i, (p, status, answer, ms) in enumerate(pool.map(one, requests)):
            result.sent += 1
            if on_done is not None:
                on_done()
            if status != 200 or answer is None:
                result.failed[str(status)] = result.failed.get(str(status), 0) + 1
                continue
            result.ok += 1
            result.latencies_ms.append(ms)
            arm = str(answer["arm"])
            result.arms[arm] = result.arms.get(arm, 0) + 1
            slate = [option_index[o["option_id"]] for o in answer["options"][:SLATE_SIZE]]
            examined = rng.random(len(slate)) < bias[: len(slate)]
            cured = rng.random(len(slate)) < values[i, slate]
            result.outcomes.append(
                {
                    "decision_id": answer["decision_id"],
                    "arm": arm,
                    "reward": float(np.sum(examined & cured)),
                    "expected_reward": float(np.sum(bias[: len(slate)] * values[i, slate])),
                    "on_time_rate_180": p.covariate,
                }
            )
    return result


def outcomes_frame(*results: TrafficResult) -> pd.DataFrame:
    """The outcomes of every phase, one row per answered decision."""
    rows = [row for r in results for row in r.outcomes]
    return pd.DataFrame(
        rows,
        columns=["decision_id", "arm", "reward", "expected_reward", "on_time_rate_180"],
    )
