"""Buffered decisions are flushed when a replica shuts down (a module of its own).

The app here is deployed alone, in its own module: the session's two nodes share one
host and Serve numbers replica ports per node, so replicas of two apps could collide;
as a module of its own it needs no other test to run before or after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.integration.serving_fixtures import http, rank_body, ranker_files

pytestmark = pytest.mark.integration

APP = "attune-flush"


@pytest.fixture(scope="module")
def registry(ray_cluster: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from ray import serve

    from attune.registry import Registry
    from tests.conftest import free_port

    registry = Registry(str(tmp_path_factory.mktemp("registry")))
    version = registry.register(ranker_files(seed=1), metadata={"name": "flush"})
    registry.set_alias("champion", version, by="test", justification="t", override=True)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()}, proxy_location="HeadOnly")
    yield registry


def test_buffered_decisions_are_flushed_when_a_replica_shuts_down(
    registry: object, tmp_path: Path
) -> None:
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    from attune.serving.app import app_config
    from attune.serving.rollout import deploy

    store = str(tmp_path / "store")
    args = {
        "registry": registry.uri,  # type: ignore[attr-defined]
        "store": store,
        "decision_log": {"max_batch": 10_000, "max_age_s": 300},
    }
    flush_app = app_config(args, name=APP, route_prefix=f"/{APP}", ingress={"num_replicas": 1})
    deploy(ServeDeploySchema(applications=[flush_app]))
    client = _get_global_client()
    assert client is not None
    base = f"http://127.0.0.1:{client.http_config.port}/{APP}"
    ids = {
        http("POST", f"{base}/v1/rank", rank_body(b, n=2)).body["decision_id"] for b in range(15)
    }
    assert not list(Path(store).rglob("*.parquet"))  # nothing due yet: all in the buffer
    serve.delete(APP)

    def flushed() -> set[str]:
        import pyarrow.parquet as pq

        files = list(Path(store).rglob("*.parquet"))
        return {d for f in files for d in pq.read_table(f).column("decision_id").to_pylist()}

    assert wait_for(lambda: flushed() == ids, timeout=60, what="decisions flushed on shutdown")
