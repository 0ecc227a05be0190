"""Self-contained HTML pages: one per run, and an index that links runs (the demo page)."""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}img{image-rendering:pixelated;max-width:100%}code,pre{background:#f6f6f6}
.muted{color:#777}
"""


def _embed_png(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _fmt(value: Any) -> str:
    if value is None:
        return '<span class="muted">unavailable</span>'
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _table(rows: Mapping[str, Any]) -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def write_run_report(folder: Path, summary: Mapping[str, Any], record: Mapping[str, Any], grid: Path) -> Path:
    """report.html: the grid (truth above, reconstruction below), metrics, taxonomy, config."""
    title = f"{summary['attack']} on {summary['scenario']}"
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(str(record.get('title', '')))}: {html.escape(str(record.get('paper', '')))}.
Threat model <b>{html.escape(summary['threat_model'])}</b>, reconstruction family
<b>{html.escape(str(record.get('family', '')))}</b>.</p>
<h2>Truth (top) and reconstruction (bottom)</h2><img alt="reconstruction grid" src="{_embed_png(grid)}">
<h2>Metrics</h2>{_table(summary['metrics'])}
<h2>Attack details</h2>{_table(summary.get('attack_details', {}))}
<h2>FL setup</h2>{_table(summary['fl_setup'])}
<h2>Resolved scenario</h2><pre>{html.escape(json.dumps(summary['config'], indent=2))}</pre>
<p class="muted">Runtime {summary['runtime_s']:.2f} s. Regenerate with
<code>gialab run {html.escape(str(summary['scenario']))} --set seed={summary['config']['seed']}</code>
(plus the overrides in the scenario above).</p>
</body></html>"""
    path = folder / "report.html"
    path.write_text(page)
    return path


def write_index(path: Path, title: str, runs: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Path:
    """One page linking each run's report, with its grid and headline metrics."""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ("attack", "threat model", *keys, "images"))
    rows = []
    for run in runs:
        run_dir = Path(run["run_dir"])
        link = html.escape(os.path.relpath(run_dir / "report.html", path.parent.resolve()))
        cells = "".join(f"<td>{_fmt(run['metrics'].get(k))}</td>" for k in keys)
        grid = run_dir / "grid.png"
        rows.append(
            f"<tr><td><a href=\"{link}\">{html.escape(run['attack'])}</a></td>"
            f"<td>{html.escape(run['threat_model'])}</td>{cells}"
            f"<td><img alt=\"grid\" src=\"{_embed_png(grid)}\" style=\"max-height:120px\"></td></tr>"
        )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>
<table><tr>{head}</tr>{''.join(rows)}</table></body></html>"""
    path.write_text(page)
    return path
