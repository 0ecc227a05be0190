"""The one exception type for user mistakes.

Everything a user can get wrong (a name, a shape, a path, a capability their threat model does
not grant) raises :class:`GialabError` with a single line that says what is wrong and what is
valid. The CLI turns it into that line on stderr and exit code 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterable


class GialabError(Exception):
    """A user-facing error: one line, what is wrong and what is valid."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> GialabError:
    """Error for a name that is not among the valid ones, listing them."""
    return GialabError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
