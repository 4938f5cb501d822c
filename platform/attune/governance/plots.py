"""PNG figures of the governance reports (matplotlib, Agg backend; returns PNG bytes).

Each function takes the JSON-ready dict its report function returns, so a figure can
be redrawn from a stored ``fairness.json`` / ``drift.json`` / ``explanations.json``.
Bytes rather than paths: callers write them with :mod:`attune.storage` (local or s3).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

_STATUS_COLOURS = {"ok": "#4c9a5b", "warn": "#e0a526", "alert": "#c8453b"}


def _figure(rows: int, cols: int, *, width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(width, height), squeeze=False)
    return fig, axes


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def _grouped_bars(ax: Any, summaries: dict[str, Any], title: str) -> None:
    """Bars per metric (x) and group (colour) with bootstrap intervals as error bars."""
    groups = sorted({g for s in summaries.values() for g in s["by_group"]})
    width = 0.8 / max(len(groups), 1)
    x = np.arange(len(summaries))
    for i, group in enumerate(groups):
        values, lower, upper = [], [], []
        for summary in summaries.values():
            entry = summary["by_group"].get(group) or {}
            value = entry.get("value")
            ci = entry.get("ci") or (None, None)
            v = np.nan if value is None else value
            values.append(v)
            lower.append(0.0 if ci[0] is None or value is None else max(v - ci[0], 0.0))
            upper.append(0.0 if ci[1] is None or value is None else max(ci[1] - v, 0.0))
        ax.bar(x + i * width, values, width, yerr=[lower, upper], capsize=2, label=group)
    ax.set_xticks(x + width * (len(groups) - 1) / 2)
    ax.set_xticklabels(list(summaries), rotation=30, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    if groups:
        ax.legend(fontsize=7)


def fairness_png(report: dict[str, Any]) -> bytes:
    """Per protected attribute (one row): exposure and equal opportunity by option, quality.

    The middle panel (equal opportunity: share ranked first where the borrower completed
    the option) is what the default gate judges; options no two groups can be compared
    on are left out of it. Reports written before it existed draw it empty.
    """
    attributes = report["attributes"]
    rows = max(len(attributes), 1)
    fig, axes = _figure(rows, 3, width=19, height=3.6 * rows)
    for row, (name, part) in enumerate(attributes.items()):
        exposure = {o: s for o, s in part["exposure"].items() if s["by_group"]}
        _grouped_bars(axes[row][0], exposure, f"{name}: share ranked first, by option")
        opportunity = {
            o: s for o, s in part.get("opportunity", {}).items() if len(s["by_group"]) > 1
        }
        _grouped_bars(
            axes[row][1],
            opportunity,
            f"{name}: equal opportunity (ranked first where completed, "
            f"n >= {report.get('min_eligible', '?')})",
        )
        _grouped_bars(axes[row][2], part["metrics"], f"{name}: ranking quality and outcomes")
        flagged = [
            v["metric"] for v in report["four_fifths"]["violations"] if v["attribute"] == name
        ]
        for col, kind in ((0, "exposure:"), (1, "opportunity:")):
            mine = [m.split(":", 1)[1] for m in flagged if m.startswith(kind)]
            if mine:
                axes[row][col].set_xlabel("below four-fifths: " + ", ".join(mine), color="#c8453b")
    verdict = "passed" if report["four_fifths"]["passed"] else "FLAGGED"
    fig.suptitle(
        f"Fairness by protected group (n={report['n_presentations']} presentations, "
        f"{report['ci_level']:.0%} bootstrap intervals; four-fifths {verdict})",
        fontsize=11,
    )
    return _png(fig)


def drift_png(report: dict[str, Any], *, title: str = "") -> bytes:
    """PSI per feature, largest first, coloured by status, with the two thresholds."""
    items = sorted(report["features"].items(), key=lambda kv: kv[1]["psi"])
    fig, axes = _figure(1, 1, width=8, height=max(3.0, 0.22 * len(items) + 1.2))
    ax = axes[0][0]
    y = np.arange(len(items))
    ax.barh(
        y,
        [v["psi"] for _, v in items],
        color=[_STATUS_COLOURS.get(v["status"], "grey") for _, v in items],
    )
    ax.set_yticks(y)
    ax.set_yticklabels([k for k, _ in items], fontsize=7)
    for key, style in (("warn", "--"), ("alert", "-")):
        ax.axvline(report["thresholds"][key], color="black", linestyle=style, linewidth=0.8)
    ax.set_xlabel("PSI (dashed: warn, solid: alert)")
    ax.set_title(
        f"{title or 'Feature drift'}: {report['n_rows']} served rows, status {report['status']}",
        fontsize=10,
    )
    return _png(fig)


def explanation_png(summary: dict[str, Any], *, top: int = 20) -> bytes:
    """Mean |TreeSHAP| per reason code and per feature (top ``top``)."""
    fig, axes = _figure(1, 2, width=12, height=max(3.0, 0.25 * top + 1.0))
    for ax, key, title in (
        (axes[0][0], "reasons", "by reason code"),
        (axes[0][1], "features", f"by feature (top {top})"),
    ):
        items = list(summary[key].items())[:top][::-1]
        ax.barh(np.arange(len(items)), [v for _, v in items], color="#4c72b0")
        ax.set_yticks(np.arange(len(items)))
        ax.set_yticklabels([k for k, _ in items], fontsize=7)
        ax.set_title(f"mean |contribution| {title}", fontsize=10)
    fig.suptitle(f"What drives the ranking ({summary['n_rows']} rows)", fontsize=11)
    return _png(fig)
