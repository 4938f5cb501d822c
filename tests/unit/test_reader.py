"""History reading: file listing, per-file validation errors naming file, column and row."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from attune.data.reader import list_history, read_file, read_history
from attune.data.schema import EVENTS
from attune.errors import SchemaError, StoreNotFound
from tests.histories import make_history, to_arrow, write_history


@pytest.fixture
def history_dir(tmp_path: Path) -> Path:
    write_history(make_history(borrowers=12, months=3, seed=4), str(tmp_path / "h"), files=2)
    return tmp_path / "h"


def test_lists_every_table_file_and_skips_hidden_ones(history_dir: Path) -> None:
    (history_dir / "events" / "_SUCCESS").write_text("{}")
    (history_dir / "events" / ".part.parquet.tmp").write_text("x")
    (history_dir / "events" / "_staging").mkdir()
    (history_dir / "events" / "_staging" / "x.parquet").write_text("x")
    files = list_history(str(history_dir))
    assert set(files.files) == {"borrowers", "loans", "events", "presentations"}
    events = files.files["events"]
    assert events == tuple(sorted(events)) and len(events) >= 6  # 2 files x >= 3 months
    assert all(u.endswith(".parquet") and "/_" not in u and "/." not in u for u in events)
    assert files.count("borrowers") == 2


def test_a_missing_table_is_named(history_dir: Path) -> None:
    for part in (history_dir / "loans").iterdir():
        part.unlink()
    with pytest.raises(StoreNotFound) as err:
        list_history(str(history_dir))
    assert err.value.uri == str(history_dir / "loans")


def test_read_history_returns_validated_frames(history_dir: Path) -> None:
    frames = read_history(str(history_dir))
    assert len(frames["borrowers"]) == 12
    assert list(frames["events"].columns) == EVENTS.names
    assert str(frames["events"]["ts"].dtype) == "datetime64[us, UTC]"


def _events_table() -> pa.Table:
    return to_arrow(make_history(borrowers=5, months=2, seed=1).events, "events")


def _with(table: pa.Table, name: str, column: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, column)


def _null_at(table: pa.Table, name: str, row: int) -> pa.Array:
    mask = pa.array([i == row for i in range(table.num_rows)])
    return pc.if_else(mask, pa.scalar(None, table.schema.field(name).type), table.column(name))


@pytest.mark.parametrize(
    ("mutate", "column", "row", "problem"),
    [
        (lambda t: t.drop_columns(["event_type"]), "event_type", None, "missing column"),
        (
            lambda t: _with(t, "borrower_id", pc.cast(t.column("borrower_id"), pa.string())),
            "borrower_id",
            None,
            "has type string",
        ),
        (
            lambda t: _with(t, "amount", pc.cast(t.column("amount"), pa.string())),
            "amount",
            None,
            "has type string",
        ),
        (lambda t: _with(t, "ts", _null_at(t, "ts", 4)), "ts", 4, "null value"),
        (
            lambda t: _with(
                t,
                "event_type",
                pc.if_else(
                    pa.array([i == 7 for i in range(t.num_rows)]),
                    pa.scalar("teleport"),
                    t.column("event_type"),
                ),
            ),
            "event_type",
            7,
            "unknown value 'teleport'",
        ),
    ],
)
def test_a_malformed_file_is_named_with_column_row_and_problem(
    tmp_path: Path, mutate, column, row, problem
) -> None:
    path = tmp_path / "events" / "month=2024-01" / "part-00000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(mutate(_events_table()), path)
    with pytest.raises(SchemaError) as err:
        read_file(str(path), "events")
    assert (err.value.file, err.value.column, err.value.row) == (str(path), column, row)
    assert problem in err.value.problem


def test_a_file_that_is_not_parquet_is_named(tmp_path: Path) -> None:
    path = tmp_path / "part-00000.parquet"
    path.write_bytes(b"definitely not parquet")
    with pytest.raises(SchemaError) as err:
        read_file(str(path), "events")
    assert err.value.file == str(path) and "not a readable parquet file" in err.value.problem


def test_widening_casts_are_accepted_and_columns_selected(tmp_path: Path) -> None:
    table = _events_table()
    table = _with(table, "borrower_id", pc.cast(table.column("borrower_id"), pa.int32()))
    path = tmp_path / "events.parquet"
    pq.write_table(table, path)
    out = read_file(str(path), "events", columns=["borrower_id", "ts"])
    assert out.schema.names == ["borrower_id", "ts"]
    assert out.schema.field("borrower_id").type == pa.int64()
    assert out.num_rows == table.num_rows
