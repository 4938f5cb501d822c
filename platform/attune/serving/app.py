"""The Serve application builder: ``attune.serving.app:build_app``.

Ray's own tooling runs it from a config (``serve run serve_configs/local.yaml``,
``serve deploy serve_configs/prod.yaml``, ``attune serve deploy``)::

    applications:
      - name: attune
        route_prefix: /
        import_path: attune.serving.app:build_app
        args: {registry: s3://models/attune, store: s3://attune-store}   # AppArgs
        deployments:
          - name: RankingIngress
            user_config: {champion: v2026..., canary: v2026..., canary_percent: 20}
            autoscaling_config: {min_replicas: 1, max_replicas: 4}

``args`` are :class:`~attune.serving.config.AppArgs` (validated by Serve against the
builder's annotation, so a bad value fails the deploy naming the field); the ingress
``user_config`` is a :class:`~attune.serving.config.RolloutConfig`, the live knobs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from attune.serving.config import INGRESS_NAME, AppArgs

if TYPE_CHECKING:
    from ray.serve import Application


def build_app(args: AppArgs) -> Application:
    """Build the ranking app: one ingress deployment scoring every model in use.

    ``args.rollout`` becomes the ingress's initial ``user_config``; a config file's
    ``deployments[].user_config`` overrides it (and ``attune rollout`` edits that one).
    With ``args.online`` the ingress reads the Redis online store itself; without a
    configured URL (a local store) the app runs a ``LocalRedis`` deployment that owns a
    local ``redis-server`` (attune.online.deployment).
    """
    from attune.serving.ingress import RankingIngress

    args = AppArgs.model_validate(args)
    ingress: Any = RankingIngress  # a serve.Deployment at run time
    app = ingress.options(user_config=args.rollout.model_dump(mode="json"))
    if args.online is None:
        return app.bind(args)
    from attune.online.deployment import bind_local, redis_url

    url = redis_url(args.online.redis_url, args.store_uri())
    return app.bind(args, online=url if url is not None else bind_local(args.store_uri()))


def app_config(
    args: AppArgs | dict[str, Any],
    *,
    name: str = "attune",
    route_prefix: str = "/",
    ingress: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One application entry of a Serve config for this app (``ingress`` = deployment options)."""
    args = AppArgs.model_validate(args)
    entry: dict[str, Any] = {
        "name": name,
        "route_prefix": route_prefix,
        "import_path": "attune.serving.app:build_app",
        "args": args.model_dump(mode="json", exclude_defaults=True),
    }
    if ingress:
        entry["deployments"] = [{"name": INGRESS_NAME, **ingress}]
    return entry
