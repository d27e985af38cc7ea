"""Atomic writes: the target appears whole with a plain file's mode, or not at all."""

import os
from pathlib import Path

import pytest

from transformer_lens_mm.core.atomic import atomic_write


def test_atomic_write_mode_and_failure(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    target = atomic_write(tmp_path / "a.txt", lambda t: Path(t).write_text("new"))
    assert target.read_text() == "new"
    assert os.stat(target).st_mode & 0o777 == os.stat(plain).st_mode & 0o777  # not mkstemp's 0600

    def fail(path):
        Path(path).write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "new"  # the old file survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "plain.txt"]  # no temp left
