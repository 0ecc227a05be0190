"""Sweep cells as Ray tasks, on local cores or on an existing Ray cluster.

Optional: ``pip install 'gialab[ray]'``. Each cell is one task asking for one CPU and computing on
one torch thread (``matrix.sweep.run_cell``), so a cell's numbers are the same as in-process.
At most as many tasks are in flight as there are CPUs to run them: what is in flight is what
runs, and a killed sweep loses those cells only. Tasks return their run folder's files and row
to the driver, which alone writes the output folder, so cluster nodes need no shared filesystem;
they need gialab (and its presets) installed, at the driver's version.
"""

from __future__ import annotations

import logging
import socket
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any

from gialab.errors import GialabError
from gialab.matrix.cells import Cell
from gialab.matrix.sweep import CellOutcome, run_cell

MISSING = "--workers above 1 and --ray-address run cells on Ray, which is not installed; pip install 'gialab[ray]'"
CONNECT_TIMEOUT_S = 5.0


def import_ray() -> ModuleType:
    try:
        import ray
    except ImportError:
        raise GialabError(MISSING) from None
    return ray


def _probe(address: str) -> None:
    """Fail in seconds on an address nothing listens at (Ray itself retries for minutes)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise GialabError(f"--ray-address {address!r} is not host:port, ray://host:port or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise GialabError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc}") from None


def connect(ray: ModuleType, workers: int | None, address: str | None = None) -> bool:
    """Join the caller's own Ray session if one is up (a notebook), else start a local one on
    ``workers`` CPUs or join the cluster at ``address``; True when this call started it (the caller
    then shuts it down, a session it joined it leaves running)."""
    if ray.is_initialized():
        return False
    if address is not None:
        _probe(address)
    options: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address is None:
        options |= {"num_cpus": workers, "include_dashboard": False}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise GialabError(f"cannot start {where}: {first}") from None
    return True


@contextmanager
def ray_session(workers: int | None, address: str | None = None) -> Iterator[ModuleType]:
    """The ray module, connected for the ``with`` block (see :func:`connect`); for callers other
    than the matrix that fan independent work out as tasks (e.g. disaggregation's per-user MILPs)."""
    ray = import_ray()
    started = connect(ray, workers, address)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def _cell_task(key: str, scenario: Any) -> CellOutcome:
    return run_cell(key, scenario)


class RayCells:
    """Runs cells as Ray tasks: ``workers`` local CPUs, or the cluster at ``address``."""

    def __init__(self, workers: int | None, address: str | None) -> None:
        self.ray = import_ray()
        self.workers = workers
        self.address = address
        self.slots = 1
        self._started = False

    def __enter__(self) -> RayCells:
        self._started = connect(self.ray, self.workers, self.address)
        self.slots = self._slots()
        return self

    def _slots(self) -> int:
        cpus = max(int(self.ray.cluster_resources().get("CPU", 1)), 1)
        return min(cpus, self.workers) if self.workers else cpus

    def __exit__(self, *exc: object) -> None:
        if self._started:
            self.ray.shutdown()

    def outcomes(self, cells: Sequence[Cell], running: Callable[[int], None]) -> Iterator[CellOutcome]:
        ray = self.ray
        task = ray.remote(num_cpus=1)(_cell_task)
        waiting = list(cells)
        in_flight: dict[Any, Cell] = {}
        while waiting or in_flight:
            while waiting and len(in_flight) < self.slots:
                cell = waiting.pop(0)
                in_flight[task.remote(cell.key, cell.scenario)] = cell
            running(len(in_flight))
            ready, _ = ray.wait(list(in_flight), num_returns=1)
            for ref in ready:
                cell = in_flight.pop(ref)
                try:
                    outcome = ray.get(ref)
                except ray.exceptions.RayError as exc:  # a worker died, a node was lost: run it again next time
                    outcome = CellOutcome(cell.key, error=f"Ray task for cell {cell.run_id} failed: {exc}")
                running(len(in_flight))
                yield outcome
