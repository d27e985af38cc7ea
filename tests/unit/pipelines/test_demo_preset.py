"""``tlmm demo`` is a preset of the dataset runner: its config is the shipped
``configs/demo_natural_smollm2.toml`` (so `tlmm analyze` on that file and `tlmm demo` make the
same run), and the demo's switches map onto the runner's."""

import dataclasses
from pathlib import Path

from transformer_lens_mm.pipelines.analyze import load_config
from transformer_lens_mm.pipelines.demo import QUICK, DemoConfig
from transformer_lens_mm.pipelines.demo.runner import demo_analysis_config

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def test_the_shipped_preset_is_the_demos_config():
    shipped = load_config(CONFIGS / "demo_natural_smollm2.toml")
    preset = demo_analysis_config(DemoConfig(), shipped.out)
    assert dataclasses.asdict(preset) == dataclasses.asdict(shipped)


def test_the_demos_switches_map_onto_steps():
    quick = demo_analysis_config(DemoConfig(**QUICK), "x")
    assert quick.ablation_ks == [0, 25, 100, 400] and quick.ablation_random == 1
    assert quick.data["n"] == 8 and quick.data["photos"] is False and quick.card_effects == 4
    shapes = demo_analysis_config(DemoConfig(scene_set="shapes", knockout_window=0), "x")
    assert "background" not in shapes.steps and "knockout" not in shapes.steps
    # a small model: sweep sizes above its units are dropped, as the demo always did
    small = demo_analysis_config(DemoConfig(), "x", n_units=300)
    assert small.ablation_ks == [0, 25, 50, 100, 200] and small.cross_concept_ks == [25, 100]
    assert small.ablation_captions_k == 200
