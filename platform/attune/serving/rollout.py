"""Rollouts against a running app: move registry aliases, then reconfigure the app.

Every step is the same read-modify-apply of the app's *declarative* Serve config (what
``serve deploy`` applied), through public interfaces only (:mod:`attune.serving.serve_api`):
read the configs of the cluster's applications (Serve's REST API, or a KubeRay
RayService's ``serveConfigV2``), change the ingress deployment's ``user_config`` (a
:class:`RolloutConfig`) of one app, apply the whole config again. Only ``user_config``
changes, so Serve calls ``reconfigure`` on the live replicas: no replica restarts and
no request is dropped.

Steps (:func:`run_step`, the ``attune rollout`` CLI):

* ``shadow V [--percent P]``: mirror P % of requests to V (answers only logged);
* ``canary V --percent P``: send P % of borrowers (sticky, salted by V) to V;
* ``promote``: the canary becomes the champion, the canary arm closes;
* ``rollback``: the canary arm closes and the ``canary`` alias points back at the
  champion; with ``--champion`` the champion goes back to its previous version.

A version is loaded and checked (sha256, ONNX Runtime, feature spec) *before* any alias
moves, so a broken artifact is refused with its error and the champion keeps serving.
The app config names version ids, never aliases, so every replica serves the same
versions even while aliases move.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from attune.errors import ConfigError, NotFound
from attune.serving.config import INGRESS_NAME, AppArgs, RolloutConfig
from attune.serving.model import OnnxScorer
from attune.serving.serve_api import ServeREST, ServeTarget

if TYPE_CHECKING:
    from ray.serve.schema import ServeDeploySchema

    from attune.registry import Registry

log = logging.getLogger(__name__)

DEFAULT_APP = "attune"
GUARDRAIL_ACTOR = "attune-guardrails"

Step = Literal["shadow", "canary", "promote", "rollback"]


class RolloutRequest(BaseModel):
    """One rollout step (the arguments of ``attune rollout``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step: Step = Field(description="shadow, canary, promote or rollback.")
    app: str = Field(default=DEFAULT_APP, min_length=1, description="Serve application name.")
    version: str | None = Field(default=None, description="Version id or alias (shadow/canary).")
    percent: float | None = Field(
        default=None, ge=0, le=100, description="Traffic share in percent (shadow/canary)."
    )
    champion: bool = Field(
        default=False, description="rollback: move the champion back to its previous version."
    )
    by: str = Field(default="attune-rollout", min_length=1, description="Who runs the step.")
    justification: str | None = Field(default=None, description="Why (needed to override).")
    override: bool = Field(default=False, description="Move the alias even if a gate refuses.")

    @model_validator(mode="after")
    def _check(self) -> RolloutRequest:
        if self.step in ("shadow", "canary") and self.version is None:
            raise ValueError(f"step {self.step!r} needs a version (version is None)")
        if self.step == "canary" and self.percent is None:
            raise ValueError(f"step 'canary' needs percent (percent is {self.percent})")
        if self.step in ("promote", "rollback") and self.version is not None:
            raise ValueError(
                f"step {self.step!r} takes no version (version is {self.version!r}): it acts "
                "on the versions in service"
            )
        if self.champion and self.step != "rollback":
            raise ValueError(
                f"champion ({self.champion}) only applies to rollback, not {self.step!r}"
            )
        return self


# --------------------------------------------------------------------------- Serve config


def deployed_config(target: ServeTarget | None = None) -> ServeDeploySchema:
    """The declarative config of every app on the cluster (as ``serve deploy`` applied it)."""
    return (target or ServeREST()).read()


def _app(config: ServeDeploySchema, name: str) -> Any:
    for app in config.applications:
        if app.name == name:
            return app
    raise NotFound(
        f"application {name!r} was not deployed from a config (serve deploy / attune serve "
        f"deploy); deployed: {[a.name for a in config.applications]}",
        app=name,
    )


def rollout_of(config: ServeDeploySchema, app_name: str) -> RolloutConfig:
    """The rollout an app runs: its ingress ``user_config``, else its args' default."""
    app = _app(config, app_name)
    for deployment in app.deployments:
        if deployment.name == INGRESS_NAME and isinstance(deployment.user_config, dict):
            return RolloutConfig.model_validate(deployment.user_config)
    return AppArgs.model_validate(app.args or {}).rollout


def with_rollout(
    config: ServeDeploySchema, app_name: str, rollout: RolloutConfig
) -> ServeDeploySchema:
    """``config`` with the ingress ``user_config`` of ``app_name`` set to ``rollout``."""
    from ray.serve.schema import ServeDeploySchema

    data = config.model_dump(exclude_unset=True)
    for app in data["applications"]:
        if app["name"] != app_name:
            continue
        deployments = app.setdefault("deployments", [])
        entry = next((d for d in deployments if d["name"] == INGRESS_NAME), None)
        if entry is None:
            entry = {"name": INGRESS_NAME}
            deployments.append(entry)
        entry["user_config"] = rollout.model_dump(mode="json")
    return ServeDeploySchema.model_validate(data)


def deploy(
    config: ServeDeploySchema, *, target: ServeTarget | None = None, wait_s: float = 180
) -> None:
    """Apply ``config`` (every app of the cluster) and wait until its apps are RUNNING."""
    (target or ServeREST()).apply(config, wait_s=wait_s)


def update_rollout(
    app_name: str,
    change: Callable[[RolloutConfig], RolloutConfig],
    *,
    target: ServeTarget | None = None,
    wait_s: float = 180,
) -> RolloutConfig:
    """Read the app's rollout, apply ``change``, redeploy the config; returns the new rollout."""
    target = target or ServeREST()
    config = target.read()
    rollout = change(rollout_of(config, app_name))
    target.apply(with_rollout(config, app_name, rollout), wait_s=wait_s)
    log.info("app %s now runs rollout %s", app_name, rollout.model_dump_json())
    return rollout


# --------------------------------------------------------------------------- steps


def _checked(registry: Registry, ref: str) -> str:
    """Resolve ``ref`` and prove the version loads and fits its spec (raises if not)."""
    version = registry.resolve(ref)
    OnnxScorer.load(registry, version)
    return version


def plan(request: RolloutRequest, registry: Registry, current: RolloutConfig) -> RolloutConfig:
    """Check the versions, move the registry aliases and return the rollout to apply."""
    champion = registry.resolve(current.champion)

    def move(alias: str, version: str, *, safety: bool = False) -> None:
        # A rollback moves back to versions that already served: never held by a gate.
        registry.set_alias(
            alias,
            version,
            by=request.by,
            justification=request.justification
            or (f"rollback by {request.by}" if safety else None),
            override=request.override or safety,
        )

    if request.step == "shadow":
        assert request.version is not None
        version = _checked(registry, request.version)
        registry.set_alias("shadow", version, by=request.by, justification=request.justification)
        percent = 100.0 if request.percent is None else request.percent
        return current.model_copy(update={"shadow": version, "shadow_percent": percent})
    if request.step == "canary":
        assert request.version is not None and request.percent is not None
        version = _checked(registry, request.version)
        move("canary", version)
        same = current.canary is not None and registry.resolve(current.canary) == version
        # a new canary draws a new, unguessable population: the salt is recorded in the
        # config (batch ranking and outcomes read it there), never served
        salt = current.salt if same else f"canary-{version}-{secrets.token_hex(8)}"
        return current.model_copy(
            update={"canary": version, "canary_percent": request.percent, "salt": salt}
        )
    if request.step == "promote":
        if current.canary is None:
            raise ConfigError(field="canary", value=None, problem="no canary in service to promote")
        version = _checked(registry, current.canary)
        move("champion", version)
        return current.model_copy(
            update={"champion": version, "canary": None, "canary_percent": 0.0}
        )
    if request.champion:
        previous = registry.alias("champion").previous
        if previous is None:
            raise ConfigError(
                field="champion", value=champion, problem="has no previous version to go back to"
            )
        champion = _checked(registry, previous)
        move("champion", champion, safety=True)
    canary_alias = registry.aliases().get("canary")
    if current.canary is not None or (canary_alias is not None and canary_alias != champion):
        move("canary", champion, safety=True)
    return current.model_copy(update={"champion": champion, "canary": None, "canary_percent": 0.0})


def run_step(
    request: RolloutRequest, *, registry_uri: str, target: ServeTarget | None = None
) -> RolloutConfig:
    """Run one rollout step against the app's declarative config; returns the new rollout.

    ``target`` is where that config lives: the cluster's Serve REST API (default) or a
    KubeRay RayService (:mod:`attune.serving.serve_api`).
    """
    from attune.registry import Registry

    registry = Registry(registry_uri)
    target = target or ServeREST()
    current = rollout_of(target.read(), request.app)
    return update_rollout(request.app, lambda _: plan(request, registry, current), target=target)


def persist_guardrail_rollback(
    *,
    registry_uri: str,
    app_name: str,
    version: str,
    reasons: tuple[str, ...],
    breached: RolloutConfig,
) -> None:
    """After a replica's guardrail tripped: canary alias back to the champion, app redeployed.

    Runs inside the replica (in a thread). Only the rollout that breached is changed: if
    the app already runs another rollout, nothing is redeployed.
    """
    from attune.registry import Registry

    registry = Registry(registry_uri)
    justification = f"guardrail rollback of {version}: " + "; ".join(reasons)
    champion = registry.resolve(breached.champion)
    registry.set_alias(
        "canary", champion, by=GUARDRAIL_ACTOR, justification=justification, override=True
    )

    def _close_canary(current: RolloutConfig) -> RolloutConfig:
        if current != breached:
            return current
        return current.model_copy(update={"canary": None, "canary_percent": 0.0})

    update_rollout(app_name, _close_canary)
