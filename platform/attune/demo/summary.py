"""The demo's summary: a table in the terminal and a self-contained HTML report."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def _flat(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)[:160]
    return str(value)


def print_summary(summary: Any, console: Console) -> None:
    """One table per section of ``summary.facts`` plus the time each step took."""
    for section, facts in summary.facts.items():
        table = Table(title=section, show_header=False, title_justify="left")
        table.add_column("what", style="bold")
        table.add_column("value")
        items = facts.items() if isinstance(facts, dict) else [("value", facts)]
        for key, value in items:
            table.add_row(str(key), _flat(value))
        console.print(table)
    steps = Table(title="steps", title_justify="left")
    steps.add_column("step")
    steps.add_column("seconds", justify="right")
    for name, seconds in summary.steps.items():
        steps.add_row(name, f"{seconds:.1f}")
    steps.add_row("[bold]total", f"[bold]{sum(summary.steps.values()):.1f}")
    console.print(steps)


def _section(title: str, facts: Any) -> str:
    rows = facts.items() if isinstance(facts, dict) else [("value", facts)]
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td><code>{html.escape(_flat(v))}</code></td></tr>"
        for k, v in rows
    )
    return f"<h2>{html.escape(title)}</h2><table>{body}</table>"


def write_html(summary: Any, path: Path) -> Path:
    """Write one HTML file with every fact and every plot embedded (no external files)."""
    figures = []
    for caption, png in summary.images.items():
        if Path(png).exists():
            data = base64.b64encode(Path(png).read_bytes()).decode()
            figures.append(
                f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    steps = {name: f"{s:.1f} s" for name, s in summary.steps.items()}
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>attune demo report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1rem; }}
th, td {{ text-align: left; padding: .2rem .8rem; border-bottom: 1px solid #ddd; }}
th {{ font-weight: 600; }}
figure {{ display: inline-block; margin: .5rem; max-width: 520px; vertical-align: top; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head><body>
<h1>attune demo report</h1>
<p>Store: <code>{html.escape(str(summary.workdir))}</code></p>
{"".join(_section(title, facts) for title, facts in summary.facts.items())}
{_section("steps", steps)}
<h2>plots</h2>
{"".join(figures)}
</body></html>
"""
    path.write_text(page)
    return path


def write_summary_json(summary: Any, path: Path) -> Path:
    """``summary.json``: every fact, step time and the learning loop's iterations."""
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "workdir": str(summary.workdir),
        "facts": summary.facts,
        "steps_s": summary.steps,
        "loop": summary.loop,
    }
    path.write_text(json.dumps(body, indent=2, default=str))
    return path
