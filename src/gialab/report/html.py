"""Self-contained HTML pages: one per run, and an index that links runs (the demo page)."""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
th{background:#f3f3f3}img{image-rendering:pixelated;max-width:100%}code,pre{background:#f6f6f6}
.muted{color:#777}
.text td{font-family:ui-monospace,monospace;font-size:90%;vertical-align:top}
.wrong{background:#fbd0d0;text-decoration:underline wavy #c00}
"""


def embed_png(path: Path) -> str:
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


def _audit(summary: Mapping[str, Any]) -> str:
    """The model audit's refusals (client-side ``model_audit``), one row per refused model."""
    audit = summary.get("audit")
    if audit is None:
        return ""
    verdict = "refused every model it was sent" if audit["victim_refused"] else "trained on a model it accepted"
    rows = "".join(f"<tr><td>{r['round']}</td><td>{r['client']}</td><td>{html.escape(r['reasons'])}</td></tr>"
                   for r in audit["refusals"])
    table = (f"<table><tr><th>round</th><th>client</th><th>reasons</th></tr>{rows}</table>" if rows
             else "<p>No client refused a model.</p>")
    return f"<h2>Model audit</h2><p>The victim {verdict}.</p>{table}"


def _tokens(pieces: Sequence[str], wrong: Sequence[bool]) -> str:
    return " ".join(f'<span class="wrong">{html.escape(p)}</span>' if bad else html.escape(p)
                    for p, bad in zip(pieces, wrong, strict=True))


def _token_map(samples: Sequence[Mapping[str, Any]], scale: int = 6) -> str:
    """A PNG (as a data URI) with one row per true sequence: green tokens recovered, red wrong."""
    wrong = np.array([s["wrong"] for s in samples], dtype=bool)
    colours = np.where(wrong[..., None], (214, 39, 40), (44, 160, 44)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(colours.repeat(scale, 0).repeat(scale, 1)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def text_table(samples: Sequence[Mapping[str, Any]]) -> str:
    """True and recovered sequences side by side (WordPiece tokens); wrong recovered tokens marked."""
    rows = "".join(
        f"<tr><td>{s['truth_index']}</td><td>{_fmt(s['token_accuracy'])}</td>"
        f"<td>{html.escape(' '.join(s['true_tokens']))}</td>"
        f"<td>{_tokens(s['recovered_tokens'], s['wrong']) if s['recovered_tokens'] else '(unmatched)'}</td></tr>"
        for s in samples
    )
    return (f'<img alt="token map" src="{_token_map(samples)}"> <span class="muted">one row per sequence: '
            'green = token recovered at its place, red = wrong</span>'
            '<table class="text"><tr><th>#</th><th>token accuracy</th><th>true tokens</th>'
            f'<th>recovered tokens (<span class="wrong">wrong</span>)</th></tr>{rows}</table>')


def write_run_report(
    folder: Path, summary: Mapping[str, Any], record: Mapping[str, Any], grid: Path | None,
    text_samples: Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """report.html: the grid (truth above, reconstruction below), or for text runs (``text_samples``,
    per-sample text scores) the true and recovered sequences side by side; metrics, taxonomy, config."""
    title = f"{summary['attack']} on {summary['scenario']}"
    if text_samples is not None:
        shown = "<h2>True and recovered text</h2>" + text_table(text_samples)
    elif grid is not None:
        shown = f'<h2>Truth (top) and reconstruction (bottom)</h2><img alt="reconstruction grid" src="{embed_png(grid)}">'
    else:
        raise ValueError("write_run_report needs an image grid or text samples")

    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(str(record.get('title', '')))}: {html.escape(str(record.get('paper', '')))}.
Threat model <b>{html.escape(summary['threat_model'])}</b>, reconstruction family
<b>{html.escape(str(record.get('family', '')))}</b>.</p>
{shown}
<h2>Metrics</h2>{_table(summary['metrics'])}
{_audit(summary)}
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


def write_index(path: Path, title: str, runs: Sequence[Mapping[str, Any]], keys: Sequence[str],
                links: Mapping[str, Path] | None = None) -> Path:
    """One page linking each run's report, with its grid and headline metrics; ``links``: more pages, by caption."""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ("attack", "threat model", *keys, "images"))
    rows = []
    for run in runs:
        run_dir = Path(run["run_dir"])
        link = html.escape(os.path.relpath(run_dir / "report.html", path.parent.resolve()))
        cells = "".join(f"<td>{_fmt(run['metrics'].get(k))}</td>" for k in keys)
        grid = run_dir / "grid.png"
        shown = (f"<img alt=\"grid\" src=\"{embed_png(grid)}\" style=\"max-height:120px\">" if grid.exists()
                 else f"text run: token accuracy {_fmt(run['metrics'].get('token_accuracy'))}")
        rows.append(
            f"<tr><td><a href=\"{link}\">{html.escape(run['attack'])}</a></td>"
            f"<td>{html.escape(run['threat_model'])}</td>{cells}<td>{shown}</td></tr>"
        )
    more = "".join(
        f'<p><a href="{html.escape(os.path.relpath(target.resolve(), path.parent.resolve()))}">'
        f"{html.escape(caption)}</a></p>" for caption, target in (links or {}).items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>
{more}<table><tr>{head}</tr>{''.join(rows)}</table></body></html>"""
    path.write_text(page)
    return path
