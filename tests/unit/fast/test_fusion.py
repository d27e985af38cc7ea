"""The speed layer as an explicit option: one switch, a context manager, version gates, one
reversible patch of TransformerLens code, nothing changed by importing the package."""

import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from helpers import APIS, build_model, random_images

import transformer_lens_mm.fast.versions as versions
from transformer_lens_mm import from_parts, set_fused
from transformer_lens_mm.fast.fusion import check_fused_flag, is_fused
from transformer_lens_mm.fast.patches import KV_CACHE_PATCH, applied

TYPECHECK = "Type-check error"  # jaxtyping's runtime checks (tests only) may refuse first


@pytest.fixture(scope="module", params=APIS)
def model(request, lm_dirs):
    return build_model(lm_dirs["llama"], request.param)


def fused_modules(model):
    return [m for m in model.modules() if getattr(m, "fused", False) is True]


def test_one_switch_and_a_scoped_context_manager(model):
    part = "fused_hooked" if type(model).__name__.startswith("Hooked") else "fused_bridge"
    verified = versions.verified(part)
    assert is_fused(model) == verified and bool(fused_modules(model)) == verified
    batch = model.prepare_inputs(random_images(2))
    with torch.no_grad():
        fast = model(batch)
        with model.fused(False) as same:
            assert same is model and not is_fused(model) and not fused_modules(model)
            slow = model(batch)
        assert is_fused(model) == verified  # restored
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    assert set_fused(model, False) == 0 and not is_fused(model)
    assert (set_fused(model, True) > 0) == verified


def test_fused_false_at_build_time_leaves_tls_own_classes(lm_dirs, model):
    api = "hooked" if type(model).__name__.startswith("Hooked") else "bridge"
    plain = build_model(lm_dirs["gpt2"], api, fused=False)
    assert not is_fused(plain)
    assert not [type(m).__name__ for m in plain.modules() if type(m).__name__.startswith("Fused")]


@pytest.mark.parametrize("bad", ["yes", 1, None, "off"])
def test_unknown_fused_values_name_the_allowed_ones(bad, lm_dirs):
    with pytest.raises(ValueError, match="fused must be True or False"):
        check_fused_flag(bad)
    with pytest.raises((ValueError, TypeError), match=f"fused must be True or False|{TYPECHECK}"):
        from_parts(lm=lm_dirs["gptj"], encoder=None, projection="x", fused=bad)


def test_an_unverified_transformer_lens_skips_fusion_with_one_warning(model, monkeypatch):
    batch = model.prepare_inputs(random_images(2))
    set_fused(model, False)
    with torch.no_grad():
        reference = model(batch)
    monkeypatch.setattr(versions, "TL_VERSION", "9.9.0")
    monkeypatch.setattr(versions, "_warned", set())
    with pytest.warns(RuntimeWarning, match="verified on TransformerLens .* this is 9.9.0"):
        assert set_fused(model, True) == 0
    assert not is_fused(model) and not fused_modules(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per process, not once per call
        set_fused(model, True)
        with torch.no_grad():
            assert torch.equal(model(batch), reference)  # results are TL's own


def test_the_kv_cache_patch_is_listed_and_undoable(lm_dirs):
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    build_model(lm_dirs["gptj"], "bridge")
    if not versions.verified("kv_cache_patch"):
        pytest.skip(f"the patch is verified on TL {versions.VERIFIED['kv_cache_patch']}")
    assert KV_CACHE_PATCH in applied() and KV_CACHE_PATCH.is_applied
    patched = AttentionBridge.__dict__["_update_kv_cache"]
    assert patched.__tlmm_patch__ == KV_CACHE_PATCH.name
    KV_CACHE_PATCH.undo()
    try:
        original = AttentionBridge.__dict__["_update_kv_cache"]
        assert not hasattr(original, "__tlmm_patch__") and KV_CACHE_PATCH not in applied()
    finally:
        KV_CACHE_PATCH.apply()
    assert AttentionBridge.__dict__["_update_kv_cache"].__tlmm_patch__ == KV_CACHE_PATCH.name


IMPORT_CHANGES_NOTHING = """
import sys
import transformer_lens
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge import generalized_components as gc
from transformer_lens.hook_points import HookPoint
import pkgutil, importlib, inspect

def snapshot():
    classes = {TransformerBridge, HookPoint}
    for info in pkgutil.iter_modules(gc.__path__):
        mod = importlib.import_module(f"{gc.__name__}.{info.name}")
        classes |= {c for _, c in inspect.getmembers(mod, inspect.isclass)
                    if c.__module__.startswith("transformer_lens")}
    # (copyreg caches __slotnames__ on a class the first time one is copied: not a change)
    return {(c.__module__, c.__qualname__, k): id(v) for c in classes for k, v in vars(c).items()
            if k != "__slotnames__"}

before = snapshot()
import transformer_lens_mm
from transformer_lens_mm.fast.patches import applied
assert before == snapshot(), "importing transformer_lens_mm changed TransformerLens"
assert applied() == []
from transformer_lens_mm.core.lm_loading import load_bridge
plain = load_bridge(sys.argv[1])
assert type(plain) is TransformerBridge
assert not [m for m in plain.modules() if type(m).__name__.startswith("Fused")]
assert before == snapshot(), "loading a plain bridge changed TransformerLens"
print("untouched")
"""


def test_importing_the_package_leaves_transformer_lens_and_a_plain_bridge_untouched(
    lm_dirs, tmp_path
):
    script = tmp_path / "check.py"
    script.write_text(textwrap.dedent(IMPORT_CHANGES_NOTHING))
    done = subprocess.run(
        [sys.executable, str(script), str(lm_dirs["gptj"])], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "untouched" in done.stdout
