"""Responsible AI: fairness, reason codes, drift monitoring, model cards.

Modules (import what you need; nothing heavy is imported here):

* :mod:`~attune.governance.fairness` — ``fairness_report``: exposure, NDCG and outcome
  rates by protected group with bootstrap intervals and the four-fifths flag;
* :mod:`~attune.governance.gate` — ``check_promotion``: the fairness gate of alias moves;
* :mod:`~attune.governance.explain` — ``ReasonExplainer`` / ``reason_codes``: TreeSHAP
  reason codes through the catalog in ``reasons.yaml``;
* :mod:`~attune.governance.drift` and :mod:`~attune.governance.monitor` — reference bins,
  PSI, Prometheus gauges and ``attune monitor drift``;
* :mod:`~attune.governance.modelcard` — ``governance_record`` and ``render_model_card``;
* :mod:`~attune.governance.plots` — the PNG figures of these reports.

See docs/governance.md.
"""
