"""`load_demo_model()` loads what `tlmm demo` runs (its LM and scene set), so a notebook and the
demo agree without arguments."""

import inspect

from transformer_lens_mm.data.pretrained import demo_projection_path, load_demo_model
from transformer_lens_mm.pipelines.demo.config import DemoConfig


def test_load_demo_model_defaults_are_the_demos():
    config = DemoConfig()
    params = inspect.signature(load_demo_model).parameters
    assert params["lm"].default == config.lm
    assert params["scenes"].default == config.scene_set
    path = inspect.signature(demo_projection_path).parameters
    assert path["lm"].default == config.lm and path["scenes"].default == config.scene_set


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
