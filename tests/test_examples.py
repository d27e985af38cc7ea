"""The example scripts run end to end (smoke test on reduced settings, shared toy model)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
