"""Ray Data preprocess versus a single-process pandas run of the same feature code.

    python bench/preprocess.py [--borrowers 20000] [--months 12] [--seed 7] [--workdir DIR]

Generates a history with the simulator (or reuses one under ``--workdir``), then, each
in its own child process so that memory is measured separately and side by side:

(a) baseline: one process reads and validates every file, calls
    ``attune.data.pipeline.ranking_rows`` (that is, ``attune.data.features``) on the
    whole history with pandas and writes one sorted parquet file per split;
(b) Ray Data: ``attune.data.pipeline.preprocess`` on a fresh local Ray with 2 CPUs.

For each it prints wall time, events per second and the peak memory of the whole
process tree (sum of PSS, sampled every 0.2 s: Ray's raylet, workers and object store
included) and its CPU seconds (a figure that load from elsewhere on the machine
disturbs less than wall time), then Ray's figures as ratios of the baseline's
(median over ``--repeat`` alternating pairs: the machine may be shared), and checks
that both outputs hold the same rows. Ray's start-up is timed apart from the pipeline.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]


def _tree_sample(pid: int, cpu: dict[int, float]) -> int:
    """Sum of PSS (or RSS) over ``pid`` and its descendants; records each one's CPU seconds."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            with proc.oneshot():
                info = proc.memory_full_info()
                times = proc.cpu_times()
            total += int(getattr(info, "pss", info.rss))
            cpu[proc.pid] = times.user + times.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


def _run_child(argv: list[str]) -> tuple[dict[str, float], int]:
    """Run ``argv``; return the JSON it prints last and the peak memory of its tree.

    The figures get ``cpu``: CPU seconds of every process of the tree, as last sampled
    (a process that lives less than one sampling interval is missed).
    """
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=_ROOT)
    peak = 0
    cpu: dict[int, float] = {}
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_sample(proc.pid, cpu))
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{argv[2:4]} failed with status {proc.returncode}")
    figures = json.loads(out.strip().splitlines()[-1])
    figures["cpu"] = sum(cpu.values())
    return figures, peak


def _baseline(histories: str, out: str) -> dict[str, float]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from attune.data.features import micros
    from attune.data.pipeline import DATASET_SCHEMA, SPLITS, PreprocessConfig, SplitPlan
    from attune.data.pipeline import ranking_rows as rows_of
    from attune.data.reader import read_history

    start = time.perf_counter()
    h = read_history(histories)
    shown = micros(h["presentations"]["ts"])
    plan = SplitPlan.from_span(
        first_us=int(shown.min()), last_us=int(shown.max()), config=PreprocessConfig()
    )
    rows = rows_of(
        events=h["events"],
        presentations=h["presentations"],
        borrowers=h["borrowers"],
        loans=h["loans"],
        split=plan,
    )
    for split in SPLITS:
        Path(out, split).mkdir(parents=True, exist_ok=True)
        part = rows[rows["split"] == split].drop(columns="split")
        table = pa.Table.from_pandas(part, schema=DATASET_SCHEMA, preserve_index=False)
        pq.write_table(table, Path(out, split, "part-00000.parquet"))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "events": float(len(h["events"])), "rows": float(len(rows))}


def _ray(histories: str, out: str, buckets: int, partitions: int, cpus: int) -> dict[str, float]:
    import ray

    from attune.data.pipeline import PreprocessConfig, preprocess

    start = time.perf_counter()
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    try:
        config = PreprocessConfig(buckets=buckets, partitions=partitions)
        result = preprocess(histories, out, config=config)
    finally:
        ray.shutdown()
    return {
        "seconds": time.perf_counter() - started,
        "startup": started - start,
        "events": float(result.events),
        "rows": float(sum(result.rows.values())),
    }


