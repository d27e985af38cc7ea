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


@pytest.mark.parametrize("api", sorted({default_api(), "bridge"}))
def test_paper_run_sizing_script(api):
    """The paper's per-image procedure on tiny shapes (run_gpu.sh's `paper` part, dry run)."""
    out = run("paper_run.py", "--shape", "tiny", "--api", api, "--batches", "1", "2")
    native = run("paper_run.py", "--shape", "tiny", "--native", "llava", "--batches", "1")
    assert out.count("images/s") == 2 and "projected: 1,000 images" in out, out
    assert "NativeVLMBridge" in native and native.count("images/s") == 1, native
    for step in ("caption", "search", "ablation sweep", "captions under ablation", "soft prompts"):
        assert step in out and step in native, out


def test_paper_run_reports_a_batch_that_does_not_fit(monkeypatch, capsys):
    """Out of memory at a batch size: the measured per-image memory and the largest batch that
    ran, not a CUDA trace."""
    import torch

    sys.path.insert(0, str(BENCH))
    import paper_run

    calls = []

    def fake_batch(model, size, n, args):
        calls.append(n)
        if n >= 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"caption": 0.5 * n}

    monkeypatch.setattr(paper_run, "one_batch", fake_batch)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")  # track_rss would re-exec the process
    monkeypatch.setattr(
        sys, "argv", ["paper_run.py", "--shape", "tiny", "--batches", "1", "2", "4", "8"]
    )
    paper_run.main()
    out = capsys.readouterr().out
    assert calls == [1, 1, 2, 4]  # warm-up, then up to the first that does not fit; 8 not tried
    assert "batch 4: does not fit" in out and "the largest batch that ran" in out, out
    assert "--batches up to 2" in out and "Traceback" not in out
