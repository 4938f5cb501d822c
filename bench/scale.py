"""Every batch stage at growing book sizes: generate -> preprocess -> materialize -> rank-batch.

    nice python bench/scale.py [--sizes 100000 300000] [--big] [--months 12] [--workdir DIR]

``--big`` adds the 1M-borrower run (about 16 minutes of Ray stages on a 2-core machine,
without baselines; with ``--sizes 100000`` the whole run took 20 minutes). Each stage
runs in a child process of its own on a fresh local Ray (``--cpus``, object store capped
at ``--object-store-gb``: beyond it Ray spills to disk), and a sampler adds up the
memory (PSS) of the child's whole process tree every 0.2 s: raylet, workers and the
object store included. Per stage and size it prints wall time, throughput (events/s
or borrowers/s), peak memory, and, where one exists, the same work done by one process
with the same code, side by side in the same run (the machine may be shared with other
work: read the ratios, not the absolute times):

* preprocess / materialize baseline: one process runs the same feature code
  (``attune.data.pipeline.ranking_rows``, ``attune.data.materialize.snapshot_rows``)
  over the history shard by shard (the simulator's files hold whole borrowers per
  shard), so its memory is bounded too;
* rank-batch baseline: one process runs the same :class:`attune.batch.scoring.BatchRanker`
  (ONNX Runtime, one session) over the snapshot's files in a loop.

Results go to ``<workdir>/scale.json`` (appended per stage, so a long run keeps what it
measured) and a log-log plot of time and peak memory against borrowers to
``<workdir>/scale.png``. Ray's start-up is timed apart from each stage's work.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT / "bench"))

from preprocess import _run_child  # noqa: E402 (same sampler as bench/preprocess.py)

STAGES = ("generate", "preprocess", "materialize", "rank-batch")
#: Stages with a single-process baseline.
BASELINES = ("preprocess", "materialize", "rank-batch")
BORROWERS_PER_BUCKET = 10_000
AS_OF = datetime(2025, 12, 20, tzinfo=timezone.utc)  # inside a 12-month history from 2025-01
ELIGIBILITY = {
    "touchpoints": {
        "email": {
            "rules": [
                {"name": "contact_fatigue", "feature": "contacts_7d", "op": "ge", "value": 4},
                {
                    "name": "no_plan_in_hardship",
                    "feature": "hardship_180",
                    "op": "gt",
                    "value": 0,
                    "options": ["payment_plan"],
                },
            ]
        }
    }
}


# --------------------------------------------------------------------------- children


def _ray_init(cpus: int, object_store_gb: float) -> float:
    import ray

    start = time.perf_counter()
    for attempt in range(3):  # a busy shared host can time a node's start-up out
        try:
            ray.init(
                address="local",
                num_cpus=cpus,
                object_store_memory=int(object_store_gb * 2**30),
                include_dashboard=False,
                log_to_driver=False,
            )
            break
        except Exception:
            if attempt == 2:
                raise
            ray.shutdown()
    return time.perf_counter() - start


def _child(args: argparse.Namespace) -> dict[str, Any]:
    import ray

    work = Path(args.work)
    history, store = str(work / "history"), str(work / "store")
    stage, baseline = args.child, args.baseline
    startup = 0.0 if baseline else _ray_init(args.cpus, args.object_store_gb)
    start = time.perf_counter()
    try:
        if stage == "generate":
            from attune.simulator.generator import GenerateConfig, generate

            manifest = generate(
                GenerateConfig(
                    borrowers=args.size,
                    months=args.months,
                    seed=7,
                    out=history,
                    parallel="ray",
                    overwrite=True,
                ),
                progress=False,
            )
            units = float(manifest["counts"]["events"])
        elif stage == "preprocess":
            units = _baseline_preprocess(history, work) if baseline else _preprocess(history, work)
        elif stage == "materialize":
            units = _baseline_materialize(history) if baseline else _materialize(history, store)
        else:
            units = _baseline_rank(work, store) if baseline else _rank(work, store)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    return {"seconds": time.perf_counter() - start, "startup": startup, "units": units}


def _buckets(history: str) -> int:
    """Borrower buckets for this book: ~10k borrowers each, so a task's memory stays put."""
    borrowers = json.loads(Path(history, "manifest.json").read_text())["borrowers"]
    return max(32, -(-borrowers // BORROWERS_PER_BUCKET))


def _preprocess(history: str, work: Path) -> float:
    from attune.data.pipeline import PreprocessConfig, preprocess

    config = PreprocessConfig(buckets=_buckets(history))
    return float(preprocess(history, str(work / "dataset"), config=config).events)


def _shards(history: str) -> list[str]:
    files = Path(history, "borrowers").glob("*.parquet")
    return sorted({p.name.split("-c")[0].removesuffix(".parquet") for p in files})


def _shard_tables(history: str, shard: str, columns: dict[str, Sequence[str]]) -> dict[str, Any]:
    """One simulator shard's rows of each table (pandas), read and validated file by file."""
    import pandas as pd

    from attune.data.reader import read_file

    out = {}
    for table, cols in columns.items():
        files = sorted(Path(history, table).rglob(f"{shard}*.parquet"))
        parts = [read_file(str(f), table, columns=list(cols)).to_pandas() for f in files]
        out[table] = pd.concat(parts, ignore_index=True)
    return out


def _baseline_preprocess(history: str, work: Path) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from attune.data.features import micros
    from attune.data.pipeline import (
        DATASET_SCHEMA,
        RANKING_COLUMNS,
        PreprocessConfig,
        SplitPlan,
        ranking_rows,
    )

    manifest = json.loads(Path(history, "manifest.json").read_text())
    start, end = (
        datetime.fromisoformat(manifest[k]).replace(tzinfo=timezone.utc) for k in ("start", "end")
    )
    plan = SplitPlan.from_span(
        first_us=int(micros([start])[0]), last_us=int(micros([end])[0]), config=PreprocessConfig()
    )
    out = work / "dataset-baseline"
    out.mkdir(exist_ok=True)
    events = 0
    for shard in _shards(history):
        t = _shard_tables(history, shard, RANKING_COLUMNS)
        rows = ranking_rows(
            events=t["events"],
            presentations=t["presentations"],
            borrowers=t["borrowers"],
            loans=t["loans"],
            split=plan,
        )
        schema = DATASET_SCHEMA.append(pa.field("split", pa.string()))
        table = pa.Table.from_pandas(rows, schema=schema, preserve_index=False)
        pq.write_table(table, out / f"{shard}.parquet")
        events += len(t["events"])
    return float(events)


def _materialize(history: str, store: str) -> float:
    from attune.data.materialize import MaterializeConfig, materialize

    info = materialize(history, store, config=MaterializeConfig(as_of=AS_OF, online_events=False))
    Path(store, "snapshot.txt").write_text(info.uri)
    return float(info.borrowers)


def _baseline_materialize(history: str) -> float:
    import pyarrow as pa

    from attune.data.materialize import _COLUMNS, FEATURES_SCHEMA, snapshot_rows

    borrowers = 0
    for shard in _shards(history):
        t = _shard_tables(history, shard, _COLUMNS)
        feats, _kept = snapshot_rows(
            events=t["events"], borrowers=t["borrowers"], loans=t["loans"], as_of=AS_OF
        )
        pa.Table.from_pandas(feats, schema=FEATURES_SCHEMA, preserve_index=False)
        borrowers += len(feats)
    return float(borrowers)


def _rollout(work: Path) -> dict[str, Any]:
    return json.loads((work.parent / "rollout.json").read_text())


def _rank(work: Path, store: str) -> float:
    from attune.batch.job import RankBatchConfig, rank_batch

    snapshot = Path(store, "snapshot.txt").read_text()
    rollout = _rollout(work)
    result = rank_batch(
        RankBatchConfig(
            features=snapshot,
            registry=rollout.pop("registry"),
            touchpoint="email",
            out=str(work / "campaign"),
            store=store,
            rollout=rollout,
            eligibility=ELIGIBILITY,
        )
    )
    (work / "campaign-summary.json").write_text(json.dumps(result.summary, indent=2))
    return float(result.summary["borrowers"])


def _baseline_rank(work: Path, store: str) -> float:
    import pyarrow.parquet as pq

    from attune.batch.eligibility import EligibilityConfig
    from attune.batch.job import DEFAULT_BATCH_SIZE, RankBatchConfig, _plan
    from attune.data.spec import BORROWER_FEATURES

    snapshot = Path(store, "snapshot.txt").read_text()
    rollout = _rollout(work)
    config = RankBatchConfig(
        features=snapshot,
        registry=rollout.pop("registry"),
        touchpoint="email",
        out=str(work / "campaign-baseline"),
        store=str(work / "store-baseline"),
        rollout=rollout,
        eligibility=EligibilityConfig.model_validate(ELIGIBILITY),
    )
    from attune.batch.scoring import BatchRanker

    plan = _plan(config, config.store or "", "baseline", datetime.now(timezone.utc))
    ranker = BatchRanker(plan)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    borrowers = 0
    columns = ["borrower_id", "as_of", *BORROWER_FEATURES]
    for i, path in enumerate(sorted(Path(snapshot, "features").glob("*.parquet"))):
        source = pq.ParquetFile(path)
        for j, batch in enumerate(source.iter_batches(DEFAULT_BATCH_SIZE, columns=columns)):
            import pyarrow as pa

            table = ranker(pa.Table.from_batches([batch]))
            pq.write_table(table, out / f"part-{i:05d}-{j:05d}.parquet")
            borrowers += table.num_rows
    return float(borrowers)


# --------------------------------------------------------------------------- parent


def _model(work: Path) -> None:
    """A realistically sized ranker (200 trees, depth 6) as champion, a second as canary."""
    import numpy as np
    import xgboost

    from attune.data.spec import default_spec
    from attune.registry import Registry
    from attune.training.export import export_onnx

    spec = default_spec()
    versions = []
    registry = Registry(str(work / "registry"))
    for seed in (1, 2):
        rng = np.random.default_rng(seed)
        X = rng.normal(size=(8000, spec.n_features)).astype(np.float32)
        y = np.clip(np.round(X[:, 0] + X[:, 30 % spec.n_features] * X[:, 1] + 1), 0, 3)
        qid = np.repeat(np.arange(1000), 8)
        params = {"objective": "rank:ndcg", "max_depth": 6, "nthread": 1, "seed": seed}
        booster = xgboost.train(params, xgboost.DMatrix(X, label=y, qid=qid), 200)
        files = {
            "model.onnx": export_onnx(booster, n_features=spec.n_features),
            "feature_spec.json": spec.to_json().encode(),
        }
        versions.append(registry.register(files, metadata={"name": f"scale-{seed}"}))
    rollout = {
        "registry": registry.uri,
        "champion": versions[0],
        "canary": versions[1],
        "canary_percent": 10,
        "salt": "scale",
    }
    (work / "rollout.json").write_text(json.dumps(rollout))


def _tile_snapshot(source: Path, target: Path, size: int) -> None:
    """A snapshot of ``size`` borrowers made of copies of ``source``'s (ids offset per copy):
    rank-batch at sizes whose history was not generated (its cost does not depend on
    which features a borrower has)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    snapshot = Path(Path(source, "store", "snapshot.txt").read_text())
    files = sorted(Path(snapshot, "features").glob("*.parquet"))
    out = target / "store" / "snapshot-tiled"
    (out / "features").mkdir(parents=True, exist_ok=True)
    written, copy = 0, 0
    while written < size:
        for i, path in enumerate(files):
            table = pq.read_table(path)
            table = table.slice(0, min(table.num_rows, size - written))
            if table.num_rows == 0:
                break
            ids = pc.add(table.column("borrower_id"), copy * 10**9)
            table = table.set_column(0, "borrower_id", ids)
            pq.write_table(table, out / "features" / f"part-{copy:03d}-{i:05d}.parquet")
            written += table.num_rows
        copy += 1
    manifest = json.loads(Path(snapshot, "manifest.json").read_text())
    manifest.update(uri=str(out), borrowers=written, snapshot_id=f"tiled-{size}")
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "_SUCCESS").write_text("{}")
    (target / "store" / "snapshot.txt").write_text(str(out))


def _plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (t_ax, m_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in STAGES:
        for kind, style in (("ray", "-o"), ("baseline", "--x")):
            rows = sorted(
                (r for r in results if r["stage"] == stage and r["kind"] == kind),
                key=lambda r: r["borrowers"],
            )
            if not rows:
                continue
            x = [r["borrowers"] for r in rows]
            label = f"{stage} ({'Ray' if kind == 'ray' else 'one process'})"
            t_ax.plot(x, [r["seconds"] for r in rows], style, label=label)
            m_ax.plot(x, [r["peak_gib"] for r in rows], style, label=label)
    for ax, title in ((t_ax, "wall time (s)"), (m_ax, "peak memory of the process tree (GiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("borrowers (12 months)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    t_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _table(results: list[dict[str, Any]]) -> str:
    lines = [
        f"{'borrowers':>10} {'stage':12} {'kind':9} {'wall s':>8} {'start s':>8} "
        f"{'per s':>12} {'unit':9} {'peak GiB':>9} {'Ray/1 proc':>10}"
    ]
    for r in sorted(results, key=lambda r: (r["borrowers"], STAGES.index(r["stage"]), r["kind"])):
        base = next(
            (
                b
                for b in results
                if b["borrowers"] == r["borrowers"]
                and b["stage"] == r["stage"]
                and b["kind"] == "baseline"
            ),
            None,
        )
        ratio = f"{base['seconds'] / r['seconds']:.2f}x" if base and r["kind"] == "ray" else ""
        lines.append(
            f"{r['borrowers']:>10,} {r['stage']:12} {r['kind']:9} {r['seconds']:8.1f} "
            f"{r['startup']:8.1f} {r['rate']:12,.0f} {r['unit']:9} {r['peak_gib']:9.2f} "
            f"{ratio:>10}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/scale.py", description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000])
    parser.add_argument("--big", action="store_true", help="also run 1,000,000 borrowers")
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--object-store-gb", type=float, default=2.0)
    parser.add_argument(
        "--baselines-up-to", type=int, default=300_000, help="skip baselines above this size"
    )
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--workdir", default="/tmp/attune-bench-scale")
    parser.add_argument(
        "--tile-from",
        type=int,
        help="rank-batch only: tile this size's snapshot up to each --sizes size "
        "(when the host has no time to generate and materialize those books)",
    )
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args)))
        return 0

    root = Path(args.workdir)
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "rollout.json").exists():
        _model(root)
    results_path = root / "scale.json"
    results: list[dict[str, Any]] = (
        json.loads(results_path.read_text()) if results_path.exists() else []
    )
    sizes = [*args.sizes, *([1_000_000] if args.big else [])]
    me = [sys.executable, str(Path(__file__).resolve())]
    for size in sizes:
        work = root / f"n{size}"
        work.mkdir(exist_ok=True)
        if args.tile_from:
            _tile_snapshot(root / f"n{args.tile_from}", work, size)
        failed = False
        for stage in args.stages:
            if failed:
                break
            kinds = ["ray"]
            if stage in BASELINES and size <= args.baselines_up_to:
                kinds.append("baseline")
            for kind in kinds:
                argv_ = [*me, "--child", stage, "--size", str(size), "--work", str(work)]
                argv_ += ["--months", str(args.months), "--cpus", str(args.cpus)]
                argv_ += ["--object-store-gb", str(args.object_store_gb)]
                try:
                    figures, peak = _run_child(
                        [*argv_, *(["--baseline"] if kind == "baseline" else [])]
                    )
                except SystemExit as exc:  # keep what the other stages measure
                    print(f"{size:>10,} {stage:12} {kind:9} FAILED: {exc}", flush=True)
                    failed |= kind == "ray"  # later stages need this one's output
                    continue
                unit = "borrowers" if stage in ("materialize", "rank-batch") else "events"
                row = {
                    "borrowers": size,
                    "stage": stage,
                    "kind": kind,
                    "seconds": figures["seconds"],
                    "startup": figures["startup"],
                    "cpu_s": figures["cpu"],
                    "units": figures["units"],
                    "unit": unit,
                    "rate": figures["units"] / figures["seconds"],
                    "peak_gib": peak / 2**30,
                    "tiled": bool(args.tile_from),
                }
                results = [
                    r
                    for r in results
                    if (r["borrowers"], r["stage"], r["kind"]) != (size, stage, kind)
                ]
                results.append(row)
                results_path.write_text(json.dumps(results, indent=1))
                print(
                    f"{size:>10,} {stage:12} {kind:9} {row['seconds']:8.1f}s "
                    f"{row['rate']:12,.0f} {unit}/s peak {row['peak_gib']:.2f} GiB",
                    flush=True,
                )
    print(_table(results))
    _plot(results, root / "scale.png")
    print(f"plot: {root / 'scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
