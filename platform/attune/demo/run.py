"""``attune demo``: the whole flow on a local Ray with a local store.

generate → preprocess → materialize online features into Redis → tune (champion) →
tune (challenger) → deploy the champion → rank by id, post a payment, rank again →
traffic → challenger in shadow → traffic → challenger in canary → traffic → A/B
analysis → drift check → summary and an HTML report. The online store is
``ATTUNE_REDIS_URL`` or a local ``redis-server`` with its data under ``<workdir>/redis``
(persisted: ``serve run serve_configs/local.yaml`` finds it afterwards). Every step
calls the same library function its CLI command calls; the demo only wires them
together and shows progress.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attune.demo.config import DemoConfig

_T = TypeVar("_T")


@dataclass
class DemoSummary:
    """What the demo did and measured; rendered as the final table and the HTML report."""

    workdir: Path
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds
    facts: dict[str, Any] = field(default_factory=dict)
    images: dict[str, Path] = field(default_factory=dict)  # caption -> PNG
    loop: list[dict[str, Any]] = field(default_factory=list)  # learning-loop iterations


class _Steps:
    """Runs named steps, timing each and printing its headline."""

    def __init__(self, console: Console, summary: DemoSummary) -> None:
        self.console, self.summary = console, summary

    def run(self, name: str, fn: Callable[[], _T]) -> _T:
        self.console.rule(f"[bold]{name}")
        start = time.perf_counter()
        with self.console.status(f"{name}…"):
            result = fn()
        seconds = time.perf_counter() - start
        self.summary.steps[name] = seconds
        self.console.print(f"[green]✓[/] {name} ({seconds:.1f} s)")
        return result


@contextmanager
def _local_ray(config: DemoConfig, port: int) -> Iterator[None]:
    """A fresh local Ray with Serve's HAProxy ingress (set before Ray starts) and Serve."""
    import ray
    from ray import serve

    os.environ.setdefault("RAY_SERVE_ENABLE_HA_PROXY", "1")
    # Rollouts go through Serve's REST API on the dashboard (as `serve deploy` does);
    # replicas (guardrail rollbacks) find it by Ray's own variable, set before Ray starts.
    from attune.demo.flow import free_port

    dashboard_port = 8265 if config.dashboard else free_port()
    os.environ["RAY_DASHBOARD_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    if not config.dashboard:  # the dashboard's own exporter: off its fixed default port
        os.environ["DASHBOARD_METRIC_PORT"] = str(free_port())
    ray.init(
        address="local",
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        dashboard_port=dashboard_port,
        log_to_driver=False,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
        yield
    finally:
        if config.dashboard:
            Console().print(
                "Ray dashboard: http://127.0.0.1:8265 — attune's metrics are under Metrics. "
                "Press Ctrl-C to stop."
            )
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        serve.shutdown()
        ray.shutdown()


@contextmanager
def _online_store(workdir: Path) -> Iterator[str]:
    """ATTUNE_REDIS_URL, else a local redis-server with its data under the store (kept)."""
    from attune.online.deployment import local_data_dir, redis_url
    from attune.online.server import local_server

    url = redis_url(None, str(workdir))
    if url is not None:
        yield url
        return
    with local_server(local_data_dir(str(workdir))) as live:
        yield live


def run_demo(config: DemoConfig, *, console: Console | None = None) -> DemoSummary:
    """Run the whole flow under ``config.workdir``; returns the :class:`DemoSummary`."""
    from attune.settings import get_settings

    console = console or Console()
    workdir = Path(config.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ["ATTUNE_STORE"] = str(workdir)
    get_settings.cache_clear()
    summary = DemoSummary(workdir=workdir)
    steps = _Steps(console, summary)
    from attune.demo import flow

    port = flow.free_port()
    with _online_store(workdir) as redis_url, _local_ray(config, port):
        paths = flow.Paths.under(workdir)
        steps.run("generate servicing histories", lambda: flow.generate(config, paths, summary))
        steps.run("preprocess with Ray Data", lambda: flow.preprocess(paths, summary))
        steps.run(
            "materialize online features into Redis",
            lambda: flow.materialize(paths, redis_url, summary),
        )
        champion = steps.run(
            "tune + register the champion",
            lambda: flow.train(config, paths, summary, role="champion", seed=config.seed),
        )
        challenger = steps.run(
            "tune + register a challenger",
            lambda: flow.train(config, paths, summary, role="challenger", seed=config.seed + 1),
        )
        steps.run(
            "deploy the champion with Ray Serve",
            lambda: flow.deploy(paths, champion=champion, port=port, redis_url=redis_url),
        )
        by_id = steps.run(
            "real time: rank by id, post a payment, rank again",
            lambda: flow.realtime(paths, port=port, summary=summary),
        )
        traffic = flow.Traffic.prepare(config, paths, port=port)
        with _progress(console) as progress:
            steps.run(
                "traffic: champion only",
                lambda: traffic.phase("champion", config.requests, progress, summary),
            )
            steps.run(
                "challenger in shadow (100 % mirrored)",
                lambda: flow.rollout(paths, step="shadow", version=challenger, percent=100),
            )
            steps.run(
                "traffic: champion + shadow",
                lambda: traffic.phase("shadow", config.requests, progress, summary),
            )
            steps.run(
                f"challenger in canary ({config.canary_percent:g} % of borrowers)",
                lambda: flow.rollout(
                    paths, step="canary", version=challenger, percent=config.canary_percent
                ),
            )
            steps.run(
                "traffic: champion vs canary",
                lambda: traffic.phase("canary", 2 * config.requests, progress, summary),
            )
        steps.run(
            "decision log flushed",
            lambda: traffic.wait_for_log(summary, also_answered=by_id),
        )
        steps.run("A/B analysis", lambda: flow.analyze(config, paths, traffic, summary))
        steps.run("drift check", lambda: flow.drift(paths, champion, summary))
        if config.loop_iterations:
            steps.run(
                f"learning loop ({config.loop_iterations} iterations)",
                lambda: flow.learning_loop(
                    config, paths, port=port, champion=champion, summary=summary
                ),
            )
    from attune.demo.summary import print_summary, write_html, write_summary_json

    print_summary(summary, console)
    report = write_html(summary, workdir / "report.html")
    write_summary_json(summary, workdir / "demo" / "summary.json")
    console.print(f"\nHTML report: [bold]{report}[/]")
    return summary


@contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        yield progress
