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


def test_csv_tables_round_trip_awkward_tokens(tmp_path):
    """Decoded tokens include a bare carriage return, newlines, quotes, commas and replacement
    characters (byte-level BPE fragments): every row and type comes back as written."""
    import pandas as pd

    from transformer_lens_mm.core.atomic import atomic_csv

    tokens = ["\r", "\n", '"', ",", "a\r\nb", "\ufffd", " dog", "'", "\t"]
    table = pd.DataFrame(
        {
            "token": tokens,
            "rank": range(len(tokens)),
            "cosine": [0.5 * i for i in range(len(tokens))],
            "is_target": [i % 2 == 0 for i in range(len(tokens))],
        }
    )
    path = atomic_csv(tmp_path / "soft.csv", table)
    back = pd.read_csv(path, keep_default_na=False)
    pd.testing.assert_frame_equal(back, table)
    # what the demo wrote before: the bare \r breaks its row, and the columns no longer match
    table.to_csv(tmp_path / "plain.csv", index=False)
    plain = pd.read_csv(tmp_path / "plain.csv", keep_default_na=False)
    assert not plain.equals(table) and plain["rank"].dtype != table["rank"].dtype
