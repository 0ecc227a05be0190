"""Run folders, image grids, HTML reports and the results database."""

from gialab.report.database import database_path, insert_run, read_runs
from gialab.report.grid import save_grid
from gialab.report.html import write_index, write_run_report
from gialab.report.rundir import atomic_folder, ensure_writable, new_run_id

__all__ = [
    "atomic_folder", "database_path", "ensure_writable", "insert_run", "new_run_id",
    "read_runs", "save_grid", "write_index", "write_run_report",
]
