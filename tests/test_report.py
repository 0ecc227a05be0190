"""The sweep report: Figure 1 claims beside measurements, skipped pairs with reasons, markdown, and a real browser.

The report is built from a tiny real sweep (fc-leakage and trap-weights at their smoke budgets, two
batch sizes, no defense / secure aggregation / local DP, one seed, a one-round utility training),
so every section has something to show: fc-leakage behind secure aggregation is the incompatible
pair. Headless Chromium (Debian's ``chromium``; ``.ci/run`` installs it) opens the page and
reports every image that did not decode; the check is itself tested on a page with a broken image.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gialab.attacks.claims import FIGURE1, is_broken
from gialab.attacks.taxonomy import RECORDS
from gialab.matrix import SweepSpec, parse_defense_columns, run_matrix
from gialab.matrix.report import REPORT, build_report, figure1_markdown, finish_report, sweep_records
from gialab.matrix.utility import UtilitySpec

DP = "[{name: dp_local, noise_multiplier: 0.1}]"
SPEC = SweepSpec(attacks=("fc-leakage", "trap-weights"),
                 defenses=parse_defense_columns([f"none,secure_aggregation,{DP}"]), batch_sizes=(2, 4), seeds=1,
                 profile="quick", overrides={"clients": 2})
SA_REASON = "needs capability observe_individual"

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; .ci/run installs it)")

# Appended to a copy of the page: after the load event (every image decoded or failed), write what
# loaded into the DOM, which --dump-dom prints.
PROBE = """<script>window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 40));
  document.body.setAttribute('data-images', String(images.length));
  document.body.setAttribute('data-broken', JSON.stringify(broken));
  document.body.setAttribute('data-tables', String(document.querySelectorAll('table.figure1 tr').length));
});</script>"""


def browse(page: Path, tmp: Path) -> dict[str, object]:
    """Open ``page`` in headless Chromium, no network, and say how many images it has and which failed."""
    probe = tmp / f"probe-{page.name}"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu",
         "--disable-extensions", "--no-first-run", f"--user-data-dir={tmp / 'chromium-profile'}",
         "--virtual-time-budget=10000", "--dump-dom", probe.resolve().as_uri()],
        capture_output=True, text=True, timeout=60, check=False)
    body = re.search(r"<body([^>]*)>", done.stdout)
    assert body, f"chromium printed no page (exit {done.returncode}): {done.stderr[-2000:]}"
    attrs = dict(re.findall(r'(data-[a-z]+)="([^"]*)"', body.group(1)))
    assert "data-images" in attrs, "the probe did not run: the page never finished loading"
    return {"images": int(attrs["data-images"]), "broken": json.loads(html.unescape(attrs["data-broken"])),
            "figure1_rows": int(attrs["data-tables"])}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "sweep"
    result = run_matrix(SPEC, out)
    assert not result.failures
    finish_report(result, 1, command="gialab matrix ...", utility=UtilitySpec(rounds=1, clients=4))
    return out


def test_verdict_rule() -> None:
    assert is_broken(0.25, None, text=False) is True
    assert is_broken(0.0, None, text=False) is False
    assert is_broken(None, 0.5, text=True) is True and is_broken(None, 0.49, text=True) is False
    assert is_broken(None, None, text=False) is None


def test_claims_cover_figure1_and_name_known_attacks() -> None:
    assert len(FIGURE1) == 8  # the figure's eight columns
    for claim in FIGURE1:
        assert all(claim.fields().values()), claim.paper
        for attack in claim.attacks:
            assert RECORDS[attack].figure1, attack  # every Figure 1 attack is a taxonomy record marked as such
    assert {r.name for r in RECORDS.values() if r.figure1} <= {a for c in FIGURE1 for a in c.attacks}


def test_report_structure(sweep: Path) -> None:
    page = (sweep / REPORT).read_text()
    assert "http://" not in page and "https://" not in page  # self-contained: nothing fetched
    assert "<script" not in page
    figure1 = re.search(r'<table class="figure1">(.*?)</table>', page, re.S)
    assert figure1, "no Figure 1 table"
    header = figure1.group(1).split("</tr>")[0]
    for column in ("threat model (paper)", "reconstruction method (paper)", "target data (paper)",
                   "architecture (paper)", "FL setup (paper)", "input (paper)", "defense broken (paper)",
                   "gialab: none", "gialab: secure_aggregation", "gialab: dp_local(noise_multiplier=0.1)",
                   "claim vs gialab"):
        assert f"<th>{html.escape(column)}</th>" in header, column
    for claim in FIGURE1:
        assert html.escape(claim.paper) in figure1.group(1)
        assert html.escape(claim.reconstruction_method) in figure1.group(1)
    rows = re.findall(r"<tr>(.*?)</tr>", figure1.group(1), re.S)
    trap = [r for r in rows if ">trap-weights<" in r]
    assert len(trap) == 2  # one row per batch size swept
    for row in trap:
        assert re.search(r"\d\.\d\d / [\d.]+ dB<br><b>(broken|held)</b>", row), row  # measurement and verdict
        assert "paper claims none broken" in row  # Boenisch et al. 2023b tested no defense
    assert ">disaggregation<" in figure1.group(1) and "not in this sweep" in figure1.group(1)  # built, not swept here
    # the honest-but-curious attack, with the incompatible pair shown as skipped with its reason
    others = page.split("Honest-but-curious and other attacks")[1].split("<h2>")[0]
    assert ">fc-leakage<" in others and "<b>broken</b>" in others and SA_REASON in others
    skipped = re.search(r'<table class="skipped">(.*?)</table>', page, re.S)
    assert skipped
    skip_rows = [r for r in re.findall(r"<tr>(.*?)</tr>", skipped.group(1), re.S) if "fc-leakage" in r]
    assert len(skip_rows) == 2 and all("secure_aggregation" in r and SA_REASON in r for r in skip_rows)
    for title in ("Fraction recovered vs batch size", "Reconstruction quality vs DP noise", "Privacy-utility"):
        assert f'alt="{title}" src="data:image/png;base64,' in page, title
    assert page.count('alt="reconstruction ') >= 4  # example grids: each attack under each column that ran


def test_undefended_fc_leakage_is_broken_and_dp_holds(sweep: Path) -> None:
    """The verdicts follow the measurements: exact recovery without defense, none at sigma 0.1."""
    records, utility = sweep_records(sweep)
    report = build_report(records, utility)
    fc = [row for row in report.others if row.attack == "fc-leakage"]
    assert [row.batch_size for row in fc] == [2, 4]
    for row in fc:
        assert row.measurements["none"].verdict == "broken"
        assert row.measurements["secure_aggregation"].verdict == "skipped"
        assert SA_REASON in (row.measurements["secure_aggregation"].reason or "")
        assert row.measurements["dp_local(noise_multiplier=0.1)"].verdict == "held"
    assert set(utility) == {"none", "secure_aggregation", "dp_local(noise_multiplier=0.1)"}
    assert all(0.0 <= u["accuracy"] <= 1.0 for u in utility.values())


def test_markdown_format(cli, sweep: Path) -> None:
    result = cli("report", str(sweep), "--format", "md")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("| paper | gialab attack | threat model | reconstruction method |")
    # columns as stored: none first, then by name
    assert lines[0].endswith("| batch | gialab: none | gialab: dp_local(noise_multiplier=0.1) | "
                             "gialab: secure_aggregation | claim vs gialab |")
    width = lines[0].count(" | ")
    table = [line for line in lines[2:] if line.startswith("| ")]
    assert all(line.count(" | ") - line.count("\\|") >= width for line in table[:9])
    assert any(line.startswith("| Boenisch et al., 2023b | trap-weights |") and "**" in line for line in lines)
    assert any(line.startswith("| fc-leakage | honest-but-curious-server | 2 |") for line in lines)
    assert any(line.startswith("- fc-leakage b2 secure_aggregation (skipped):") and SA_REASON in line
               for line in lines)
    assert result.out == figure1_markdown(build_report(*sweep_records(sweep)))


def test_report_command_refuses_a_folder_without_a_sweep(cli, tmp_path: Path) -> None:
    result = cli("report", str(tmp_path))
    assert result.code == 2 and "holds no results.sqlite" in result.err


@needs_chromium
def test_every_image_loads_in_chromium(sweep: Path, tmp_path: Path) -> None:
    seen = browse(sweep / REPORT, tmp_path)
    assert seen["broken"] == []
    assert seen["images"] >= 7  # three plots and the example grids
    assert seen["figure1_rows"] >= 1 + len(FIGURE1)


@needs_chromium
def test_chromium_check_catches_a_broken_image(sweep: Path, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text((sweep / REPORT).read_text().replace(
        "</h1>", '</h1><img alt="deliberately broken" src="data:image/png;base64,iVBORw0KGgoAAAAA">', 1))
    assert browse(page, tmp_path)["broken"] == ["deliberately broken"]
