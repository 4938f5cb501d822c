"""Every governance file of a model version, written by one call: :func:`governance_files`.

The training pipeline calls it once per version, with the model and the test split, and
registers what it returns with the rest of the version's files. Governance decides
what goes in them:

* ``explanations.json`` and ``plots/explanations.png``: TreeSHAP reason codes of the
  test split (:mod:`attune.governance.explain`);
* ``drift_reference.json``: the reference of ``attune monitor drift``, binned from the
  rows serving scores (every catalog option of a presentation at position 1; the
  logged rows' positions 1-3 would flag ``position`` as drifted on every request);
* with a protected table under the histories (``<histories>/protected``):
  ``fairness.json`` and ``plots/fairness.png`` from the test split scored as serving
  scores it (all at position 1: with the logged positions "ranked first" would mostly
  repeat the logging policy's slot for the option), the fairness gate's verdict in
  ``governance.json`` and ``model_card.md`` rendered from that record;
* without one: the basic ``model_card.md``, and the absent files with the reason.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from attune import storage

Scorer = Callable[[np.ndarray], np.ndarray]

#: Interval level of the served fairness report. The gate judges some thirty
#: comparisons (options x attributes) and refuses when one interval lies wholly past
#: its bound; at 95 % each, a ranking fair in truth (the oracle's, a random one) was
#: refused in 3 of 6 simulated histories by noise alone, at 99 % in none of them.
FAIRNESS_CI_LEVEL = 0.99
#: Bootstrap resamples behind those intervals (enough for stable 0.5 % tails).
FAIRNESS_BOOTSTRAP = 500


class HeldOutSplit(Protocol):
    """The test rows governance reads (one row per logged presentation of an option)."""

    @property
    def X(self) -> np.ndarray: ...
    @property
    def label(self) -> np.ndarray: ...
    @property
    def qid(self) -> np.ndarray: ...
    @property
    def option_id(self) -> np.ndarray: ...
    @property
    def borrower_id(self) -> np.ndarray: ...


def governance_files(
    *,
    booster: Any,
    test: HeldOutSplit,
    feature_names: Sequence[str],
    spec_hash: str,
    served_rows: np.ndarray,
    score: Scorer,
    histories: str,
    name: str,
    params: Mapping[str, Any],
    metrics: Mapping[str, Any],
    parity: Mapping[str, Any],
    lineage: Mapping[str, Any],
) -> tuple[dict[str, bytes], dict[str, str]]:
    """The governance files of a version, and the files left out with why.

    ``served_rows`` are the candidate rows of the test presentations as serving builds
    them; ``score`` scores feature rows with the model; ``params``, ``metrics``,
    ``parity`` and ``lineage`` are the version's other records (as written). Returns
    ``(files, skipped)``: file name -> bytes, and file name -> why it is absent.
    """
    from attune.governance import plots
    from attune.governance.drift import drift_reference
    from attune.governance.explain import explanation_summary
    from attune.governance.gates.fairness_gate import check_fairness
    from attune.governance.model_card import (
        governance_record,
        render_basic_card,
        render_model_card,
    )

    names = list(feature_names)
    explanations = explanation_summary(booster, test.X, names)
    drift = drift_reference(served_rows, names, spec_hash=spec_hash)
    files: dict[str, bytes] = {
        "explanations.json": storage.json_bytes(explanations),
        "drift_reference.json": storage.json_bytes(drift),
        "plots/explanations.png": plots.explanation_png(explanations),
    }
    fairness = serving_fairness(test=test, feature_names=names, score=score, histories=histories)
    if fairness is None:
        why = f"no protected table under {storage.join(histories, 'protected')}"
        card = render_basic_card(
            params=dict(params), metrics=dict(metrics), parity=dict(parity), lineage=dict(lineage)
        )
        files["model_card.md"] = card.encode()
        return files, {"fairness.json": why, "governance.json": why}
    record = governance_record(
        # The registry names a version by the hash of its files, this record among them,
        # so the record carries the experiment name; the registry maps it to the id.
        version=name,
        features=names,
        lineage=lineage,
        metrics=_headline(metrics),
        parity=parity,
        fairness=fairness,
        gate=check_fairness(fairness),
        drift_reference=drift,
        params=params["ranker"],
        explanations=explanations,
    )
    files.update(
        {
            "fairness.json": storage.json_bytes(fairness),
            "plots/fairness.png": plots.fairness_png(fairness),
            "governance.json": storage.json_bytes(record),
            "model_card.md": render_model_card(record).encode(),
        }
    )
    return files, {}


def _headline(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The flat figures a reviewer reads first (test metrics, policy values and shares)."""
    out: dict[str, Any] = {f"test {k}": v for k, v in metrics["test"].items()}
    for policy, value in metrics["policy_values"].items():
        out[f"policy value: {policy}"] = value
        out[f"share of oracle lift: {policy}"] = metrics["share_of_oracle_lift"][policy]
    out["validation ndcg@3"] = metrics["validation"]["ndcg@3"]
    return dict(storage.to_jsonable(out))


def serving_fairness(
    *, test: HeldOutSplit, feature_names: Sequence[str], score: Scorer, histories: str
) -> dict[str, Any] | None:
    """The fairness report of ``test`` scored as serving scores it (all at position 1).

    Its intervals are at :data:`FAIRNESS_CI_LEVEL`, the level the gate judges.

    ``None`` when the histories hold no protected table (``<histories>/protected``).
    """
    from attune.governance.fairness import fairness_report

    protected_uri = storage.join(histories, "protected")
    if not storage.list_uris(protected_uri):
        return None
    names = list(feature_names)
    at_serving = test.X.copy()
    if "position" in names:
        at_serving[:, names.index("position")] = 1.0
    return fairness_report(
        scores=score(at_serving),
        qid=test.qid,
        option_ids=test.option_id,
        labels=test.label,
        borrower_ids=test.borrower_id,
        protected=_read_parquet_dir(protected_uri),
        ci_level=FAIRNESS_CI_LEVEL,
        n_bootstrap=FAIRNESS_BOOTSTRAP,
    )


def _read_parquet_dir(uri: str) -> Any:
    import pyarrow.dataset as pads

    fs, path = storage.pyarrow_filesystem(uri)
    return pads.dataset(path, filesystem=fs, format="parquet").to_table().to_pandas()
