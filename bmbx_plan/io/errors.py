"""The one exception family for input the toolkit cannot use."""

from __future__ import annotations

from pathlib import Path

__all__ = ["InputError"]


class InputError(ValueError):
    """Input that cannot be used, with the file and the problem named.

    The command line turns this into one line on stderr and exit code 2.

    Parameters
    ----------
    path : str or Path or None
        The file or folder the problem is in.
    problem : str
        One sentence saying what is wrong (and, where it helps, what to do).
    """

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{path}: {problem}")
