"""attune: learn and serve personalized loan-servicing rankings on Ray.

The nouns users work with are importable from here. Everything but the light ones is
imported on first use, so ``import attune`` does not import Ray or XGBoost.
"""

from __future__ import annotations

import importlib
from typing import Any

from attune.data.spec import FeatureSpec
from attune.errors import AttuneError
from attune.registry import Registry

__version__ = "0.1.0"

_LAZY: dict[str, str] = {
    "AppArgs": "attune.serving.config",
    "DemoConfig": "attune.demo.config",
    "GenerateConfig": "attune.simulator",
    "MaterializeConfig": "attune.data.materialize",
    "OnlineStore": "attune.online",
    "RedisOnlineStore": "attune.online.redis_store",
    "PreprocessConfig": "attune.data.pipeline",
    "RolloutConfig": "attune.serving.config",
    "TuneConfig": "attune.training.config",
    "estimate_policy_value": "attune.experiments.ope",
    "feature_kernel": "attune.data.features",
    "materialize_online": "attune.online.snapshot",
    "generate": "attune.simulator",
    "preprocess": "attune.data.pipeline",
    "train_and_register": "attune.training.pipeline",
}

__all__ = [
    "AppArgs",
    "AttuneError",
    "DemoConfig",
    "FeatureSpec",
    "GenerateConfig",
    "MaterializeConfig",
    "OnlineStore",
    "PreprocessConfig",
    "RedisOnlineStore",
    "Registry",
    "RolloutConfig",
    "TuneConfig",
    "estimate_policy_value",
    "feature_kernel",
    "generate",
    "materialize_online",
    "preprocess",
    "train_and_register",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attune' has no attribute {name!r}")
