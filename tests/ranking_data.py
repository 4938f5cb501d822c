"""A small synthetic ranking dataset in the contracts §3 layout, with a ground truth (§2).

Training tests need a dataset whose best ranking differs by borrower and is learnable
from the features, small enough for seconds of training: every presentation has a
true per-option value that depends on two borrower features and the option, slates of
three logged by a uniformly random policy, and graded labels drawn from the values
with position bias. The layout is the one ``attune preprocess`` writes, so the sweep
reads it exactly as it reads a real dataset.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from attune import storage
from attune.data.schema import OPTION_IDS, SLATE_SIZE, TS
from attune.data.spec import default_spec

POSITION_BIAS = (1.0, 0.6, 0.35)


@dataclass(frozen=True)
class SyntheticRanking:
    features: str  # dataset root
    histories: str  # history root holding ground_truth/
    presentations: int


def _split_table(
    qid: np.ndarray, X: np.ndarray, slates: np.ndarray, labels: np.ndarray, n_opt: int
) -> pa.Table:
    spec = default_spec()
    n = len(qid)
    rows_qid = np.repeat(qid, SLATE_SIZE)
    pos = np.tile(np.arange(1, SLATE_SIZE + 1), n)
    opts = slates.reshape(-1)
    feats = np.repeat(X, SLATE_SIZE, axis=0).copy()
    pos_col = spec.names.index("position")
    feats[:, pos_col] = pos
    first_opt = spec.names.index(f"opt_{OPTION_IDS[0]}")
    feats[np.arange(len(opts)), first_opt + opts] = 1.0
    base_ts = np.datetime64("2025-01-01T00:00:00", "us")
    columns: dict[str, pa.Array] = {
        "qid": pa.array(rows_qid, pa.int64()),
        "borrower_id": pa.array(rows_qid // 2, pa.int64()),
        "ts": pa.array(base_ts + rows_qid.astype("timedelta64[h]"), TS),
        "option_id": pa.array([OPTION_IDS[o] for o in opts], pa.string()),
        "position": pa.array(pos, pa.int8()),
        "propensity": pa.array(np.full(len(opts), 1.0 / n_opt), pa.float64()),
        "label": pa.array(labels.reshape(-1), pa.int8()),
    }
    for j, name in enumerate(spec.names):
        columns[name] = pa.array(feats[:, j].astype(np.float32), pa.float32())
    return pa.table(columns)


def write_synthetic_ranking(
    root: str, *, presentations: int = 600, seed: int = 0
) -> SyntheticRanking:
    """Write ``<root>/features`` (dataset) and ``<root>/histories`` (ground truth)."""
    rng = np.random.default_rng(seed)
    spec = default_spec()
    n_opt = len(OPTION_IDS)
    n_borrower = spec.names.index("position") - 3  # borrower features precede the context
    X = np.zeros((presentations, spec.n_features), dtype=np.float32)
    X[:, :n_borrower] = rng.normal(size=(presentations, n_borrower))
    touch = rng.integers(0, 3, presentations)
    X[np.arange(presentations), n_borrower + touch] = 1.0
    # True value: each option suits a different region of (x0, x1).
    angle = np.linspace(0, 2 * np.pi, n_opt, endpoint=False)
    direction = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    logits = X[:, :2] @ direction.T * 3.0 - 1.5
    values = 0.7 / (1.0 + np.exp(-logits))
    slates = np.stack([rng.permutation(n_opt)[:SLATE_SIZE] for _ in range(presentations)])
    bias = np.asarray(POSITION_BIAS)
    shown_value = np.take_along_axis(values, slates, axis=1)
    examined = rng.random(slates.shape) < bias
    cured = examined & (rng.random(slates.shape) < shown_value)
    completed = cured | (examined & (rng.random(slates.shape) < 0.1))
    engaged = examined & (rng.random(slates.shape) < 0.3)
    labels = np.where(cured, 3, np.where(completed, 2, np.where(engaged, 1, 0)))

    features = storage.join(root, "features")
    histories = storage.join(root, "histories")
    qid = np.arange(presentations, dtype=np.int64) + 1000
    cut1, cut2 = int(presentations * 0.6), int(presentations * 0.8)
    bounds = {"train": (0, cut1), "valid": (cut1, cut2), "test": (cut2, presentations)}
    rows: dict[str, int] = {}
    for name, (lo, hi) in bounds.items():
        table = _split_table(qid[lo:hi], X[lo:hi], slates[lo:hi], labels[lo:hi], n_opt)
        fs, path = storage.pyarrow_filesystem(storage.join(features, name))
        fs.create_dir(path, recursive=True)
        pq.write_table(table, f"{path}/part-0.parquet", filesystem=fs)
        storage.mark_complete(storage.join(features, name))
        rows[name] = table.num_rows
    storage.write_bytes(storage.join(features, "feature_spec.json"), spec.to_json().encode())
    content_hash = hashlib.sha256(X.tobytes() + labels.tobytes()).hexdigest()[:16]
    storage.write_json(
        storage.join(features, "manifest.json"),
        {
            "histories": histories,
            "content_hash": content_hash,
            "rows": rows,
            "groups": {k: hi - lo for k, (lo, hi) in bounds.items()},
            "split": {"kind": "time", "fractions": [0.6, 0.2, 0.2]},
        },
    )
    gt = pa.table(
        {
            "presentation_id": pa.array(np.repeat(qid, n_opt), pa.int64()),
            "option_id": pa.array(list(OPTION_IDS) * presentations, pa.string()),
            "value": pa.array(values.reshape(-1), pa.float64()),
        }
    )
    fs, path = storage.pyarrow_filesystem(storage.join(histories, "ground_truth", "values"))
    fs.create_dir(path, recursive=True)
    pq.write_table(gt, f"{path}/part-0.parquet", filesystem=fs)
    storage.write_json(
        storage.join(histories, "ground_truth", "position_bias.json"),
        {"position_bias": list(POSITION_BIAS)},
    )
    borrowers = np.unique(qid // 2)
    protected = pa.table(
        {
            "borrower_id": pa.array(borrowers, pa.int64()),
            "age_band": pa.array(rng.choice(["18-34", "35-54", "55+"], len(borrowers))),
            "gender": pa.array(rng.choice(["female", "male"], len(borrowers))),
            "ethnicity": pa.array(rng.choice(["a", "b", "c"], len(borrowers))),
        }
    )
    fs, path = storage.pyarrow_filesystem(storage.join(histories, "protected"))
    fs.create_dir(path, recursive=True)
    pq.write_table(protected, f"{path}/part-0.parquet", filesystem=fs)
    storage.write_json(
        storage.join(histories, "manifest.json"),
        {"schema_version": "1.0", "seed": seed, "borrowers": presentations // 2, "months": 1},
    )
    return SyntheticRanking(features=features, histories=histories, presentations=presentations)
