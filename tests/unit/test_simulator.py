"""attune generate: simulated histories are valid, deterministic, coherent and heterogeneous."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from attune import cli
from attune.data.schema import OPTION_IDS, SLATE_SIZE, TABLES, validate_table
from attune.errors import Conflict
from attune.simulator import _behaviour as bh
from attune.simulator import generator as simulator
from attune.simulator import ground_truth as gt
from attune.simulator.generator import GenerateConfig, generate

BORROWERS, MONTHS, SEED = 1_000, 6, 7
PAYMENTS = ("payment_on_time", "payment_late", "payment_partial")
DAY = pd.Timedelta(days=1)


def _config(out: Path, **kw: object) -> GenerateConfig:
    values = {"borrowers": BORROWERS, "months": MONTHS, "seed": SEED, "parallel": "local"}
    values.update(kw)
    return GenerateConfig(out=str(out), **values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("history")
    generate(_config(root), progress=False)
    return root


def _read(root: Path, name: str) -> pd.DataFrame:
    return ds.dataset(root / name, format="parquet", partitioning="hive").to_table().to_pandas()


@pytest.fixture(scope="module")
def events(history: Path) -> pd.DataFrame:
    return _read(history, "events")


@pytest.fixture(scope="module")
def presentations(history: Path) -> pd.DataFrame:
    return _read(history, "presentations").sort_values(["presentation_id", "position"])


def _files(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in sorted(root.rglob("*.parquet"))}


def _same_files(a: Path, b: Path) -> bool:
    fa, fb = _files(a), _files(b)
    return fa.keys() == fb.keys() and all(
        pq.read_table(fa[k]).equals(pq.read_table(fb[k])) for k in fa
    )


# --------------------------------------------------------------------------- layout and schema


def test_every_table_file_validates_against_the_history_schema(history: Path) -> None:
    for name in TABLES:
        files = sorted((history / name).rglob("*.parquet"))
        assert files, name
        for path in files:
            validate_table(pq.read_table(path), name, source=str(path))


@pytest.mark.parametrize("name", ["events", "presentations"])
def test_month_partitions_hold_only_rows_of_their_month(history: Path, name: str) -> None:
    for folder in (history / name).iterdir():
        month = folder.name.removeprefix("month=")
        ts = pd.concat([pq.read_table(p).to_pandas()["ts"] for p in folder.glob("*.parquet")])
        assert set(ts.dt.strftime("%Y-%m")) == {month}


def test_manifest_counts_the_rows_written(history: Path, presentations: pd.DataFrame) -> None:
    manifest = json.loads((history / "manifest.json").read_text())
    assert manifest["schema_version"] == "1.0"
    assert (manifest["seed"], manifest["borrowers"], manifest["months"]) == (
        SEED,
        BORROWERS,
        MONTHS,
    )
    assert (manifest["start"], manifest["end"]) == ("2025-01-01", "2025-07-01")
    for name in TABLES:
        assert manifest["counts"][name] == len(_read(history, name)), name
    assert manifest["counts"]["slates"] == presentations.presentation_id.nunique()


def test_events_lie_inside_the_history_window(events: pd.DataFrame) -> None:
    assert events.ts.min() >= pd.Timestamp("2025-01-01", tz="UTC")
    assert events.ts.max() < pd.Timestamp("2025-07-01", tz="UTC")
    assert events.event_id.is_unique


def test_each_installment_has_exactly_one_payment_outcome(events: pd.DataFrame) -> None:
    """One installment_due per borrower-month, and one outcome for it (full months only)."""
    cycle = events.event_id.str.split("-").str[1].astype(int).rename("cycle")
    kinds = pd.crosstab([events.borrower_id, cycle], events.event_type)
    kinds = kinds[kinds.installment_due > 0]
    assert (kinds.installment_due == 1).all()
    settled = kinds.payment_on_time + kinds.payment_partial + kinds.payment_missed
    assert settled.max() == 1
    outcomes = settled + kinds.payment_late
    full_months = kinds.index.get_level_values("cycle") < MONTHS - 1
    assert (outcomes[full_months] >= 1).all()


# --------------------------------------------------------------------------- presentations


def test_each_slate_shows_three_distinct_options_at_positions_one_to_three(
    presentations: pd.DataFrame,
) -> None:
    slates = presentations.groupby("presentation_id")
    assert (slates.position.apply(list).map(tuple) == (1, 2, 3)).all()
    assert (slates.option_id.nunique() == SLATE_SIZE).all()
    assert (slates.current_14d.nunique() == 1).all()  # a loan-level outcome


def test_responses_and_propensities_are_in_range(presentations: pd.DataFrame) -> None:
    assert set(presentations.response.unique()) == {0, 1, 2}
    assert presentations.propensity.gt(0).all() and presentations.propensity.le(1).all()
    # exploration puts every option at every position with at least epsilon / n_options
    assert presentations.propensity.min() >= 0.2 / len(OPTION_IDS) - 1e-12
    assert presentations.current_14d.notna().all()


def test_examination_falls_with_position(presentations: pd.DataFrame) -> None:
    """Responses at lower positions are rarer (position bias 1.0, 0.65, 0.45)."""
    engaged = presentations.assign(e=presentations.response > 0).groupby("position").e.mean()
    assert engaged[1] > engaged[2] > engaged[3]


# --------------------------------------------------------------------------- ground truth


def test_ground_truth_covers_every_option_of_every_presentation(
    history: Path, presentations: pd.DataFrame
) -> None:
    values = _read(history, "ground_truth/values")
    assert set(values.presentation_id) == set(presentations.presentation_id)
    assert (
        values.groupby("presentation_id").option_id.apply(frozenset) == frozenset(OPTION_IDS)
    ).all()
    assert values.value.between(0, 1).all()
    assert (values.value <= values.p_complete + 1e-12).all()
    assert (values.p_complete <= values.p_engage + 1e-12).all()
    bias = json.loads((history / "ground_truth/position_bias.json").read_text())
    assert bias == {"position_bias": list(bh.POSITION_BIAS)}


def test_manifest_policy_values_match_the_ground_truth(
    history: Path, presentations: pd.DataFrame
) -> None:
    truth = gt.load_ground_truth(str(history))
    code = {o: i for i, o in enumerate(OPTION_IDS)}
    shown = presentations.option_id.map(code).to_numpy().reshape(-1, SLATE_SIZE)
    ids = presentations.presentation_id.to_numpy()[::SLATE_SIZE]
    values = gt.policy_values(truth, presentation_ids=ids, legacy_slates=shown)
    manifest = json.loads((history / "manifest.json").read_text())
    assert manifest["policy_values"] == pytest.approx(values, rel=1e-9)


def test_best_fixed_ranking_captures_at_most_60_percent_of_the_oracle_lift(history: Path) -> None:
    share = json.loads((history / "manifest.json").read_text())["share_of_oracle_lift"]
    assert 0.0 < share["best_fixed"] <= 0.6
    assert 0.0 < share["legacy"] < 1.0


def test_the_best_option_differs_across_presentations(history: Path) -> None:
    truth = gt.load_ground_truth(str(history))
    best = np.bincount(truth.values.argmax(axis=1), minlength=len(OPTION_IDS)) / len(truth.values)
    assert (best >= 0.02).sum() >= 5, dict(zip(OPTION_IDS, best.round(3), strict=True))
    assert best.max() < 0.6


# --------------------------------------------------------------------------- behaviour model


def _state(**kw: object) -> bh.PresentationState:
    """One presentation: an on-time payer without autopay, stable income, lightly contacted."""
    values: dict[str, object] = {
        "dpd": 0.0,
        "autopay": False,
        "late_tendency": 0.03,
        "income_volatility": 0.1,
        "hardship": False,
        "affinity": (0.1, 0.1, 0.1),
        "logins_30d": 1,
        "contacts_7d": 0,
        "contacts_30d": 2,
        "touchpoint": "app",
    }
    values.update(kw)
    dpd = np.array([values["dpd"]], dtype=float)
    tau = np.array([values["late_tendency"]], dtype=float)
    return bh.PresentationState(
        dpd=dpd,
        autopay=np.array([values["autopay"]]),
        late_tendency=tau,
        income_volatility=np.array([values["income_volatility"]], dtype=float),
        hardship=np.array([values["hardship"]]),
        affinity=np.array([values["affinity"]], dtype=float),
        logins_30d=np.array([values["logins_30d"]]),
        contacts_7d=np.array([values["contacts_7d"]]),
        contacts_30d=np.array([values["contacts_30d"]]),
        touchpoint=np.array([("app", "email", "sms").index(str(values["touchpoint"]))]),
        cure_certain=dpd <= 0,
        cure_hazard=bh.cure_hazard(
            late_tendency=tau, stress=np.zeros(1), arrears=np.where(dpd >= 30, 2, 1)
        ),
    )


@pytest.mark.parametrize(
    ("borrower", "best"),
    [
        ({}, "autopay_enroll"),
        ({"late_tendency": 0.8, "autopay": True}, "due_date_change"),
        ({"dpd": 45.0}, "payment_plan"),
        ({"dpd": 40.0, "hardship": True, "income_volatility": 0.45}, "hardship_deferral"),
        ({"dpd": 10.0, "logins_30d": 5}, "pay_now"),
        (
            {
                "late_tendency": 0.6,
                "autopay": True,
                "affinity": (0.8, 0.1, 0.1),
                "touchpoint": "sms",
            },
            "reminder_sms",
        ),
        (
            {"late_tendency": 0.6, "autopay": True, "affinity": (0.1, 0.1, 0.8)},
            "reminder_push",
        ),
    ],
)
def test_which_option_helps_depends_on_the_borrower(borrower: dict, best: str) -> None:
    probs = bh.option_probabilities(_state(**borrower))
    assert OPTION_IDS[int(np.argmax(probs.value[0]))] == best


def test_autopay_enrollment_is_worthless_once_autopay_is_on() -> None:
    value = bh.option_probabilities(_state(autopay=True)).value[0]
    assert value[OPTION_IDS.index("autopay_enroll")] == 0.0


@pytest.mark.parametrize("dpd", [0.0, 10.0, 45.0])
def test_contact_fatigue_lowers_every_option(dpd: float) -> None:
    rested = bh.option_probabilities(_state(dpd=dpd, contacts_7d=0, contacts_30d=0)).value[0]
    tired = bh.option_probabilities(_state(dpd=dpd, contacts_7d=5, contacts_30d=15)).value[0]
    assert (tired <= rested).all() and (tired < rested).any()


def test_self_cure_raises_the_value_of_options_that_do_not_cure_outright() -> None:
    slow = bh.option_probabilities(_state(dpd=10.0, late_tendency=0.05))
    late_payer = bh.option_probabilities(_state(dpd=10.0, late_tendency=0.9))
    assert late_payer.self_cure[0] > slow.self_cure[0]
    ratio = late_payer.current_if_completed[0] / slow.current_if_completed[0]
    assert ratio[OPTION_IDS.index("autopay_enroll")] > 1.0
    assert ratio[OPTION_IDS.index("pay_now")] == pytest.approx(1.0)  # paying cures outright


def test_probabilities_nest_value_within_completion_within_engagement() -> None:
    for borrower in ({}, {"dpd": 12.0}, {"dpd": 60.0, "hardship": True}):
        probs = bh.option_probabilities(_state(**borrower))
        assert (probs.value <= probs.complete + 1e-12).all()
        assert (probs.complete <= probs.engage).all()
        assert ((probs.engage >= 0) & (probs.engage <= 1)).all()


# --------------------------------------------------------------------------- coherence


def _owed_at(events: pd.DataFrame, borrower_id: np.ndarray, at: pd.Series) -> np.ndarray:
    """Installments due minus payments made by ``at`` (inclusive), per query row."""
    money = events[events.event_type.isin(("installment_due", *PAYMENTS))]
    money = money.assign(
        delta=np.where(money.event_type == "installment_due", money.amount, -money.amount)
    ).sort_values(["borrower_id", "ts"], kind="stable")
    money = money.assign(owed=money.groupby("borrower_id").delta.cumsum())
    money = money.sort_values("ts", kind="stable")
    query = pd.DataFrame(
        {"borrower_id": borrower_id, "at": at.to_numpy(), "row": np.arange(len(at))}
    )
    merged = pd.merge_asof(
        query.sort_values("at"),
        money[["borrower_id", "ts", "owed"]],
        left_on="at",
        right_on="ts",
        by="borrower_id",
        direction="backward",
    )
    return merged.sort_values("row").owed.fillna(0.0).to_numpy()


def test_current_14d_agrees_with_the_event_log_14_days_later(
    events: pd.DataFrame, presentations: pd.DataFrame
) -> None:
    slates = presentations.drop_duplicates("presentation_id")
    slates = slates[slates.ts + 14 * DAY < pd.Timestamp("2025-07-01", tz="UTC")]
    owed = _owed_at(events, slates.borrower_id.to_numpy(), slates.ts + 14 * DAY)
    current = slates.current_14d.to_numpy()
    assert current.any() and (~current).any()
    assert np.array_equal(current, owed < 0.005)


def _followed_by(
    events: pd.DataFrame, shown: pd.DataFrame, event_type: str, within: pd.Timedelta
) -> np.ndarray:
    """For each row of ``shown``, whether ``event_type`` follows within (ts, ts + within]."""
    hits = events[events.event_type == event_type][["borrower_id", "ts"]].rename(
        columns={"ts": "when"}
    )
    pairs = shown[["presentation_id", "borrower_id", "ts"]].merge(hits, on="borrower_id")
    ok = pairs[(pairs.when > pairs.ts) & (pairs.when <= pairs.ts + within)].presentation_id
    return shown.presentation_id.isin(ok).to_numpy()


def test_completed_autopay_enrollment_is_followed_by_autopay_on(
    events: pd.DataFrame, presentations: pd.DataFrame
) -> None:
    done = presentations[
        (presentations.option_id == "autopay_enroll") & (presentations.response == 2)
    ]
    assert len(done) > 0
    assert _followed_by(events, done, "autopay_on", pd.Timedelta(hours=1)).all()
    assert (events.event_type == "autopay_on").sum() == len(done)


def test_engaging_with_a_plan_option_is_followed_by_a_plan_offer(
    events: pd.DataFrame, presentations: pd.DataFrame
) -> None:
    plan = presentations.option_id.isin(["payment_plan", "hardship_deferral"])
    engaged = presentations[plan & (presentations.response >= 1)].drop_duplicates("presentation_id")
    assert len(engaged) > 0
    assert _followed_by(events, engaged, "plan_offered", pd.Timedelta(minutes=1)).all()


def test_completed_plans_are_accepted_within_the_outcome_window(
    events: pd.DataFrame, presentations: pd.DataFrame
) -> None:
    plan = presentations.option_id.isin(["payment_plan", "hardship_deferral"])
    done = presentations[plan & (presentations.response == 2)].drop_duplicates("presentation_id")
    done = done[done.ts + 14 * DAY < pd.Timestamp("2025-07-01", tz="UTC")]
    assert len(done) > 0
    assert _followed_by(events, done, "plan_accepted", 14 * DAY).all()


# --------------------------------------------------------------------------- determinism


def test_the_same_seed_writes_identical_histories(history: Path, tmp_path: Path) -> None:
    generate(_config(tmp_path), progress=False)
    assert _same_files(history, tmp_path)
    assert (history / "manifest.json").read_text() == (tmp_path / "manifest.json").read_text()


def test_a_different_seed_writes_a_different_history(tmp_path: Path) -> None:
    generate(_config(tmp_path / "a", borrowers=100, months=2), progress=False)
    generate(_config(tmp_path / "b", borrowers=100, months=2, seed=SEED + 1), progress=False)
    assert _files(tmp_path / "a").keys() & _files(tmp_path / "b").keys()
    assert not _same_files(tmp_path / "a", tmp_path / "b")


def test_shards_do_not_depend_on_the_order_they_run_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(simulator, "SHARD_SIZE", 300)
    config = _config(tmp_path / "a", borrowers=700, months=2)
    generate(config, progress=False)
    reverse = _config(tmp_path / "b", borrowers=700, months=2)
    for shard in reversed(range(reverse.shards)):
        simulator.simulate_shard(reverse, shard)
    assert reverse.shards == 3
    assert _same_files(tmp_path / "a", tmp_path / "b")


# --------------------------------------------------------------------------- command and config


def test_generate_command_writes_a_history_and_prints_its_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "generate",
        "--borrowers",
        "60",
        "--months",
        "2",
        "--seed",
        "1",
        "--out",
        str(tmp_path),
        "--quiet",
    ]
    assert cli.main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"]["borrowers"] == 60
    assert json.loads((tmp_path / "manifest.json").read_text())["end"] == "2025-03-01"


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--borrowers", "0"], "borrowers"),
        (["--months", "0"], "months"),
        (["--seed", "-1"], "seed"),
        (["--start", "2025-01-15"], "start"),
        (["--epsilon", "0"], "epsilon"),
        (["--epsilon", "1.5"], "epsilon"),
    ],
)
def test_generate_command_names_the_bad_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], field: str
) -> None:
    base = {"--borrowers": "10", "--months": "1", "--seed": "1", "--out": str(tmp_path / "h")}
    base[args[0]] = args[1]
    argv = ["generate", *[x for kv in base.items() for x in kv]]
    if args[0] not in base:
        argv += args
    assert cli.main(["--json-errors", *argv]) == 4  # invalid input
    error = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert error["error"] == "ConfigError" and error["details"]["field"] == field
    assert not (tmp_path / "h").exists()


def test_generate_refuses_a_non_empty_output_unless_told_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "stale.parquet").write_bytes(b"old")
    with pytest.raises(Conflict):
        generate(_config(tmp_path, borrowers=20, months=1), progress=False)
    generate(_config(tmp_path, borrowers=20, months=1, overwrite=True), progress=False)
    assert not (tmp_path / "events" / "stale.parquet").exists()
    assert (tmp_path / "manifest.json").exists()


def test_an_interrupted_generate_leaves_no_manifest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real, calls = simulator._write, []

    def failing(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(simulator, "_write", failing)
    with pytest.raises(OSError, match="disk full"):
        generate(_config(tmp_path, borrowers=50, months=2), progress=False)
    assert any(tmp_path.rglob("*.parquet"))
    assert not (tmp_path / "manifest.json").exists()
