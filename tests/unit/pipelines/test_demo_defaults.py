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
