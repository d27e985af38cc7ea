"""`load_demo_model()` loads what `tlmm demo` runs (its LM and scene set), so a notebook and the
demo agree without arguments."""

import inspect

import pytest

from transformer_lens_mm.data.pretrained import demo_projection_path, load_demo_model
from transformer_lens_mm.pipelines.demo.config import DemoConfig


def test_load_demo_model_defaults_are_the_demos():
    config = DemoConfig()
    params = inspect.signature(load_demo_model).parameters
    assert params["lm"].default == config.lm
    assert params["scenes"].default == config.scene_set
    path = inspect.signature(demo_projection_path).parameters
    assert path["lm"].default == config.lm and path["scenes"].default == config.scene_set


def test_a_config_with_demo_true_loads_the_demos_pair(monkeypatch):
    """``[model] demo = true`` without ``lm``/``scenes`` is tlmm demo's model, not another."""
    from transformer_lens_mm.data import pretrained
    from transformer_lens_mm.pipelines.analyze import AnalysisConfig, plan_run
    from transformer_lens_mm.pipelines.analyze.config import load_model

    class Called(Exception):
        pass

    def fake(api=None, **kw):
        raise Called(kw)

    monkeypatch.setattr(pretrained, "load_demo_model", fake)
    with pytest.raises(Called) as called:
        load_model({"demo": True})
    assert called.value.args == ({},)  # load_demo_model's own defaults: the demo's
    plan = "\n".join(plan_run(AnalysisConfig(out="x", data={"kind": "natural", "n": 2})))
    assert "trained on natural scenes" in plan


def test_one_number_is_written_one_way():
    """A share is 2.5% in the printed summary, the report's headline and its checks table (it
    was 0.025, 2% and 0.025); a ratio is 1.10x."""
    from transformer_lens_mm.pipelines.demo.summary import percent, target_checks

    assert percent(0.025) == "2.5%" and percent(0.75) == "75%" and percent(0.0) == "0%"
    summary = {
        "top_units": {"scenes_with_an_interpretable_unit_decoding_to_target": 0.025},
        "controls": {"specificity_ratio": {"100": {"ratio": 1.0953}}},
    }
    shown = [c["shown"] for c in target_checks(summary)]
    assert shown[0] == "2.5%" and shown[2] == "1.10x"


def test_the_demo_tables_and_its_files_agree():
    """Every typed table is a file the demo writes (parquet + CSV export) and replaces."""
    from transformer_lens_mm.pipelines.demo.config import FILES
    from transformer_lens_mm.pipelines.demo.tables import DemoTables

    tables = {f"{n}.{e}" for n in DemoTables.names() for e in ("parquet", "csv")}
    assert tables == set(FILES) - {"summary.json", "report.html", "run.log"}


def test_demo_tables_round_trip_awkward_tokens(tmp_path):
    """A bare CR, LF, quotes, commas and a lone byte of a multi-byte character survive both
    the parquet file and the CSV export (the CSV once split rows at a bare CR)."""
    import pandas as pd

    from transformer_lens_mm.pipelines.demo.tables import DemoTables

    tokens = ["\r", "\n", '"', "a,b", "\ufffd", "\xe2", " x "]
    soft = pd.DataFrame({"token": tokens, "rank": range(len(tokens)), "cosine": 0.5})
    tables = DemoTables()
    tables.set(tmp_path, "soft_prompts", soft)
    back = DemoTables.read(tmp_path).soft_prompts
    pd.testing.assert_frame_equal(back, soft)
    csv = pd.read_csv(tmp_path / "soft_prompts.csv", keep_default_na=False)
    assert csv["token"].tolist() == tokens and csv["rank"].tolist() == list(range(len(tokens)))
