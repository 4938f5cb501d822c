"""Monitoring of served models, above the registry and governance: drift, and later monitors.

* :mod:`~attune.monitoring.drift_monitor` — ``run_drift_monitor``: a version's served
  traffic against its training reference (read through :class:`attune.registry.Registry`);
* :mod:`~attune.monitoring.commands` — ``attune monitor drift``.

Monitors read versions through the registry, with its checks, and the served logs
through :mod:`attune.storage`; the statistics are governance's
(:mod:`attune.governance.drift`). See docs/governance.md.
"""
