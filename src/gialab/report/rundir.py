"""Run folders that appear whole or not at all.

Files are written into a hidden ``.partial-*`` folder beside the final one and renamed into place
only when complete; a failure (or Ctrl-C) removes the partial folder. The output folder's
writability is checked before any work starts, so a bad ``--out`` fails in a second, not after
an attack.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from gialab.errors import GialabError


def ensure_writable(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise GialabError(f"cannot write to output folder {out}: {exc.strerror or exc}") from None
    return out


def new_run_id(out: Path, name: str, seed: int) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
    base = f"{stamp}-{name}-seed{seed}"
    run_id, i = base, 1
    while (out / run_id).exists():
        run_id, i = f"{base}-{i}", i + 1
    return run_id


@contextmanager
def atomic_folder(out: Path, run_id: str) -> Iterator[Path]:
    """Yield a partial folder to fill; on success it becomes ``out/run_id``."""
    partial = Path(tempfile.mkdtemp(dir=out, prefix=f".partial-{run_id}-"))
    try:
        yield partial
        os.replace(partial, out / run_id)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
