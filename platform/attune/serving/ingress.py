"""The HTTP ingress: a FastAPI app on a Serve deployment that holds every model in use.

Champion and canary (and the shadow) are scored *inside* this replica: on this
platform every extra deployment hop behind the ingress costs an actor round trip
(~2 ms), more than the whole ranking. The replica runs a :class:`RankingService`;
this module only adapts it to HTTP and to Serve's life cycle:

* ``POST /v1/rank``, ``GET /v1/healthz``, ``GET /v1/models``, and with online features
  (:mod:`attune.online`: the replica reads and writes the Redis online store itself)
  ``POST /v1/events`` and ``GET /v1/features/{borrower_id}``; OpenAPI at
  ``/openapi.json``. Validation errors are 422 naming the field (FastAPI), bodies over
  :data:`~attune.serving.api.MAX_BODY_BYTES` are 413, and every
  :class:`~attune.errors.AttuneError` answers its ``status_code`` with ``to_dict()``.
* ``reconfigure(user_config)`` applies a :class:`RolloutConfig` (models are loaded in
  a worker thread while requests keep flowing on the old state).
* Two background tasks on the replica's event loop: one runs the shadow / paired
  scoring after answers are sent, one writes due decision-log batches (in a thread)
  and re-checks the guardrail. ``__del__`` (Serve's graceful shutdown) flushes the log.

Collaborators are injected: ``RankingIngress(args, online=..., explainer=...)``; the
defaults come from :func:`_default_collaborators`.
"""

# No `from __future__ import annotations` here: Serve ships the deployment class by value,
# and FastAPI must see the route annotations as real types, not names to resolve later.
import asyncio
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query
from fastapi import Request as FastAPIRequest
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve

from attune import __version__
from attune.errors import AttuneError, NotFound, Unavailable
from attune.online.deployment import OnlineAccess
from attune.online.events import (
    BoundedTime,
    EventsRequest,
    EventsResponse,
    OnlineFeaturesResponse,
)
from attune.serving import auth
from attune.serving.api import (
    MAX_BODY_BYTES,
    ErrorBody,
    HealthResponse,
    ModelsResponse,
    RankRequest,
    RankResponse,
)
from attune.serving.config import INGRESS_NAME, AppArgs, RolloutConfig
from attune.serving.decision_log import DecisionLog, ParquetSink
from attune.serving.redact import redact_locations
from attune.serving.service import Explainer, RankingService
from attune.settings import borrower_salt

log = logging.getLogger(__name__)

#: Seconds a client waits before its one retry of a 503 (the Retry-After header).
RETRY_AFTER_S = "1"
#: Dependencies of every route that needs the bearer token (attune.serving.auth).
_AUTH = [Depends(auth.require_bearer)]

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in (
        (401, "Missing or invalid bearer token (when the app has one)."),
        (403, "The token lacks the route's scope (rank, features, events)."),
        (404, "A model version or alias is not found."),
        (413, "Request body too large."),
        (503, "The champion model failed."),
    )
}

api = FastAPI(
    title="attune ranking API",
    version=__version__,
    description="Ranks loan-servicing options per borrower (champion / canary / shadow).",
)

#: /v1/rank reads its body itself (see ``RankingIngress.rank``); the token is checked by
#: auth.RequestGuard. This documents both.
_RANK_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/RankRequest"}}},
    },
    "security": [{"bearerAuth": []}],
}


def _openapi() -> dict[str, Any]:
    """FastAPI's schema plus RankRequest (its route parses the body itself)."""
    if api.openapi_schema is None:
        schema = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        request = RankRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request.pop("$defs", {}))
        components["RankRequest"] = request
        api.openapi_schema = schema
    return api.openapi_schema


# Body limit and scoped token, before the app reads or parses a byte (attune.serving.auth).
api.add_middleware(auth.RequestGuard, limit=MAX_BODY_BYTES)
api.openapi = _openapi  # type: ignore[method-assign]


