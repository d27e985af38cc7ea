"""The power check's settings and command line (the runs themselves: tests/integration)."""

import pytest

from transformer_lens_mm.pipelines.cli import main
from transformer_lens_mm.pipelines.power import QUICK_POWER, PowerConfig


def test_bad_settings_are_refused_with_the_fix():
    with pytest.raises(ValueError, match="concepts must be nouns"):
        PowerConfig(concepts=("car", "spaceship"))
    with pytest.raises(ValueError, match="depths"):
        PowerConfig(depths=(0.5, 1.2))
    with pytest.raises(ValueError, match="write in"):
        PowerConfig(plants=(("embedding", 2.0),))
    with pytest.raises(ValueError, match="positive"):
        PowerConfig(plants=(("unembedding", 0.0),))
    assert PowerConfig(**QUICK_POWER).concepts == ("car", "boat")


def test_tlmm_power_refuses_an_existing_folder(tmp_path, capsys):
    assert main(["power", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
