"""The sweep report: the survey's Figure 1 with each paper's claim beside what gialab measured.

``report.html`` in a sweep folder is one self-contained page (every image a PNG data URI, no
script, no network resource) with:

* the survey's Figure 1 (Shi et al., section 3), one row per paper and gialab attack and batch
  size: the figure's seven cells as the paper claims them (``gialab.attacks.claims``), the gialab
  measurement under each defense column of the sweep (median fraction recovered and PSNR, or
  token accuracy, with a broken / held verdict by the rule stated on the page), and whether the
  measurement agrees with the paper's "defense broken" cell;
* the same measurements for the honest-but-curious (and any other) attacks, beside their taxonomy
  records;
* every skipped or stopped cell with its reason (an incompatible attack x defense pair is a row
  here, never a crash);
* plots: recovery against batch size per attack, quality against DP noise, and the
  privacy-utility curves (when the sweep measured utility, ``--utility-rounds``);
* example reconstructions: one run per attack and defense column.

:func:`figure1_markdown` renders the Figure 1 table as GitHub markdown for papers and READMEs.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gialab.attacks.claims import CLAIM_OF, FIGURE1, VERDICT_RULE, PaperClaim, claims_to_break, is_broken
from gialab.attacks.registry import implemented
from gialab.attacks.taxonomy import RECORDS
from gialab.matrix.cells import Cell, DefenseColumn
from gialab.matrix.plots import privacy_utility, quality_vs_noise, recovery_vs_batch
from gialab.matrix.table import CellRecord, MatrixEntry, collect, entries, stored_records
from gialab.matrix.sweep import MatrixResult
from gialab.matrix.utility import UtilitySpec, measure_utility, utility_by_column
from gialab.report.database import database_path
from gialab.report.html import STYLE, embed_png, text_table

REPORT = "report.html"
EXTRA_STYLE = """
.claim{font-size:80%;color:#333;max-width:14em}.broken{background:#f8d0d0}.held{background:#d4f0d4}
.skip{background:#eee;color:#555}td.m{min-width:9em}.agree{color:#080}.disagree{color:#b00;font-weight:bold}
body{max-width:none}
"""


@dataclass(frozen=True)
class Measurement:
    """One attack x batch size x defense column, as the report shows it."""

    figure: str  # "0.75 / 34.2 dB", "tok 0.93", or "" without a result
    verdict: str  # broken, held, n/a (no metric), skipped, stopped, not run
    reason: str | None = None
    partial: str = ""  # "(k/n seeds)" when some seeds have no result


def measure(entry: MatrixEntry | None) -> Measurement:
    """The entry's medians and its verdict by the rule of ``gialab.attacks.claims``."""
    if entry is None:
        return Measurement("", "not run")
    if not entry.runs:
        if entry.reasons:
            status, reason = entry.reasons[0]
            return Measurement("", status, reason)
        return Measurement("", "not run")
    fraction, psnr, tokens = (entry.median(k) for k in ("fraction_recovered", "psnr_mean", "token_accuracy"))
    if entry.text:
        figure = f"tok {_num(tokens, 2)}"
    else:
        figure = f"{_num(fraction, 2)} / {_num(psnr, 1)} dB"
    broken = is_broken(fraction, tokens, text=entry.text)
    verdict = "n/a" if broken is None else ("broken" if broken else "held")
    partial = f"({len(entry.runs)}/{entry.seeds} seeds)" if len(entry.runs) < entry.seeds else ""
    reason = entry.reasons[0][1] if entry.reasons else None
    return Measurement(figure, verdict, reason, partial)


def _num(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


@dataclass(frozen=True)
class Row:
    """One attack at one batch size, with its measurement under every defense column."""

    attack: str
    batch_size: int | None  # None: the attack has no cell in this sweep
    measurements: dict[str, Measurement]  # column label -> measurement
    note: str = ""  # why a row has no measurement


@dataclass(frozen=True)
class SweepReport:
    """Everything the page shows, computed once for HTML and markdown alike."""

    columns: dict[str, DefenseColumn]
    matrix: list[MatrixEntry]
    figure1: list[tuple[PaperClaim, list[Row]]]
    others: list[Row]
    skipped: list[dict[str, Any]]
    records: list[CellRecord]
    utility: dict[str, dict[str, Any]]  # column label -> stored utility row

    def claim_check(self, claim: PaperClaim, row: Row) -> str:
        """The paper's "defense broken" cell against gialab's verdicts under the matching columns."""
        if not claim.claimed_defenses:
            return f"paper claims none broken ({claim.defense_broken})"
        parts = []
        for label, column in self.columns.items():
            names = tuple(d if isinstance(d, str) else d["name"] for d in column.defenses)
            if not claims_to_break(claim, names) or label not in row.measurements:
                continue
            verdict = row.measurements[label].verdict
            agreement = {"broken": "agrees", "held": "disagrees"}.get(verdict, "not measured")
            parts.append(f"{label}: gialab {verdict} ({agreement})")
        return "; ".join(parts) or f"claimed ({claim.defense_broken}) not in this sweep's defense columns"


def build_report(records: Sequence[CellRecord], utility: Mapping[str, dict[str, Any]] | None = None) -> SweepReport:
    """Group the sweep's cells for the page: Figure 1 papers first, then every other attack swept."""
    columns = {r.cell.column.label: r.cell.column for r in records}
    matrix = entries(records)
    by_attack: dict[str, dict[int, dict[str, MatrixEntry]]] = {}
    for e in matrix:
        by_attack.setdefault(e.attack, {}).setdefault(e.batch_size, {})[e.column] = e
    built = implemented()

    def rows_for(attack: str) -> list[Row]:
        if attack not in by_attack:
            note = "not in this sweep" if attack in built else "not implemented in gialab yet"
            return [Row(attack, None, {}, note)]
        return [Row(attack, batch, {label: measure(cells.get(label)) for label in columns})
                for batch, cells in sorted(by_attack[attack].items())]

    figure1 = [(claim, [row for attack in claim.attacks for row in rows_for(attack)]) for claim in FIGURE1]
    others = [row for attack in by_attack if attack not in CLAIM_OF for row in rows_for(attack)]
    skipped: dict[tuple[str, int, str, str, str], list[int]] = {}
    for r in records:
        if r.status in ("skipped", "stopped"):
            c = r.cell
            skipped.setdefault((c.attack, c.batch_size, c.column.label, r.status, r.reason or ""), []).append(c.seed)
    skip_rows = [{"attack": a, "batch_size": b, "column": col, "status": s, "reason": why, "seeds": sorted(seeds)}
                 for (a, b, col, s, why), seeds in skipped.items()]
    return SweepReport(columns, matrix, figure1, others, skip_rows, list(records), dict(utility or {}))


# ---------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape(str(value))


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _measurement_cell(m: Measurement) -> str:
    css = {"broken": "broken", "held": "held"}.get(m.verdict, "skip")
    body = f"{_e(m.figure)}<br><b>{_e(m.verdict)}</b>" if m.figure else f"<b>{_e(m.verdict)}</b>"
    if m.partial:
        body += f" <span class='muted'>{_e(m.partial)}</span>"
    if m.reason:
        body += f"<br><span class='claim'>{_e(m.reason)}</span>"
    return f'<td class="m {css}">{body}</td>'


def _figure1_html(report: SweepReport) -> str:
    labels = list(report.columns)
    fields = list(FIGURE1[0].fields())
    head = ("<tr><th>paper</th><th>gialab attack</th>"
            + "".join(f"<th>{_e(f)} (paper)</th>" for f in fields)
            + "<th>batch</th>" + "".join(f"<th>gialab: {_e(label)}</th>" for label in labels)
            + "<th>claim vs gialab</th></tr>")
    body = []
    for claim, rows in report.figure1:
        for i, row in enumerate(rows):
            cells = []
            if i == 0:
                span = f' rowspan="{len(rows)}"'
                cells.append(f"<td{span}><b>{_e(claim.paper)}</b></td>")
            record = RECORDS.get(row.attack)
            title = f"<br><span class='claim'>{_e(record.title)}</span>" if record else ""
            cells.append(f"<td>{_e(row.attack)}{title}</td>")
            if i == 0:
                cells += [f'<td class="claim"{span}>{_e(v)}</td>' for v in claim.fields().values()]
            if row.batch_size is None:
                cells.append(f'<td colspan="{len(labels) + 2}" class="skip">{_e(row.note)}</td>')
            else:
                cells.append(f"<td>{row.batch_size}</td>")
                cells += [_measurement_cell(row.measurements[label]) for label in labels]
                cells.append(f'<td class="claim">{_claim_html(report.claim_check(claim, row))}</td>')
            body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="figure1">{head}{"".join(body)}</table>'


def _claim_html(text: str) -> str:
    escaped = _e(text)
    return (escaped.replace("(agrees)", "<span class='agree'>(agrees)</span>")
            .replace("(disagrees)", "<span class='disagree'>(disagrees)</span>"))


def _others_html(report: SweepReport) -> str:
    if not report.others:
        return "<p class='muted'>No other attack in this sweep.</p>"
    labels = list(report.columns)
    head = ("<tr><th>attack</th><th>paper</th><th>threat model</th><th>family</th><th>FL setup</th>"
            "<th>target data</th><th>architecture</th><th>defense broken (survey)</th><th>batch</th>"
            + "".join(f"<th>gialab: {_e(label)}</th>" for label in labels) + "</tr>")
    body = []
    for row in report.others:
        r = RECORDS[row.attack]
        info = [r.paper, r.threat_model, r.family, ", ".join(r.fl_setups), r.target_data, r.architecture,
                r.defense_broken]
        body.append(f"<tr><td>{_e(row.attack)}<br><span class='claim'>{_e(r.title)}</span></td>"
                    + "".join(f'<td class="claim">{_e(v)}</td>' for v in info) + f"<td>{row.batch_size}</td>"
                    + "".join(_measurement_cell(row.measurements[label]) for label in labels) + "</tr>")
    return f"<table>{head}{''.join(body)}</table>"


def _skipped_html(report: SweepReport) -> str:
    if not report.skipped:
        return "<p class='muted'>Every cell ran.</p>"
    rows = "".join(
        f"<tr><td>{_e(s['attack'])}</td><td>{s['batch_size']}</td><td>{_e(s['column'])}</td>"
        f"<td>{', '.join(map(str, s['seeds']))}</td><td>{_e(s['status'])}</td><td>{_e(s['reason'])}</td></tr>"
        for s in report.skipped)
    return (f'<table class="skipped"><tr><th>attack</th><th>batch</th><th>defenses</th><th>seeds</th><th>status</th>'
            f"<th>reason</th></tr>{rows}</table>"
            "<p class='muted'>skipped: refused before any work (the scenario alone shows the pair cannot run); "
            "stopped: the run ended early with this reason.</p>")


def _plot_html(title: str, png: bytes | None, missing: str, note: str = "") -> str:
    if png is None:
        return f"<h3>{_e(title)}</h3><p class='muted'>{_e(missing)}</p>"
    return f'<h3>{_e(title)}</h3>{note}<img alt="{_e(title)}" src="{_data_uri(png)}">'


def _examples_html(report: SweepReport) -> str:
    """One run per attack and defense column: the smallest batch size, the lowest seed."""
    chosen: dict[tuple[str, str], CellRecord] = {}
    for r in sorted((r for r in report.records if r.row is not None),
                    key=lambda r: (r.cell.attack, r.cell.batch_size, r.cell.seed)):
        chosen.setdefault((r.cell.attack, r.cell.column.label), r)
    if not chosen:
        return "<p class='muted'>No run finished yet.</p>"
    parts = []
    for attack in dict.fromkeys(a for a, _ in chosen):
        parts.append(f"<h3>{_e(attack)}</h3>")
        for (a, label), r in chosen.items():
            if a != attack:
                continue
            run_dir = Path(r.row["run_dir"])  # type: ignore[index]
            caption = f"{label}, batch {r.cell.batch_size}, seed {r.cell.seed}: {measure_row(r.row)}"
            grid, metrics = run_dir / "grid.png", run_dir / "metrics.json"
            if grid.is_file():
                shown = f'<img alt="reconstruction {_e(attack)} {_e(label)}" src="{embed_png(grid)}">'
            elif metrics.is_file() and json.loads(metrics.read_text()).get("per_sample"):
                samples = json.loads(metrics.read_text())["per_sample"][:4]
                shown = text_table(samples) if "wrong" in samples[0] else ""
            else:
                shown = "<span class='muted'>run folder not found</span>"
            parts.append(f"<p><b>{_e(caption)}</b></p>{shown}")
    return ("<p class='muted'>Images: truth (top) above the reconstruction matched to it (bottom). "
            "Text: true and recovered sequences.</p>" + "".join(parts))


def measure_row(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return "no result"
    m = row["metrics"]
    if m.get("token_accuracy") is not None:
        return f"token accuracy {m['token_accuracy']:.2f}"
    psnr = m.get("psnr_mean")
    return f"fraction recovered {_num(m.get('fraction_recovered'), 2)}, PSNR {_num(psnr, 1)} dB"


def _counts(report: SweepReport) -> str:
    statuses = [r.status for r in report.records]
    return ", ".join(f"{statuses.count(s)} {s}" for s in ("done", "skipped", "stopped", "missing")
                     if statuses.count(s)) or "no cells"


def render_html(report: SweepReport, title: str, command: str = "") -> str:
    accuracy = {label: row["accuracy"] for label, row in report.utility.items() if row.get("accuracy") is not None}
    utility_note = ""
    if report.utility:
        first = next(iter(report.utility.values()))
        refused = [f"{label}: {row['reason']}" for label, row in report.utility.items() if row.get("reason")]
        utility_note = (f"<p class='muted'>Utility: held-out accuracy of a reference training under each defense "
                        f"column ({_e(first['description'])}). "
                        + "".join(f"<br>{_e(r)}" for r in refused) + "</p>")
    plots = "".join((
        _plot_html("Fraction recovered vs batch size", recovery_vs_batch(report.matrix),
                   "No finished cell to plot."),
        _plot_html("Reconstruction quality vs DP noise", quality_vs_noise(report.matrix, report.columns),
                   "No DP column in this sweep: add e.g. --defenses "
                   "\"none,[{name: dp_local, noise_multiplier: 0.01}],[{name: dp_local, noise_multiplier: 0.1}]\"."),
        _plot_html("Privacy-utility", privacy_utility(report.matrix, accuracy),
                   "Utility not measured in this sweep: run gialab matrix with --utility-rounds N.", utility_note),
    ))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title>
<style>{STYLE}{EXTRA_STYLE}</style></head><body>
<h1>{_e(title)}</h1>
<p>Cells: {_e(_counts(report))}. Each measurement is the median over the cell's seeds: fraction of the batch
recovered / mean PSNR for image attacks, token accuracy (tok) for text attacks. {VERDICT_RULE}</p>
{f"<p>Regenerate: <code>{_e(command)}</code></p>" if command else ""}
<h2>The survey's Figure 1: the papers' claims and gialab's measurements</h2>
<p class="muted">Left: Figure 1 of the survey (Shi et al., "Dealing Doubt", section 3) as it states each paper's
setting. Right: what gialab measured under each defense column of this sweep, on its own embedded data and models,
and whether that agrees with the paper's "defense broken" cell.</p>
{_figure1_html(report)}
<h2>Honest-but-curious and other attacks</h2>
{_others_html(report)}
<h2>Skipped and stopped cells</h2>
{_skipped_html(report)}
<h2>Plots</h2>
{plots}
<h2>Example reconstructions</h2>
{_examples_html(report)}
</body></html>"""
    return page


def write_report(folder: Path, records: Sequence[CellRecord], *, utility: Mapping[str, dict[str, Any]] | None = None,
                 command: str = "") -> Path:
    """Write ``report.html`` into the sweep folder (atomically: a reader never sees half a page)."""
    report = build_report(records, utility)
    path = Path(folder) / REPORT
    partial = path.with_name(f".{REPORT}.partial")
    partial.write_text(render_html(report, f"gialab matrix report: {Path(folder).resolve().name}", command))
    partial.replace(path)
    return path


def finish_report(result: MatrixResult, utility_rounds: int = 0, *, command: str = "",
                  utility: UtilitySpec | None = None) -> Path:
    """After a sweep: measure the columns' utility when asked (``utility_rounds`` > 0), then write the report."""
    records, _ = sweep_records(result.out, result.cells)
    columns = list({c.column.label: c.column for c in result.cells}.values())
    if utility_rounds > 0:
        measure_utility(utility or UtilitySpec(rounds=utility_rounds), columns, database_path(result.out))
    return write_report(result.out, records, utility=utility_by_column(database_path(result.out), columns),
                        command=command)


def sweep_records(folder: Path, cells: Sequence[Cell] | None = None) -> tuple[list[CellRecord], dict[str, Any]]:
    """The cells to report and their columns' stored utility: ``cells`` as stored, or every stored cell."""
    db = database_path(Path(folder))
    records = collect(cells, db) if cells is not None else stored_records(db)
    columns = list({r.cell.column.label: r.cell.column for r in records}.values())
    return records, utility_by_column(db, columns) if db.exists() else {}


# ---------------------------------------------------------------- markdown


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def figure1_markdown(report: SweepReport) -> str:
    """The Figure 1 table as GitHub markdown: the paper's seven cells, then gialab's verdict per defense."""
    labels = list(report.columns)
    fields = list(FIGURE1[0].fields())
    header = ["paper", "gialab attack", *fields, "batch", *(f"gialab: {label}" for label in labels), "claim vs gialab"]
    lines = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
    for claim, rows in report.figure1:
        for row in rows:
            if row.batch_size is None:
                measured = [row.note, *([""] * len(labels)), ""]
            else:
                measured = [str(row.batch_size), *(_md_measurement(row.measurements[label]) for label in labels),
                            report.claim_check(claim, row)]
            lines.append("| " + " | ".join(map(_md_cell, [claim.paper, row.attack, *claim.fields().values(),
                                                            *measured])) + " |")
    if report.others:
        lines += ["", "Other attacks (honest-but-curious and others):", ""]
        header = ["attack", "threat model", "batch", *(f"gialab: {label}" for label in labels)]
        lines += ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
        for row in report.others:
            lines.append("| " + " | ".join(map(_md_cell, [
                row.attack, RECORDS[row.attack].threat_model, str(row.batch_size),
                *(_md_measurement(row.measurements[label]) for label in labels)])) + " |")
    rule = VERDICT_RULE.replace("<b>", "**").replace("</b>", "**")
    lines += ["", "Measurements: median over seeds, fraction recovered / PSNR (images) or token accuracy (text). "
              + rule]
    if report.skipped:
        lines += ["", "Skipped or stopped cells:", ""]
        lines += [f"- {s['attack']} b{s['batch_size']} {s['column']} ({s['status']}): {s['reason']}"
                  for s in report.skipped]
    return "\n".join(lines) + "\n"


def _md_measurement(m: Measurement) -> str:
    if not m.figure:
        return m.verdict
    return f"{m.figure} **{m.verdict}**" + (f" {m.partial}" if m.partial else "")
