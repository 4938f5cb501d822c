"""Reason codes for ``explain=true``: the governance stage's TreeSHAP explainer per version.

The ONNX graph answers scores only; reason codes need the native booster that every
registry version carries (``model.ubj``). :class:`RegistryExplainer` keeps one
:class:`attune.governance.explain.ReasonExplainer` per version (XGBoost is imported
only then); the ranking service preloads the champion's and canary's on every
reconfigure (off the event loop), and a version not preloaded is loaded on its first
explained request, in the worker thread that explains it. A version without a native
booster answers ``reasons: null``.

Cost: one TreeSHAP call per explained request on the request path (~1-2 ms for 8 rows
of 100 trees of depth 4 here; tens of ms at depth 6, see bench/explain.py), which is
why explanations are opt-in per request.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import numpy as np

from attune.errors import NotFound
from attune.serving.api import Reason
from attune.serving.model import ModelStore

log = logging.getLogger(__name__)

NATIVE_MODEL = "model.ubj"


class RegistryExplainer:
    """Reason codes for any registry version, ``top_k`` per candidate (thread-safe)."""

    def __init__(self, store: ModelStore, *, top_k: int = 3, approximate: bool = False) -> None:
        self._store = store
        self._top_k = top_k
        self._approximate = approximate
        self._explainers: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _explainer(self, version: str, names: tuple[str, ...]) -> Any:
        with self._lock:
            if version in self._explainers:
                return self._explainers[version]
        import xgboost as xgb

        from attune.governance.explain import ReasonExplainer

        try:
            raw = self._store.read(version, NATIVE_MODEL)
        except NotFound:
            log.warning(
                "version %s has no %s: explain=true answers no reasons", version, NATIVE_MODEL
            )
            explainer = None
        else:
            booster = xgb.Booster()
            booster.load_model(bytearray(raw))
            explainer = ReasonExplainer(booster, names, approximate=self._approximate)
        with self._lock:
            self._explainers[version] = explainer
        return explainer

    def preload(self, version: str, names: tuple[str, ...]) -> None:
        """Load ``version``'s explainer now (blocking registry I/O: call off the loop)."""
        self._explainer(version, names)

    def explain(
        self, version: str, X: np.ndarray, names: tuple[str, ...]
    ) -> list[list[Reason]] | None:
        """``top_k`` reasons per row of ``X``; None when the version cannot be explained."""
        explainer = self._explainer(version, names)
        if explainer is None:
            return None
        return [
            [
                Reason(
                    code=reason.code,
                    statement=reason.statement,
                    contribution=reason.contribution,
                )
                for reason in explanation.reasons
            ]
            for explanation in explainer.explain(X, top_k=self._top_k)
        ]