def _same_rows(a: str, b: str) -> bool:
    import pandas as pd
    import pyarrow.parquet as pq

    for split in ("train", "valid", "test"):
        frames = []
        for root in (a, b):
            files = sorted(Path(root, split).glob("*.parquet"))
            frames.append(pd.concat([pq.read_table(f).to_pandas() for f in files]))
        left, right = (f.reset_index(drop=True) for f in frames)
        if not left.equals(right):
            return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/preprocess.py", description=__doc__)
    parser.add_argument("--borrowers", type=int, default=20_000)
    parser.add_argument("--months", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", default=None, help="reuses <workdir>/history if present")
    parser.add_argument("--buckets", type=int, default=32)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="baseline/Ray pairs to run")
    parser.add_argument("--child", choices=("baseline", "ray"), help=argparse.SUPPRESS)
    parser.add_argument("--histories", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child == "baseline":
        print(json.dumps(_baseline(args.histories, args.out)))
        return 0
    if args.child == "ray":
        figures = _ray(args.histories, args.out, args.buckets, args.partitions, args.cpus)
        print(json.dumps(figures))
        return 0

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-preprocess-"))
    histories = work / "history"
    for old in [*work.glob("b[0-9]*"), *work.glob("r[0-9]*")]:
        shutil.rmtree(old)
    if not (histories / "manifest.json").exists():
        from attune.simulator.generator import GenerateConfig, generate

        print(f"generating {args.borrowers:,} borrowers x {args.months} months under {work}")
        generate(
            GenerateConfig(
                borrowers=args.borrowers,
                months=args.months,
                seed=args.seed,
                out=str(histories),
                parallel="local",
            ),
            progress=True,
        )
    me = [sys.executable, str(Path(__file__).resolve())]
    common = ["--histories", str(histories)]
    ray_args = ["--buckets", str(args.buckets), "--partitions", str(args.partitions)]
    runs = []
    for i in range(args.repeat):
        # alternate, so that load from elsewhere on the machine hits both sides alike
        base = _run_child([*me, "--child", "baseline", *common, "--out", str(work / f"b{i}")])
        ray_argv = [*me, "--child", "ray", *common, "--out", str(work / f"r{i}"), *ray_args]
        on_ray = _run_child([*ray_argv, "--cpus", str(args.cpus)])
        runs.append((base, on_ray))

    events = runs[0][0][0]["events"]
    print(f"history: {int(events):,} events -> {int(runs[0][0][0]['rows']):,} ranking rows")
    print(
        f"{'run':5}{'':24}{'wall s':>9}{'events/s':>12}{'peak MiB':>10}{'CPU s':>8}"
        f"{'start-up s':>12}"
    )
    ratios, ratios_start, memory = [], [], []
    for i, ((base, base_peak), (fig, peak)) in enumerate(runs):
        for name, f, p in (("single-process pandas", base, base_peak), ("Ray Data", fig, peak)):
            start = f"{f['startup']:12.1f}" if "startup" in f else ""
            print(
                f"{i:<5}{name:24}{f['seconds']:9.1f}{events / f['seconds']:12,.0f}"
                f"{p / 2**20:10,.0f}{f['cpu']:8.1f}{start}"
            )
        ratios.append(base["seconds"] / fig["seconds"])
        ratios_start.append(base["seconds"] / (fig["seconds"] + fig["startup"]))
        memory.append(peak / base_peak)
    print(
        f"Ray Data / baseline events/s, median of {len(runs)}: {statistics.median(ratios):.2f}x "
        f"(runs: {', '.join(f'{r:.2f}' for r in ratios)}); counting Ray start-up "
        f"{statistics.median(ratios_start):.2f}x"
    )
    print(f"Ray Data / baseline peak memory, median: {statistics.median(memory):.2f}x")
    cpu = [fig["cpu"] / base["cpu"] for (base, _), (fig, _) in runs]
    print(
        "Ray Data / baseline CPU seconds of all processes (start-up included), median: "
        f"{statistics.median(cpu):.2f}x"
    )
    same = all(_same_rows(str(work / f"b{i}"), str(work / f"r{i}")) for i in range(len(runs)))
    print(f"outputs hold the same rows: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
