"""`attune outcomes` on Ray Data equals the single-process attribution, file for file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from attune.data.schema import EVENTS, OPTION_IDS
from attune.experiments.assignment import hash_borrower
from attune.rewards.config import DEFAULT_CONFIG
from attune.rewards.job import OutcomesConfig, compute_rewards_local, read_rewards, run_outcomes
from attune.serving.decision_log import DecisionRecord, ParquetSink, records_to_table

SALT = "it-salt"
T0 = datetime(2026, 3, 2, 12, tzinfo=UTC)


def _store(root: Path, *, seed: int) -> tuple[str, str]:
    """A store with 120 decisions of 30 borrowers, and a history plus posted events."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(120):
        borrower = int(rng.integers(1, 31))
        order = tuple(rng.permutation(OPTION_IDS))
        explore = bool(rng.random() < 0.5)
        records.append(
            DecisionRecord(
                decision_id=f"d{i:04d}",
                ts=T0 + timedelta(hours=int(rng.integers(0, 24 * 20))),
                role="primary",
                borrower_hash=hash_borrower(borrower, salt=SALT),
                arm="champion",
                model_version="v1",
                feature_spec_hash="spec",
                touchpoint="app",
                feature_source="request",
                candidates=tuple(OPTION_IDS),
                features=rng.random((len(OPTION_IDS), 3)).astype(np.float32),
                scores=rng.random(len(OPTION_IDS)),
                returned_order=order,
                propensities=tuple(rng.uniform(0.05, 1.0, 3)) if explore else None,
                latency_ms=1.0,
            )
        )
    store = str(root / "store")
    sink = ParquetSink(store)
    for j in range(0, len(records), 40):
        group = records[j : j + 40]
        sink.write(records_to_table(group), date=group[0].date, name=f"w-{j}")
    kinds = [
        "autopay_on",
        "plan_accepted",
        "payment_late",
        "reminder_on",
        "due_date_changed",
        "installment_due",
        "login",
    ]
    rows = []
    for k in range(600):
        kind = kinds[int(rng.integers(0, len(kinds)))]
        rows.append(
            {
                "event_id": f"e{k}",
                "borrower_id": int(rng.integers(1, 31)),
                "loan_id": 1,
                "ts": T0 + timedelta(minutes=int(rng.integers(-60 * 24 * 10, 60 * 24 * 40))),
                "event_type": kind,
                "amount": 50.0 if kind in ("installment_due", "payment_late") else None,
                "channel": ["sms", "email", "push"][k % 3] if kind == "reminder_on" else None,
            }
        )
    history = root / "history"
    online = Path(store) / "events_online" / "month=2026-03"
    for folder, part in ((history / "events" / "month=2026-03", rows[:300]), (online, rows[300:])):
        folder.mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(part, schema=EVENTS), folder / "part-0.parquet")
    return store, str(history)


def _sorted(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: (r["decision_id"], r["position"]))


@pytest.mark.usefixtures("ray_cluster")
def test_ray_job_writes_what_the_single_process_function_computes(tmp_path: Path) -> None:
    store, history = _store(tmp_path, seed=3)
    as_of = T0 + timedelta(days=28)
    config = OutcomesConfig(
        store=store,
        histories=(history,),
        out=str(tmp_path / "rewards"),
        as_of=as_of,
        salt=SALT,
        engine="ray",
        buckets=4,
    )
    summary = run_outcomes(config, DEFAULT_CONFIG, progress=False)
    expected, n = compute_rewards_local(
        config.model_copy(update={"engine": "local"}), DEFAULT_CONFIG
    )
    got = read_rewards(config.out)
    assert summary["decisions_read"] == n == 120
    # some decisions still have open windows, some rows are accepted: the data exercises both
    assert 0 < summary["decisions_scored"] < 120
    assert 0 < sum(expected.column("accepted").to_pylist()) < expected.num_rows
    assert got.num_rows == expected.num_rows
    assert _sorted(got) == _sorted(expected)
    assert not list(tmp_path.glob("rewards.work-*"))  # staging removed


def test_cli_local_engine_writes_the_dataset(
    tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from attune.cli import main
    from attune.settings import get_settings

    monkeypatch.setenv("ATTUNE_BORROWER_SALT", SALT)  # a secret: never a command-line argument
    get_settings.cache_clear()
    store, history = _store(tmp_path, seed=4)
    out = tmp_path / "r"
    try:
        code = main(
            [
                "outcomes",
                "--store", store,
                "--history", history,
                "--out", str(out),
                "--as-of", (T0 + timedelta(days=60)).isoformat(),
                "--engine", "local",
                "--quiet",
            ]
        )  # fmt: skip
    finally:
        get_settings.cache_clear()  # the next test reads its own environment
    assert code == 0
    assert read_rewards(str(out)).num_rows == 360  # every window closed: 120 decisions x 3
    assert (out / "_SUCCESS").exists()
    assert '"decisions_scored": 120' in capsys.readouterr().out
