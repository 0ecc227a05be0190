"""`gialab demo`: every implemented attack runs and one page links them all.

The smoke budgets keep this a plumbing test; each attack's quality has its own end-to-end test.
"""

from __future__ import annotations

from pathlib import Path

from gialab.attacks import implemented


def test_demo_page_links_every_implemented_attack(cli, tmp_path: Path) -> None:
    result = cli("demo", "--quick", "--out", str(tmp_path / "demo"))
    assert result.code == 0, result.err
    page = (tmp_path / "demo" / "index.html").read_text()
    for name in implemented():
        assert f">{name}</a>" in page
    links = page.count("report.html")
    assert links == len(implemented())
    for report in (tmp_path / "demo" / "runs").glob("*/report.html"):
        assert "data:image/png;base64," in report.read_text()
