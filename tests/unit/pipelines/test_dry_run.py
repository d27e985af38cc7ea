"""``tlmm analyze --dry-run``: every name in a config resolves without loading anything."""

from pathlib import Path

import pytest

from transformer_lens_mm.errors import ConfigError
from transformer_lens_mm.pipelines.analyze import load_config, plan_run
from transformer_lens_mm.pipelines.cli import main

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_paper_config_names_the_pt22k_encoder(capsys, monkeypatch):
    import functools

    import transformer_lens_mm.core.loading as loading

    @functools.wraps(loading.from_parts)  # keeps the signature the dry run checks keys against
    def refuse(*args, **kwargs):
        raise AssertionError("a dry run must not build the model")

    monkeypatch.setattr(loading, "from_parts", refuse)
    assert main(["analyze", str(CONFIGS / "coco_val2017_gptj_beit.toml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "recipe = limber-beit" in out
    assert "microsoft/beit-large-patch16-224-pt22k " in out  # the self-supervised one
    assert "in22k_ft_in22k" not in out and "pt22k-ft22k" not in out
    assert "196 image tokens of 1024 at 224 px" in out and "BOS False" in out
    assert "config OK" in out


def test_every_shipped_config_passes(capsys):
    for path in sorted(CONFIGS.glob("*.toml")):
        assert main(["analyze", str(path), "--dry-run"]) == 0, path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ('recipe = "limber-beit"', 'recipe = "limber-vit"'),
        ('dtype = "float16"', 'dtype = "float17"'),
        ('kind = "coco"', 'kind = "cocoa"'),
        ('api = "hooked"', 'apii = "hooked"'),
    ],
)
def test_bad_names_are_refused(tmp_path, edit, message):
    text = (CONFIGS / "coco_val2017_gptj_beit.toml").read_text()
    assert edit in text
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(edit, message))
    with pytest.raises(ConfigError) as err:
        plan_run(load_config(path))
    assert message.split(" = ")[0 if "apii" in message else -1].strip('"') in str(err.value)
