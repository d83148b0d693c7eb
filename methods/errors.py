"""The one exception type for mistakes a user can make (bad config, missing data, unknown name).

Defined here, in the lowest layer (methods import only torch and PML), and re-exported by
`bench.errors`; the CLI catches it, prints its message as one line and exits with code 2.
"""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""

    exit_code = 2


def unknown_name(kind: str, name: str, valid: "list[str] | tuple[str, ...]") -> UserError:
    """UserError for an unknown registry name, listing the valid ones."""
    return UserError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(sorted(valid))}")
