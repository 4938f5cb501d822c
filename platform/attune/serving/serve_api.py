"""Where a rollout reads and writes the declarative Serve config: public interfaces only.

A :class:`ServeTarget` reads the config the cluster was given and applies a new one,
as a whole, the way ``serve deploy`` does:

* :class:`ServeREST`: Ray Serve's REST API on the Ray dashboard (``GET`` /
  ``PUT /api/serve/applications/``), the interface ``serve deploy`` and ``serve
  status`` use. The address is ``RAY_DASHBOARD_ADDRESS`` (Ray's own variable), else
  ``http://127.0.0.1:8265``; with Ray token auth the token is sent as a bearer token,
  read where Ray reads it (``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``,
  ``~/.ray/auth_token``; none with ``RAY_AUTH_MODE=disabled``).
* :class:`RayServiceTarget`: a KubeRay ``RayService``. The desired state is its
  ``spec.serveConfigV2``: the new config is written there (``kubectl patch``), so the
  operator applies it and a later reconcile keeps it instead of reverting it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from attune.errors import ConfigError, NotFound, Unavailable

if TYPE_CHECKING:
    from ray.serve.schema import ServeDeploySchema

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
_APPS = "/api/serve/applications/"


class ServeTarget(Protocol):
    """A place that holds the declarative Serve config of a cluster."""

    def read(self) -> ServeDeploySchema:
        """The config every application was deployed from."""

    def apply(self, config: ServeDeploySchema, *, wait_s: float) -> None:
        """Make ``config`` the desired state (and, where it can, wait until it runs)."""


def _schema(applications: list[dict[str, Any]], **extra: Any) -> ServeDeploySchema:
    from ray.serve.schema import ServeDeploySchema

    values = {k: v for k, v in extra.items() if v is not None}
    return ServeDeploySchema.model_validate({"applications": applications, **values})


def _ray_token() -> str | None:
    """Ray's token (token auth), from where Ray itself reads it: ``RAY_AUTH_TOKEN``,
    the file ``RAY_AUTH_TOKEN_PATH`` names, else ``~/.ray/auth_token``."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    token = os.environ.get("RAY_AUTH_TOKEN")
    if token:
        return token.strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class ServeREST:
    """Ray Serve's REST API (``serve deploy``'s interface) on the Ray dashboard."""

    def __init__(self, address: str | None = None, *, timeout_s: float = 30.0) -> None:
        self.address = (
            address or os.environ.get("RAY_DASHBOARD_ADDRESS") or DEFAULT_DASHBOARD
        ).rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"}
        token = _ray_token()
        if token:
            headers["authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            self.address + _APPS, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            if 400 <= exc.code < 500:
                raise ConfigError(field="serve config", value=None, problem=detail) from exc
            raise Unavailable(
                f"Serve REST API at {self.address}: HTTP {exc.code}: {detail}",
                address=self.address,
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise Unavailable(
                f"Serve REST API at {self.address} unreachable ({exc}); is the Ray dashboard "
                "up? Set RAY_DASHBOARD_ADDRESS to the head's dashboard",
                address=self.address,
            ) from exc
        return json.loads(text) if text else None

    def details(self) -> dict[str, Any]:
        """Serve's instance details (applications, their status and deployed config)."""
        return dict(self._call("GET"))

    def read(self) -> ServeDeploySchema:
        details = self.details()
        apps = [
            app["deployed_app_config"]
            for app in details.get("applications", {}).values()
            if app.get("deployed_app_config")
        ]
        return _schema(apps, target_capacity=details.get("target_capacity"))

    def apply(self, config: ServeDeploySchema, *, wait_s: float) -> None:
        self._call("PUT", config.model_dump(mode="json", exclude_unset=True))
        names = {app.name for app in config.applications}
        deadline = time.monotonic() + wait_s
        while True:
            apps = self.details().get("applications", {})
            status = {n: apps.get(n, {}).get("status") for n in names}
            if all(s == "RUNNING" for s in status.values()):
                return
            if any(s == "DEPLOY_FAILED" for s in status.values()) or time.monotonic() > deadline:
                raise ConfigError(
                    field="applications",
                    value=status,
                    problem="deploy did not reach RUNNING: "
                    + "; ".join(str(apps.get(n, {}).get("message", "")) for n in sorted(names)),
                )
            time.sleep(0.25)


class RayServiceTarget:
    """A KubeRay RayService: ``spec.serveConfigV2`` is read and patched with ``kubectl``."""

    def __init__(self, name: str, *, namespace: str | None = None, kubectl: str = "kubectl"):
        self.name = name
        self.namespace = namespace
        self.kubectl = kubectl

    def _run(self, *args: str) -> str:
        argv = [self.kubectl, *args, "rayservice", self.name]
        if self.namespace:
            argv += ["--namespace", self.namespace]
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        except OSError as exc:
            raise Unavailable(f"{self.kubectl}: {exc}", kubectl=self.kubectl) from exc
        if done.returncode != 0:
            message = done.stderr.strip() or done.stdout.strip()
            if "NotFound" in message or "not found" in message:
                raise NotFound(f"RayService {self.name!r}: {message}", rayservice=self.name)
            raise Unavailable(f"kubectl {' '.join(args)}: {message}", rayservice=self.name)
        return done.stdout

    def read(self) -> ServeDeploySchema:
        import yaml

        manifest = json.loads(self._run("get", "--output", "json"))
        config = yaml.safe_load(manifest["spec"]["serveConfigV2"]) or {}
        return _schema(
            config.get("applications", []),
            **{k: v for k, v in config.items() if k != "applications"},
        )

    def apply(self, config: ServeDeploySchema, *, wait_s: float) -> None:
        """Write the new desired state; the operator rolls it out (``wait_s`` unused)."""
        import yaml

        text = yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True), sort_keys=False)
        patch = json.dumps({"spec": {"serveConfigV2": text}})
        self._run("patch", "--type", "merge", "--patch", patch)
