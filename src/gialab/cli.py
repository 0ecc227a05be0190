"""The ``gialab`` command line: run, presets, catalog, demo, matrix, report.

User mistakes surface as one line on stderr and exit code 2 (``GialabError`` and click's usage
errors); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
try:
    from typer.exceptions import Abort, Exit, TyperException
except ImportError:  # typer < 0.21 (the one flwr 1.41 pins, extra [flower]) raises click's exceptions
    from click.exceptions import Abort, Exit
    from click.exceptions import ClickException as TyperException
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gialab.errors import GialabError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
    help="Threat-model-first laboratory for gradient inversion attacks in federated learning.",
)
err = Console(stderr=True)
out = Console()


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Callable[[str], Callable[[int, int], None]] | None]:
    """Yield a factory of per-task progress callbacks drawing one rich bar each, or None."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        def factory(label: str) -> Callable[[int, int], None]:
            task = bar.add_task(label, total=None)

            def update(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            return update

        yield factory


@app.command("run")
def run_command(
    scenario: Annotated[str, typer.Argument(help="preset name (see `gialab presets`) or a YAML file")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="dotted key=value override, repeatable")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for run folders and results.sqlite")] = Path("runs"),
    as_json: Annotated[bool, typer.Option("--json", help="print exactly one JSON object on stdout")] = False,
    engine: Annotated[str, typer.Option(
        "--engine", metavar="gialab|flower",
        help="FL transport: gialab (in-process) or flower (a Flower simulation; "
             "pip install 'gialab[flower]')")] = "gialab",
    workers: Annotated[int, typer.Option(
        "--workers", metavar="N", help="--engine flower: Ray CPUs running the ClientApps")] = 1,
) -> None:
    """Run one scenario: FL round(s), the threat model's observation, the attack, metrics, report."""
    from gialab.runner import run
    from gialab.scenario import parse_assignment

    overrides = dict(parse_assignment(item) for item in set_ or [])
    with _progress_bar(not as_json and sys.stderr.isatty()) as factory:
        progress = factory(scenario) if factory else None
        result = run(scenario, out=out_dir, progress=progress, engine=engine, workers=workers, set=overrides)
    if as_json:
        typer.echo(json.dumps(result.summary, allow_nan=False))
        return
    s = result.summary
    table = Table(title=f"{s['attack']} ({s['threat_model']}), {s['n_samples']} sample(s)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in s["metrics"].items():
        table.add_row(key, "unavailable" if value is None else f"{value:.4g}")
    out.print(table)
    if s.get("audit", {}).get("victim_refused"):
        last = [r for r in s["audit"]["refusals"] if r["client"] == result.scenario.victim][-1]
        out.print(f"the victim refused every model it was sent (round {last['round']}: {last['reasons']})")
    out.print(f"run folder: {s['run_dir']}  ({s['runtime_s']:.1f} s)")


@app.command("presets")
def presets_command() -> None:
    """List the presets: ready-made scenarios named after their attack."""
    from gialab.scenario import presets

    for name, description in presets().items():
        typer.echo(f"{name:24s} {description}")


@app.command("catalog")
def catalog_command(
    as_json: Annotated[bool, typer.Option("--json", help="print the records as a JSON list")] = False,
) -> None:
    """The survey's taxonomy from the attack registry, marked implemented or not yet."""
    from gialab.attacks.registry import catalog

    records = catalog()
    if as_json:
        typer.echo(json.dumps(records))
        return
    table = Table(title="GIA taxonomy (Shi et al., 'Dealing Doubt'); * = survey Figure 1")
    for column in ("attack", "threat model", "family", "FL setup", "target data", "paper", "status"):
        table.add_column(column)
    for r in records:
        table.add_row(
            f"{r['name']}{' *' if r['figure1'] else ''}", str(r["threat_model"]), str(r["family"]),
            ", ".join(r["fl_setups"]), str(r["target_data"]), str(r["paper"]),  # type: ignore[arg-type]
            "implemented" if r["implemented"] else "not yet",
        )
    Console(width=None if sys.stdout.isatty() else 200).print(table)


@app.command("demo")
def demo_command(
    out_dir: Annotated[Path, typer.Option("--out", help="folder for the demo page and its runs")] = Path("runs/demo"),
    seed: Annotated[int, typer.Option(help="seed for every run")] = 0,
    quick: Annotated[bool, typer.Option("--quick", help="smoke-test budgets: checks the plumbing in seconds")] = False,
) -> None:
    """Run every implemented attack on embedded data, then a small matrix; one page links the runs and its report."""
    from gialab.demo import MATRIX, run_demo

    with _progress_bar(sys.stderr.isatty()) as factory:
        index, results = run_demo(out_dir, seed=seed, quick=quick, on_run=lambda n: err.print(f"running {n} ..."),
                                  progress_for=factory)
    for r in results:
        m = r.metrics
        headline = (f"token_accuracy={m['token_accuracy']:.2f}" if "token_accuracy" in m  # text runs
                    else f"psnr_mean={m['psnr_mean']:.2f} dB  fraction_recovered={m['fraction_recovered']:.2f}")
        out.print(f"{r.summary['attack']:20s} {headline}  {r.run_dir}")
    out.print(f"demo page: {index.resolve()}")
    out.print(f"matrix report: {(out_dir / MATRIX / 'report.html').resolve()}")


@contextmanager
def _matrix_bar(enabled: bool) -> Iterator[Callable[[int, int, int], None] | None]:
    """One bar over the sweep's cells, with how many are done, running and left."""
    if not enabled:
        yield None
        return
    columns = (TextColumn("cells"), BarColumn(), TextColumn("{task.completed} done, {task.fields[running]} running, "
               "{task.fields[left]} left"), TimeElapsedColumn())
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task("cells", total=None, running=0, left="?")

        def update(done: int, running: int, left: int) -> None:
            bar.update(task, completed=done, total=done + running + left, running=running, left=left)

        yield update


@app.command("matrix")
def matrix_command(
    attacks: Annotated[list[str] | None, typer.Option(
        "--attacks", metavar="PRESETS", help="attack presets, comma-separated or repeated "
        "[default: fc-leakage,trap-weights: analytic attacks that take seconds]")] = None,
    defenses: Annotated[list[str] | None, typer.Option(
        "--defenses", metavar="COLUMNS", help="defense columns: none, a name, names joined by + or a YAML list, "
        "comma-separated or repeated [default: none,dp_local,secure_aggregation]")] = None,
    batch_sizes: Annotated[list[str] | None, typer.Option(
        "--batch-sizes", metavar="SIZES", help="batch sizes, comma-separated [default: each preset's own]")] = None,
    seeds: Annotated[int, typer.Option("--seeds", metavar="N", help="seeds 0..N-1 per cell")] = 1,
    workers: Annotated[int | None, typer.Option(
        "--workers", metavar="N", help="cells at once: 1 runs in this process, more on local Ray "
        "[default: 1, or every CPU of --ray-address]")] = None,
    ray_address: Annotated[str | None, typer.Option(
        "--ray-address", metavar="ADDR",
        help="run on an existing Ray cluster (host:port, ray://host:port or auto)")] = None,
    profile: Annotated[str, typer.Option(
        "--profile", metavar="preset|demo|quick",
        help="attack budgets: preset, demo (as `gialab demo`) or quick (smoke test)")] = "preset",
    set_: Annotated[list[str] | None, typer.Option("--set", help="dotted key=value for every cell, repeatable")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="folder for results.sqlite and run folders")] = Path(
        "runs/matrix"),
    fmt: Annotated[str, typer.Option(
        "--format", metavar="table|md|json",
        help="output: a table, markdown (for papers and READMEs) or JSON")] = "table",
    utility_rounds: Annotated[int, typer.Option(
        "--utility-rounds", metavar="N", help="also train a reference FL model N rounds under each defense column "
        "for the report's privacy-utility curves [default: 0, not measured]")] = 0,
) -> None:
    """Run every attack x defense x batch size x seed cell; a re-run finishes only the missing cells.

    Writes report.html into --out: the survey's Figure 1 claims beside the measurements, plots, examples."""
    from gialab.errors import GialabError
    from gialab.matrix import SweepSpec, collect, entries, markdown, parse_defense_columns, run_matrix, split_list
    from gialab.matrix.report import finish_report
    from gialab.matrix.table import as_json, grid
    from gialab.report import database_path
    from gialab.scenario import parse_assignment

    if fmt not in ("table", "md", "json"):
        raise GialabError(f"unknown format {fmt!r}; valid: json, md, table")
    try:
        sizes = tuple(int(b) for b in split_list(batch_sizes or []))
    except ValueError:
        raise GialabError(f"--batch-sizes takes whole numbers, got {','.join(batch_sizes or [])!r}") from None
    spec = SweepSpec(
        attacks=tuple(split_list(attacks or [])) or SweepSpec().attacks,
        defenses=parse_defense_columns(defenses or []), batch_sizes=sizes, seeds=seeds,
        profile=profile,  # type: ignore[arg-type]  # build_cells names the valid profiles
        overrides=dict(parse_assignment(item) for item in set_ or []),
    )
    if utility_rounds < 0:
        raise GialabError(f"--utility-rounds must be 0 (not measured) or more, got {utility_rounds}")
    with _matrix_bar(fmt != "json" and sys.stderr.isatty()) as bar:
        result = run_matrix(spec, out_dir, workers=workers, ray_address=ray_address, progress=bar)
    report = finish_report(result, utility_rounds, command="gialab " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    records = collect(result.cells, database_path(result.out))
    for cell, trace in result.failures:
        err.print(f"cell {cell.run_id} failed (not stored; a re-run tries it again):\n{trace}", markup=False,
                  highlight=False)
    if fmt == "json":
        typer.echo(json.dumps({"out": str(result.out.resolve()), "ran": result.ran, "skipped": result.skipped,
                               "failed": len(result.failures), "cells": as_json(records)}, allow_nan=False))
    elif fmt == "md":
        typer.echo(markdown(entries(records)), nl=False)
    else:
        g = grid(entries(records))
        table = Table(title=f"gialab matrix: {len(result.cells)} cells in {result.out}")
        for i, name in enumerate(g.header):
            table.add_column(name, justify="right" if i == 2 else "left")
        for row in g.rows:
            table.add_row(*row)
        Console(width=None if sys.stdout.isatty() else 200).print(table)
        out.print(g.legend, highlight=False)
        for reason, n in g.footnotes.items():
            out.print(f"[{n}] {reason}", markup=False, highlight=False)
        out.print(f"ran {result.ran}, skipped {result.skipped}, failed {len(result.failures)} "
                  f"({result.seconds:.1f} s); database: {database_path(result.out)}", highlight=False)
        out.print(f"report: {report.resolve()}", highlight=False)
    if result.failures:
        raise typer.Exit(1)


@app.command("report")
def report_command(
    sweep: Annotated[Path, typer.Argument(help="a gialab matrix --out folder (holding results.sqlite)")],
    fmt: Annotated[str, typer.Option(
        "--format", metavar="html|md",
        help="html: rewrite SWEEP/report.html; md: print the Figure 1 table as markdown")] = "html",
) -> None:
    """Rebuild a sweep's report from its database: every cell it holds, from every gialab matrix run."""
    from gialab.errors import GialabError
    from gialab.matrix.report import build_report, figure1_markdown, sweep_records, write_report
    from gialab.report import database_path

    if fmt not in ("html", "md"):
        raise GialabError(f"unknown format {fmt!r}; valid: html, md")
    if not database_path(sweep).is_file():
        raise GialabError(f"{sweep} holds no results.sqlite; give the --out folder of a gialab matrix run")
    records, utility = sweep_records(sweep)
    if fmt == "md":
        typer.echo(figure1_markdown(build_report(records, utility)), nl=False)
        return
    path = write_report(sweep, records, utility=utility, command=f"gialab report {shlex.quote(str(sweep))}")
    out.print(f"report: {path.resolve()}", highlight=False)


def main() -> None:
    try:
        app(standalone_mode=False)
    except GialabError as exc:
        print(f"gialab: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Abort:
        print("gialab: aborted", file=sys.stderr)
        sys.exit(130)
    except Exit as exc:
        sys.exit(exc.exit_code)
    except TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `gialab`: show help, not an error
            print(exc.format_message(), file=sys.stderr)
            sys.exit(0)
        message = " ".join(exc.format_message().split())
        print(f"gialab: error: {message}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
