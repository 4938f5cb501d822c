"""The fault suite's shared world: one two-node Ray cluster, one S3 server, ONE Serve app.

The cluster and the S3 server are the integration suite's own fixtures
(:mod:`tests.integration.conftest`), run here with *package* scope: a session-scoped
import would give ``pytest tests`` two clusters at once. This package's tests are moved
to the front of the session so its cluster is gone before the integration one starts.

Every scenario shares the app of :func:`fault_app` (two ingress replicas, registry and
decision log on the S3 server) and drives it with :class:`~tests.faults.harness.Load`,
a load generator in a separate process. Each scenario records what it injected and
counted with :func:`fault_report`; the lines are printed at the end of the run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.faults.harness import APP, PREFIX, FaultApp, Report
from tests.integration import conftest as integration

#: Metrics reach the node's Prometheus endpoint within this interval (Ray's default: 10 s).
_CLUSTER_ENV = {"RAY_metrics_report_interval_ms": "1000"}

_REPORT = Report()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the fault suite first, so its package-scoped cluster is down before any other."""
    here = os.path.dirname(__file__)
    items.sort(key=lambda item: 0 if str(item.path).startswith(here) else 1)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REPORT.lines:
        terminalreporter.write_sep("-", "fault scenarios: injected and counted")
        for line in _REPORT.lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="package")
def s3_server() -> Iterator[Any]:
    yield from integration.s3_server.__wrapped__()  # type: ignore[attr-defined]


@pytest.fixture(scope="package")
def ray_cluster(s3_server: Any) -> Iterator[object]:
    import ray

    if ray.is_initialized():
        pytest.fail("the fault suite needs its own cluster: Ray is already initialized")
    # The integration fixture sets Serve's ports with setdefault: restore the environment
    # afterwards, so that a later cluster in this session draws ports of its own.
    saved = dict(os.environ)
    os.environ.update(_CLUSTER_ENV)
    try:
        yield from integration.ray_cluster.__wrapped__(s3_server)  # type: ignore[attr-defined]
    finally:
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture(scope="package")
def fault_report() -> Report:
    return _REPORT


@pytest.fixture(scope="package")
def fault_app(
    ray_cluster: object, s3_server: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultApp]:
    """The app every scenario shares: 2 replicas, champion only, registry and log on S3."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from attune import storage
    from attune.registry import Registry
    from attune.serving.app import app_config
    from attune.serving.config import RolloutConfig
    from attune.serving.guardrails import GuardrailBounds
    from attune.serving.rollout import deploy
    from tests.conftest import free_port
    from tests.faults.harness import register_versions

    suffix = uuid.uuid4().hex[:8]
    registry_bucket, log_bucket = f"faults-registry-{suffix}", f"faults-log-{suffix}"
    for bucket in (registry_bucket, log_bucket):
        storage.s3_client().create_bucket(Bucket=bucket)
    registry = Registry(f"s3://{registry_bucket}/registry")
    versions = register_versions(registry)

    serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, proxy_location="HeadOnly")
    client = _get_global_client()
    assert client is not None
    port = client.http_config.port
    args = {
        "registry": registry.uri,
        "store": f"s3://{log_bucket}/store",
        "decision_log": {"max_batch": 100, "max_age_s": 1.0, "max_buffer": 200},
    }
    rollout = RolloutConfig(
        champion=versions["champ"],
        salt="faults-0",
        guardrails=GuardrailBounds(min_requests=20, min_paired=10, window_s=600),
    )
    ingress = {"num_replicas": 2, "user_config": rollout.model_dump(mode="json")}
    deploy(
        ServeDeploySchema(
            applications=[app_config(args, name=APP, route_prefix=PREFIX, ingress=ingress)]
        ),
        wait_s=300,
    )
    app = FaultApp(
        base=f"http://127.0.0.1:{port}{PREFIX}",
        registry=registry,
        versions=versions,
        log_bucket=log_bucket,
        s3_server=s3_server,
        workdir=tmp_path_factory.mktemp("faults"),
        base_rollout=rollout,
    )
    app.wait_replicas(2)
    yield app
    serve.delete(APP)
