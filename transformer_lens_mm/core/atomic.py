"""Atomic file writes: a reader never sees a half-written file, a crash never loses the old one."""

from __future__ import annotations

import csv
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_csv", "atomic_write"]


def atomic_write(target: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``target``, then rename it over.

    Args:
        target: Final path.
        write: Writes the whole file to the path it is given.

    Returns:
        ``target`` as a ``Path``.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # created like open() creates files (0666 minus the umask; mkstemp would make it 0600)
    tmp = str(target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def atomic_csv(target: str | os.PathLike, table: Any) -> Path:
    """Write a pandas table as CSV, atomically, so that ``pandas.read_csv`` gives it back:
    every text field is quoted, so tokens such as a bare carriage return, a newline, a quote or
    a comma stay inside their field (pandas' default quotes only a few of them, and a bare
    ``\\r`` split the demo's soft-prompt rows).

    Example:
        >>> import pandas as pd, tempfile
        >>> t = pd.DataFrame({"token": ["\\r", "a,b", '"'], "rank": [0, 1, 2]})
        >>> path = atomic_csv(Path(tempfile.mkdtemp()) / "t.csv", t)
        >>> pd.read_csv(path, keep_default_na=False).equals(t)
        True
    """
    return atomic_write(
        target, lambda tmp: table.to_csv(tmp, index=False, quoting=csv.QUOTE_NONNUMERIC)
    )
