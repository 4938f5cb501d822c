"""The online feature store: which snapshot is served, look-ups, posted events, reloads.

:class:`OnlineFeatureStore` owns the current :class:`~attune.serving.online_view.OnlineView`
of one store and feature spec, and the event log. It is plain Python: the Serve
deployment (:mod:`attune.serving.online`) drives it, unit tests drive it without Ray.
``next_view`` does the I/O and runs in a worker thread; everything else runs on the
replica's event loop.

Reload: ``next_view`` builds the view of a newer snapshot while the current one keeps
answering, replaying into it the events posted since the current view began (those the
new snapshot already holds are duplicates by id and skipped); ``swap`` applies what was
posted meanwhile and replaces one reference, so a request sees either view, whole. A
snapshot dated after now waits. The first view also replays the events logged under the
store since its horizon (a restarted replica).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

import numpy as np

from attune.data.materialize import latest_snapshot
from attune.errors import InvalidInput, StoreNotFound, Unavailable
from attune.serving.events import (
    EventLog,
    EventsRequest,
    EventsResponse,
    events_frame,
    read_logged_events,
)
from attune.serving.online_view import STATUSES, OnlineLookup, OnlineView

log = logging.getLogger(__name__)


class OnlineMetrics(Protocol):
    """What the online feature view records."""

    def looked_up(self, *, hits: int, misses: int) -> None: ...

    def events(self, counts: dict[str, int]) -> None: ...

    def snapshot(self, *, age_s: float, borrowers: int) -> None: ...

    def reloaded(self) -> None: ...


class NullOnlineMetrics:
    """Records nothing (unit tests)."""

    def looked_up(self, *, hits: int, misses: int) -> None:
        pass

    def events(self, counts: dict[str, int]) -> None:
        pass

    def snapshot(self, *, age_s: float, borrowers: int) -> None:
        pass

    def reloaded(self) -> None:
        pass


class OnlineFeatureStore:
    """The online view of one store and feature spec: load, look up, post, reload.

    See the module docstring. Raises :class:`Unavailable` while no snapshot is loaded.
    """

    def __init__(
        self,
        store: str,
        *,
        spec_hash: str,
        event_log: EventLog | None,
        metrics: OnlineMetrics | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store, self.spec_hash = store, spec_hash
        self._log = event_log
        self._metrics: OnlineMetrics = metrics or NullOnlineMetrics()
        self._now = now
        self._view: OnlineView | None = None

    @property
    def view(self) -> OnlineView:
        if self._view is None:
            raise Unavailable(
                f"no feature snapshot of spec {self.spec_hash} under {self.store} yet "
                "(run `attune features materialize`)",
                store=self.store,
                spec_hash=self.spec_hash,
            )
        return self._view

    # ------------------------------------------------------------------ snapshots

    def next_view(self) -> tuple[OnlineView, int] | None:
        """Build the view of a newer snapshot than the current one, or None (blocking I/O).

        Returns the view and how many of the current view's posted batches it already
        carries; :meth:`swap` applies the rest. A snapshot dated after now waits. The
        first view replays the events logged under the store since its horizon.
        """
        try:
            info = latest_snapshot(self.store, spec_hash=self.spec_hash)
        except StoreNotFound:
            return None
        current = self._view
        if current is not None and info.as_of <= current.info.as_of:
            return None
        if info.as_of > self._now():
            log.warning("snapshot %s is dated in the future: not loaded yet", info.snapshot_id)
            return None
        view = OnlineView.load(info)
        if current is None:
            if self._log is not None:
                since = datetime.fromtimestamp(view.cutoff_us / 1e6, UTC)
                view.apply(read_logged_events(self.store, since=since))
            return view, 0
        carried = list(current.posted)
        for frame in carried:
            view.apply(frame)
        return view, len(carried)

    def swap(self, view: OnlineView, carried: int = 0) -> None:
        """Serve ``view`` from now on, after applying what was posted while it was built."""
        if self._view is not None:
            for frame in self._view.posted[carried:]:
                view.apply(frame)
            self._metrics.reloaded()
        self._view = view
        log.info("online view: serving snapshot %s", view.info.snapshot_id)
        self.refresh_metrics()

    def refresh_metrics(self) -> None:
        if self._view is not None:
            age = (self._now() - self._view.info.as_of).total_seconds()
            self._metrics.snapshot(age_s=age, borrowers=len(self._view.ids))

    # ------------------------------------------------------------------ requests

    @property
    def snapshot_id(self) -> str | None:
        return self._view.info.snapshot_id if self._view is not None else None

    def lookup(
        self, borrower_ids: Sequence[int], as_ofs: Sequence[datetime]
    ) -> list[OnlineLookup | InvalidInput]:
        """Features of each borrower as of each time (see :meth:`OnlineView.lookup`).

        A time before the snapshot gets its :class:`InvalidInput` in its place; the
        others are computed together.
        """
        view = self.view
        out: list[OnlineLookup | InvalidInput | None] = [None] * len(as_ofs)
        ok: list[int] = []
        for i, as_of in enumerate(as_ofs):
            try:
                view.check_as_of(as_of)
                ok.append(i)
            except InvalidInput as exc:
                out[i] = exc
        found = view.lookup([borrower_ids[i] for i in ok], [as_ofs[i] for i in ok])
        for i, f in zip(ok, found, strict=True):
            out[i] = f
        misses = sum(f.fallback for f in found)
        self._metrics.looked_up(hits=len(found) - misses, misses=misses)
        return [o for o in out if o is not None]

    def post(self, request: EventsRequest) -> EventsResponse:
        """Apply and log posted events (Unavailable when the log's buffer is full)."""
        view = self.view
        frame = events_frame(request.events)
        if self._log is not None:
            self._log.reserve(len(frame))
        statuses = view.apply(frame)
        if self._log is not None:
            self._log.append(frame.loc[np.asarray(statuses) != "duplicate"])
        counts = {s: statuses.count(s) for s in STATUSES}
        self._metrics.events(counts)
        return EventsResponse(
            applied=counts["applied"],
            duplicates=counts["duplicate"],
            unknown_borrowers=counts["unknown_borrower"],
            stale=counts["stale"],
            snapshot_id=view.info.snapshot_id,
        )
