"""Write infra/kuberay/rayservice.yaml with serveConfigV2 = serve_configs/prod.yaml.

    python infra/render_rayservice.py          # after editing serve_configs/prod.yaml

tests/unit/test_infra.py fails when the two drift apart.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_HEADER = """\
# attune's ranking service on KubeRay. serveConfigV2 is serve_configs/prod.yaml verbatim:
# regenerate this file with `python infra/render_rayservice.py` after editing it.
apiVersion: ray.io/v1
kind: RayService
metadata:
  name: attune-ranking
  labels:
    app.kubernetes.io/name: attune
spec:
  serviceUnhealthySecondThreshold: 300
  deploymentUnhealthySecondThreshold: 300
  serveConfigV2: |
"""

_CLUSTER = """\
  rayClusterConfig:
    rayVersion: "2.60.0"
    enableInTreeAutoscaling: true
    headGroupSpec:
      rayStartParams:
        num-cpus: "0"
        dashboard-host: "0.0.0.0"
        metrics-export-port: "8080"
      template:
        metadata:
          labels: {app.kubernetes.io/name: attune, app.kubernetes.io/component: head}
        spec:
          containers:
            - name: ray-head
              image: attune:0.1.0
              ports:
                - {containerPort: 6379, name: gcs}
                - {containerPort: 8265, name: dashboard}
                - {containerPort: 8000, name: serve}
                - {containerPort: 8080, name: metrics}
              env:
                - {name: ATTUNE_STORE, value: "s3://attune-prod"}
                - {name: RAY_SERVE_ENABLE_HA_PROXY, value: "1"}
                # Online feature store (infra/kuberay/redis.yaml or a managed Redis).
                - name: ATTUNE_REDIS_URL
                  valueFrom:
                    secretKeyRef: {name: attune-redis, key: url}
              envFrom:
                - secretRef: {name: attune-s3}
                - secretRef: {name: attune-api-token}
              resources:
                limits: {cpu: "2", memory: 8Gi}
                requests: {cpu: "2", memory: 8Gi}
    workerGroupSpecs:
      - groupName: serve
        replicas: 2
        minReplicas: 2
        maxReplicas: 8
        rayStartParams:
          metrics-export-port: "8080"
        template:
          metadata:
            labels: {app.kubernetes.io/name: attune, app.kubernetes.io/component: worker}
          spec:
            containers:
              - name: ray-worker
                image: attune:0.1.0
                ports:
                  - {containerPort: 8080, name: metrics}
                env:
                  - {name: ATTUNE_STORE, value: "s3://attune-prod"}
                  - {name: RAY_SERVE_ENABLE_HA_PROXY, value: "1"}
                  # Online feature store (infra/kuberay/redis.yaml or a managed Redis).
                  - name: ATTUNE_REDIS_URL
                    valueFrom:
                      secretKeyRef: {name: attune-redis, key: url}
                envFrom:
                  - secretRef: {name: attune-s3}
                  - secretRef: {name: attune-api-token}
                resources:
                  limits: {cpu: "4", memory: 8Gi}
                  requests: {cpu: "4", memory: 8Gi}
"""


def render() -> str:
    prod = (ROOT / "serve_configs/prod.yaml").read_text()
    body = "".join(f"    {line}" if line.strip() else "\n" for line in prod.splitlines(True))
    return _HEADER + body + _CLUSTER


def main() -> None:
    (ROOT / "infra/kuberay/rayservice.yaml").write_text(render())


if __name__ == "__main__":
    main()
