"""A Serve app hosting one exploration policy, for the experiments integration tests.

Deployed declaratively (``import_path`` ``tests.integration.experiments_bandit_app:app``)
so that changing only its ``user_config`` makes Serve call ``reconfigure`` on the live
replica instead of restarting it, as a rollout does. ``user_config`` is
``{"state": PolicyState JSON, "version": int, "seed": int}``.

* ``POST /choose {"buckets": [b, ...]}``: one decision per bucket (chosen, propensity, probs);
* ``POST /feedback {"feedback": [Feedback fields, ...]}``: folds outcomes into the policy;
* ``GET /info``: the replica's pid, config version and current policy state.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from ray import serve

from attune.data.schema import OPTION_IDS
from attune.experiments.bandits import DecisionContext, Feedback, Policy, policy_from_state


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0})
class BanditReplica:
    def __init__(self) -> None:
        self.pid, self.version = os.getpid(), 0
        self.policy: Policy | None = None
        self.rng = np.random.default_rng(0)

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.policy = policy_from_state(config["state"])
        self.version = int(config["version"])
        self.rng = np.random.default_rng(int(config["seed"]))

    async def __call__(self, request: Any) -> dict[str, Any]:
        assert self.policy is not None  # reconfigure runs before the first request
        action = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if action == "info":
            state = self.policy.state().model_dump(mode="json")
            return {"pid": self.pid, "version": self.version, "state": state}
        body = await request.json()
        if action == "feedback":
            self.policy.update([Feedback(**item) for item in body["feedback"]])
            return {"updated": len(body["feedback"])}
        decisions = []
        for bucket in body["buckets"]:
            context = DecisionContext(options=tuple(range(len(OPTION_IDS))), bucket=bucket)
            decision = self.policy.choose(context, self.rng)
            decisions.append(
                {
                    "chosen": decision.chosen,
                    "propensity": decision.propensity,
                    "probs": list(decision.probs),
                }
            )
        return {"decisions": decisions}


app = BanditReplica.bind()
