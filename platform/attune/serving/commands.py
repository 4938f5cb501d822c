"""CLI sub-commands of the serving stage (registered by :mod:`attune.cli`).

``attune serve deploy|status|delete`` manage the apps through Serve's REST API on the
Ray dashboard (``RAY_DASHBOARD_ADDRESS``, else ``http://127.0.0.1:8265``), like
``serve deploy``; ``attune rollout shadow|canary|promote|rollback|status`` move registry
aliases and apply the edited declarative config there, or, with ``--rayservice NAME``,
into a KubeRay RayService's ``serveConfigV2`` (see :mod:`attune.serving.rollout`).
Heavy imports (Ray) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pydantic import ValidationError

from attune.errors import ConfigError


def _config_error(exc: ValidationError) -> ConfigError:
    return ConfigError.from_validation(exc)


def _registry_uri(args: argparse.Namespace) -> str:
    """``--registry``, else ``<--store or ATTUNE_STORE>/registry``; it must exist."""
    from attune.layout import require, resolve
    from attune.serving.config import AppArgs

    return require(AppArgs(registry=resolve(args, "registry")).registry_uri(), "registry")


def _print(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _target(args: argparse.Namespace) -> Any:
    from attune.serving.serve_api import RayServiceTarget, ServeREST

    if getattr(args, "rayservice", None):
        return RayServiceTarget(args.rayservice, namespace=args.namespace)
    return ServeREST(getattr(args, "address", None))


def _rollout(args: argparse.Namespace) -> int:
    from attune.serving.rollout import RolloutRequest, rollout_of, run_step
    from attune.settings import current_user

    if args.step == "status":
        _print(rollout_of(_target(args).read(), args.app).model_dump(mode="json"))
        return 0
    try:
        request = RolloutRequest(
            step=args.step,
            app=args.app,
            version=getattr(args, "version", None),
            percent=getattr(args, "percent", None),
            champion=getattr(args, "champion", False),
            by=args.by or current_user(),
            justification=args.justification,
            override=args.override,
        )
    except ValidationError as exc:
        raise _config_error(exc) from exc
    registry_uri = _registry_uri(args)  # checked before Ray starts
    if request.step == "canary" and not args.no_ope:
        _ope_gate(args, request)
    rollout = run_step(request, registry_uri=registry_uri, target=_target(args))
    _print(rollout.model_dump(mode="json"))
    return 0


def _ope_gate(args: argparse.Namespace, request: Any) -> None:
    """Refuse the canary when the served logs already show it is worse.

    Reads the served decisions (``--ope-decisions``, default ``<store>/decisions``) and
    the reward rows of ``attune outcomes`` (``--ope-outcomes``, default
    ``<store>/rewards``). Defaulted logs that do not exist yet skip the gate, saying so;
    paths given explicitly must exist.
    """
    from attune import storage
    from attune.layout import store_layout
    from attune.registry import Registry
    from attune.serving.ope_check import ope_check
    from attune.serving.rollout import rollout_of

    layout = store_layout(getattr(args, "store", None))
    decisions = args.ope_decisions or layout.decisions
    outcomes = args.ope_outcomes or layout.rewards
    if not (args.ope_decisions and args.ope_outcomes):
        absent = [uri for uri in (decisions, outcomes) if not storage.list_uris(uri)]
        if absent:
            _print({"ope_gate": f"skipped: nothing logged yet at {', '.join(absent)}"})
            return
    champion = rollout_of(_target(args).read(), args.app).champion
    check = ope_check(
        registry=Registry(_registry_uri(args)),
        candidate=request.version,
        champion=champion,
        decisions_uri=decisions,
        outcomes_uri=outcomes,
        estimator=args.ope_estimator,
    )
    if check.decision is None:
        _print({"ope_gate": "skipped: no usable exploring decision", **check.to_dict()})
        return
    _print({"ope_gate": check.to_dict()})
    if not request.override:
        check.decision.enforce(version=request.version)


def _serve_deploy(args: argparse.Namespace) -> int:
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from attune.serving.rollout import deploy

    try:
        with open(args.config) as fh:
            config = ServeDeploySchema.model_validate(yaml.safe_load(fh))
    except OSError as exc:
        raise ConfigError(field="config", value=args.config, problem=str(exc)) from exc
    except ValidationError as exc:
        raise _config_error(exc) from exc
    deploy(config, target=_target(args), wait_s=args.wait_s)
    _print({"deployed": [app.name for app in config.applications]})
    return 0


def _serve_status(args: argparse.Namespace) -> int:
    from attune.serving.serve_api import ServeREST

    apps = ServeREST(args.address).details().get("applications", {})
    _print(
        {
            name: {"status": app.get("status"), "message": app.get("message")}
            for name, app in apps.items()
            if args.app is None or name == args.app
        }
    )
    return 0


def _serve_delete(args: argparse.Namespace) -> int:
    """Apply the cluster's config without the app (declarative, like editing the file)."""
    from ray.serve.schema import ServeDeploySchema

    from attune.errors import NotFound
    from attune.serving.serve_api import ServeREST

    target = ServeREST(args.address)
    config = target.read()
    kept = [app for app in config.applications if app.name != args.app]
    if len(kept) == len(config.applications):
        raise NotFound(f"application {args.app!r} is not deployed", app=args.app)
    data = config.model_dump(exclude_unset=True)
    data["applications"] = [app.model_dump(exclude_unset=True) for app in kept]
    target.apply(ServeDeploySchema.model_validate(data), wait_s=args.wait_s)
    _print({"deleted": args.app})
    return 0


