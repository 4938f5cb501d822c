"""The demo's steps: each calls the library function behind one ``attune`` command."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from attune.demo.config import DemoConfig
from attune.demo.traffic import Presentation, TrafficResult, outcomes_frame, presentations, send

APP = "attune"
_DEMO_ACTOR = "attune-demo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Paths:
    """Where each artifact of the demo lives (all under the demo's store root)."""

    root: Path

    @classmethod
    def under(cls, root: Path) -> Paths:
        return cls(root=root)

    @property
    def histories(self) -> str:
        return str(self.root / "histories")

    @property
    def features(self) -> str:
        # the store layout's ranking dataset (attune.layout): online snapshots sit beside it
        return str(self.root / "features" / "latest")

    @property
    def registry(self) -> str:
        return str(self.root / "registry")

    @property
    def decisions(self) -> str:
        return str(self.root / "decisions")

    @property
    def outcomes(self) -> str:
        return str(self.root / "outcomes" / "outcomes.parquet")

    @property
    def experiment(self) -> str:
        return str(self.root / "experiment")


def generate(config: DemoConfig, paths: Paths, summary: Any) -> None:
    from attune.simulator.generator import GenerateConfig, generate

    manifest = generate(
        GenerateConfig(
            borrowers=config.borrowers,
            months=config.months,
            seed=config.seed,
            out=paths.histories,
            overwrite=True,
        ),
        progress=True,
    )
    summary.facts["history"] = {
        "borrowers": config.borrowers,
        "months": config.months,
        **{f"{k} rows": v for k, v in manifest["counts"].items()},
        "best fixed ranking: share of oracle lift": manifest["share_of_oracle_lift"].get(
            "best_fixed"
        ),
    }


def preprocess(paths: Paths, summary: Any) -> None:
    from attune.data.pipeline import preprocess

    result = preprocess(paths.histories, paths.features)
    summary.facts["dataset"] = {
        **{f"{split} rows": n for split, n in result.rows.items()},
        **{f"{split} groups": n for split, n in result.groups.items()},
        "events read": result.events,
        "content hash": result.content_hash,
    }


def materialize(paths: Paths, redis_url: str, summary: Any) -> None:
    """Every borrower's online state into Redis (``attune features materialize``)."""
    from attune.data.materialize import MaterializeConfig
    from attune.online.redis_store import SnapshotKeyspace
    from attune.online.snapshot import materialize_online

    done = materialize_online(
        paths.histories, str(paths.root), redis_url=redis_url, config=MaterializeConfig()
    )
    keyspace = SnapshotKeyspace(redis_url, spec_hash=done.info.spec_hash)
    try:
        per_borrower = keyspace.memory_per_borrower()
    finally:
        keyspace.close()
    summary.facts["online features"] = {
        "snapshot": done.meta.snapshot_id,
        "borrowers": done.info.borrowers,
        "borrowers per second": round(done.info.borrowers / max(done.seconds, 1e-9)),
        "Redis bytes per borrower": round(per_borrower),
    }


def realtime(paths: Paths, *, port: int, summary: Any) -> int:
    """Rank a borrower by id, post a payment, and see the next features and ranking use it.

    Returns the number of rankings it asked for (they are decisions like any other)."""
    import json
    import urllib.request
    from datetime import datetime, timezone

    import pyarrow.dataset as pads

    base = f"http://127.0.0.1:{port}"

    def call(method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            base + path, data=data, method=method, headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    people = pads.dataset(str(Path(paths.histories) / "borrowers"), partitioning="hive")
    borrower = int(people.to_table(columns=["borrower_id"]).column(0)[0].as_py())
    before = call("GET", f"/v1/features/{borrower}")["features"]
    ask = {
        "borrower_id": borrower,
        "context": {"touchpoint": "app"},
        "candidates": [{"option_id": o} for o in ("autopay_enroll", "payment_plan", "pay_now")],
    }
    first = call("POST", "/v1/rank", ask)
    now = datetime.now(timezone.utc).isoformat()
    payment = {
        "event_id": f"demo-payment-{borrower}-{now}",
        "borrower_id": borrower,
        "ts": now,
        "event_type": "payment_on_time",
        "amount": 150.0,
    }
    posted = call("POST", "/v1/events", {"events": [payment]})
    after = call("GET", f"/v1/features/{borrower}")["features"]
    second = call("POST", "/v1/rank", ask)
    summary.facts["real time"] = {
        "borrower": borrower,
        "ranking by id (before)": [o["option_id"] for o in first["options"]],
        "payment posted": f"applied {posted['applied']}",
        "pay_on_time_30 before → after": f"{before['pay_on_time_30']:g} → "
        f"{after['pay_on_time_30']:g}",
        "ranking by id (after)": [o["option_id"] for o in second["options"]],
    }
    return 2


def train(config: DemoConfig, paths: Paths, summary: Any, *, role: str, seed: int) -> str:
    """Sweep, evaluate, export (parity gate) and register; the champion gets the alias."""
    from attune.registry import Registry
    from attune.training.config import TuneConfig
    from attune.training.pipeline import train_and_register

    result = train_and_register(
        TuneConfig(
            features=paths.features,
            registry=paths.registry,
            trials=config.trials,
            max_rounds=config.max_rounds,
            seed=seed,
            name=f"demo-{role}",
        )
    )
    metrics = result.metrics
    shares = metrics["share_of_oracle_lift"]
    summary.facts[role] = {
        "version": result.version_id,
        "best trial": result.best_trial.trial_id,
        "validation NDCG@3": round(float(metrics["validation"]["ndcg@3"]), 4),
        "test NDCG@3": round(float(metrics["test"].get("ndcg@3", float("nan"))), 4),
        "share of oracle lift (model)": round(float(shares["model"]), 3),
        "share of oracle lift (legacy)": round(float(shares["legacy"]), 3),
        "share of oracle lift (best fixed)": round(float(shares["best_fixed"]), 3),
        "parity max |diff|": result.parity.get("max_abs_diff"),
        "parity order agreement": result.parity.get("order_agreement"),
        "sweep ran on nodes": result.sweep_nodes,
    }
    report_dir = Path(result.report_dir)
    for png in sorted(report_dir.glob("*.png")):
        summary.images[f"{role}: {png.stem.replace('_', ' ')}"] = png
    registry = Registry(paths.registry)
    verdict = _fairness_verdict(registry, result.version_id)
    summary.facts[role]["fairness gate"] = verdict
    if role == "champion":
        registry.set_alias(
            "champion",
            result.version_id,
            by=_DEMO_ACTOR,
            override=verdict != "passed",
            justification=None if verdict == "passed" else "demo: simulated data",
        )
    return result.version_id


def _fairness_verdict(registry: Any, version: str) -> str:
    from attune.governance.gates.fairness_gate import check_fairness

    try:
        decision = check_fairness(registry.read_json(version, "fairness.json"))
    except Exception as exc:  # a missing report is itself a verdict worth showing
        return f"no verdict ({type(exc).__name__})"
    if decision.passed:
        return "passed"
    more = f" (+{len(decision.reasons) - 1} more)" if len(decision.reasons) > 1 else ""
    return f"refused: {decision.reasons[0]}{more}"


def deploy(paths: Paths, *, champion: str, port: int, redis_url: str) -> None:
    """Deploy the app (champion only) through the same declarative path as ``serve deploy``."""
    from ray.serve.schema import ServeDeploySchema

    from attune.serving.app import app_config
    from attune.serving.config import AppArgs, OnlineConfig, RolloutConfig
    from attune.serving.rollout import deploy

    args = AppArgs(
        registry=paths.registry,
        store=str(paths.root),
        rollout=RolloutConfig(champion=champion),
        online=OnlineConfig(redis_url=redis_url),
    )
    entry = app_config(
        args,
        name=APP,
        ingress={
            "num_replicas": 1,
            "ray_actor_options": {"num_cpus": 0.5},
            "user_config": args.rollout.model_dump(mode="json"),
        },
    )
    config = ServeDeploySchema.model_validate(
        {
            "proxy_location": "HeadOnly",
            "http_options": {"host": "127.0.0.1", "port": port},
            "applications": [entry],
        }
    )
    deploy(config)


def rollout(
    paths: Paths, *, step: str, version: str | None = None, percent: float | None = None
) -> None:
    from attune.serving.rollout import RolloutRequest, run_step

    run_step(
        RolloutRequest.model_validate(
            {
                "step": step,
                "app": APP,
                "version": version,
                "percent": percent,
                "by": _DEMO_ACTOR,
                "override": True,
                "justification": "demo: simulated data",
            }
        ),
        registry_uri=paths.registry,
    )


class Traffic:
    """Held-out presentations sent to the running app, phase by phase."""

    def __init__(self, *, config: DemoConfig, url: str, pool: list[Presentation], gt: Any) -> None:
        self.config, self.url, self.pool, self.gt = config, url, pool, gt
        self.results: dict[str, TrafficResult] = {}
        self._cursor = 0

    @classmethod
    def prepare(cls, config: DemoConfig, paths: Paths, *, port: int) -> Traffic:
        import numpy as np

        from attune.simulator.ground_truth import load_ground_truth
        from attune.training.dataset import load_dataset

        dataset = load_dataset(paths.features, splits=("test",))
        pool = presentations(
            dataset["test"], dataset.spec, limit=4 * config.requests, seed=config.seed
        )
        ids = np.asarray(sorted({p.qid for p in pool}), dtype=np.int64)
        gt = load_ground_truth(paths.histories, presentation_ids=ids)
        return cls(config=config, url=f"http://127.0.0.1:{port}/v1/rank", pool=pool, gt=gt)

    def phase(self, name: str, n: int, progress: Any, summary: Any) -> TrafficResult:
        batch = [self.pool[(self._cursor + i) % len(self.pool)] for i in range(n)]
        self._cursor += n
        task = progress.add_task(f"{name}: requests", total=n)
        result = send(
            self.url,
            batch,
            ground_truth=self.gt,
            seed=self.config.seed + len(self.results),
            concurrency=self.config.concurrency,
            on_done=lambda: progress.advance(task),
        )
        self.results[name] = result
        summary.facts[f"traffic: {name}"] = {
            "sent": result.sent,
            "ok": result.ok,
            "failed (by HTTP status; 0 = no answer)": dict(sorted(result.failed.items())),
            "arms": dict(sorted(result.arms.items())),
            "latency p50 (ms, client)": round(result.percentile(50), 2),
            "latency p99 (ms, client)": round(result.percentile(99), 2),
        }
        return result

    def wait_for_log(self, summary: Any, *, also_answered: int = 0) -> None:
        """Wait (with a deadline) until every answered decision is in the decision log
        (``also_answered``: decisions served outside the traffic phases)."""
        import time

        import pyarrow.dataset as pads

        answered = sum(r.ok for r in self.results.values()) + also_answered
        root = Path(self.config.workdir).absolute() / "decisions"
        deadline = time.monotonic() + 60
        roles: list[str] = []
        while time.monotonic() < deadline:
            if root.exists():
                table = pads.dataset(str(root), partitioning="hive").to_table(columns=["role"])
                roles = table.column("role").to_pylist()
                if roles.count("primary") >= answered:
                    break
            time.sleep(0.5)
        summary.facts["decision log"] = {
            "decisions answered": answered,
            "primary decisions logged": roles.count("primary"),
            "shadow answers logged": roles.count("shadow"),
        }


def analyze(config: DemoConfig, paths: Paths, traffic: Traffic, summary: Any) -> None:
    """A/B: champion vs canary on the outcomes their rankings produced (canary phase only)."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from attune.experiments.report import AnalyzeConfig, run_analysis

    canary = traffic.results["canary"]
    outcomes = outcomes_frame(canary)
    Path(paths.outcomes).parent.mkdir(parents=True, exist_ok=True)
    outcomes.to_parquet(paths.outcomes, index=False)
    # The experiment is the canary phase: its decisions are the ones it drew outcomes for
    # (earlier phases were all champion and would skew the sample-ratio check).
    logged = pads.dataset(paths.decisions, partitioning="hive")
    ids = pa.array(outcomes["decision_id"].tolist(), type=pa.string())
    experiment_log = str(Path(paths.experiment) / "decisions" / "part-0.parquet")
    Path(experiment_log).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        logged.to_table(
            columns=["decision_id", "ts", "role", "arm"],
            filter=pads.field("decision_id").isin(ids),
        ),
        experiment_log,
    )
    share = config.canary_percent / 100
    report = run_analysis(
        AnalyzeConfig(
            decisions=str(Path(experiment_log).parent),
            outcomes=paths.outcomes,
            out=paths.experiment,
            metric="reward",
            covariate="on_time_rate_180",
            weights={"champion": 1 - share, "canary": share},
            fill_missing=0.0,
        )
    )
    summary.facts["experiment"] = _experiment_facts(report)
    summary.images["experiment: lift over time"] = Path(paths.experiment) / "lift_over_time.png"


def _experiment_facts(report: dict[str, Any]) -> dict[str, Any]:
    """The headline of the A/B report: arms, SRM, lift with intervals, sequential p."""
    facts: dict[str, Any] = {
        f"{arm}: n / mean reward": f"{v['n']} / {v['mean']:.4f}"
        for arm, v in report["arms"].items()
    }
    facts["sample-ratio mismatch"] = (
        f"p = {report['srm']['p_value']:.3g} ({'FLAGGED' if report['srm']['flagged'] else 'ok'})"
    )
    for arm, c in report["comparisons"].items():
        low, high = c["absolute_ci"]
        facts[f"{arm} vs {c['control']}: absolute lift"] = (
            f"{c['absolute_lift']:+.4f} [{low:+.4f}, {high:+.4f}]"
        )
        facts[f"{arm} vs {c['control']}: p (fixed / always-valid)"] = (
            f"{c['p_value_fixed_horizon']:.3g} / {c['p_value_always_valid']:.3g}"
        )
        facts[f"{arm}: CUPED variance reduction"] = f"{c['variance_reduction']:.1%}"
    return facts


def drift(paths: Paths, version: str, summary: Any) -> None:
    from attune.monitoring.drift_monitor import drift_config, run_drift_monitor

    report = run_drift_monitor(
        drift_config(
            registry=paths.registry,
            version=version,
            decisions=paths.decisions,
            out=str(paths.root / "monitoring" / "drift"),
        )
    )
    summary.facts["drift"] = {
        "status": report["status"],
        "rows compared": report["n_rows"],
        "max PSI": round(float(report["max_psi"]), 4),
        "features at warn": report["flagged"]["warn"],
        "features at alert": report["flagged"]["alert"],
    }
    png = paths.root / "monitoring" / "drift" / "drift.png"
    if png.exists():
        summary.images["drift: PSI per feature"] = png


def learning_loop(
    config: DemoConfig, paths: Paths, *, port: int, champion: str, summary: Any
) -> list[Any]:
    """Serve with exploration → rewards → retrain → OPE gate → canary → promote or refuse,
    ``config.loop_iterations`` times, on held-out presentations (attune.demo.loop)."""
    from attune.demo.endpoints import HttpEndpoint
    from attune.demo.loop import Loop, LoopConfig, load_pool, plot_loop, simulator
    from attune.registry import Registry
    from attune.serving.model import OnnxScorer
    from attune.settings import get_settings
    from attune.training.config import TuneConfig
    from attune.training.pipeline import train_and_register

    registry = Registry(paths.registry)
    pool = load_pool(paths.features)
    environment, truth = simulator(pool, paths.histories, seed=config.seed)
    scorers: dict[str, OnnxScorer] = {}

    def score(version: str, rows: Any) -> Any:
        if version not in scorers:
            scorers[version] = OnnxScorer.load(registry, version)
        return scorers[version].score(rows)

    def retrain(i: int, rewards: str) -> str:
        result = train_and_register(
            TuneConfig(
                features=paths.features,
                registry=paths.registry,
                trials=config.trials,
                max_rounds=config.max_rounds,
                seed=config.seed + 10 + i,
                name=f"demo-loop-{i + 1}",
                served=(rewards,),
            )
        )
        return result.version_id

    def promote(version: str) -> None:
        rollout(paths, step="promote")

    loop = Loop(
        config=LoopConfig(
            iterations=config.loop_iterations, requests=config.requests, seed=config.seed
        ),
        endpoint=HttpEndpoint(
            base=f"http://127.0.0.1:{port}",
            store=str(paths.root),
            app=APP,
            concurrency=config.concurrency,
        ),
        environment=environment,
        truth=truth,
        pool=pool,
        retrain=retrain,
        score=score,
        registry=registry,
        salt=get_settings().borrower_salt.get_secret_value(),
        champion=champion,
        promote=promote,
    )
    iterations = loop.run()
    summary.loop = [it.to_dict() for it in iterations]
    for i, it in enumerate(iterations, start=1):
        ope = it.ope or {}
        summary.facts[f"learning loop: iteration {i}"] = {
            "candidate": it.candidate,
            "OPE estimate [95 % CI]": (
                f"{ope['value']:.4f} [{ope['ci_low']:.4f}, {ope['ci_high']:.4f}] "
                f"({ope['estimator']}, n = {ope['n']})"
                if ope
                else "skipped: no usable exploring decision"
            ),
            "realized (canary)": (
                f"{it.realized['value']:.4f} [{it.realized['ci_low']:.4f}, "
                f"{it.realized['ci_high']:.4f}] (n = {it.realized['n']})"
                if it.realized
                else "no canary"
            ),
            "true value: candidate / champion": (
                f"{it.true_value:.4f} / {it.champion_true_value:.4f}"
            ),
            "oracle share (candidate)": round(it.oracle_share, 3),
            "promoted": it.promoted if it.promoted else f"no (refused by {it.refused_by})",
        }
    png = paths.root / "demo" / "learning_loop.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    summary.images["learning loop: true policy value per iteration"] = Path(
        plot_loop(iterations, str(png))
    )
    return iterations
