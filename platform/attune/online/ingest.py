"""``POST /v1/events``: apply to the online store, log durably, and ride out store outages.

Every accepted event goes to the durable event log (:class:`~attune.online.events.EventLog`,
parquet under the artifact store, read by the next ``attune features materialize``)
and to the online store. While the online store is down, accepted events wait in a
bounded in-replica backlog (and in the durable log) and :meth:`EventIngest.drain`
applies them once it answers again; the response says how many are ``pending``.
Applying is idempotent by event id, so a retried post or a drained backlog never
counts an event twice. Beyond ``max_pending`` waiting events (or a full log buffer)
posts get 503 with ``Retry-After`` and nothing is accepted.

Metrics (``ray.serve.metrics``, Serve's application/deployment/replica tags)::

    attune_online_lookups_total{result=hit|no_profile|unknown_borrower|error}
    attune_online_events_total{result=applied|duplicate|unknown_borrower|stale|pending}
    attune_online_pending_events                  events waiting for the store
    attune_online_snapshot_age_seconds            now - the served snapshot's as_of
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any, Protocol

import numpy as np

from attune.errors import Unavailable
from attune.online import OnlineStore
from attune.online.events import (
    EventLog,
    EventsRequest,
    EventsResponse,
    ServicingEvent,
    events_frame,
)
from attune.online.redis_store import STATUSES

log = logging.getLogger(__name__)


class OnlineMetrics(Protocol):
    """What the online path records."""

    def looked_up(self, result: str) -> None: ...

    def events(self, counts: dict[str, int]) -> None: ...

    def pending(self, count: int) -> None: ...

    def snapshot_age(self, seconds: float) -> None: ...


class NullOnlineMetrics:
    """Records nothing (unit tests)."""

    def looked_up(self, result: str) -> None:
        pass

    def events(self, counts: dict[str, int]) -> None:
        pass

    def pending(self, count: int) -> None:
        pass

    def snapshot_age(self, seconds: float) -> None:
        pass


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
        self._pending = metrics.Gauge(
            "attune_online_pending_events", description="Posted events waiting for the store."
        )
        self._age = metrics.Gauge(
            "attune_online_snapshot_age_seconds", description="Age of the served snapshot."
        )

    def looked_up(self, result: str) -> None:
        self._lookups.inc(tags={"result": result})

    def events(self, counts: dict[str, int]) -> None:
        for result, count in counts.items():
            if count:
                self._events.inc(count, tags={"result": result})

    def pending(self, count: int) -> None:
        self._pending.set(count)

    def snapshot_age(self, seconds: float) -> None:
        self._age.set(seconds)


class EventIngest:
    """Posts events to the online store and the durable log (see the module docstring)."""

    def __init__(
        self,
        store: OnlineStore,
        *,
        event_log: EventLog | None,
        max_pending: int = 100_000,
        metrics: OnlineMetrics | None = None,
    ) -> None:
        self._store = store
        self._log = event_log
        self.max_pending = max_pending
        self._metrics: OnlineMetrics = metrics or NullOnlineMetrics()
        self._pending: deque[ServicingEvent] = deque()

    @property
    def pending(self) -> int:
        """Accepted events not yet applied to the online store."""
        return len(self._pending)

    async def post(self, request: EventsRequest) -> EventsResponse:
        """Apply and log ``request``'s events; keep them pending while the store is down."""
        events = request.events
        frame = events_frame(events)  # validated against the history schema
        if self._log is not None:
            self._log.reserve(len(frame))
        if self._pending:  # keep order: nothing overtakes the backlog
            return self._keep(events, frame)
        try:
            statuses, snapshot_id = await self._store.apply(events)
        except Unavailable as exc:
            log.warning("online store down, %d events pending: %s", len(events), exc.message)
            return self._keep(events, frame)
        if self._log is not None:
            self._log.append(frame.loc[np.asarray(statuses) != "duplicate"])
        counts = {s: statuses.count(s) for s in STATUSES}
        self._metrics.events(counts)
        return EventsResponse(
            applied=counts["applied"] + counts["unknown_borrower"],
            duplicates=counts["duplicate"],
            unknown_borrowers=counts["unknown_borrower"],
            stale=counts["stale"],
            pending=0,
            snapshot_id=snapshot_id,
        )

    def _keep(self, events: list[ServicingEvent], frame: Any) -> EventsResponse:
        if len(self._pending) + len(events) > self.max_pending:
            raise Unavailable(
                f"the online store is down and {len(self._pending)} posted events are waiting "
                f"(at most {self.max_pending}): retry later",
                pending=len(self._pending),
                max_pending=self.max_pending,
            )
        self._pending.extend(events)
        if self._log is not None:
            self._log.append(frame)
        self._metrics.events({"pending": len(events)})
        self._metrics.pending(len(self._pending))
        return EventsResponse(
            applied=0,
            duplicates=0,
            unknown_borrowers=0,
            stale=0,
            pending=len(events),
            snapshot_id=None,
        )

    async def drain(self, batch: int = 250) -> int:
        """Apply waiting events while the store answers; returns how many were applied."""
        done = 0
        while self._pending:
            chunk = [self._pending[i] for i in range(min(batch, len(self._pending)))]
            try:
                statuses, _ = await self._store.apply(chunk)
            except Unavailable:
                break
            for _ in chunk:
                self._pending.popleft()
            done += len(chunk)
            self._metrics.events({s: statuses.count(s) for s in STATUSES})
        self._metrics.pending(len(self._pending))
        if done:
            log.info("applied %d pending events (%d still waiting)", done, len(self._pending))
        return done
