"""`gialab demo`: every implemented attack runs, then a small matrix; one page links them all and its report.

The smoke budgets keep this a plumbing test; each attack's quality has its own end-to-end test.
"""

from __future__ import annotations

import re
from pathlib import Path

from gialab.attacks import implemented


def test_demo_page_links_every_implemented_attack(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # a relative --out, as `make demo` uses
    result = cli("demo", "--quick", "--out", "demo")
    assert result.code == 0, result.err
    page = (tmp_path / "demo" / "index.html").read_text()
    for name in implemented():
        assert f">{name}</a>" in page
    links = re.findall(r'href="([^"]+)"', page)
    assert len(links) == len(implemented()) + 1  # each run's report and the matrix report
    for link in links:
        assert (tmp_path / "demo" / link).is_file()  # every link resolves from the page's folder
    assert "matrix/report.html" in links
    matrix = (tmp_path / "demo" / "matrix" / "report.html").read_text()
    assert '<table class="figure1">' in matrix and "needs capability observe_individual" in matrix  # a skipped pair
    assert "matrix report:" in result.out
    for report in (tmp_path / "demo" / "runs").glob("*/report.html"):
        assert "data:image/png;base64," in report.read_text()
