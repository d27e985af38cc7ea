"""Without SAELens (always so on TransformerLens 4.x: SAELens pins transformer-lens<4), the SAE
module says what to install or which environment to use."""

import importlib.util
import sys

import pytest

from transformer_lens_mm.errors import MissingPackageError
from transformer_lens_mm.fast.versions import HAS_HOOKED_TRANSFORMER


def test_without_saelens_the_import_says_which_environment_to_use(monkeypatch):
    if importlib.util.find_spec("sae_lens") is not None:
        monkeypatch.setitem(sys.modules, "sae_lens", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "transformer_lens_mm.core.sae", raising=False)
    want = "pip install sae-lens" if HAS_HOOKED_TRANSFORMER else "transformer-lens==3.9"
    with pytest.raises(MissingPackageError, match=want):
        import transformer_lens_mm.core.sae  # noqa: F401
