"""Reason codes: why a model ranked an option where it did, in words.

Contributions are TreeSHAP values from XGBoost's native ``pred_contribs=True`` on the
registered booster: for every row, the feature contributions plus the bias column add
up to the model's margin (its ranking score). The reason catalog (``reasons.yaml``)
groups features into reason codes with one statement per sign; a code's contribution
is the sum of its features' contributions, so for each row::

    bias + sum(reason.contribution for reason in reasons) + rest == margin

where ``rest`` collects the codes outside the top ``k``. Protected attributes are never
features (the feature spec refuses them) and the catalog refuses to name them.

Cost at serve time: one DMatrix, one ``predict`` call, one small matrix product. The
DMatrix is built with ``nthread=1``: with the default (all cores) a predict for 8 rows
took ~11 ms p50 on a loaded 2-core host instead of ~1.2-1.7 ms. Exact TreeSHAP grows
with trees x leaves x depth^2 (8 rows: ~1.2 ms at 100 trees of depth 4, tens of ms at
depth 6); ``approximate=True`` uses XGBoost's ``approx_contribs`` (Saabas: per-node
gains along the decision path), which keeps the additivity above at a fraction of the
cost and is recorded as ``method="saabas"`` in every explanation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from attune.data.schema import protected_names
from attune.errors import ConfigError, FeatureSpecMismatch, InvalidInput

#: Code that explains the features no catalog entry names.
OTHER = "OTHER"


class ReasonEntry(BaseModel):
    """One reason code of the catalog."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: tuple[str, ...] = Field(description="Features this code explains.")
    up: str = Field(min_length=1, description="Statement when the factor raised the option.")
    down: str = Field(min_length=1, description="Statement when the factor lowered the option.")


class ReasonCatalog(BaseModel):
    """Reason codes with their features and statements (``reasons.yaml``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(description="Catalog version, recorded with explanations.")
    reasons: dict[str, ReasonEntry] = Field(description="Reason code -> entry.")

    @model_validator(mode="after")
    def _check(self) -> ReasonCatalog:
        if OTHER not in self.reasons:
            raise ValueError(f"the catalog needs an {OTHER} entry for unnamed features")
        owner: dict[str, str] = {}
        for code, entry in self.reasons.items():
            leaked = protected_names(entry.features)
            if leaked:
                raise ValueError(f"reason {code} names protected attributes {leaked}")
            for feature in entry.features:
                if feature in owner:
                    raise ValueError(
                        f"feature {feature!r} is in both reason {owner[feature]} and {code}"
                    )
                owner[feature] = code
        return self


@lru_cache(maxsize=1)
def default_catalog() -> ReasonCatalog:
    """The catalog shipped with attune (``attune/governance/reasons.yaml``)."""
    text = resources.files("attune.governance").joinpath("reasons.yaml").read_text()
    return load_catalog(yaml.safe_load(text), source="reasons.yaml")


def load_catalog(data: Mapping[str, Any], *, source: str = "catalog") -> ReasonCatalog:
    """Validate catalog data; ConfigError names the source and the bad field."""
    try:
        return ReasonCatalog.model_validate(dict(data))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(catalog)"
        value = first.get("input") if first["loc"] else None  # not the whole catalog
        raise ConfigError(field=f"{source}:{where}", value=value, problem=first["msg"]) from exc


@dataclass(frozen=True)
class Reason:
    """One reason code of one candidate: its statement and summed TreeSHAP contribution."""

    code: str
    statement: str
    contribution: float
    direction: Literal["up", "down"]
    features: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "statement": self.statement,
            "contribution": self.contribution,
            "direction": self.direction,
            "features": list(self.features),
        }


@dataclass(frozen=True)
class Explanation:
    """All of one row: ``bias + sum(reasons) + rest == margin``."""

    margin: float
    bias: float
    rest: float
    reasons: tuple[Reason, ...]
    method: Literal["treeshap", "saabas"] = "treeshap"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, for an HTTP answer or a log line."""
        return {
            "margin": self.margin,
            "bias": self.bias,
            "rest": self.rest,
            "method": self.method,
            "reasons": [r.to_dict() for r in self.reasons],
        }


