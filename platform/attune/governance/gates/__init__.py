"""The gates a model version passes, one module each, and their one verdict type.

* :mod:`~attune.governance.gates.decision` — :class:`GateDecision` (gate, passed,
  reasons, override with who and why) and :class:`GateOverride`, returned by every gate;
* :mod:`~attune.governance.gates.fairness_gate` — ``check_fairness``: a version's
  fairness report against :class:`FairnessGateConfig` bounds;
* :mod:`~attune.governance.gates.parity_gate` — ``check_parity_scores``: ONNX against
  native scores of an export;
* :mod:`~attune.governance.gates.ope_gate` — ``ope_gate``: a candidate's off-policy
  value against the champion's on the served log (``attune rollout canary``);
* :mod:`~attune.governance.gates.promotion` — ``check_promotion``: the gates a move of
  ``champion`` or ``canary`` runs (the registry calls it on every such move).

A new gate is a new module here returning a :class:`GateDecision`; when a promotion
needs it, :func:`~attune.governance.gates.promotion.check_promotion` runs it.
Nothing heavy is imported here.
"""
