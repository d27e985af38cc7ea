"""The benchmark scripts run end to end (tiny models; their timings are not asserted)."""

import subprocess
import sys
from pathlib import Path

import pytest

from transformer_lens_mm.core.lm_loading import default_api

pytestmark = pytest.mark.slow  # each script end to end (the separate CI step)

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def run(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_attribution_and_sweep_script():
    out = run(
        "attribution_and_sweep.py",
        "--model",
        "tiny",
        "--repeats",
        "1",
        "--batch",
        "2",
        "--image-tokens",
        "16",
        "--profile",
    )
    for line in (
        "attribution time / forward time",
        "same, top 100 + 6400 ranked units kept",
        "one attribution:",
        "attribution peak memory / forward+backward peak",
        "speed-up over one backward per layer",
        "sweep time / one forward of the stacked batch",
        "sweep speed-up over a loop of single forwards",
    ):
        assert line in out, out


def test_captioning_script():
    out = run(
        "captioning.py",
        "--model",
        "tiny",
        "--repeats",
        "1",
        "--new-tokens",
        "3",
        "--batch",
        "2",
        "--image-tokens",
        "4",
    )
    assert "same tokens as HF: True" in out, out
    assert "captioning tokens/s vs HF generate" in out, out
    assert "tensor operations per caption batch" in out, out


@pytest.mark.parametrize("api", sorted({default_api(), "bridge"}))
def test_memory_script(api):
    out = run("memory.py", "--shape", "tiny", "--api", api, "--layers", "1", "2", "--repeats", "1")
    assert out.count("peak above weights") == 2, out
    assert "per layer: attribution" in out and "largest batch in 80 GB" in out, out


@pytest.mark.parametrize("api", sorted({default_api(), "bridge"}))
def test_analyze_floor_script(api):
    out = run("analyze_floor.py", "--model", "tiny", "--api", api, "--repeats", "1")
    assert "run / floor:" in out, out
    for part in ("captions", "attribution (+ patch maps)", "ablation sweep", "report", "other"):
        assert part in out, out