class ReasonExplainer:
    """Reason codes for one booster and feature order; build once per model version."""

    def __init__(
        self,
        booster: Any,
        feature_names: Sequence[str],
        *,
        catalog: ReasonCatalog | None = None,
        approximate: bool = False,
    ) -> None:
        names = tuple(feature_names)
        leaked = protected_names(names)
        if leaked:
            raise InvalidInput(
                f"protected attributes may not be model features: {leaked}",
                field="feature_names",
                value=leaked,
            )
        booster_names = booster.feature_names
        if booster_names is not None and tuple(booster_names) != names:
            raise FeatureSpecMismatch(
                expected=list(booster_names), actual=list(names), problem="feature order differs"
            )
        self.booster = booster
        self.feature_names = names
        self.approximate = approximate
        self.method: Literal["treeshap", "saabas"] = "saabas" if approximate else "treeshap"
        self.catalog = catalog or default_catalog()
        codes = [c for c, e in self.catalog.reasons.items() if set(e.features) & set(names)]
        owner = {f: c for c, e in self.catalog.reasons.items() for f in e.features}
        if any(f not in owner for f in names):
            codes.append(OTHER)
        self.codes: tuple[str, ...] = tuple(dict.fromkeys(codes))
        index = {c: j for j, c in enumerate(self.codes)}
        # (features x codes) 0/1 matrix: one product sums contributions per code.
        self.group_matrix = np.zeros((len(names), len(self.codes)))
        for i, feature in enumerate(names):
            self.group_matrix[i, index[owner.get(feature, OTHER)]] = 1.0
        self._members = {c: tuple(f for f in names if owner.get(f, OTHER) == c) for c in self.codes}

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Contributions per feature plus the bias column: shape (rows, features + 1)."""
        import xgboost as xgb

        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise FeatureSpecMismatch(
                expected=len(self.feature_names),
                actual=X.shape[-1] if X.ndim else 0,
                problem=f"X must be (rows, {len(self.feature_names)}), got shape {X.shape}",
            )
        names = list(self.feature_names) if self.booster.feature_names is not None else None
        matrix = xgb.DMatrix(X, feature_names=names, nthread=1)
        out: np.ndarray = self.booster.predict(
            matrix, pred_contribs=True, approx_contribs=self.approximate
        )
        return out

    def explain(self, X: np.ndarray, *, top_k: int = 3) -> list[Explanation]:
        """Per row of ``X``: the ``top_k`` reason codes by |contribution|, bias and margin."""
        if top_k < 1:
            raise InvalidInput(f"top_k must be >= 1, got {top_k}", field="top_k", value=top_k)
        contribs = self.contributions(X).astype(np.float64)
        bias = contribs[:, -1]
        by_code = contribs[:, :-1] @ self.group_matrix
        top = np.argsort(-np.abs(by_code), axis=1, kind="stable")[:, :top_k]
        margins = contribs.sum(axis=1)
        out: list[Explanation] = []
        for row, picks in enumerate(top):
            reasons = tuple(self._reason(self.codes[j], float(by_code[row, j])) for j in picks)
            out.append(
                Explanation(
                    margin=float(margins[row]),
                    bias=float(bias[row]),
                    rest=float(by_code[row].sum() - by_code[row, picks].sum()),
                    reasons=reasons,
                    method=self.method,
                )
            )
        return out

    def _reason(self, code: str, value: float) -> Reason:
        entry = self.catalog.reasons[code]
        direction: Literal["up", "down"] = "up" if value >= 0 else "down"
        return Reason(
            code=code,
            statement=entry.up if direction == "up" else entry.down,
            contribution=value,
            direction=direction,
            features=self._members[code],
        )


def reason_codes(
    booster: Any,
    X: np.ndarray,
    feature_names: Sequence[str],
    *,
    top_k: int = 3,
    catalog: ReasonCatalog | None = None,
    approximate: bool = False,
) -> list[list[Reason]]:
    """The ``top_k`` reasons of each row of ``X`` (see :class:`ReasonExplainer`).

    Raises InvalidInput when ``feature_names`` holds a protected attribute and
    FeatureSpecMismatch when ``X`` or the names disagree with the booster.
    """
    explainer = ReasonExplainer(booster, feature_names, catalog=catalog, approximate=approximate)
    return [list(e.reasons) for e in explainer.explain(X, top_k=top_k)]


def explanation_summary(
    booster: Any,
    X: np.ndarray,
    feature_names: Sequence[str],
    *,
    catalog: ReasonCatalog | None = None,
    max_rows: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Global importance for ``explanations.json``: mean |TreeSHAP| per feature and code.

    At most ``max_rows`` rows of ``X`` (a seeded sample) are explained; entries are
    sorted by importance, largest first.
    """
    explainer = ReasonExplainer(booster, feature_names, catalog=catalog)
    X = np.asarray(X, dtype=np.float32)
    if len(X) > max_rows:
        X = X[np.sort(np.random.default_rng(seed).choice(len(X), max_rows, replace=False))]
    contribs = explainer.contributions(X).astype(np.float64)
    per_feature = np.abs(contribs[:, :-1]).mean(axis=0)
    per_code = np.abs(contribs[:, :-1] @ explainer.group_matrix).mean(axis=0)
    order = np.argsort(-per_feature, kind="stable")
    code_order = np.argsort(-per_code, kind="stable")
    return {
        "method": "xgboost pred_contribs (TreeSHAP)",
        "catalog_version": explainer.catalog.version,
        "n_rows": len(X),
        "mean_bias": float(contribs[:, -1].mean()),
        "features": {explainer.feature_names[i]: float(per_feature[i]) for i in order},
        "reasons": {explainer.codes[j]: float(per_code[j]) for j in code_order},
    }


def measure_explain_latency(
    booster: Any,
    X: np.ndarray,
    feature_names: Sequence[str],
    *,
    repeats: int = 200,
    top_k: int = 3,
    approximate: bool = False,
) -> dict[str, float]:
    """p50/p99 milliseconds of explaining ``X`` beside plain scoring of the same rows.

    For benchmarks (``bench/explain.py``, the serving bench): the explainer is built
    once, as a replica would, and each repeat explains every row of ``X`` once.
    """
    explainer = ReasonExplainer(booster, feature_names, approximate=approximate)
    X = np.asarray(X, dtype=np.float32)
    explain_ms, score_ms = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        explainer.explain(X, top_k=top_k)
        explain_ms.append((time.perf_counter() - start) * 1e3)
        start = time.perf_counter()
        booster.inplace_predict(X)
        score_ms.append((time.perf_counter() - start) * 1e3)
    e, s = np.asarray(explain_ms), np.asarray(score_ms)
    return {
        "rows": float(len(X)),
        "explain_p50_ms": float(np.quantile(e, 0.5)),
        "explain_p99_ms": float(np.quantile(e, 0.99)),
        "score_p50_ms": float(np.quantile(s, 0.5)),
        "ratio_p50": float(np.quantile(e, 0.5) / max(np.quantile(s, 0.5), 1e-9)),
    }
