"""``gialab demo``: every implemented attack, on embedded data, linked from one page.

Each attack runs its own preset (presets are named after attacks), so the demo shows exactly
what ``gialab run <attack>`` does.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gialab.attacks.registry import implemented
from gialab.report import ensure_writable, write_index
from gialab.runner import RunResult, run
from gialab.scenario import preset_names

HEADLINE = ("psnr_mean", "ssim_mean", "fraction_recovered", "label_accuracy")


def run_demo(out: Path, *, seed: int = 0, quick: bool = False, on_run: Callable[[str], object] | None = None,
             progress_for: Callable[[str], object] | None = None) -> tuple[Path, list[RunResult]]:
    """Run each implemented attack's preset; ``quick`` swaps in its smoke-test budget."""
    ensure_writable(out)
    results = []
    attacks = implemented()
    for name in sorted(n for n in attacks if n in preset_names()):
        if on_run:
            on_run(name)
        progress = progress_for(name) if progress_for else None
        budget = attacks[name].smoke_overrides if quick else attacks[name].demo_overrides
        overrides = {f"attack.{key}": value for key, value in budget.items()}
        results.append(run(name, out=out / "runs", seed=seed, progress=progress, set=overrides))  # type: ignore[arg-type]
    index = write_index(
        out / "index.html", "gialab demo: every implemented attack",
        [r.summary for r in results], HEADLINE,
    )
    return index, results
