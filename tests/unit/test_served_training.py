"""Training on served rewards (attune.training.served): groups, labels, corrections."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from attune.data.spec import default_spec
from attune.errors import FeatureSpecMismatch, InvalidInput
from attune.rewards.attribution import REWARD_SCHEMA
from attune.training.dataset import RankingSplit
from attune.training.served import (
    IPW_COPIES,
    combine,
    ipw_group_weights,
    served_groups,
)

SPEC = default_spec()
T0 = datetime(2026, 5, 1, tzinfo=UTC)
POS = SPEC.names.index("position")


def reward_table(n_decisions: int, *, explore_every: int = 2, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(n_decisions):
        explore = d % explore_every == 0
        for k in range(3):
            accepted = bool(rng.random() < 0.3)
            rows.append(
                {
                    "decision_id": f"d{d:03d}",
                    "ts": T0 + timedelta(minutes=d),
                    "borrower_hash": "h",
                    "arm": "champion",
                    "model_version": "v1",
                    "feature_spec_hash": SPEC.hash,
                    "touchpoint": "app",
                    "option_id": ["pay_now", "autopay_enroll", "payment_plan"][k],
                    "position": k + 1,
                    "propensity": float(rng.uniform(0.1, 0.9)) if explore else None,
                    "features": np.full(SPEC.n_features, d, dtype=np.float32),  # position = d
                    "score": 0.0,
                    "accepted": accepted,
                    "current": [True, False, None][k],
                    "reward": float(accepted and k == 0),
                    "window_end": T0 + timedelta(days=14, minutes=d),
                }
            )
    return pa.Table.from_pylist(rows, schema=REWARD_SCHEMA)


def history_split(groups: int = 4) -> RankingSplit:
    n = groups * 3
    return RankingSplit(
        name="train",
        X=np.zeros((n, SPEC.n_features), dtype=np.float32),
        label=np.zeros(n, dtype=np.int8),
        qid=np.repeat(np.arange(10, 10 + groups), 3).astype(np.int64),
        option_id=np.array(["pay_now"] * n, dtype=object),
        position=np.tile([1, 2, 3], groups).astype(np.int8),
        borrower_id=np.zeros(n, dtype=np.int64),
        propensity=np.full(n, 0.2),
    )


def test_groups_carry_logged_features_with_the_shown_position_and_graded_labels():
    g = served_groups(reward_table(5), SPEC)
    s = g.split
    assert len(g.decision_id) == 5 and s.qid.tolist() == np.repeat(np.arange(5), 3).tolist()
    assert s.X[:, POS].tolist() == [1.0, 2.0, 3.0] * 5  # logged 1 at serving: shown position
    other = np.delete(s.X, POS, axis=1)
    assert (other == np.repeat(np.arange(5), 3)[:, None]).all()  # the logged features
    table = reward_table(5).to_pandas()
    accepted = table["accepted"].to_numpy()
    expected = np.where(accepted, np.tile([3, 2, 2], 5), 0)  # current: True, False, null
    assert s.label.tolist() == expected.tolist()


def test_slate_propensity_is_the_product_and_nan_when_not_exploring():
    table = reward_table(4)
    g = served_groups(table, SPEC)
    props = table.column("propensity").to_pylist()
    assert g.slate_propensity[0] == pytest.approx(np.prod(props[0:3]))
    assert np.isnan(g.slate_propensity[1]) and g.exploring.tolist() == [True, False, True, False]


def test_rows_of_another_feature_spec_are_refused():
    table = reward_table(2)
    bad = table.set_column(
        table.schema.get_field_index("feature_spec_hash"),
        "feature_spec_hash",
        pa.array(["other"] * table.num_rows),
    )
    with pytest.raises(FeatureSpecMismatch, match="another feature spec"):
        served_groups(bad, SPEC)


def test_plain_and_unbiased_append_every_group_after_the_history():
    g = served_groups(reward_table(6), SPEC)
    train = history_split()
    for correction, params in (
        ("none", {}),
        ("lambdarank_unbiased", {"lambdarank_unbiased": True}),
    ):
        out = combine(train, g, correction=correction)
        assert out.params == params
        assert out.served_groups == 6
        assert len(out.train) == len(train) + 18
        assert (np.diff(out.train.qid) >= 0).all() and out.train.qid[len(train)] == 14
        # shown order inside every served group, as position debiasing requires
        assert out.train.position[len(train) :].tolist() == [1, 2, 3] * 6


def test_ipw_keeps_only_exploring_groups_with_copies_following_the_weights():
    g = served_groups(reward_table(400, seed=1), SPEC)
    out = combine(history_split(), g, correction="ipw", seed=3)
    served = out.train.propensity[len(history_split()) :]
    assert not np.isnan(served).any()  # greedy decisions are left out
    w = ipw_group_weights(g.slate_propensity[g.exploring])
    assert out.served_groups == pytest.approx(IPW_COPIES * w.sum(), abs=1.0)
    again = combine(history_split(), g, correction="ipw", seed=3)
    assert np.array_equal(again.train.X, out.train.X)


def test_ipw_weights_are_clipped_and_mean_one():
    w = ipw_group_weights(np.array([0.5, 0.25, 0.1, 0.001]))
    assert w.mean() == pytest.approx(1.0)
    assert w.max() < (1 / 0.001) / np.mean([2, 4, 10, 1000])


def test_an_unknown_correction_is_refused():
    with pytest.raises(InvalidInput, match="magic"):
        combine(history_split(), served_groups(reward_table(2), SPEC), correction="magic")  # type: ignore[arg-type]


def test_tune_arguments_take_served_datasets():
    import argparse

    from attune.training.commands import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        ["--features", "f", "--registry", "r", "--served", "a", "--served", "b",
         "--served-correction", "none"]
    )  # fmt: skip
    config = config_from_args(args)
    assert config.served == ("a", "b") and config.served_correction == "none"
    default = config_from_args(parser.parse_args(["--features", "f", "--registry", "r"]))
    assert default.served == () and default.served_correction == "none"


def test_with_served_reads_reward_datasets_into_the_train_split(tmp_path):
    import pyarrow.parquet as pq

    from attune.training.dataset import load_dataset
    from attune.training.served import with_served
    from tests.ranking_data import write_synthetic_ranking

    data = write_synthetic_ranking(str(tmp_path / "d"), presentations=60, seed=1)
    dataset = load_dataset(data.features)
    for name, seed in (("a", 1), ("b", 2)):
        (tmp_path / "r" / name).mkdir(parents=True)
        pq.write_table(reward_table(5, seed=seed), tmp_path / "r" / name / "part-0.parquet")
    out, params = with_served(dataset, [str(tmp_path / "r")], correction="none")
    assert params == {}
    assert len(out["train"]) == len(dataset["train"]) + 2 * 5 * 3  # both datasets, 3 rows each
    assert out.manifest["served"]["decisions"] == 5  # decision ids repeat across the two
    assert out["valid"] is dataset["valid"] and out["test"] is dataset["test"]
