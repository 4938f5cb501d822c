"""Integration fixtures: one real S3 server and one two-node local Ray cluster per session.

The S3 server starts first so that its ``AWS_*`` variables are in the environment that
every Ray worker inherits. The cluster has two nodes (``ray.cluster_utils.Cluster``)
so tests can show work spreading across nodes; everything else just uses it as "Ray".
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator

import pytest

from tests.s3server import S3Server, start_s3_server

CPUS_PER_NODE = 2
#: The cluster's borrower-hash salt: not the public default (apps with auth required or an
#: s3:// store refuse that one), derived here so that no secret-looking literal is stored.
TEST_BORROWER_SALT = "it-" + hashlib.sha256(b"attune integration borrower salt").hexdigest()[:29]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    from attune.settings import get_settings

    server = start_s3_server()
    get_settings.cache_clear()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh bucket on the session's S3 server; returns ``s3://bucket``."""
    from attune import storage

    name = f"t-{uuid.uuid4().hex[:12]}"
    storage.s3_client().create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="session")
def ray_cluster(s3_server: S3Server) -> Iterator[object]:
    """A two-node local Ray cluster shared by the whole session (logical CPUs per node: 2)."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # Serve's HAProxy ingress, the serving app's fast path (docs/serving.md), must be on
    # before the cluster starts, with ports of its own: sessions sharing a host must not
    # share Serve's SO_REUSEPORT sockets (see serve_isolation_env).
    from tests.integration.serving_fixtures import serve_isolation_env

    for key, value in serve_isolation_env().items():
        os.environ.setdefault(key, value)
    # Replicas inherit this environment: every app of the session hashes with this salt.
    os.environ.setdefault("ATTUNE_BORROWER_SALT", TEST_BORROWER_SALT)
    from attune.settings import get_settings

    get_settings.cache_clear()
    # Rollouts apply declarative configs through Serve's REST API on the dashboard, as
    # `serve deploy` does; replicas (guardrail rollbacks) find it by Ray's own variable.
    from tests.conftest import free_port

    dashboard_port = free_port()
    os.environ["RAY_DASHBOARD_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    # For the cluster's processes only (popped below, so that Ray instances started by
    # tests, e.g. `serve run`, keep their defaults): the dashboard's own exporter off its
    # fixed default port, and replicas re-reading drift reports every 2 s.
    cluster_only = {"DASHBOARD_METRIC_PORT": str(free_port()), "ATTUNE_DRIFT_REFRESH_S": "2"}
    os.environ.update(cluster_only)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": CPUS_PER_NODE,
            "object_store_memory": 1_000_000_000,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
            "dashboard_agent_listen_port": free_port(),
        },
    )
    cluster.add_node(
        num_cpus=CPUS_PER_NODE,
        object_store_memory=1_000_000_000,
        dashboard_agent_listen_port=free_port(),
    )
    cluster.wait_for_nodes()
    for key in cluster_only:
        os.environ.pop(key, None)
    ray.init(address=cluster.address, log_to_driver=False)
    from attune.serving.serve_api import ServeREST
    from tests.conftest import wait_for

    wait_for(lambda: ServeREST().details() is not None, timeout=120, what="Serve's REST API")
    yield cluster
    ray.shutdown()
    cluster.shutdown()
