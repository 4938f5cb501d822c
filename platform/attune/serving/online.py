"""The online feature deployment of the Serve app, and the ingress's client for it.

``OnlineFeatures`` is a second deployment of the ranking app (one replica: it holds the
state every ingress replica reads and writes). It serves the latest feature snapshot of
its feature spec under the store (:mod:`attune.serving.online_view`), looks borrowers up
for the ingress (concurrent look-ups are computed together, ``@serve.batch``), applies
``POST /v1/events`` and logs the events to the store (:mod:`attune.serving.events`).

Reload. A background task checks ``latest.json`` every ``reload_interval_s`` (and
``reload()`` checks at once); a newer snapshot is read in a worker thread while
requests keep being answered by the current view, then swapped in with the events
posted meanwhile. No request waits for a reload and none is dropped.

Metrics (``ray.serve.metrics``, with Serve's application/deployment/replica tags)::

    attune_online_lookups_total{result=hit|miss}         look-ups; miss = population defaults
    attune_online_events_total{result=applied|duplicate|unknown_borrower|stale}
    attune_online_snapshot_age_seconds                   now - the served snapshot's as_of
    attune_online_snapshot_borrowers                     borrowers in the served snapshot
    attune_online_reloads_total                          snapshots swapped in after the first

The ingress talks to it through :class:`OnlineClient`; deliberate errors come back as
values (:class:`Refusal`) and are raised again, as the same :mod:`attune.errors`
category, in the ingress, so the client gets the same 4xx/503 body as for any other error.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from ray import serve

from attune.data.spec import default_spec
from attune.errors import AttuneError, InvalidInput, NotFound, Unavailable
from attune.serving.config import OnlineConfig
from attune.serving.events import (
    EventLog,
    EventsRequest,
    EventsResponse,
    OnlineFeaturesResponse,
)
from attune.serving.online_store import OnlineFeatureStore
from attune.serving.online_view import OnlineLookup

log = logging.getLogger(__name__)

ONLINE_NAME = "OnlineFeatures"
#: Arrow allocates from the system allocator in this replica: its default pool keeps the
#: pages of a snapshot load (several times the view's size) for good, and every reload
#: would add to them (attune.serving.online_view.release_memory hands them back).
REPLICA_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system"}
_CATEGORIES: dict[int, type[AttuneError]] = {422: InvalidInput, 404: NotFound, 503: Unavailable}
# Ray's own annotations of serve.batch reject methods with several arguments; it takes them.
# No wait for more: a look-up alone is computed at once, concurrent ones together.
_batched: Any = serve.batch(max_batch_size=64, batch_wait_timeout_s=0.0)


@dataclass(frozen=True)
class Refusal:
    """A deliberate error of the online deployment, carried back as a value."""

    status_code: int
    message: str
    details: dict[str, Any]

    @classmethod
    def of(cls, exc: AttuneError) -> Refusal:
        return cls(exc.status_code, exc.message, exc.to_dict()["details"])

    def error(self) -> AttuneError:
        return _CATEGORIES.get(self.status_code, Unavailable)(self.message, **self.details)


class RayOnlineMetrics:
    """The metrics of the module docstring as ``ray.serve.metrics`` (create in a replica)."""

    def __init__(self) -> None:
        from ray.serve import metrics

        result: Any = ("result",)
        self._lookups = metrics.Counter(
            "attune_online_lookups_total", description="Online look-ups.", tag_keys=result
        )
        self._events = metrics.Counter(
            "attune_online_events_total", description="Posted events.", tag_keys=result
        )
        self._age = metrics.Gauge(
            "attune_online_snapshot_age_seconds", description="Age of the served snapshot."
        )
        self._borrowers = metrics.Gauge(
            "attune_online_snapshot_borrowers", description="Borrowers in the served snapshot."
        )
        self._reloads = metrics.Counter(
            "attune_online_reloads_total", description="Snapshots swapped in after the first."
        )

    def looked_up(self, *, hits: int, misses: int) -> None:
        if hits:
            self._lookups.inc(hits, tags={"result": "hit"})
        if misses:
            self._lookups.inc(misses, tags={"result": "miss"})

    def events(self, counts: dict[str, int]) -> None:
        for result, count in counts.items():
            if count:
                self._events.inc(count, tags={"result": result})

    def snapshot(self, *, age_s: float, borrowers: int) -> None:
        self._age.set(age_s)
        self._borrowers.set(borrowers)

    def reloaded(self) -> None:
        self._reloads.inc()


def _safe_id(tag: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in tag)[:64]


@serve.deployment(
    name=ONLINE_NAME,
    num_replicas=1,
    max_ongoing_requests=256,
    ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": REPLICA_ENV}},
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=20,
)
class OnlineFeatures:
    """The online feature view's replica (see the module docstring)."""

    def __init__(self, config: OnlineConfig, store: str) -> None:
        self._config = config
        tag = _safe_id(serve.get_replica_context().replica_tag)
        event_log = EventLog(
            store,
            writer_id=tag,
            max_batch=config.events_max_batch,
            max_age_s=config.events_max_age_s,
            max_buffer=config.events_max_buffer,
        )
        self._log = event_log
        self._online = OnlineFeatureStore(
            store,
            spec_hash=config.spec_hash or default_spec().hash,
            event_log=event_log,
            metrics=RayOnlineMetrics(),
        )
        first = self._online.next_view()  # before taking traffic: Serve waits for __init__
        if first is not None:
            self._online.swap(*first)
        self._lookup_batch.set_max_batch_size(config.max_batch_size)
        self._reloading = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._failure: BaseException | None = None

    async def lookup(self, borrower_id: int, as_of: datetime) -> OnlineLookup | Refusal:
        """One borrower's features as of ``as_of`` (batched with concurrent look-ups)."""
        self._ensure_background()
        found: OnlineLookup | Refusal = await self._lookup_batch(borrower_id, as_of)
        return found

    @_batched
    async def _lookup_batch(
        self, borrower_ids: list[int], as_ofs: list[datetime]
    ) -> list[OnlineLookup | Refusal]:
        try:
            found = self._online.lookup(borrower_ids, as_ofs)
        except AttuneError as exc:
            return [Refusal.of(exc)] * len(borrower_ids)
        return [Refusal.of(f) if isinstance(f, AttuneError) else f for f in found]

    async def post(self, request: EventsRequest) -> EventsResponse | Refusal:
        """Apply and log posted events; the next look-up of those borrowers sees them."""
        self._ensure_background()
        try:
            return self._online.post(request)
        except AttuneError as exc:
            return Refusal.of(exc)

    async def reload(self) -> str | None:
        """Swap in a newer snapshot if there is one; returns the snapshot id served."""
        async with self._reloading:
            found = await asyncio.to_thread(self._online.next_view)
            if found is not None:
                self._online.swap(*found)
        self._online.refresh_metrics()
        return self._online.snapshot_id

    def check_health(self) -> None:
        if self._failure is not None:
            raise RuntimeError(f"background task failed: {self._failure!r}")

    async def __del__(self) -> None:
        for task in self._tasks:
            task.cancel()
        written = await asyncio.to_thread(self._log.flush)
        log.info("shutdown: wrote %d posted events (%d left)", written, self._log.buffered)

    def _ensure_background(self) -> None:
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._guarded(self._reload_loop())),
            loop.create_task(self._guarded(self._flush_loop())),
        ]

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced through check_health
            log.exception("background task failed")
            self._failure = exc

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.reload_interval_s)
            try:
                await self.reload()
            except AttuneError as exc:  # a broken snapshot must not stop serving the last one
                log.error("reload failed: %s", exc)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._config.events_max_age_s / 4)
            if self._log.due():
                await asyncio.to_thread(self._log.flush)