@api.exception_handler(AttuneError)
async def _attune_error(request: FastAPIRequest, exc: AttuneError) -> JSONResponse:
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 503:  # the client contract: retry once after this (docs/reliability.md)
        headers.setdefault("Retry-After", RETRY_AFTER_S)
    body = redact_locations(exc.to_dict())  # clients learn what failed, not where the store is
    return JSONResponse(body, status_code=exc.status_code, headers=headers or None)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: FastAPIRequest, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse(validation_error_body(exc.errors()), status_code=422)


def validation_error_body(errors: Sequence[Any], *, prefix: str | None = None) -> dict[str, Any]:
    """The ErrorBody of a request that failed validation: every offending field, dotted.

    ``prefix`` is prepended to every location (``body`` for a parsed request body, as
    FastAPI's own locations read).
    """
    problems = [
        {
            "field": ".".join(
                str(part) for part in ((prefix,) if prefix else ()) + tuple(error.get("loc", ()))
            ),
            "problem": str(error.get("msg", "")),
            "type": str(error.get("type", "")),
        }
        for error in errors
    ]
    return {
        "error": "RequestValidationError",
        "message": "; ".join(f"{p['field']}: {p['problem']}" for p in problems),
        "details": {"fields": [p["field"] for p in problems], "errors": problems},
    }


def _default_collaborators(args: AppArgs, replica_id: str) -> dict[str, Any]:
    """Registry-backed model store and explainer, parquet decision log under the store."""
    from attune.registry import Registry
    from attune.serving.metrics import RayServeMetrics
    from attune.serving.registry_explainer import RegistryExplainer

    # First: a default or short salt where real borrowers are served fails the deploy.
    salt = borrower_salt(
        strict=auth.salt_required(args.auth, args.store_uri(), args.registry_uri())
    )
    metrics = RayServeMetrics()
    decision_log = None
    if args.decision_log.enabled:
        cfg = args.decision_log
        decision_log = DecisionLog(
            sink=ParquetSink(args.store_uri()),
            writer_id=replica_id,
            max_batch=cfg.max_batch,
            max_age_s=cfg.max_age_s,
            max_buffer=cfg.max_buffer,
            on_drop=metrics.decisions_dropped,
        )
    registry = Registry(args.registry_uri())
    return {
        "store": registry,
        "explainer": RegistryExplainer(registry),
        "decision_log": decision_log,
        "borrower_salt": salt,
        "metrics": metrics,
    }


# Serve captures the class at decoration time: helpers it uses must be defined above it.
def _require(online: OnlineAccess | None) -> OnlineAccess:
    if online is None:
        raise NotFound("this app has no online features (AppArgs.online is not set)")
    return online


def _log_errors(fn: Callable[..., Any]) -> Callable[..., None]:
    def run(**kwargs: Any) -> None:
        try:
            fn(**kwargs)
        except Exception:  # a thread has no caller to raise to
            log.exception("persisting the guardrail rollback failed")

    return run


def _safe_id(tag: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in tag)[:64]


#: Requests that may wait for this deployment (beyond them Serve answers 503 at once).
MAX_QUEUED_REQUESTS = 256

#: Replica process settings. User code runs on Serve's own event loop: a second loop thread
#: would contend for the GIL with the response path (the background shadow scoring then
#: delays answers) and costs a cross-thread hop per request. Handlers never block the loop.
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}
#: Niceness of the after-answer thread: on a busy host the CPU goes to answering first.
AFTER_ANSWERS_NICE = 10
#: How long mirrored requests gather before the after-answer thread scores them together.
AFTER_ANSWERS_BATCH_S = 0.02


