"""All-or-nothing output folders: files appear in ``--out`` only when a step succeeded."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["OutputExistsError", "staged_output"]


class OutputExistsError(FileExistsError):
    """The output folder already holds files that would be replaced."""


@contextmanager
def staged_output(out_dir: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a private staging folder beside ``out_dir``; publish it when the block ends.

    If the block raises, the staging folder is removed and ``out_dir`` is untouched. On
    success each top-level entry is moved into ``out_dir`` (renames on one file system).
    Existing entries of the same name are refused unless ``overwrite`` is true; other
    files already in ``out_dir`` are never touched.

    Raises
    ------
    OutputExistsError
        Before anything is written, if ``out_dir`` is a file, or (without ``overwrite``)
        is a folder that is not empty.
    """
    target = Path(out_dir)
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise OutputExistsError(f"{target}: folder is not empty (use --overwrite to replace)")
    target.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    stage.chmod(0o777 & ~umask)  # mkdtemp makes it private; the result should not be
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    try:
        if not target.exists():
            os.replace(stage, target)
            return
        for entry in sorted(stage.iterdir()):
            dest = target / entry.name
            if dest.is_dir() and not dest.is_symlink():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            os.replace(entry, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