class OnlineClient:
    """The ingress's side of :class:`OnlineFeatures`: calls through a DeploymentHandle.

    Satisfies :class:`attune.serving.service.OnlineFeatures`. Raises the deployment's
    deliberate errors as :mod:`attune.errors` categories, and :class:`Unavailable` when
    the deployment cannot be reached.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            result = await getattr(self._handle, method).remote(*args)
        except Exception as exc:
            raise Unavailable(f"online feature view unavailable: {exc}", method=method) from exc
        if isinstance(result, Refusal):
            raise result.error()
        return result

    async def lookup(
        self, borrower_id: int, *, spec_hash: str | None = None, as_of: datetime | None = None
    ) -> OnlineLookup:
        """Features of one borrower as of ``as_of`` (default now).

        With ``spec_hash`` (the served model's), a view of another feature spec is
        refused with :class:`Unavailable` naming both hashes.
        """
        found = cast(OnlineLookup, await self._call("lookup", borrower_id, as_of or _now()))
        if spec_hash is not None and found.spec_hash != spec_hash:
            raise Unavailable(
                f"the online view serves feature spec {found.spec_hash}, the model needs "
                f"{spec_hash}: materialize a snapshot of that spec",
                expected=spec_hash,
                actual=found.spec_hash,
            )
        return found

    async def features(self, borrower_id: int, as_of: datetime | None) -> OnlineFeaturesResponse:
        """The ``GET /v1/features/{borrower_id}`` answer."""
        found = await self.lookup(borrower_id, as_of=as_of)
        return OnlineFeaturesResponse(
            borrower_id=found.borrower_id,
            as_of=found.as_of,
            snapshot_id=found.snapshot_id,
            spec_hash=found.spec_hash,
            fallback=found.fallback,
            features=found.features,
        )

    async def post(self, request: EventsRequest) -> EventsResponse:
        """The ``POST /v1/events`` answer."""
        return cast(EventsResponse, await self._call("post", request))

    async def reload(self) -> str | None:
        """Make the deployment check for a newer snapshot now."""
        return cast("str | None", await self._call("reload"))


def client_for(online: Any) -> Any:
    """Wrap a DeploymentHandle of :class:`OnlineFeatures` in an :class:`OnlineClient`.

    Anything else (None, an in-process fake) is returned as it is.
    """
    from ray.serve.handle import DeploymentHandle

    return OnlineClient(online) if isinstance(online, DeploymentHandle) else online


def require(online: Any) -> OnlineClient:
    """The app's online client, or NotFound when the app has no online feature view."""
    if online is None:
        raise NotFound("this app has no online feature view (AppArgs.online is not set)")
    return cast(OnlineClient, online)


def _now() -> datetime:
    return datetime.now(UTC)
