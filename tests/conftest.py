import sys
from pathlib import Path

import pytest
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from helpers import build_hf_lm


@pytest.fixture(scope="session")
def lm_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny GPT-J-like and Llama-like models saved as Hugging Face folders.

    The Llama folder's path contains "llama" on purpose: TL 3.9 mis-reads such paths.
    """
    root = tmp_path_factory.mktemp("lms")
    return {kind: build_hf_lm(root / f"tiny-{kind}", kind) for kind in ("gptj", "llama", "gpt2")}


@pytest.fixture
def sdpa_calls(monkeypatch) -> list[dict]:
    """Counts calls of F.scaled_dot_product_attention (so a test sees which path ran)."""
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(kwargs)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted)
    return calls
