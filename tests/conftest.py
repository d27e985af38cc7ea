import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import build_hf_lm


@pytest.fixture(scope="session")
def lm_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny GPT-J-like and Llama-like models saved as Hugging Face folders.

    The Llama folder's path contains "llama" on purpose: TL 3.9 mis-reads such paths.
    """
    root = tmp_path_factory.mktemp("lms")
    return {kind: build_hf_lm(root / f"tiny-{kind}", kind) for kind in ("gptj", "llama", "gpt2")}
