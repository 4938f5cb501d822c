"""Benchmark: online features from Redis on the ranking path, materialization, the kernel.

    .venv/bin/python bench/online.py [--replicas 1 2] [--duration 10] [--rounds 1]
        [--borrowers 100000] [--months 7] [--work .attune/bench-online] [--plot online.png]
    .venv/bin/python bench/online.py --quick    # smoke run: 500 / 2,000 borrowers, 2 s per point

All in one run, every figure next to a baseline measured in the same run:

1. **Ranking over HTTP** (``POST /v1/rank``, 8 candidates, same model as bench/serve.py)
   on a local Ray with Serve's HAProxy ingress, for each ``--replicas`` count (ingress
   replicas; the app is redeployed between counts): (a) the baseline
   ``bench/_uvicorn_baseline.py`` (uvicorn + ONNX Runtime, features in the request),
   (b) attune with every candidate's features in the request, (c) attune with the
   ``borrower`` state in the request, (d) attune with the borrower id only (online
   features read from Redis by the ingress replica). For (c) and (d) a simulator history
   of ``--serve-borrowers`` x ``--months`` is materialized into a ``redis-server`` the
   bench starts (persistence off) as of the history's end; ``--ids`` of its borrowers
   are picked and wrk's Lua script cycles over one body per borrower, (c)'s state being
   what ``GET /v1/features/{id}`` of the running app answers. Every row uses the same
   cycling script (one body for (a) and (b)). wrk at 1 connection (p50, p99) and at
   ``--connections`` (req/s), ``--duration`` s per point, rows interleaved for
   ``--rounds`` rounds (median).
2. **Materialization** of a ``--borrowers`` x ``--months`` history (generated once into
   ``--work`` and reused) on the same local Ray (``--cpus``), after a warm-up run on the
   small history: borrowers/s of ``attune.online.snapshot.materialize_online``
   against the parquet-only ``attune.data.materialize.materialize`` of the same history
   (``--rounds`` of each, the order alternating, medians); Redis memory per
   borrower (``SnapshotKeyspace.memory_per_borrower(sample=1000)`` and the
   ``INFO memory`` used_memory delta / borrowers), against the parquet snapshot's bytes
   per borrower on disk.
3. **Feature kernel** on 64 borrowers of that snapshot: bytes from Redis ->
   ``online.state.decode`` -> ``arrays`` -> ``feature_kernel`` for one borrower and for
   the 64 at once, against ``attune.data.features.borrower_features`` on pandas frames
   of the same borrowers (the parquet snapshot's rows); the largest difference is shown.

Prints progress as it goes, then the figures as tables, the goals (met/missed) and one
JSON line of every figure; ``--plot PATH`` writes a PNG of them. Serve, Ray, the Redis
servers and the baseline server are stopped on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

# bench/ is on sys.path when this file runs as a script: the shared wrk and server helpers
from serve import _WRK_REPORT, Run, _baseline, _free_port, _haproxy_env, _model, _wrk_script

_ROOT = Path(__file__).resolve().parents[1]
_STARTED = time.monotonic()
#: (a)-(d) of the module docstring, in the order measured and shown.
ROWS = ("baseline", "features", "borrower state", "borrower id")
_QUICK = {"borrowers": 2_000, "serve_borrowers": 500, "duration": 2.0, "ids": 8, "reps": 0.2}


def _say(message: str) -> None:
    print(f"[{time.monotonic() - _STARTED:6.0f} s] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- histories


def _history(work: Path, borrowers: int, months: int) -> tuple[str, datetime]:
    """A simulator history under ``work`` (generated once, reused); (its URI, its end)."""
    from attune import storage
    from attune.simulator.generator import GenerateConfig, generate

    out = work / f"history-{borrowers}x{months}"
    if not storage.exists(str(out / "manifest.json")):
        _say(f"generating {borrowers:,} borrowers x {months} months into {out} ...")
        started = time.perf_counter()
        config = GenerateConfig(
            borrowers=borrowers, months=months, seed=7, out=str(out), parallel="local"
        )
        generate(config.model_copy(update={"overwrite": True}), progress=False)
        _say(f"generated in {time.perf_counter() - started:.0f} s")
    end = storage.read_json(str(out / "manifest.json"))["end"]
    return str(out), datetime.fromisoformat(str(end)).replace(tzinfo=UTC)


def _borrower_keys(redis_url: str, meta: Any, count: int, *, seed: int) -> list[int]:
    """``count`` borrower ids of the served snapshot, drawn from its first keys."""
    import numpy as np
    import redis

    from attune.data.spec import default_spec
    from attune.online.redis_store import root_key

    prefix = f"{root_key(default_spec().hash)}:{meta.snapshot_id}:b:"
    with redis.Redis.from_url(redis_url) as client:
        found = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            found.append(int(key.decode().rsplit(":", 1)[1]))
            if len(found) >= max(20 * count, 2_000):
                break
    rng = np.random.default_rng(seed)
    return sorted(int(b) for b in rng.choice(found, min(count, len(found)), replace=False))


# --------------------------------------------------------------------------- HTTP


def _http(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _deploy(
    base: str,
    *,
    registry: str,
    champion: str,
    store: str,
    redis_url: str,
    replicas: int,
    probe: int,
) -> None:
    """Deploy (or rescale) the app under ``/online``; return once ``replicas`` answer."""
    from ray.serve.schema import ServeDeploySchema

    from attune.serving.app import app_config
    from attune.serving.config import RolloutConfig
    from attune.serving.rollout import deploy

    ingress = {
        "num_replicas": replicas,
        "user_config": RolloutConfig(champion=champion).model_dump(mode="json"),
    }
    app = app_config(
        {"registry": registry, "store": store, "online": {"redis_url": redis_url}},
        name="online",
        route_prefix="/online",
        ingress=ingress,
    )
    app["logging_config"] = {"enable_access_log": False}
    deploy(ServeDeploySchema(applications=[app]), wait_s=600)
    # HAProxy learns of new replicas a little after RUNNING: wait until each one answers
    seen: set[str] = set()
    deadline = time.monotonic() + 180
    while len(seen) < replicas:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(seen)} of {replicas} replicas answered within 180 s")
        try:
            seen.add(str(_http(f"{base}/online/v1/features/{probe}")["replica"]))
        except OSError:
            time.sleep(0.5)


def _script(work: Path, name: str, bodies: Sequence[dict[str, Any]]) -> Path:
    """A wrk script that POSTs ``bodies`` in turn (one JSON document per line)."""
    lines = work / f"{name}.jsonl"
    lines.write_text("".join(json.dumps(b, separators=(",", ":")) + "\n" for b in bodies))
    script = work / f"{name}.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local bodies = {{}}\nfor line in io.lines("{lines}") do bodies[#bodies + 1] = line end\n'
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #bodies + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[i])\n"
        "end\n" + _WRK_REPORT
    )
    return script


def _check(url: str, body: dict[str, Any], source: str | None) -> None:
    """One request answers 200 with the expected feature source (and no fallback)."""
    answer = _http(url, body)
    if source is not None and answer.get("feature_source") != source:
        raise RuntimeError(
            f"{url} used features from {answer.get('feature_source')!r}, "
            f"expected {source!r}: {answer}"
        )
    if answer.get("feature_fallback"):
        raise RuntimeError(f"{url} fell back to population defaults: {answer}")


def _targets(
    work: Path, base: str, baseline: str, features_body: dict[str, Any], ids: list[int]
) -> tuple[list[tuple[str, str, Path]], list[tuple[str, dict[str, Any], str | None]]]:
    """Rows (a)-(d) as (name, URL, wrk script), and one (URL, body, feature source) check each."""
    from attune.data.schema import OPTION_IDS

    app = f"{base}/online/v1/rank"
    plain = {"context": {"touchpoint": "app"}, "candidates": [{"option_id": o} for o in OPTION_IDS]}
    by_id = [{"borrower_id": b, **plain} for b in ids]
    with_state = [
        {**body, "borrower": _http(f"{base}/online/v1/features/{b}")["features"]}
        for b, body in zip(ids, by_id, strict=True)
    ]
    rows = [
        (baseline, [features_body], None),
        (app, [features_body], "request"),
        (app, with_state, "borrower"),
        (app, by_id, "online"),
    ]
    targets = [
        (name, url, _script(work, f"row{i}", bodies))
        for i, (name, (url, bodies, _)) in enumerate(zip(ROWS, rows, strict=True))
    ]
    return targets, [(url, bodies[0], source) for url, bodies, source in rows]


def _measure(
    targets: list[tuple[str, str, Path]], args: argparse.Namespace, replicas: int
) -> dict[tuple[str, int], Run]:
    """Every target at 1 and ``args.connections`` connections, interleaved; medians."""
    for _, url, script in targets:
        _wrk_script(url, script, connections=args.connections, duration=1, name="warm-up")
    runs: dict[tuple[str, int], list[Run]] = {}
    for round_ in range(args.rounds):
        for name, url, script in targets:
            for conns in (1, args.connections):
                run = _wrk_script(url, script, connections=conns, duration=args.duration, name=name)
                runs.setdefault((name, conns), []).append(run)
                _say(
                    f"x{replicas} round {round_ + 1}: {name:<14} @{conns}: p50 "
                    f"{run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms, {run.rps:,.0f} req/s"
                    + (f", {run.failed} FAILED" if run.failed else "")
                )
    return {
        key: Run(
            name=key[0],
            connections=key[1],
            p50_ms=statistics.median(r.p50_ms for r in rs),
            p99_ms=statistics.median(r.p99_ms for r in rs),
            rps=statistics.median(r.rps for r in rs),
            failed=sum(r.failed for r in rs),
            p50_range=(min(r.p50_ms for r in rs), max(r.p50_ms for r in rs)),
        )
        for key, rs in runs.items()
    }


def _ranking(
    work: Path,
    history: str,
    end: datetime,
    redis_url: str,
    args: argparse.Namespace,
    stack: contextlib.ExitStack,
) -> dict[int, dict[Any, Run]]:
    """Part 1: (a)-(d) per replica count. Serve is shut down on return."""
    from ray import serve

    from attune.data.materialize import MaterializeConfig
    from attune.data.spec import default_spec
    from attune.online.snapshot import materialize_online
    from attune.registry import Registry

    store = str(work / "serve-store")
    config = MaterializeConfig(as_of=end, buckets=8, partitions=4)
    snapshot = materialize_online(history, store, redis_url=redis_url, config=config)
    _say(f"serving snapshot: {snapshot.info.borrowers:,} borrowers in {snapshot.seconds:.1f} s")
    ids = _borrower_keys(redis_url, snapshot.meta, args.ids, seed=1)

    _say("training and exporting the benchmark model (200 trees, depth 6) ...")
    model, features_body = _model(work)
    body_file = work / "body.json"
    body_file.write_text(json.dumps(features_body))
    registry = Registry(str(work / "registry"))
    files = {
        "model.onnx": model.read_bytes(),
        "feature_spec.json": default_spec().to_json().encode(),
    }
    champion = registry.register(files, metadata={"bench": "online"})
    baseline = stack.enter_context(_baseline(model, body_file))
    _say(f"baseline (uvicorn + ONNX Runtime) at {baseline}")

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    base = f"http://127.0.0.1:{port}"
    out: dict[int, dict[Any, Run]] = {}
    targets: list[tuple[str, str, Path]] = []
    checks: list[tuple[str, dict[str, Any], str | None]] = []
    try:
        for replicas in args.replicas:
            _say(f"deploying the app with {replicas} ingress replica(s) ...")
            _deploy(
                base,
                registry=registry.uri,
                champion=champion,
                store=store,
                redis_url=redis_url,
                replicas=replicas,
                probe=ids[0],
            )
            if not targets:  # (c) needs the running app's answer
                targets, checks = _targets(work, base, baseline, features_body, ids)
            for url, body, source in checks:
                _check(url, body, source)
            out[replicas] = _measure(targets, args, replicas)
    finally:
        serve.shutdown()
    return out


# --------------------------------------------------------------------------- materialization


def _materialization(
    work: Path,
    history: str,
    end: datetime,
    redis_url: str,
    *,
    rounds: int,
    warm_up: tuple[str, datetime],
) -> tuple[dict[str, float], Any]:
    """Part 2: parquet-only materialize vs materialize_online (``rounds`` rounds, the order
    alternating, medians); Redis memory per borrower after the first one into Redis."""
    import redis

    from attune.data.materialize import MaterializeConfig, materialize
    from attune.data.spec import default_spec
    from attune.online.redis_store import SnapshotKeyspace
    from attune.online.snapshot import materialize_online

    # Ray Data's first run on a cluster costs several seconds more than the next ones
    # (worker start-up), and Serve's replicas just left: warm up with the same config
    _say("warming up Ray Data (a small materialization) ...")
    materialize(warm_up[0], str(work / "warm-up"), config=MaterializeConfig(as_of=warm_up[1]))
    config = MaterializeConfig(as_of=end)
    seconds: dict[str, list[float]] = {"parquet only": [], "into Redis": []}
    used, snapshot, info = 0, None, None
    for r in range(rounds):
        for kind in list(seconds)[:: 1 if r % 2 == 0 else -1]:
            _say(f"round {r + 1}: materializing {kind} ...")
            started = time.perf_counter()
            if kind == "parquet only":
                info = materialize(history, str(work / f"parquet-{r}"), config=config)
            else:
                with redis.Redis.from_url(redis_url) as client:
                    before = int(client.info("memory")["used_memory"])
                    snapshot = materialize_online(
                        history, str(work / f"online-{r}"), redis_url=redis_url, config=config
                    )
                    # the first only: an older keyspace expires (120 s) under the next
                    used = used or int(client.info("memory")["used_memory"]) - before
            seconds[kind].append(time.perf_counter() - started)
            _say(f"{kind}: {seconds[kind][-1]:.1f} s")
    assert snapshot is not None and info is not None
    n = snapshot.info.borrowers
    keyspace = SnapshotKeyspace(redis_url, spec_hash=default_spec().hash)
    try:
        sampled = keyspace.memory_per_borrower(sample=1000)
    finally:
        keyspace.close()
    disk = sum(p.stat().st_size for p in Path(info.uri).rglob("*.parquet"))
    online_s, parquet_s = (statistics.median(seconds[k]) for k in ("into Redis", "parquet only"))
    figures = {
        "materialize_borrowers": n,
        "materialize_online_s": online_s,
        "materialize_online_borrowers_per_s": n / online_s,
        "materialize_parquet_s": parquet_s,
        "materialize_parquet_borrowers_per_s": info.borrowers / parquet_s,
        "redis_bytes_per_borrower_sampled": sampled,
        "redis_bytes_per_borrower_used_memory": used / n,
        "parquet_bytes_per_borrower": disk / info.borrowers,
    }
    return figures, snapshot


# --------------------------------------------------------------------------- kernel


def _timed(fns: dict[str, Any], reps: int, block: int = 10) -> dict[str, float]:
    """Median seconds of each ``fn(i)`` for ``i`` in ``range(reps)``.

    The functions take turns in blocks of ``block`` calls, so a busy machine slows each
    alike, while within a block the caches are the function's own (a pandas call just
    before would evict the kernel's and charge it for that); each block's first call is
    a warm-up.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    for at in range(0, max(reps, 1), block):
        for name, fn in fns.items():
            fn(at)
            for i in range(at, at + block):
                started = time.perf_counter()
                fn(i)
                times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def _kernel(redis_url: str, snapshot: Any, reps: float) -> dict[str, float]:
    """Part 3: the kernel on Redis states vs borrower_features on pandas frames."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.dataset as pads
    import redis

    from attune.data.features import borrower_features, feature_kernel
    from attune.data.spec import BORROWER_FEATURES, default_spec
    from attune.online import state as packed
    from attune.online.redis_store import micros, root_key

    ids = _borrower_keys(redis_url, snapshot.meta, 64, seed=2)
    prefix = f"{root_key(default_spec().hash)}:{snapshot.meta.snapshot_id}:b:"
    with redis.Redis.from_url(redis_url) as client:
        raws = client.mget([prefix + str(b) for b in ids])
    when = snapshot.meta.as_of + timedelta(hours=1)
    q_us = np.full(len(ids), micros(when), dtype=np.int64)
    one_code = np.zeros(1, dtype=np.int64)

    def single(i: int) -> None:
        raw = raws[i % len(raws)]
        feature_kernel(packed.arrays([packed.decode(raw)]), one_code, q_us[:1])

    states = [packed.decode(r) for r in raws]
    arrays_one = [packed.arrays([s]) for s in states]

    def single_kernel(i: int) -> None:
        feature_kernel(arrays_one[i % len(raws)], one_code, q_us[:1])

    def batch(_: int) -> None:
        feature_kernel(
            packed.arrays([packed.decode(r) for r in raws]),
            np.arange(len(raws), dtype=np.int64),
            q_us,
        )

    # the baseline: the same borrowers' history rows, as pandas frames (the Redis state
    # holds the compacted events; the features are the same, a check below proves it)
    where = pads.field("borrower_id").isin(pa.array(ids, pa.int64()))
    tables = {}
    for part in ("events", "borrowers", "loans"):
        data = pads.dataset(
            str(Path(snapshot.info.histories) / part), format="parquet", partitioning="hive"
        )
        tables[part] = data.to_table(filter=where).to_pandas()
    events = tables["events"]
    queries = pd.DataFrame({"borrower_id": ids, "ts": pd.Timestamp(when)})
    queries["ts"] = queries["ts"].astype("datetime64[us, UTC]")
    frames = [
        (
            events[events["borrower_id"] == b],
            queries.iloc[[i]],
            tables["borrowers"][tables["borrowers"]["borrower_id"] == b],
            tables["loans"][tables["loans"]["borrower_id"] == b],
        )
        for i, b in enumerate(ids)
    ]

    def pandas_single(i: int) -> None:
        e, q, b, lo = frames[i % len(frames)]
        borrower_features(e, q, borrowers=b, loans=lo)

    def pandas_batch(_: int) -> Any:
        return borrower_features(
            events, queries, borrowers=tables["borrowers"], loans=tables["loans"]
        )

    ours = packed.features(states, q_us)
    theirs = pandas_batch(0)[list(BORROWER_FEATURES)].to_numpy(dtype=np.float32)
    one = _timed(
        {"ours": single, "kernel": single_kernel, "pandas": pandas_single}, int(300 * reps)
    )
    many = _timed({"ours": batch, "pandas": pandas_batch}, int(100 * reps))
    return {
        "kernel_borrowers": len(ids),
        "kernel_single_us": one["ours"] * 1e6,
        "kernel_single_kernel_only_us": one["kernel"] * 1e6,
        "kernel_batch64_ms": many["ours"] * 1e3,
        "pandas_single_us": one["pandas"] * 1e6,
        "pandas_batch64_ms": many["pandas"] * 1e3,
        "kernel_max_abs_diff": float(np.max(np.abs(ours - theirs))),
    }


# --------------------------------------------------------------------------- report


def _flatten(http: dict[int, dict[Any, Run]], connections: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for replicas, runs in http.items():
        for row in ROWS:
            key = f"x{replicas}_{row.replace(' ', '_')}"
            one, many = runs[(row, 1)], runs[(row, connections)]
            out |= {
                f"{key}_p50_ms": one.p50_ms,
                f"{key}_p99_ms": one.p99_ms,
                f"{key}_rps": many.rps,
                f"{key}_failed": one.failed + many.failed,
            }
    return out


def _goals(
    http: dict[int, dict[Any, Run]], f: dict[str, Any], connections: int
) -> list[tuple[str, str, str, bool | None]]:
    """(figure, value, goal, met or None for information)."""
    out: list[tuple[str, str, str, bool | None]] = []
    for r, runs in http.items():
        base, feat, state, ident = (runs[(row, 1)] for row in ROWS)
        base_n, feat_n, _, ident_n = (runs[(row, connections)] for row in ROWS)
        d_id, d_state = ident.p50_ms - feat.p50_ms, state.p50_ms - feat.p50_ms
        d_base, id_rps, base_rps = (
            feat.p50_ms - base.p50_ms,
            ident_n.rps / feat_n.rps,
            feat_n.rps / base_n.rps,
        )
        out += [
            (f"x{r} id-only p50 - features p50", f"{d_id:+.2f} ms", "<= 0.5 ms", d_id <= 0.5),
            (f"x{r} id-only req/s / features req/s", f"{id_rps:.2f}", ">= 0.70", id_rps >= 0.70),
            (f"x{r} state p50 - features p50", f"{d_state:+.2f} ms", "<= 0.3 ms", d_state <= 0.3),
            (f"x{r} features p50 - baseline p50", f"{d_base:+.2f} ms", "<= 0.5 ms", d_base <= 0.5),
            (
                f"x{r} features req/s / baseline req/s",
                f"{base_rps:.2f}",
                ">= 0.50" if r == 1 else "(info)",
                base_rps >= 0.5 if r == 1 else None,
            ),
        ]
    online, parquet = (
        f["materialize_online_borrowers_per_s"],
        f["materialize_parquet_borrowers_per_s"],
    )
    sampled, used = f["redis_bytes_per_borrower_sampled"], f["redis_bytes_per_borrower_used_memory"]
    disk = f["parquet_bytes_per_borrower"]
    single, batch = f["kernel_single_us"], f["kernel_batch64_ms"]
    out += [
        (
            "materialize_online borrowers/s",
            f"{online:,.0f} ({online / parquet:.2f}x parquet-only)",
            ">= 5,000",
            online >= 5_000,
        ),
        (
            "Redis B/borrower (MEMORY USAGE)",
            f"{sampled:,.0f} ({sampled / disk:.1f}x parquet)",
            "<= 1,024",
            sampled <= 1024,
        ),
        (
            "Redis B/borrower (used_memory)",
            f"{used:,.0f} ({used / disk:.1f}x parquet)",
            "<= 1,024",
            used <= 1024,
        ),
        (
            "kernel, one borrower",
            f"{single:,.0f} us ({single / f['pandas_single_us']:.2f}x pandas)",
            "<= 200 us",
            single <= 200,
        ),
        (
            "kernel, 64 borrowers",
            f"{batch:.2f} ms ({batch / f['pandas_batch64_ms']:.2f}x pandas)",
            "<= 2 ms",
            batch <= 2.0,
        ),
    ]
    return out


def _report(http: dict[int, dict[Any, Run]], f: dict[str, Any], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(132, shutil.get_terminal_size().columns))
    table = Table(
        title=f"POST /v1/rank, 8 candidates, HAProxy ingress: median of {args.rounds} "
        f"round(s) of {args.duration:g} s per point"
    )
    for column in (
        "row",
        "replicas",
        "p50 ms",
        "p99 ms",
        f"req/s @{args.connections}",
        "p50 - baseline",
        "req/s / baseline",
        "failed",
    ):
        table.add_column(column, justify="right")
    for replicas, runs in http.items():
        base, base_n = runs[(ROWS[0], 1)], runs[(ROWS[0], args.connections)]
        for row in ROWS:
            one, many = runs[(row, 1)], runs[(row, args.connections)]
            table.add_row(
                row,
                str(replicas),
                f"{one.p50_ms:.2f}",
                f"{one.p99_ms:.2f}",
                f"{many.rps:,.0f}",
                f"{one.p50_ms - base.p50_ms:+.2f}",
                f"{many.rps / base_n.rps:.2f}",
                str(one.failed + many.failed),
            )
    console.print(table)
    other = Table(title="materialization and feature kernel (each against its baseline)")
    for column in ("figure", "attune", "baseline", "ratio"):
        other.add_column(column, justify="right")
    rows = [
        (
            "materialize, borrowers/s",
            "materialize_online_borrowers_per_s",
            "materialize_parquet_borrowers_per_s",
            "{:,.0f}",
            "parquet-only materialize",
        ),
        (
            "Redis bytes/borrower (MEMORY USAGE)",
            "redis_bytes_per_borrower_sampled",
            "parquet_bytes_per_borrower",
            "{:,.0f}",
            "parquet snapshot on disk",
        ),
        (
            "Redis bytes/borrower (used_memory)",
            "redis_bytes_per_borrower_used_memory",
            "parquet_bytes_per_borrower",
            "{:,.0f}",
            "parquet snapshot on disk",
        ),
        (
            "kernel, one borrower (us)",
            "kernel_single_us",
            "pandas_single_us",
            "{:,.1f}",
            "borrower_features (pandas)",
        ),
        (
            "kernel only, one borrower (us)",
            "kernel_single_kernel_only_us",
            "pandas_single_us",
            "{:,.1f}",
            "borrower_features (pandas)",
        ),
        (
            "kernel, 64 borrowers (ms)",
            "kernel_batch64_ms",
            "pandas_batch64_ms",
            "{:,.2f}",
            "borrower_features (pandas)",
        ),
    ]
    for label, ours, theirs, fmt, what in rows:
        other.add_row(
            label,
            fmt.format(f[ours]),
            f"{fmt.format(f[theirs])} ({what})",
            f"{f[ours] / f[theirs]:.2f}",
        )
    console.print(other)
    console.print(
        f"materialized {f['materialize_borrowers']:,} borrowers x {args.months} months "
        f"on {f['cpus']} Ray CPUs; kernel vs pandas max |diff| "
        f"{f['kernel_max_abs_diff']:.2g}; load average (1 min) at the end "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    goals = _goals(http, f, args.connections)
    for name, value, goal, met in goals:
        verdict = "(info)" if met is None else "met" if met else "MISSED"
        console.print(f"{name:>38}: {value:>28}  goal {goal:<10} {verdict}")
    f["goals_met"] = sum(1 for *_, met in goals if met)
    f["goals_missed"] = sum(1 for *_, met in goals if met is False)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in f.items()}))
    if args.plot:
        _plot(http, f, args.connections, Path(args.plot))
        console.print(f"plot written to {args.plot}")


def _plot(http: dict[int, dict[Any, Run]], f: dict[str, Any], connections: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    width = 0.8 / len(http)
    for k, (replicas, runs) in enumerate(http.items()):
        xs = [i + (k - (len(http) - 1) / 2) * width for i in range(len(ROWS))]
        axes[0, 0].bar(xs, [runs[(r, 1)].p50_ms for r in ROWS], width, label=f"x{replicas}")
        axes[0, 1].bar(xs, [runs[(r, connections)].rps for r in ROWS], width, label=f"x{replicas}")
    axes[0, 0].set_title("p50 at 1 connection (ms)")
    axes[0, 1].set_title(f"throughput at {connections} connections (req/s)")
    for axis in axes[0]:
        axis.set_xticks(range(len(ROWS)), ROWS, fontsize=8)
        axis.legend(title="ingress replicas")
    names = ["parquet only", "into Redis"]
    axes[1, 0].bar(
        names, [f["materialize_parquet_borrowers_per_s"], f["materialize_online_borrowers_per_s"]]
    )
    axes[1, 0].axhline(5_000, color="grey", linestyle="--", label="goal")
    axes[1, 0].set_title(f"materialization, {f['materialize_borrowers']:,} borrowers (borrowers/s)")
    axes[1, 0].legend()
    xs = [0, 1]
    axes[1, 1].bar(
        [x - 0.2 for x in xs],
        [f["pandas_single_us"] / 1e3, f["pandas_batch64_ms"]],
        0.4,
        label="borrower_features (pandas)",
    )
    axes[1, 1].bar(
        [x + 0.2 for x in xs],
        [f["kernel_single_us"] / 1e3, f["kernel_batch64_ms"]],
        0.4,
        label="Redis bytes -> kernel",
    )
    axes[1, 1].set_xticks(xs, ["one borrower", "64 borrowers"])
    axes[1, 1].set_yscale("log")
    axes[1, 1].set_ylim(top=20 * max(f["pandas_single_us"] / 1e3, f["pandas_batch64_ms"]))
    axes[1, 1].set_title("borrower features (ms, log scale)")
    axes[1, 1].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


# --------------------------------------------------------------------------- main


def _quiet_ray_data() -> None:
    """Ray Data's per-dataset progress lines would drown this bench's own."""
    import logging

    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/online.py", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--replicas",
        type=int,
        nargs="+",
        default=[1, 2],
        help="Ingress replica counts, measured in turn.",
    )
    parser.add_argument("--duration", type=float, default=10, help="Seconds per wrk point.")
    parser.add_argument("--rounds", type=int, default=1, help="Interleaved rounds (median).")
    parser.add_argument("--connections", type=int, default=8, help="Saturating connections.")
    parser.add_argument("--ids", type=int, default=64, help="Borrowers the wrk bodies cycle over.")
    parser.add_argument(
        "--serve-borrowers",
        type=int,
        default=2_000,
        help="Borrowers of the history served over HTTP.",
    )
    parser.add_argument(
        "--borrowers",
        type=int,
        default=100_000,
        help="Borrowers of the history materialized for throughput.",
    )
    parser.add_argument("--months", type=int, default=7)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray.")
    parser.add_argument(
        "--work",
        type=Path,
        default=_ROOT / ".attune" / "bench-online",
        help="Where histories are generated once and reused.",
    )
    parser.add_argument("--plot", default=None, help="Write a PNG of the figures here.")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="Smoke run: tiny histories, 2 s per point, few borrowers.",
    )
    args = parser.parse_args(argv)
    reps = 1.0
    if args.quick:
        args.borrowers, args.serve_borrowers = _QUICK["borrowers"], _QUICK["serve_borrowers"]
        args.duration, args.ids, reps = _QUICK["duration"], int(_QUICK["ids"]), _QUICK["reps"]
    haproxy = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH") or shutil.which("haproxy")
    missing = [
        tool for tool, found in (("wrk", shutil.which("wrk")), ("haproxy", haproxy)) if not found
    ]
    if missing:
        print(f"{' and '.join(missing)} not found: apt-get install -y wrk haproxy", file=sys.stderr)
        return 2
    # Serve's HAProxy ingress on ports of its own: set before Ray starts
    os.environ.update(_haproxy_env())
    os.environ["RAY_SERVE_HAPROXY_BINARY_PATH"] = str(haproxy)
    args.work.mkdir(parents=True, exist_ok=True)
    serve_history, serve_end = _history(args.work, args.serve_borrowers, args.months)
    history, end = _history(args.work, args.borrowers, args.months)
    cpus = max(args.cpus, max(args.replicas))
    figures: dict[str, Any] = {
        "borrowers": args.borrowers,
        "months": args.months,
        "cpus": cpus,
        "serve_borrowers": args.serve_borrowers,
        "ids": args.ids,
    }

    import ray

    from attune.online.server import RedisServer

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=args.work, prefix="run-")))
        servers = []
        for name in ("redis-serve", "redis-materialize"):
            server = RedisServer(data_dir=tmp / name, persistence=False)
            stack.callback(server.stop)
            servers.append(server.start())
        _say(f"redis-server at {servers[0].url} (serving) and {servers[1].url} (materialization)")
        _say(f"starting a local Ray ({cpus} CPUs) ...")
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        stack.callback(ray.shutdown)
        _quiet_ray_data()
        http = _ranking(tmp, serve_history, serve_end, servers[0].url, args, stack)
        figures |= _flatten(http, args.connections)
        part, snapshot = _materialization(
            tmp,
            history,
            end,
            servers[1].url,
            rounds=args.rounds,
            warm_up=(serve_history, serve_end),
        )
        figures |= part
        _say("timing the feature kernel ...")
        figures |= _kernel(servers[1].url, snapshot, reps)
    _say("stopped Serve, Ray, Redis and the baseline server")
    _report(http, figures, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
