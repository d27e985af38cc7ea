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
