"""How a Serve app reaches the online store, and the local server as a deployment.

:func:`redis_url` decides where the online store is: ``OnlineConfig.redis_url``, else
``ATTUNE_REDIS_URL``, else (a local artifact store only) a ``redis-server`` that the
app itself runs with its data under ``<store>/redis``: the :class:`LocalRedis`
deployment, one replica, which starts the server (or reuses one already serving that
directory, e.g. a demo's) and stops the one it started when the app shuts down. With
persistence on, ``serve run serve_configs/local.yaml`` after ``make demo`` finds the
state ``attune features materialize`` wrote there.

The ingress resolves the URL once, on its first online request (a handle call off the
request path afterwards), and then reads and writes Redis directly.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray import serve

from attune import storage
from attune.errors import ConfigError
from attune.online.config import OnlineConfig
from attune.online.server import local_server
from attune.settings import get_settings

if TYPE_CHECKING:
    from attune.online import OnlineStore
    from attune.online.events import EventsRequest, EventsResponse, OnlineFeaturesResponse
    from attune.online.ingest import EventIngest, OnlineMetrics
    from attune.online.redis_store import OnlineLookup

log = logging.getLogger(__name__)

LOCAL_REDIS_NAME = "LocalRedis"
#: Folder under a local artifact store where local online state lives.
LOCAL_REDIS_DIR = "redis"


def redis_url(configured: str | None, store_uri: str) -> str | None:
    """The online store's URL, or None when the app must run its own local server.

    Raises :class:`ConfigError` for an ``s3://`` store without a URL (a cluster needs a
    shared Redis: set ``ATTUNE_REDIS_URL`` or ``online.redis_url``).
    """
    secret = get_settings().redis_url
    url = configured or (secret.get_secret_value() if secret is not None else None)
    if url:
        return url
    if storage.is_s3(store_uri):
        raise ConfigError(
            field="online.redis_url",
            value=None,
            problem="online features on an s3:// store need a shared Redis: set "
            "ATTUNE_REDIS_URL or online.redis_url",
        )
    return None


def local_data_dir(store_uri: str) -> Path:
    """Where a local online store keeps its data."""
    return Path(store_uri) / LOCAL_REDIS_DIR


@serve.deployment(
    name=LOCAL_REDIS_NAME,
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    health_check_period_s=10,
    graceful_shutdown_timeout_s=20,
)
class LocalRedis:
    """A local ``redis-server`` for the app (see the module docstring)."""

    def __init__(self, data_dir: str) -> None:
        self._stack = contextlib.ExitStack()
        self._url = self._stack.enter_context(local_server(Path(data_dir)))
        log.info("local online store at %s (data in %s)", self._url, data_dir)

    async def url(self) -> str:
        return self._url

    def __del__(self) -> None:
        self._stack.close()


def bind_local(store_uri: str) -> Any:
    """The bound :class:`LocalRedis` deployment for a local store."""
    deployment: Any = LocalRedis
    return deployment.bind(str(local_data_dir(store_uri)))


class OnlineAccess:
    """The ingress replica's online side: store, event ingest and durable event log.

    Built in the replica's constructor (no I/O there); connects on first use. ``source``
    is the store's URL, a handle of :class:`LocalRedis` (asked once for its URL), or an
    :class:`attune.online.OnlineStore` to use as it is (tests).
    """

    def __init__(
        self,
        config: OnlineConfig,
        *,
        source: Any,
        store_uri: str,
        writer_id: str,
        metrics: OnlineMetrics | None = None,
    ) -> None:
        from attune.data.spec import default_spec
        from attune.online.events import EventLog
        from attune.online.ingest import NullOnlineMetrics

        self._config = config
        self._source = source
        self.replica = writer_id
        self.spec_hash = config.spec_hash or default_spec().hash
        self.metrics: OnlineMetrics = metrics or NullOnlineMetrics()
        self.event_log = EventLog(
            store_uri,
            writer_id=writer_id,
            max_batch=config.events_max_batch,
            max_age_s=config.events_max_age_s,
            max_buffer=config.events_max_buffer,
        )
        self._store: OnlineStore | None = None
        self._ingest: EventIngest | None = None

    async def store(self) -> OnlineStore:
        """The online store (connecting on first use)."""
        if self._store is None:
            from ray.serve.handle import DeploymentHandle

            from attune.online.redis_store import RedisOnlineStore

            source = self._source
            if not isinstance(source, str | DeploymentHandle):
                self._store = source  # an OnlineStore given as it is
            else:
                # a handle answers any attribute: ask LocalRedis for its URL, once
                url = source if isinstance(source, str) else await source.url.remote()
                self._store = RedisOnlineStore(
                    url,
                    spec_hash=self.spec_hash,
                    timeout_s=self._config.timeout_s,
                    max_connections=self._config.max_connections,
                    pointer_ttl_s=self._config.pointer_ttl_s,
                )
        return self._store

    async def ingest(self) -> EventIngest:
        if self._ingest is None:
            from attune.online.ingest import EventIngest

            self._ingest = EventIngest(
                await self.store(),
                event_log=self.event_log,
                max_pending=self._config.events_max_buffer,
                metrics=self.metrics,
            )
        return self._ingest

    async def lookup(self, borrower_id: int, *, spec_hash: str | None = None) -> OnlineLookup:
        """Features of one borrower as of now (the ranking path)."""
        store = await self.store()
        try:
            found = await store.lookup(borrower_id, spec_hash=spec_hash)
        except Exception:
            self.metrics.looked_up("error")
            raise
        self.metrics.looked_up(found.fallback or "hit")
        return found

    async def features(self, borrower_id: int, as_of: datetime | None) -> OnlineFeaturesResponse:
        """The ``GET /v1/features/{borrower_id}`` answer."""
        from attune.online.events import OnlineFeaturesResponse

        found = await (await self.store()).lookup(borrower_id, as_of=as_of)
        return OnlineFeaturesResponse(
            borrower_id=found.borrower_id,
            as_of=found.as_of,
            snapshot_id=found.snapshot_id,
            spec_hash=found.spec_hash,
            fallback=found.fallback is not None,
            fallback_reason=found.fallback,
            features=found.features,
            replica=self.replica,
        )

    async def post(self, request: EventsRequest) -> EventsResponse:
        """The ``POST /v1/events`` answer."""
        response = await (await self.ingest()).post(request)
        return response.model_copy(update={"replica": self.replica})

    async def tick(self) -> None:
        """Housekeeping: apply pending events if the store is back; report the snapshot age."""
        import asyncio
        from datetime import UTC, datetime

        if self._ingest is not None and self._ingest.pending:
            await self._ingest.drain()
        if self.event_log.due():
            await asyncio.to_thread(self.event_log.flush)
        if self._store is not None:
            with contextlib.suppress(Exception):  # an outage is reported by requests
                meta = await self._store.snapshot()
                self.metrics.snapshot_age((datetime.now(UTC) - meta.as_of).total_seconds())

    async def close(self) -> int:
        """Flush the event log and close connections; returns events written."""
        import asyncio

        if self._ingest is not None and self._ingest.pending:
            with contextlib.suppress(Exception):
                await self._ingest.drain()
        written = await asyncio.to_thread(self.event_log.flush)
        if self._store is not None and hasattr(self._store, "close"):
            with contextlib.suppress(Exception):
                await self._store.close()
        return int(written)