def register(subparsers: Any) -> None:
    """Add ``serve`` and ``rollout`` to the ``attune`` command line."""
    serve = subparsers.add_parser("serve", help="Deploy and inspect the ranking app.")
    serve_sub = serve.add_subparsers(dest="serve_command", required=True, metavar="ACTION")
    deploy = serve_sub.add_parser("deploy", help="Apply a Serve config (serve_configs/*.yaml).")
    deploy.add_argument("config", help="Serve config file (ServeDeploySchema YAML).")
    address_help = "Ray dashboard (Serve REST API) URL (RAY_DASHBOARD_ADDRESS, else :8265)."
    deploy.add_argument("--wait-s", type=float, default=300, help="Wait for RUNNING (seconds).")
    deploy.add_argument("--address", default=None, help=address_help)
    deploy.set_defaults(handler=_serve_deploy)
    status = serve_sub.add_parser("status", help="Status of the apps on the cluster.")
    status.add_argument("--app", default=None, help="Only this application.")
    status.add_argument("--address", default=None, help=address_help)
    status.set_defaults(handler=_serve_status)
    delete = serve_sub.add_parser("delete", help="Delete an application.")
    delete.add_argument("--app", default="attune", help="Application name.")
    delete.add_argument("--address", default=None, help=address_help)
    delete.add_argument("--wait-s", type=float, default=300, help="Wait for RUNNING (seconds).")
    delete.set_defaults(handler=_serve_delete)

    rollout = subparsers.add_parser(
        "rollout", help="Shadow, canary, promote or roll back a model on the running app."
    )
    steps = rollout.add_subparsers(dest="step", required=True, metavar="STEP")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--app", default="attune", help="Serve application name.")
    from attune.layout import add_store_argument

    add_store_argument(common, "registry")
    common.add_argument("--by", default=None, help="Who runs the step (default: current user).")
    common.add_argument("--justification", default=None, help="Why (required with --override).")
    common.add_argument("--override", action="store_true", help="Move even if a gate refuses.")
    common.add_argument("--address", default=None, help=address_help)
    common.add_argument(
        "--rayservice",
        default=None,
        metavar="NAME",
        help="Write the rollout into this KubeRay RayService's serveConfigV2 (kubectl patch) "
        "instead of the cluster's Serve REST API.",
    )
    common.add_argument("--namespace", default=None, help="Namespace of --rayservice.")
    shadow = steps.add_parser("shadow", parents=[common], help="Mirror requests to a version.")
    shadow.add_argument("version", help="Version id or alias.")
    shadow.add_argument("--percent", type=float, default=None, help="Share of requests (100).")
    canary = steps.add_parser("canary", parents=[common], help="Send a share of borrowers.")
    canary.add_argument("version", help="Version id or alias.")
    canary.add_argument("--percent", type=float, required=True, help="Share of borrowers.")
    canary.add_argument(
        "--ope-decisions",
        default=None,
        help="Served decisions for the off-policy gate (default: <store>/decisions).",
    )
    canary.add_argument(
        "--ope-outcomes",
        default=None,
        help="Reward rows of `attune outcomes` for the gate (default: <store>/rewards).",
    )
    canary.add_argument(
        "--ope-estimator",
        default="snips",
        choices=("ips", "snips"),
        help="Off-policy estimator of the gate (default: snips).",
    )
    canary.add_argument("--no-ope", action="store_true", help="Skip the off-policy gate.")
    steps.add_parser("promote", parents=[common], help="Make the canary the champion.")
    back = steps.add_parser("rollback", parents=[common], help="Close the canary arm.")
    back.add_argument(
        "--champion", action="store_true", help="Also move the champion to its previous version."
    )
    steps.add_parser("status", parents=[common], help="Print the rollout in service.")
    for parser in (shadow, canary, back, *steps.choices.values()):
        parser.set_defaults(handler=_rollout)
