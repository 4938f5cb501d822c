"""Read a ranking dataset (``attune preprocess`` output, contracts §3) into arrays.

A split is read once, on the driver, into a :class:`RankingSplit` of numpy arrays;
the sweep puts those into the object store once and every trial maps them from
there. Reading checks what training relies on and names the file, column and row
when it does not hold: the split was committed (``_SUCCESS``), every feature of the
spec is present, and rows are sorted by ``qid`` (XGBoost's ranking objectives read
groups as runs of equal ``qid``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attune import storage
from attune.data.spec import FeatureSpec
from attune.errors import FeatureSpecMismatch, SchemaError, StoreNotFound

#: Row-identity columns every split carries besides the features.
ID_COLUMNS: tuple[str, ...] = (
    "qid",
    "borrower_id",
    "option_id",
    "position",
    "propensity",
    "label",
)
SPLITS: tuple[str, ...] = ("train", "valid", "test")


@dataclass(frozen=True)
class RankingSplit:
    """One split as arrays; rows sorted by ``qid`` (checked on construction)."""

    name: str
    X: np.ndarray  # float32 (rows, features), spec order
    label: np.ndarray  # int8 graded label 0..3
    qid: np.ndarray  # int64, non-decreasing
    option_id: np.ndarray  # object (str)
    position: np.ndarray  # int8
    borrower_id: np.ndarray  # int64
    propensity: np.ndarray  # float64
    source: str = ""

    def __post_init__(self) -> None:
        check_sorted(self.qid, source=self.source or self.name)
        n = len(self.qid)
        for name in ("X", "label", "option_id", "position", "borrower_id", "propensity"):
            if len(getattr(self, name)) != n:
                raise SchemaError(
                    file=self.source or self.name,
                    column=name,
                    problem=f"has {len(getattr(self, name))} rows, qid has {n}",
                )

    def __len__(self) -> int:
        return len(self.qid)

    @property
    def n_groups(self) -> int:
        return len(np.unique(self.qid))

    def take(self, rows: np.ndarray) -> RankingSplit:
        """The rows at ``rows`` (which must keep ``qid`` sorted) as a new split."""
        return RankingSplit(
            name=self.name,
            X=self.X[rows],
            label=self.label[rows],
            qid=self.qid[rows],
            option_id=self.option_id[rows],
            position=self.position[rows],
            borrower_id=self.borrower_id[rows],
            propensity=self.propensity[rows],
            source=self.source,
        )


@dataclass(frozen=True)
class RankingDataset:
    """A ranking dataset: its URI, feature spec, manifest and splits."""

    uri: str
    spec: FeatureSpec
    manifest: dict[str, Any]
    splits: dict[str, RankingSplit] = field(default_factory=dict)

    def __getitem__(self, name: str) -> RankingSplit:
        return self.splits[name]

    @property
    def content_hash(self) -> str | None:
        value = self.manifest.get("content_hash")
        return str(value) if value is not None else None

    @property
    def histories(self) -> str | None:
        value = self.manifest.get("histories")
        return str(value) if value is not None else None


def check_sorted(qid: np.ndarray, *, source: str) -> None:
    """Raise :class:`SchemaError` at the first row where ``qid`` decreases."""
    if len(qid) < 2:
        return
    drops = np.flatnonzero(np.diff(qid) < 0)
    if len(drops):
        row = int(drops[0]) + 1
        raise SchemaError(
            file=source,
            column="qid",
            row=row,
            problem=f"rows are not sorted by qid ({int(qid[row - 1])} then {int(qid[row])})",
        )


def load_dataset(uri: str, *, splits: Sequence[str] = SPLITS) -> RankingDataset:
    """Read ``feature_spec.json``, ``manifest.json`` and ``splits`` below ``uri``.

    Raises :class:`StoreNotFound` when the dataset or a split is missing or was never
    committed, :class:`FeatureSpecMismatch` when a split lacks a spec feature, and
    :class:`SchemaError` when rows are not sorted by ``qid``.
    """
    spec = FeatureSpec.from_json(storage.read_bytes(storage.join(uri, "feature_spec.json")))
    manifest_uri = storage.join(uri, "manifest.json")
    manifest = storage.read_json(manifest_uri) if storage.exists(manifest_uri) else {}
    loaded = {name: load_split(uri, name, spec) for name in splits}
    return RankingDataset(uri=uri, spec=spec, manifest=manifest, splits=loaded)


def load_split(uri: str, name: str, spec: FeatureSpec) -> RankingSplit:
    """Read split ``name`` of the dataset at ``uri`` (files in path order)."""
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    split_uri = storage.join(uri, name)
    if not storage.is_complete(split_uri):
        raise StoreNotFound(uri=split_uri, problem="split missing or not committed (_SUCCESS)")
    fs, path = storage.pyarrow_filesystem(split_uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(
        i.path
        for i in infos
        if i.type == pafs.FileType.File
        and i.path.endswith(".parquet")
        and not any(part.startswith(("_", ".")) for part in i.path[len(path) :].split("/"))
    )
    if not files:
        raise StoreNotFound(uri=split_uri, problem="no parquet files")
    columns = list(dict.fromkeys((*ID_COLUMNS, *spec.names)))  # "position" is both
    tables = []
    for file in files:
        schema = pq.read_schema(file, filesystem=fs)
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise FeatureSpecMismatch(
                expected=columns, actual=schema.names, problem=f"{file} lacks columns {missing}"
            )
        tables.append(pq.read_table(file, columns=columns, filesystem=fs))
    table = pa.concat_tables(tables)
    X = np.column_stack(
        [table.column(n).to_numpy().astype(np.float32, copy=False) for n in spec.names]
    )
    return RankingSplit(
        name=name,
        X=np.ascontiguousarray(X, dtype=np.float32),
        label=table.column("label").to_numpy().astype(np.int8),
        qid=table.column("qid").to_numpy().astype(np.int64),
        option_id=np.asarray(table.column("option_id").to_pylist(), dtype=object),
        position=table.column("position").to_numpy().astype(np.int8),
        borrower_id=table.column("borrower_id").to_numpy().astype(np.int64),
        propensity=table.column("propensity").to_numpy().astype(np.float64),
        source=split_uri,
    )
