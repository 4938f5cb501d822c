"""Responsible AI: fairness, the gates, reason codes, drift statistics, model cards.

Modules (import what you need; nothing heavy is imported here):

* :mod:`~attune.governance.fairness` — ``fairness_report``: exposure, NDCG and outcome
  rates by protected group with bootstrap intervals and the four-fifths flag;
* :mod:`~attune.governance.gates` — every gate (fairness, parity, off-policy), their
  one verdict type ``GateDecision``, and ``check_promotion``, run on alias moves;
* :mod:`~attune.governance.explain` — ``ReasonExplainer`` / ``reason_codes``: TreeSHAP
  reason codes through the catalog in ``reasons.yaml``;
* :mod:`~attune.governance.drift` — reference bins, PSI and Prometheus gauges (the
  monitor that runs them on served traffic is :mod:`attune.monitoring.drift_monitor`);
* :mod:`~attune.governance.model_card` — ``governance_record``, ``render_model_card``
  and ``render_basic_card``;
* :mod:`~attune.governance.version_files` — ``governance_files``: every governance
  file of a version, called once by training;
* :mod:`~attune.governance.plots` — the PNG figures of these reports.

See docs/governance.md.
"""