@serve.deployment(
    name=INGRESS_NAME,
    ray_actor_options={"num_cpus": 1, "runtime_env": {"env_vars": REPLICA_ENV}},
    max_ongoing_requests=64,
    # Past this many waiting requests callers get 503 at once instead of an unbounded queue.
    max_queued_requests=MAX_QUEUED_REQUESTS,
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=20,
)
@serve.ingress(api)
class RankingIngress:
    """The ranking app's ingress replica (see the module docstring)."""

    def __init__(
        self,
        args: AppArgs,
        *,
        online: Any = None,
        explainer: Explainer | None = None,
    ) -> None:
        """``online``: where the online store is (with ``args.online``): its URL, the
        LocalRedis deployment's handle, or an OnlineStore; ``explainer``: reason codes
        (default: TreeSHAP of each version's native booster, attune.serving.registry_explainer)."""
        self._tasks: list[asyncio.Task[None]] = []
        self._decision_log: DecisionLog | None = None
        context = serve.get_replica_context()
        self._args = args
        self._app_name = context.app_name
        auth.configure(args.auth)  # first: a required but missing token fails the deploy
        replica_id = _safe_id(context.replica_tag)
        self._online: OnlineAccess | None = None
        if args.online is not None:
            from attune.online.ingest import RayOnlineMetrics

            self._online = OnlineAccess(
                args.online,
                source=online,
                store_uri=args.store_uri(),
                writer_id=replica_id,
                metrics=RayOnlineMetrics(),
            )
        online = self._online
        collaborators = _default_collaborators(args, replica_id)
        if explainer is not None:
            collaborators["explainer"] = explainer
        self._decision_log = collaborators["decision_log"]
        # Models load in the first reconfigure (Serve calls it before the replica takes
        # traffic), from the user_config actually deployed, not from the args' default.
        self._make_service = functools.partial(
            RankingService,
            replica_id=context.replica_tag,
            online=online,
            on_rollback=self._after_rollback,
            queue_size=args.shadow_queue,
            **collaborators,
        )
        self._service_or_none: RankingService | None = None
        # After-answer work (shadow and paired scoring) runs on its own thread: ONNX
        # Runtime releases the GIL, so it uses the second core instead of delaying the
        # next request on this replica's event loop.
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._rollback_threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ Serve hooks

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Apply a new rollout (Serve calls this on start and on every user_config change)."""
        self._ensure_background()
        rollout = RolloutConfig.model_validate(user_config)
        if self._service_or_none is None:
            self._service_or_none = await asyncio.to_thread(self._make_service, rollout=rollout)
        else:
            await asyncio.to_thread(self._service_or_none.apply, rollout)
        log.info("rollout applied: %s", rollout.model_dump_json())

    def _served_versions(self) -> list[str]:
        service = self._service_or_none
        return [] if service is None else [m.version for m in service.status().models]

    @property
    def _service(self) -> RankingService:
        if self._service_or_none is None:
            raise Unavailable("the replica has no rollout yet (user_config not applied)")
        return self._service_or_none

    def check_health(self) -> None:
        if self._failure is not None:
            raise RuntimeError(f"background task failed: {self._failure!r}")

    async def __del__(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._worker is not None:  # finish queued shadow work so its records are flushed
            self._stopping.set()
            self._wake.set()
            await asyncio.to_thread(self._worker.join, 10)
        if self._decision_log is not None:
            written, lost = await asyncio.to_thread(self._decision_log.close)
            log.info(
                "shutdown: flushed %d decisions, dropped %d (%s)",
                written,
                lost,
                self._decision_log.stats(),
            )
        if self._online is not None:
            events = await self._online.close()
            log.info("shutdown: wrote %d posted events", events)

    # ------------------------------------------------------------------ routes

    @api.post(
        "/v1/rank",
        response_model=RankResponse,
        responses={422: {"model": ErrorBody, "description": "Invalid request."}, **_ERRORS},
        openapi_extra=_RANK_REQUEST_BODY,
    )
    async def rank(self, http_request: FastAPIRequest) -> Response:
        """Rank the candidates for one borrower; see RankRequest for where features come from."""
        # The token and the body size were checked by auth.RequestGuard before this runs.
        # The body is parsed by pydantic's own JSON parser (RankRequest.model_validate_json):
        # one pass instead of json.loads, FastAPI's body dependency and a second validation.
        body = await http_request.body()
        try:
            request = RankRequest.model_validate_json(body)
        except ValidationError as exc:
            return JSONResponse(validation_error_body(exc.errors(), prefix="body"), 422)
        response = await self._service.rank(request)
        if self._service.pending:
            self._wake.set()
        # Serialized here (the model was built by our own code): FastAPI would validate it again.
        return Response(response.model_dump_json(), media_type="application/json")

    @api.get("/v1/healthz", response_model=HealthResponse)
    async def healthz(self, http_request: FastAPIRequest) -> HealthResponse:
        """Liveness; the versions in service only to a valid token (when auth is on)."""
        service = self._service
        if not auth.authenticated(http_request.scope):
            return HealthResponse(status="ok")
        return HealthResponse(
            status="ok", champion=service.champion_version, canary=service.canary_version
        )

    @api.get("/v1/models", response_model=ModelsResponse, dependencies=_AUTH)
    async def models(self) -> ModelsResponse:
        """Models in service, shares, guardrail rollbacks and this replica's counters."""
        return self._service.status()

    @api.post("/v1/events", response_model=EventsResponse, responses=_ERRORS, dependencies=_AUTH)
    async def events(self, request: EventsRequest) -> EventsResponse:
        """Apply servicing events to the online store (idempotent by event id); log them."""
        return await _require(self._online).post(request)

    @api.get(
        "/v1/features/{borrower_id}",
        response_model=OnlineFeaturesResponse,
        responses=_ERRORS,
        dependencies=_AUTH,
    )
    async def features(
        self,
        borrower_id: Annotated[int, Path(ge=0, lt=2**63, description="Borrower id.")],
        as_of: Annotated[BoundedTime | None, Query(description="Default: now.")] = None,
    ) -> OnlineFeaturesResponse:
        """A borrower's online features as of a time (the ones /v1/rank would use then)."""
        return await _require(self._online).features(borrower_id, as_of)

    # ------------------------------------------------------------------ background work

    def _ensure_background(self) -> None:
        if self._tasks:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._guarded(self._housekeeping()))]
        # Drift gauges from the scheduled drift check's reports (this process is scraped).
        from attune.serving.drift_gauges import DriftGauges

        drift = DriftGauges(self._args.store_uri())
        self._tasks.append(loop.create_task(drift.run(self._served_versions)))
        self._worker = threading.Thread(
            target=self._after_answers, name="attune-after-answers", daemon=True
        )
        self._worker.start()

    @contextlib.contextmanager
    def _failure_surfaced(self, what: str) -> Iterator[None]:
        """Record a failure of background work ``what`` for :meth:`check_health` (not raised)."""
        try:
            yield
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # surfaced through check_health
            log.exception("%s failed", what)
            self._failure = exc

    async def _guarded(self, work: Awaitable[None]) -> None:
        with self._failure_surfaced("background task"):
            await work

    def _after_answers(self) -> None:
        """The worker thread: run queued shadow / paired jobs until the replica stops."""
        with contextlib.suppress(OSError):  # lower this thread's priority only (Linux)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), AFTER_ANSWERS_NICE)
        with self._failure_surfaced("after-answer worker"):
            while not self._stopping.is_set() or (
                self._service_or_none is not None and self._service_or_none.pending
            ):
                if self._wake.wait(timeout=1.0):
                    # Let a batch gather: one model call for many mirrored requests.
                    self._stopping.wait(AFTER_ANSWERS_BATCH_S)
                self._wake.clear()
                service = self._service_or_none
                while service is not None and service.pending:
                    service.run_background(check=False)

    async def _housekeeping(self) -> None:
        interval = self._args.decision_log.max_age_s / 4
        while True:
            await asyncio.sleep(interval)
            if self._service_or_none is not None:
                self._service_or_none.check_guardrail()
            if self._decision_log is not None and self._decision_log.due():
                await asyncio.to_thread(self._decision_log.flush)
            if self._online is not None:
                await self._online.tick()

    def _after_rollback(
        self, version: str, reasons: tuple[str, ...], breached: RolloutConfig
    ) -> None:
        """Persist a guardrail rollback: move the canary alias and redeploy with no canary."""
        if not self._args.auto_rollback_redeploy:
            return
        from attune.serving.rollout import persist_guardrail_rollback

        thread = threading.Thread(
            target=_log_errors(persist_guardrail_rollback),
            kwargs={
                "registry_uri": self._args.registry_uri(),
                "app_name": self._app_name,
                "version": version,
                "reasons": reasons,
                "breached": breached,
            },
            name="attune-rollback",
            daemon=True,
        )
        thread.start()
        self._rollback_threads.append(thread)
